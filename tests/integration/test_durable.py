"""Durable tasks end to end with real workers: memoised steps across retries, sleeps that free
the slot, events (filters, timeouts, Or), children, replay checks, cancellation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from taskyard_sdk import (
    DurableContext,
    Event,
    Or,
    RunStatus,
    Sleep,
    TaskFailed,
    Taskyard,
    WaitTimeout,
)


class Signup(BaseModel):
    user_id: int


async def _until_status(ty: Taskyard, run_id: Any, status: RunStatus, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (await ty.runs.aio_get(run_id)).status is not status:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} never became {status}")
        await asyncio.sleep(0.03)


async def test_memoised_steps_run_once_across_retries(ty: Taskyard) -> None:
    charges: list[int] = []

    def charge(amount: int) -> dict[str, Any]:
        charges.append(amount)
        return {"charge_id": f"ch_{len(charges)}", "amount": amount}

    @ty.durable_task(retries=3)
    async def checkout(amount: int, ctx: DurableContext) -> str:
        receipt = await ctx.memo("charge-card", charge, amount)
        if ctx.attempt <= 3:
            raise RuntimeError(f"the mailer is down (attempt {ctx.attempt})")
        return f"{receipt['charge_id']} for {receipt['amount']}"

    async with ty.worker("shop", tasks=[checkout]):
        handle = await checkout.aio_run_no_wait(42)
        assert await handle.aio_result(timeout=30) == "ch_1 for 42"
    assert charges == [42]  # four attempts, one charge
    [entry] = await ty.runs.aio_durable_log(handle.run_id)
    assert (entry.position, entry.kind, entry.call, entry.done) == (
        0,
        "memo",
        "memo('charge-card')",
        True,
    )
    assert entry.result == {"charge_id": "ch_1", "amount": 42}
    assert entry.finished_at is not None


async def test_a_durable_sleep_frees_the_slot(ty: Taskyard) -> None:
    finished: list[str] = []

    @ty.durable_task()
    async def nap(seconds: float, ctx: DurableContext) -> float:
        begun = await ctx.memo("begun", time.time)
        await ctx.sleep(seconds)
        finished.append("nap")
        return time.time() - begun

    @ty.task()
    async def quick(n: int) -> int:
        finished.append("quick")
        return n

    async with ty.worker("one-slot", tasks=[nap, quick], slots=1):
        napping = await nap.aio_run_no_wait(1.0)
        await _until_status(ty, napping.run_id, RunStatus.PENDING)
        assert await quick.aio_run(7, timeout=5) == 7  # the sleeper holds no slot
        slept = await napping.aio_result(timeout=15)
    assert finished == ["quick", "nap"]
    assert 1.0 <= slept < 3.0
    history = await ty.runs.aio_get(napping.run_id)
    assert history.status is RunStatus.SUCCEEDED


async def test_events_wake_durable_waits_that_match(ty: Taskyard) -> None:
    @ty.durable_task()
    async def onboarding(user: Signup, ctx: DurableContext) -> str:
        upgrade = await ctx.wait_for_event(
            "user:upgraded", filter="payload.user_id == input.user_id"
        )
        return f"upgraded to {upgrade['plan']}"

    @ty.durable_task()
    async def impatient(user: Signup, ctx: DurableContext) -> str:
        try:
            await ctx.wait_for_event("never", timeout="0.5s")
        except WaitTimeout:
            return "gave up"
        return "impossible"

    @ty.durable_task()
    async def either(user: Signup, ctx: DurableContext) -> str:
        outcome = await ctx.wait_for(Or(Sleep("30s"), Event("user:*")))
        return f"woken by {sorted(outcome.events)} slept={outcome.slept}"

    async with ty.worker("events", tasks=[onboarding, impatient, either]):
        mine = await onboarding.aio_run_no_wait(Signup(user_id=1))
        other = await either.aio_run_no_wait(Signup(user_id=1))
        await _until_status(ty, mine.run_id, RunStatus.PENDING)
        await _until_status(ty, other.run_id, RunStatus.PENDING)
        # A suspended run's waiting reason says what it waits for.
        reason = (await mine.aio_get()).waiting_reason or ""
        assert reason.startswith("durable wait_for_event('user:upgraded'"), reason
        assert (
            "waiting for event 'user:upgraded' matching payload.user_id == input.user_id "
            "(events pushed since " in reason
        )
        reason = (await other.aio_get()).waiting_reason or ""
        assert "sleeping until " in reason
        assert " or event 'user:*' (events pushed since " in reason
        await ty.events.aio_push("user:upgraded", {"user_id": 2, "plan": "pro"})  # not mine
        await asyncio.sleep(0.3)
        assert (await mine.aio_get()).status is RunStatus.PENDING
        assert await impatient.aio_run(Signup(user_id=1), timeout=10) == "gave up"
        await ty.events.aio_push("user:upgraded", {"user_id": 1, "plan": "team"})
        assert await mine.aio_result(timeout=10) == "upgraded to team"
        assert await other.aio_result(timeout=10) == "woken by ['user:*'] slept=False"


async def test_children_are_spawned_once_and_their_results_logged(ty: Taskyard) -> None:
    executions: list[int] = []

    @ty.task()
    async def square(n: int) -> int:
        executions.append(n)
        return n * n

    @ty.task()
    async def broken(n: int) -> int:
        raise ValueError("no")

    @ty.durable_task(retries=1)
    async def fan_out(n: int, ctx: DurableContext) -> list[Any]:
        first = await square.aio_run(n)
        rest = await square.aio_run_many([n + 1, n + 2])
        failures = await broken.aio_run_many([0], return_exceptions=True)
        if ctx.attempt == 1:
            raise RuntimeError("crash after the children")  # the retry replays them
        return [first, *rest, type(failures[0]).__name__]

    async with ty.worker("family", tasks=[square, broken, fan_out], slots=10):
        handle = await fan_out.aio_run_no_wait(2)
        assert await handle.aio_result(timeout=30) == [4, 9, 16, "TaskFailed"]
        view = await handle.aio_get()
    assert sorted(executions) == [2, 3, 4]  # each child ran once, across the retry
    assert len(view.children) == 4


async def test_a_replay_that_calls_something_else_fails_naming_both_calls(ty: Taskyard) -> None:
    @ty.durable_task(retries=1)
    async def fickle(n: int, ctx: DurableContext) -> int:
        if ctx.attempt == 1:
            await ctx.memo("first-version", lambda: 1)
            raise RuntimeError("retry me")
        await ctx.memo("second-version", lambda: 2)
        return 2

    async with ty.worker("fickle", tasks=[fickle]):
        with pytest.raises(TaskFailed) as failure:
            await fickle.aio_run(0, timeout=20)
    assert failure.value.error is not None
    assert failure.value.error.type == "NonDeterminismError"
    assert (
        "at position 0 its log has memo('first-version'), but the code now calls "
        "memo('second-version')"
    ) in failure.value.error.message


async def test_cancelling_a_waiting_durable_task(ty: Taskyard) -> None:
    @ty.durable_task()
    async def long_wait(n: int, ctx: DurableContext) -> int:
        await ctx.sleep("1h")
        return n

    async with ty.worker("waiter", tasks=[long_wait]):
        handle = await long_wait.aio_run_no_wait(1)
        await _until_status(ty, handle.run_id, RunStatus.PENDING)
        assert await ty.runs.aio_cancel(handle.run_id) is RunStatus.CANCELLED
        with pytest.raises(TaskFailed) as cancelled:
            await handle.aio_result(timeout=5)
    assert cancelled.value.status is RunStatus.CANCELLED


def test_durable_tasks_must_be_async(ty: Taskyard) -> None:
    with pytest.raises(TypeError, match="must be an async function"):

        @ty.durable_task()
        def blocking(n: int) -> int:
            return n


async def test_a_wait_that_could_never_match_fails_at_once_and_no_children_is_fine(
    ty: Taskyard,
) -> None:
    @ty.task()
    async def never_used(n: int) -> int:
        return n

    @ty.durable_task(retries=3)
    async def broken_filter(n: int, ctx: DurableContext) -> Any:
        assert await never_used.aio_run_many([]) == []  # no children: nothing to wait for
        return await ctx.wait_for_event("k", filter="payload.x ==")

    async with ty.worker("filters", tasks=[broken_filter, never_used]):
        with pytest.raises(TaskFailed) as failure:
            await broken_filter.aio_run(1, timeout=10)
    assert failure.value.error is not None
    assert failure.value.error.type == "InvalidWait"
    assert "'payload.x ==' is not valid CEL" in failure.value.error.message
    assert (await ty.runs.aio_get(failure.value.run_id)).attempt == 1  # not retried
