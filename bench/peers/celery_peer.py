"""Celery with the Redis broker: the prefork pool, one child per core, and the flags Celery
recommends for throughput (no gossip, mingle or heartbeat; results ignored). Finished jobs are
counted in a Redis counter."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import redis
from celery import Celery

from bench.peers.base import Peer

REDIS_URL = os.environ.get("TASKYARD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
MODE = os.environ.get("PEER_MODE", "throughput")

app = Celery("taskyard_bench", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    worker_redirect_stdouts=False,
    broker_connection_retry_on_startup=True,
)
_counter = redis.Redis.from_url(REDIS_URL)


@app.task(name="noop")
def noop(n: int) -> None:
    if MODE == "latency":
        print(f"started {n} {time.time()}", flush=True)
    else:
        _counter.incr("bench:done")


class CeleryPeer(Peer):
    name = "celery"

    async def setup(self) -> None:
        _counter.flushdb()

    def worker_command(self, mode: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.peers.celery_peer",
            "worker",
            "--loglevel=warning",
            "--pool=prefork",
            f"--concurrency={os.cpu_count()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]

    async def enqueue(self, numbers: range) -> None:
        def send() -> None:
            for n in numbers:
                noop.apply_async((n,))

        await asyncio.to_thread(send)

    async def enqueue_one(self, n: int) -> None:
        noop.apply_async((n,))  # blocking, as a web request handler would call it

    async def completed(self) -> int:
        return int(_counter.get("bench:done") or 0)

    async def close(self) -> None:
        _counter.flushdb()
