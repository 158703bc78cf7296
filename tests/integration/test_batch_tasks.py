"""Batch tasks against a real engine and worker: runs triggered one by one are handed to one
attempt as a list, by key, up to max_size or after max_wait; each run gets its own output (or
the one shared value); a failure fails the batch and each run is retried on its own; a run of
a batch can be cancelled alone."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import BaseModel

from taskyard_sdk import BatchContext, Concurrency, RunStatus, TaskFailed, Taskyard
from tests.support import wait_until


class Row(BaseModel):
    account: str
    amount: int


async def test_runs_are_gathered_by_key_and_each_gets_its_own_output(ty: Taskyard) -> None:
    batches: list[list[Row]] = []

    @ty.batch_task(max_size=4, max_wait="300ms", key="input.account")
    async def insert(rows: list[Row], ctx: BatchContext) -> list[int]:
        batches.append(rows)
        assert len(ctx.run_ids) == len(rows)
        ctx.log(f"inserting {len(rows)} rows")
        return [row.amount * 10 for row in rows]

    async with ty.worker("batcher", tasks=[insert]):
        acme = [await insert.aio_run_no_wait(Row(account="acme", amount=n)) for n in range(6)]
        globex = [await insert.aio_run_no_wait(Row(account="globex", amount=n)) for n in (7, 8)]
        outputs = [await h.aio_result(timeout=10) for h in [*acme, *globex]]
    assert outputs == [0, 10, 20, 30, 40, 50, 70, 80]
    by_account = sorted((b[0].account, [r.amount for r in b]) for b in batches)
    # acme: a full batch of four at once, the two left after max_wait; globex on its own.
    assert by_account == [("acme", [0, 1, 2, 3]), ("acme", [4, 5]), ("globex", [7, 8])]
    view = await acme[0].aio_get()
    assert view.status is RunStatus.SUCCEEDED
    logs = await ty.runs.aio_logs(acme[5].run_id)
    assert [line.message for line in logs.lines] == ["inserting 2 rows"]  # every run's log


async def test_one_returned_value_is_every_runs_output(ty: Taskyard) -> None:
    @ty.batch_task(max_size=10, max_wait="200ms")
    async def total(amounts: list[int]) -> int:
        return sum(amounts)

    async with ty.worker("batcher", tasks=[total]):
        handles = [await total.aio_run_no_wait(n) for n in (1, 2, 3)]
        assert [await h.aio_result(timeout=10) for h in handles] == [6, 6, 6]


async def test_a_batch_waits_at_most_max_wait_and_takes_one_slot(ty: Taskyard) -> None:
    began: list[float] = []

    @ty.batch_task(max_size=100, max_wait="400ms")
    async def slow(values: list[int]) -> list[int]:
        began.append(time.monotonic())
        await asyncio.sleep(0.2)
        return values

    @ty.task(name="other")
    async def other(n: int) -> int:
        return n

    async with ty.worker("batcher", tasks=[slow, other], slots=2):
        sent = time.monotonic()
        handles = [await slow.aio_run_no_wait(n) for n in range(5)]
        assert await other.aio_run(1) == 1  # the batch waiting leaves the slots free
        assert [await h.aio_result(timeout=10) for h in handles] == list(range(5))
    [start] = began  # one batch, one attempt
    assert 0.35 <= start - sent < 2.0


async def test_a_failure_fails_the_batch_and_each_run_retries_on_its_own(ty: Taskyard) -> None:
    calls: list[list[int]] = []

    @ty.batch_task(max_size=3, max_wait="200ms", retries=1)
    async def flaky(values: list[int]) -> list[int]:
        calls.append(values)
        if len(calls) == 1:
            raise ConnectionError("the database went away")
        return [v + 1 for v in values]

    @ty.batch_task(max_size=3, max_wait="200ms")
    async def miscounts(values: list[int]) -> list[int]:
        return values[:1]

    async with ty.worker("batcher", tasks=[flaky, miscounts]):
        handles = [await flaky.aio_run_no_wait(n) for n in range(3)]
        assert [await h.aio_result(timeout=10) for h in handles] == [1, 2, 3]
        for handle in handles:  # each run shows the batch's failed attempt, then its own retry
            view = await handle.aio_get()
            assert [a.error.type if a.error else None for a in view.attempts] == [
                "ConnectionError",
                None,
            ]
        wrong = [await miscounts.aio_run_no_wait(n) for n in range(2)]
        for handle in wrong:
            with pytest.raises(TaskFailed) as failed:
                await handle.aio_result(timeout=10)
            assert failed.value.error.type == "BatchOutputMismatch"
            assert "returned 1 outputs for a batch of 2 runs" in failed.value.error.message


async def test_a_run_of_a_batch_is_cancelled_alone(ty: Taskyard) -> None:
    go = asyncio.Event()

    @ty.batch_task(max_size=2, max_wait="5s")
    async def held(values: list[int]) -> list[int]:
        await go.wait()
        return values

    async with ty.worker("batcher", tasks=[held]):
        kept, dropped = [await held.aio_run_no_wait(n) for n in (1, 2)]
        await wait_until(lambda: _running(kept), 5, "the batch to start")
        assert await dropped.aio_cancel() is RunStatus.CANCELLED
        go.set()
        assert await kept.aio_result(timeout=10) == 1
        assert (await dropped.aio_get()).status is RunStatus.CANCELLED


def test_a_batch_task_needs_a_list_input_and_no_per_run_flow_control(ty: Taskyard) -> None:
    with pytest.raises(TypeError, match="takes a list of inputs"):

        @ty.batch_task()
        async def single(value: int) -> int:
            return value

    with pytest.raises(TypeError, match="cannot also have concurrency"):
        ty.batch_task(concurrency=Concurrency(expression="input.a"))


async def _running(handle: object) -> bool:
    return (await handle.aio_get()).status is RunStatus.RUNNING  # type: ignore[attr-defined]
