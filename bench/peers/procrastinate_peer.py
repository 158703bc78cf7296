"""Procrastinate (psycopg 3): jobs in Postgres, LISTEN/NOTIFY, async worker with
`concurrency` jobs at once (its documented way to run async tasks in parallel)."""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
import procrastinate

from bench.peers.base import Peer, python

CONCURRENCY = 50


def make_app(db_url: str, mode: str = "throughput") -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=db_url))

    @app.task(name="noop")
    async def noop(n: int) -> None:
        if mode == "latency":
            print(f"started {n} {time.time()}", flush=True)

    return app


class ProcrastinatePeer(Peer):
    name = "procrastinate"

    async def setup(self) -> None:
        self.app = make_app(self.db_url)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()
        self.conn = await asyncpg.connect(self.db_url)

    def worker_command(self, mode: str) -> list[str]:
        return python("bench.peers.procrastinate_peer", self.db_url, mode)

    async def enqueue(self, numbers: range) -> None:
        task = self.app.tasks["noop"]
        for start in range(numbers.start, numbers.stop, 1000):
            await task.batch_defer_async(
                *({"n": n} for n in range(start, min(start + 1000, numbers.stop)))
            )

    async def enqueue_one(self, n: int) -> None:
        await self.app.tasks["noop"].defer_async(n=n)

    async def completed(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
            )
        )

    async def close(self) -> None:
        await self.conn.close()
        await self.app.close_async()


async def run_worker(db_url: str, mode: str) -> None:
    app = make_app(db_url, mode)
    async with app.open_async():
        await app.run_worker_async(concurrency=CONCURRENCY)


if __name__ == "__main__":
    asyncio.run(run_worker(sys.argv[1], sys.argv[2]))
