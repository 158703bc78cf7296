"""Helpers shared by the tests: database URLs, CLI runs, worker processes, outages, waiting for
the database to show something."""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from taskyard.testing import clean_env

ADMIN_URL = os.environ.get(
    "TASKYARD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    """ADMIN_URL pointed at another database on the same server."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


def taskyard(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the `taskyard` CLI to completion."""
    return subprocess.run(
        [sys.executable, "-m", "taskyard", *args],
        capture_output=True,
        text=True,
        env=dict(env or clean_env()),
        timeout=timeout,
        check=False,
    )


LEDGER_TABLE = """
CREATE TABLE IF NOT EXISTS ledger (
    n        integer NOT NULL,
    run_id   uuid NOT NULL,
    attempt  integer NOT NULL,
    worker   text NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
)"""


@dataclass
class WorkerProcess:
    """tests/ledger_worker.py in its own process."""

    url: str
    token: str
    ledger_url: str
    name: str
    log_path: Path
    slots: int = 100
    sleep: float = 0.0
    env_extra: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = clean_env(
            TASKYARD_URL=self.url,
            TASKYARD_TOKEN=self.token,
            LEDGER_DATABASE_URL=self.ledger_url,
            WORKER_NAME=self.name,
            SLOTS=str(self.slots),
            LEDGER_SLEEP=str(self.sleep),
            **self.env_extra,
        )
        log = self.log_path.open("ab")
        script = Path(__file__).with_name("ledger_worker.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, *, every: float = 0.1
) -> None:
    """Until `check()` holds (`every` seconds apart), or fail after `timeout` naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass  # the database may be restarting
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextlib.asynccontextmanager
async def connected(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own to `db_url`, closed after the block."""
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


async def scalar(db_url: str, query: str, *args: object) -> int:
    async with connected(db_url) as conn:
        return int(await conn.fetchval(query, *args))


async def execute(db_url: str, statement: str, *args: object) -> None:
    async with connected(db_url) as conn:
        await conn.execute(statement, *args)


@dataclass
class Inbox:
    """What the SMTP server received."""

    messages: list[email.message.Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 Message accepted for delivery"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str, token: str | None = None) -> Samples:
    """An engine's /metrics, sample by sample: (name, labels) -> value."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{url}/metrics", headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
