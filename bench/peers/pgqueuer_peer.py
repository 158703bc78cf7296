"""PgQueuer (asyncpg): jobs in a Postgres table, claimed with FOR UPDATE SKIP LOCKED, woken by
LISTEN/NOTIFY. Its defaults: batch_size 10, unlimited concurrency per worker."""

from __future__ import annotations

import asyncio
import sys
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries

from bench.peers.base import Peer, python


class PgQueuerPeer(Peer):
    name = "pgqueuer"

    async def setup(self) -> None:
        self.conn = await asyncpg.connect(self.db_url)
        self.queries = Queries(AsyncpgDriver(self.conn))
        await self.queries.install()
        self.done_before = 0

    def worker_command(self, mode: str) -> list[str]:
        return python("bench.peers.pgqueuer_peer", self.db_url, mode)

    async def enqueue(self, numbers: range) -> None:
        for start in range(numbers.start, numbers.stop, 1000):
            chunk = range(start, min(start + 1000, numbers.stop))
            await self.queries.enqueue(
                ["noop"] * len(chunk), [str(n).encode() for n in chunk], [0] * len(chunk)
            )

    async def enqueue_one(self, n: int) -> None:
        await self.queries.enqueue("noop", str(n).encode(), 0)

    async def completed(self) -> int:
        # Finished jobs leave the queue table and are logged as successful.
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
            )
        )

    async def close(self) -> None:
        await self.conn.close()


async def run_worker(db_url: str, mode: str) -> None:
    conn = await asyncpg.connect(db_url)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        if mode == "latency":
            print(
                f"started {job.payload.decode() if job.payload else ''} {time.time()}", flush=True
            )

    await pgq.run()


if __name__ == "__main__":
    asyncio.run(run_worker(sys.argv[1], sys.argv[2]))
