"""Fixtures for your own test suites, loaded by pytest when the engine is installed.

    def test_signup_sends_a_welcome(taskyard_client):
        with taskyard_client.worker("test", tasks=[send_welcome]):
            assert send_welcome.run(Signup(email="ana@acme.test")) == "sent"

`taskyard_engine` is a real engine in a subprocess for the whole test session (`.url`, `.token`)
on the
PostgreSQL named by TASKYARD_TEST_DATABASE_URL, or on an embedded one of its own in a temporary
directory (nothing else is touched). `taskyard_client` is an SDK client of it with the engine's
admin token. Tasks declared on another client run there too: a worker serves the functions it is
given, whatever client declared them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from taskyard.testing import EngineProcess, clean_env
from taskyard_sdk import Taskyard

TEST_DATABASE_VARIABLE = "TASKYARD_TEST_DATABASE_URL"


@dataclass(frozen=True)
class RunningEngine:
    """The session's engine: where it serves, its admin token, and its process (`.log`)."""

    url: str
    token: str
    process: EngineProcess


@pytest.fixture(scope="session")
def taskyard_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEngine]:
    """A `taskyard engine` subprocess for the test session."""
    data_dir = tmp_path_factory.mktemp("taskyard")
    args = ["--data-dir", str(data_dir)]
    if url := os.environ.get(TEST_DATABASE_VARIABLE):
        args += ["--database-url", url]
    process = EngineProcess(
        args, clean_env(TASKYARD_LOG_LEVEL="warning"), data_dir / "engine.log"
    ).start(wait=120)
    try:
        yield RunningEngine(process.url, (data_dir / "token").read_text().strip(), process)
    finally:
        if process.terminate() != 0:
            process.kill()


@pytest.fixture
def taskyard_client(taskyard_engine: RunningEngine) -> Iterator[Taskyard]:
    """An SDK client of the session's engine, with its admin token; closed after the test."""
    client = Taskyard(url=taskyard_engine.url, token=taskyard_engine.token)
    yield client
    client.close()
