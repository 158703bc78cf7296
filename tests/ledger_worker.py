"""A worker process for the crash tests: each run of `record` writes a ledger row, so the test can
count, after killing things, which work was done and how often.

Environment: TASKYARD_URL, TASKYARD_TOKEN, LEDGER_DATABASE_URL, WORKER_NAME, SLOTS, LEDGER_SLEEP.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg

from taskyard_sdk import Context, Taskyard

ty = Taskyard()
NAME = os.environ.get("WORKER_NAME", "ledger")
SLEEP = float(os.environ.get("LEDGER_SLEEP", "0"))
pool: asyncpg.Pool | None = None


@ty.task(retries=5, execution_timeout="60s", schedule_timeout="10m")
async def record(n: int, ctx: Context) -> int:
    assert pool is not None
    await pool.execute("INSERT INTO ledger (n, run_id, attempt, worker) VALUES ($1, $2, $3, $4)",
                       n, ctx.run_id, ctx.attempt, NAME)
    if SLEEP:
        await asyncio.sleep(SLEEP)
    return n


@ty.task(schedule_timeout="10m")
async def noop(n: int) -> int:
    return n


async def main() -> None:
    global pool
    pool = await asyncpg.create_pool(os.environ["LEDGER_DATABASE_URL"], min_size=1, max_size=20)
    worker = ty.worker(NAME, tasks=[record, noop], slots=int(os.environ.get("SLOTS", "100")))
    print(f"worker {NAME} starting", flush=True)
    await worker.aio_start(handle_signals=True)


if __name__ == "__main__":
    asyncio.run(main())
