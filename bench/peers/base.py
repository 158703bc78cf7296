"""What a peer offers the comparison: set up its store, start its workers, enqueue no-op jobs,
and count the finished ones. Latency workers print `started <n> <unix time>` per job."""

from __future__ import annotations

import abc
import asyncio
import sys
from pathlib import Path

from taskyard.testing import clean_env


class Peer(abc.ABC):
    name: str

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url

    @abc.abstractmethod
    async def setup(self) -> None: ...

    @abc.abstractmethod
    def worker_command(self, mode: str) -> list[str]:
        """The command line of one worker process; `mode` is "throughput" or "latency"."""

    @abc.abstractmethod
    async def enqueue(self, numbers: range) -> None:
        """Jobs for `numbers`, in the peer's batch API (1,000 to a call) where it has one."""

    @abc.abstractmethod
    async def enqueue_one(self, n: int) -> None:
        """One job, in a call of its own: what an application does once per request."""

    @abc.abstractmethod
    async def completed(self) -> int: ...

    async def close(self) -> None:
        return None

    async def start_workers(
        self, count: int, mode: str, logs: Path
    ) -> list[asyncio.subprocess.Process]:
        processes = []
        for i in range(count):
            log = (logs / f"{self.name}-{mode}-{i}.log").open("ab")
            processes.append(
                await asyncio.create_subprocess_exec(
                    *self.worker_command(mode),
                    env=clean_env(PYTHONPATH=str(Path.cwd()), PEER_MODE=mode),
                    stdout=asyncio.subprocess.PIPE if mode == "latency" else log,
                    stderr=log,
                )
            )
        return processes


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
