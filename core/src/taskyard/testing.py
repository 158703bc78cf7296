"""Run a real engine in a subprocess, for your own integration tests and benchmarks.

from taskyard.testing import EngineProcess, clean_env

engine = EngineProcess(["--database-url", url], clean_env(), Path("engine.log")).start()
...                      # engine.url, engine.log
engine.terminate()       # SIGTERM (graceful); engine.kill() is kill -9
"""

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str | None) -> dict[str, str]:
    """The environment for a `taskyard` subprocess, without any TASKYARD_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKYARD_")}
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in overrides.items():
        if value is not None:
            env[key] = value
    return env


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
        # TASKYARD_PORT in the environment is the engine's own setting; then `port` must match it.
        port = [] if "TASKYARD_PORT" in self.env else ["--port", str(self.port)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "taskyard", "engine", *port, *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(self.env),
        )
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

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid
