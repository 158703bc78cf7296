"""Helpers shared by the tests: database URLs, free ports, engine processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ADMIN_URL = os.environ.get("TASKYARD_TEST_DATABASE_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(name: str) -> str:
    """ADMIN_URL pointed at another database on the same server."""
    parts = urlsplit(ADMIN_URL)
    return urlunsplit(parts._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def taskyard_env(**overrides: str | None) -> dict[str, str]:
    """The environment for a `taskyard` subprocess, without any TASKYARD_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in overrides.items():
        if value is not None:
            env[key] = value
    return env


def taskyard(*args: str, env: Mapping[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the `taskyard` CLI to completion."""
    return subprocess.run([sys.executable, "-m", "taskyard", *args], capture_output=True,
                          text=True, env=dict(env or taskyard_env()), timeout=timeout, check=False)


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class EngineProcess:
    """A `taskyard engine` subprocess; its output goes to a log file the test can read."""

    args: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 30.0) -> EngineProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskyard", "engine", "--port", str(self.port), *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=dict(self.env))
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"engine exited with {self.process.returncode}:\n{self.log}")
            if http_status(f"{self.url}/healthz") == 200:
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"engine did not serve /healthz within {wait}s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = taskyard_env(TASKYARD_URL=self.url, TASKYARD_TOKEN=self.token,
                           LEDGER_DATABASE_URL=self.ledger_url, WORKER_NAME=self.name,
                           SLOTS=str(self.slots), LEDGER_SLEEP=str(self.sleep))
        log = self.log_path.open("ab")
        script = Path(__file__).with_name("ledger_worker.py")
        self.process = subprocess.Popen([sys.executable, str(script)], stdout=log,
                                        stderr=subprocess.STDOUT, env=env)
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


def restart_local_postgres() -> None:
    """Restart the machine's PostgreSQL cluster (the crash tests' outage)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart",
                    "-m", "fast"], check=True, capture_output=True, timeout=60)


def local_postgres_restartable() -> bool:
    return (os.path.isdir("/etc/postgresql") and "TASKYARD_TEST_DATABASE_URL" not in os.environ
            and os.geteuid() == 0)
