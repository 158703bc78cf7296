"""The chaos run's worker process and its workload: tasks that fail their first attempts on
purpose, a DAG workflow, a workflow that events start, durable tasks that sleep and wait for
events, a cron target, a task behind a concurrency key and one behind a rate limit.

Every attempt writes a ledger line when it starts and when it ends (`ev`: "start", "end"), and the
durable tasks note when they woke ("woke") and each side effect they ran ("effect"). The ledger
is an append-only file of this process's own (CHAOS_LEDGER), written with one `write` per line:
a kill -9 loses nothing written, and a Postgres outage cannot stop the bookkeeping. bench/chaos.py
reads the ledgers after the run and judges what the engine did.

Environment: TASKYARD_URL, TASKYARD_TOKEN, WORKER_NAME, SLOTS, CHAOS_LEDGER.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from taskyard_sdk import (
    Concurrency,
    Context,
    DurableContext,
    NonRetryableError,
    RateLimit,
    Sleep,
    Taskyard,
)

ty = Taskyard()
PROCESS = os.environ.get("WORKER_NAME", "chaos")
RATE_LIMIT = "chaos-api"
RATE_LIMIT_PER_SECOND = 3
KEY_MAX_RUNS = 2
GO_EVENT = "chaos:go"
ORDER_EVENT = "chaos:order"
# Chaos delays runs (outages, lost workers): nothing may time out waiting for a start.
PATIENT = {"execution_timeout": "30s", "schedule_timeout": "30m"}

_ledger: int | None = None


class Job(BaseModel):
    """Every task's input: `n` names the job; the rest says how it should behave."""

    n: int
    fail: int = 0  # attempts that fail on purpose before one succeeds
    ms: int = 0  # how long an attempt works
    key: str = ""  # the concurrency key
    seconds: float = 0.0  # a durable sleep


class DeliberateFailure(Exception):
    """An attempt failing as its job says it should."""


def note(**fields: Any) -> None:
    """Append one line to this process's ledger."""
    if _ledger is None:
        return  # imported by the driver for the definitions only
    fields.setdefault("t", time.time())
    fields["proc"] = PROCESS
    os.write(_ledger, (json.dumps(fields) + "\n").encode())


@contextlib.contextmanager
def attempt(ctx: Context, **fields: Any) -> Iterator[None]:
    """Ledger lines around one execution: its start, and its end with what it raised."""
    ids = {"run": str(ctx.run_id), "attempt": ctx.attempt, "task": ctx.task}
    note(ev="start", **ids, **fields)
    outcome = "ok"
    try:
        yield
    except BaseException as exc:  # also the durable suspension and cancellation
        outcome = type(exc).__name__
        raise
    finally:
        note(ev="end", **ids, **fields, outcome=outcome)


async def work(job: Job) -> None:
    if job.ms:
        await asyncio.sleep(job.ms / 1000)


@ty.task(retries=6, **PATIENT)
async def flaky(job: Job, ctx: Context) -> int:
    with attempt(ctx):
        await work(job)
        if ctx.attempt <= job.fail:
            raise DeliberateFailure(f"attempt {ctx.attempt}: {job.fail} planned failures")
        return job.n


@ty.task(retries=2, **PATIENT)
async def doomed(job: Job, ctx: Context) -> int:
    with attempt(ctx):
        await work(job)
        raise DeliberateFailure(f"attempt {ctx.attempt}: this job always fails")


@ty.task(retries=3, **PATIENT)
async def fatal(job: Job, ctx: Context) -> int:
    with attempt(ctx):
        await work(job)
        raise NonRetryableError("this job fails at once, whatever retries remain")


@ty.task(
    retries=6, concurrency=Concurrency(expression="input.key", max_runs=KEY_MAX_RUNS), **PATIENT
)
async def keyed(job: Job, ctx: Context) -> int:
    with attempt(ctx, key=job.key):
        await work(job)
        return job.n


@ty.task(retries=6, rate_limits=[RateLimit(key=RATE_LIMIT)], **PATIENT)
async def limited(job: Job, ctx: Context) -> int:
    with attempt(ctx):
        await work(job)
        return job.n


@ty.task(retries=5, **PATIENT)
async def tick(_: Any, ctx: Context) -> str:
    """The crons' task: its metadata names the cron and the tick."""
    with attempt(ctx, cron=ctx.metadata.get("cron"), tick=ctx.metadata.get("tick")):
        return ctx.metadata.get("tick", "")


# A diamond: b fails its first attempt on purpose, c waits a second first; d sums them up.
dag = ty.workflow("chaos-dag", input=Job)


@dag.task(retries=4, **PATIENT)
async def a(job: Job, ctx: Context) -> int:
    with attempt(ctx, workflow=str(ctx.workflow_run_id)):
        await work(job)
        return job.n


@dag.task(parents=[a], retries=4, **PATIENT)
async def b(job: Job, ctx: Context) -> int:
    with attempt(ctx, workflow=str(ctx.workflow_run_id)):
        await work(job)
        if ctx.attempt == 1:
            raise DeliberateFailure("step b fails its first attempt")
        return ctx.parent_output(a) + 1


@dag.task(parents=[a], wait_for=[Sleep("1s")], retries=4, **PATIENT)
async def c(job: Job, ctx: Context) -> int:
    with attempt(ctx, workflow=str(ctx.workflow_run_id)):
        await work(job)
        return ctx.parent_output(a) * 2


@dag.task(parents=[b, c], retries=4, **PATIENT)
async def d(job: Job, ctx: Context) -> int:
    with attempt(ctx, workflow=str(ctx.workflow_run_id)):
        return ctx.parent_output(b) + ctx.parent_output(c)


def dag_outputs(n: int) -> dict[str, int]:
    """What a chaos-dag run of job n must end with."""
    return {"a": n, "b": n + 1, "c": 2 * n, "d": 3 * n + 1}


order = ty.workflow("chaos-order", input=Job, on_events=[ORDER_EVENT])


@order.task(retries=4, **PATIENT)
async def ship(job: Job, ctx: Context) -> int:
    with attempt(ctx, workflow=str(ctx.workflow_run_id)):
        return job.n


def effect(run_id: str) -> bool:
    """A side effect (an email, a charge): memoised, so it runs once per run."""
    note(ev="effect", run=run_id)
    return True


@ty.durable_task(retries=4, **PATIENT)
async def nap(job: Job, ctx: DurableContext) -> int:
    with attempt(ctx):
        begun = await ctx.memo("begun", time.time)
        await ctx.sleep(job.seconds)
        note(ev="woke", kind="sleep", run=str(ctx.run_id), begun=begun, seconds=job.seconds)
        await ctx.memo("effect", effect, str(ctx.run_id))
        return job.n


@ty.durable_task(retries=4, **PATIENT)
async def await_go(job: Job, ctx: DurableContext) -> str:
    with attempt(ctx, n=job.n):
        await ctx.memo("begun", time.time)
        payload = await ctx.wait_for_event(GO_EVENT, filter="payload.n == input.n")
        note(ev="woke", kind="event", run=str(ctx.run_id), token=payload["token"])
        await ctx.memo("effect", effect, str(ctx.run_id))
        return str(payload["token"])


TASKS = [flaky, doomed, fatal, keyed, limited, tick, nap, await_go]
WORKFLOWS = [dag, order]


async def main() -> None:
    global _ledger
    _ledger = os.open(os.environ["CHAOS_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    worker = ty.worker(
        PROCESS, tasks=TASKS, workflows=WORKFLOWS, slots=int(os.environ.get("SLOTS", "10"))
    )
    await worker.aio_start(handle_signals=True)


if __name__ == "__main__":
    asyncio.run(main())
