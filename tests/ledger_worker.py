"""A worker process for the crash tests: each run of `record` (and each step of the `ledger-dag`
workflow) writes a ledger row, so the test can count, after killing things, which work was done
and how often.

Environment: TASKYARD_URL, TASKYARD_TOKEN, LEDGER_DATABASE_URL, WORKER_NAME, SLOTS, LEDGER_SLEEP.
"""

from __future__ import annotations

import asyncio
import os

import asyncpg

from taskyard_sdk import Context, Sleep, Taskyard

ty = Taskyard()
NAME = os.environ.get("WORKER_NAME", "ledger")
SLEEP = float(os.environ.get("LEDGER_SLEEP", "0"))
pool: asyncpg.Pool | None = None


async def write_ledger(n: int, ctx: Context) -> int:
    assert pool is not None
    await pool.execute("INSERT INTO ledger (n, run_id, attempt, worker) VALUES ($1, $2, $3, $4)",
                       n, ctx.run_id, ctx.attempt, NAME)
    if SLEEP:
        await asyncio.sleep(SLEEP)
    return n


@ty.task(retries=5, execution_timeout="60s", schedule_timeout="10m")
async def record(n: int, ctx: Context) -> int:
    return await write_ledger(n, ctx)


# A diamond whose join also sleeps (durably): ledger numbers are n * 10 + step.
dag = ty.workflow("ledger-dag", input=int)
STEP_OPTIONS = {"retries": 5, "schedule_timeout": "10m"}


@dag.task(**STEP_OPTIONS)
async def first(n: int, ctx: Context) -> int:
    return await write_ledger(n * 10 + 1, ctx)


@dag.task(parents=[first], **STEP_OPTIONS)
async def left(n: int, ctx: Context) -> int:
    return await write_ledger(n * 10 + 2, ctx) + ctx.parent_output(first)


@dag.task(parents=[first], **STEP_OPTIONS)
async def right(n: int, ctx: Context) -> int:
    return await write_ledger(n * 10 + 3, ctx) + ctx.parent_output(first)


@dag.task(parents=[left, right], wait_for=[Sleep("0.3s")], **STEP_OPTIONS)
async def join(n: int, ctx: Context) -> int:
    await write_ledger(n * 10 + 4, ctx)
    return ctx.parent_output(left) + ctx.parent_output(right)


@ty.task(schedule_timeout="10m")
async def noop(n: int) -> int:
    return n


async def main() -> None:
    global pool
    pool = await asyncpg.create_pool(os.environ["LEDGER_DATABASE_URL"], min_size=1, max_size=20)
    worker = ty.worker(NAME, tasks=[record, noop], workflows=[dag],
                       slots=int(os.environ.get("SLOTS", "100")))
    print(f"worker {NAME} starting", flush=True)
    await worker.aio_start(handle_signals=True)


if __name__ == "__main__":
    asyncio.run(main())
