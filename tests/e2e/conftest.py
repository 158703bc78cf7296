"""The end-to-end tests' one way to run Taskyard as users do: `taskyard engine` in a process of its
own on the test's database, and ledger workers (tests/ledger_worker.py) in theirs. Whatever a
test started is killed when it ends, also when it fails halfway."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from taskyard.testing import EngineProcess, clean_env
from tests.support import WorkerProcess


@dataclass
class Deployment:
    """An engine process, its local tenant's admin token, and the workers started beside it."""

    engine: EngineProcess
    token: str
    db_url: str
    folder: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.engine.url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def worker(self, name: str, *, start: bool = True, **options: Any) -> WorkerProcess:
        """A ledger worker process named `name` (its log is `<name>.log`); `options` are
        WorkerProcess's (slots, sleep, env_extra)."""
        worker = WorkerProcess(
            self.engine.url, self.token, self.db_url, name, self.folder / f"{name}.log", **options
        )
        self.workers.append(worker)
        return worker.start() if start else worker


class Deploy(Protocol):
    def __call__(self, *flags: str) -> Deployment: ...


@pytest.fixture
def deploy(db_url: str, tmp_path: Path) -> Iterator[Deploy]:
    """Start an engine process on the test's database, with `flags` beyond the database and
    its data folder (`<tmp>/engine`, where it writes its token)."""
    started: list[Deployment] = []

    def start(*flags: str) -> Deployment:
        data_dir = tmp_path / "engine"
        engine = EngineProcess(
            ["--database-url", db_url, "--data-dir", str(data_dir), *flags],
            clean_env(),
            tmp_path / "engine.log",
        ).start()
        token = (data_dir / "token").read_text().strip()
        deployment = Deployment(engine, token, db_url, tmp_path)
        started.append(deployment)
        return deployment

    yield start
    for deployment in started:
        for worker in deployment.workers:
            worker.kill()
        deployment.engine.kill()
