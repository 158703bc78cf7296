"""Workflow conditions: skip_if, cancel_if and wait_for (sleeps, events, or/and), with the rules
docs/workflows.md states: how skips propagate, and which events count for a waiting step."""

from __future__ import annotations

import asyncio
import time
import uuid

from pydantic import BaseModel

from taskyard_sdk import And, Context, Event, Or, RunStatus, Sleep, TaskFailed, Taskyard


class Order(BaseModel):
    order_id: int
    amount: int


async def _step_statuses(ty: Taskyard, run_id: uuid.UUID) -> dict[str, RunStatus]:
    view = await ty.runs.aio_get(run_id)
    return {step.step: step.status for step in view.steps if step.step}


async def _until_step(ty: Taskyard, run_id: uuid.UUID, step: str, status: RunStatus) -> None:
    for _ in range(300):
        if (await _step_statuses(ty, run_id)).get(step) is status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"step {step!r} never became {status}")


async def test_skips_propagate_only_down_branches_where_every_parent_was_skipped(
    ty: Taskyard,
) -> None:
    wf = ty.workflow("branches", input=Order)
    seen: dict[str, bool] = {}

    @wf.task()
    async def check(order: Order) -> dict[str, bool]:
        return {"big": order.amount > 100}

    @wf.task(parents=[check], skip_if="!parents.check.big")
    async def review(order: Order) -> str:
        return "reviewed"

    @wf.task(parents=[check], skip_if="parents.check.big")
    async def approve(order: Order) -> str:
        return "approved"

    @wf.task(parents=[review])
    async def after_review(order: Order) -> str:
        return "after"

    @wf.task(parents=[review, approve])
    async def ship(order: Order, ctx: Context) -> str:
        seen["review"] = ctx.was_skipped(review)
        seen["approve"] = ctx.was_skipped(approve)
        decided = approve if ctx.was_skipped(review) else review
        return f"shipped after {ctx.parent_output(decided)}"

    async with ty.worker("branches", workflows=[wf]):
        small = await wf.aio_run(Order(order_id=1, amount=5), timeout=30)
        assert seen == {"review": True, "approve": False}
        big = await wf.aio_run(Order(order_id=2, amount=500), timeout=30)
    assert small == {
        "check": {"big": False},
        "review": None,
        "approve": "approved",
        "after_review": None,
        "ship": "shipped after approved",
    }
    assert big["ship"] == "shipped after reviewed"
    assert big["approve"] is None
    runs = (await ty.runs.aio_list(task=["branches"])).runs
    statuses = await _step_statuses(ty, runs[-1].run_id)  # the small order (oldest)
    assert statuses["review"] is RunStatus.SKIPPED
    assert statuses["after_review"] is RunStatus.SKIPPED  # its only parent was skipped
    assert statuses["ship"] is RunStatus.SUCCEEDED


async def test_cancel_if_cancels_the_step_its_descendants_and_the_run(ty: Taskyard) -> None:
    wf = ty.workflow("guarded", input=Order)

    @wf.task()
    async def fraud_score(order: Order) -> int:
        return 99 if order.amount > 1000 else 1

    @wf.task(parents=[fraud_score], cancel_if="parents.fraud_score > 90")
    async def charge(order: Order) -> str:
        return "charged"

    @wf.task(parents=[charge])
    async def receipt(order: Order) -> str:
        return "sent"

    async with ty.worker("guarded", workflows=[wf]):
        assert (await wf.aio_run(Order(order_id=1, amount=10), timeout=30))["receipt"] == "sent"
        try:
            await wf.aio_run(Order(order_id=2, amount=5000), timeout=30)
        except TaskFailed as failure:
            cancelled = failure
    assert cancelled.status is RunStatus.CANCELLED
    assert "cancel_if held: parents.fraud_score > 90" in cancelled.error.message
    statuses = await _step_statuses(ty, cancelled.run_id)
    assert statuses == {
        "fraud_score": RunStatus.SUCCEEDED,
        "charge": RunStatus.CANCELLED,
        "receipt": RunStatus.CANCELLED,
    }


async def test_a_condition_that_cannot_be_evaluated_fails_the_step(ty: Taskyard) -> None:
    wf = ty.workflow("typo")

    @wf.task(skip_if="input.missing_field == 1")
    async def only(n: dict[str, int]) -> int:
        return 1

    async with ty.worker("typo", workflows=[wf]):
        try:
            await wf.aio_run({"present": 1}, timeout=30)
        except TaskFailed as failure:
            failed = failure
    assert failed.status is RunStatus.FAILED
    assert "'input.missing_field == 1' could not be evaluated" in failed.error.message
    [step] = (await ty.runs.aio_get(failed.run_id)).steps
    view = await ty.runs.aio_get(step.run_id)
    assert view.error is not None
    assert view.error.type == "ConditionError"


async def test_a_sleep_holds_the_step_back(ty: Taskyard) -> None:
    wf = ty.workflow("nap")
    started: list[float] = []

    @wf.task(wait_for=[Sleep("1s")])
    async def later(n: int) -> int:
        started.append(time.time())
        return n

    async with ty.worker("nap", workflows=[wf]):
        triggered = time.time()  # before: the engine starts the sleep while it answers
        handle = await wf.aio_run_no_wait(1)
        await _until_step(ty, handle.run_id, "later", RunStatus.PENDING)
        view = await ty.runs.aio_get((await ty.runs.aio_get(handle.run_id)).steps[0].run_id)
        assert view.waiting_reason == "waiting for its wait_for conditions"
        assert await handle.aio_result(timeout=30) == {"later": 1}
    assert 1.0 <= started[0] - triggered < 3.0


async def test_an_event_with_a_filter_releases_only_its_own_run(ty: Taskyard) -> None:
    wf = ty.workflow("payment", input=Order)

    @wf.task(wait_for=[Event("order:paid", filter="payload.order_id == input.order_id")])
    async def fulfil(order: Order, ctx: Context) -> int:
        return order.order_id

    async with ty.worker("payment", workflows=[wf]):
        first = await wf.aio_run_no_wait(Order(order_id=1, amount=1))
        second = await wf.aio_run_no_wait(Order(order_id=2, amount=1))
        for handle in (first, second):
            await _until_step(ty, handle.run_id, "fulfil", RunStatus.PENDING)
        await ty.events.aio_push("order:paid", {"order_id": 2})
        assert await second.aio_result(timeout=30) == {"fulfil": 2}
        await ty.events.aio_push("order:shipped", {"order_id": 1})  # another key
        await ty.events.aio_push("order:paid", {"other": True})  # the filter cannot hold
        await asyncio.sleep(0.5)
        assert (await first.aio_get()).status is RunStatus.RUNNING
        await ty.events.aio_push("order:paid", {"order_id": 1})
        assert await first.aio_result(timeout=30) == {"fulfil": 1}


async def test_or_releases_on_whichever_comes_first(ty: Taskyard) -> None:
    wf = ty.workflow("either")

    @wf.task(wait_for=[Or(Sleep("30s"), Event("user:*"))])
    async def soon(n: int) -> str:
        return "released"

    @wf.task(wait_for=[Or(Sleep("0.3s"), Event("never"))])
    async def timeout(n: int) -> str:
        return "slept"

    async with ty.worker("either", workflows=[wf]):
        handle = await wf.aio_run_no_wait(1)
        await _until_step(ty, handle.run_id, "soon", RunStatus.PENDING)
        begun = time.time()
        await ty.events.aio_push("user:verified", {"id": 1})  # matches the "user:*" prefix
        assert await handle.aio_result(timeout=20) == {"soon": "released", "timeout": "slept"}
    assert time.time() - begun < 10


async def test_and_waits_for_every_condition(ty: Taskyard) -> None:
    wf = ty.workflow("both")

    @wf.task(wait_for=[And(Sleep("0.5s"), Event("approved"))])
    async def ship(n: int) -> str:
        return "shipped"

    async with ty.worker("both", workflows=[wf]):
        handle = await wf.aio_run_no_wait(1)
        await _until_step(ty, handle.run_id, "ship", RunStatus.PENDING)
        await asyncio.sleep(0.8)  # the sleep is over, the event has not come: still waiting
        assert (await _step_statuses(ty, handle.run_id))["ship"] is RunStatus.PENDING
        await ty.events.aio_push("approved")
        assert await handle.aio_result(timeout=20) == {"ship": "shipped"}

    held = ty.workflow("event-then-sleep")

    @held.task(wait_for=[And(Event("approved"), Sleep("1s"))])
    async def later(n: int) -> float:
        return time.time()

    async with ty.worker("held", workflows=[held]):
        handle = await held.aio_run_no_wait(1)
        begun = time.time()
        await ty.events.aio_push("approved")  # the event alone does not release it
        outputs = await handle.aio_result(timeout=20)
    assert outputs["later"] - begun >= 0.9


async def test_events_since_the_run_started_count_even_before_the_step_waits(ty: Taskyard) -> None:
    wf = ty.workflow("early-bird")

    @wf.task()
    async def announce(n: int) -> int:
        if n == 1:  # the event arrives while the parent runs, before its child waits for it
            await ty.events.aio_push("ready", {"n": n})
        return n

    @wf.task(parents=[announce], wait_for=[Event("ready", filter="payload.n == input")])
    async def proceed(n: int) -> str:
        return "proceeded"

    await ty.events.aio_push("ready", {"n": 2})  # before the run started: does not count
    async with ty.worker("early-bird", workflows=[wf]):
        assert await wf.aio_run(1, timeout=30) == {"announce": 1, "proceed": "proceeded"}
        late = await wf.aio_run_no_wait(2)
        await _until_step(ty, late.run_id, "proceed", RunStatus.PENDING)
        await ty.runs.aio_cancel(late.run_id)
    statuses = await _step_statuses(ty, late.run_id)
    assert statuses["proceed"] is RunStatus.CANCELLED
