"""A worker process for the crash tests: each run of `record` (and each step of the `ledger-dag`
workflow) writes a ledger row, so the test can count, after killing things, which work was done
and how often.

Environment: TASKYARD_URL, TASKYARD_TOKEN, LEDGER_DATABASE_URL, WORKER_NAME, SLOTS, LEDGER_SLEEP.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg

from taskyard_sdk import Context, DurableContext, Sleep, Taskyard

ty = Taskyard()
NAME = os.environ.get("WORKER_NAME", "ledger")
SLEEP = float(os.environ.get("LEDGER_SLEEP", "0"))
pool: asyncpg.Pool | None = None


async def write_ledger(n: int, ctx: Context) -> int:
    assert pool is not None
    await pool.execute(
        "INSERT INTO ledger (n, run_id, attempt, worker) VALUES ($1, $2, $3, $4)",
        n,
        ctx.run_id,
        ctx.attempt,
        NAME,
    )
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


@ty.durable_task(retries=5, schedule_timeout="10m")
async def nap(n: int, ctx: DurableContext) -> float:
    """Sleeps durably for LEDGER_NAP seconds; the ledger row says it finished (once)."""
    begun = await ctx.memo("begun", time.time)
    await ctx.sleep(float(os.environ.get("LEDGER_NAP", "3")))
    await write_ledger(n, ctx)
    return time.time() - begun


@ty.durable_task(retries=5, schedule_timeout="10m")
async def nap_until(job: dict[str, float], ctx: DurableContext) -> None:
    """Sleeps durably until job["wake_at"] (so many runs can sleep at once), then writes the
    ledger row job["n"]."""
    begun = await ctx.memo("begun", time.time)
    await ctx.sleep(max(0.001, job["wake_at"] - begun))
    await write_ledger(int(job["n"]), ctx)


@ty.durable_task(retries=5, schedule_timeout="10m")
async def await_upgrade(n: int, ctx: DurableContext) -> str:
    """Waits for the user's upgrade event, then writes the ledger."""
    upgrade = await ctx.wait_for_event("user:upgraded", filter="payload.user_id == input")
    await write_ledger(n, ctx)
    return str(upgrade["plan"])


async def main() -> None:
    global pool
    pool = await asyncpg.create_pool(os.environ["LEDGER_DATABASE_URL"], min_size=1, max_size=20)
    worker = ty.worker(
        NAME,
        tasks=[record, noop, nap, nap_until, await_upgrade],
        workflows=[dag],
        slots=int(os.environ.get("SLOTS", "100")),
    )
    print(f"worker {NAME} starting", flush=True)
    await worker.aio_start(handle_signals=True)


if __name__ == "__main__":
    asyncio.run(main())
