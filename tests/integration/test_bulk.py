"""Cancelling and replaying many runs at once, by ids or by a filter, through the SDK and REST:
the rules of one at a time hold for each run, those refused are counted with their reasons, and a
filter changes at most 10,000 runs a call and says when more matched."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest

from taskyard.engine import Engine
from taskyard_sdk import Context, Taskyard, Workflow
from taskyard_sdk.models import RunStatus
from taskyard_sdk.models.runs import MAX_BULK
from tests.conftest import TenantTokens


async def test_cancel_many_by_ids_skips_finished_and_unknown_runs(ty: Taskyard) -> None:
    @ty.task(name="parked", schedule_timeout="1h")
    async def parked(n: int) -> int:
        return n

    @ty.task(name="quick")
    async def quick(n: int) -> int:
        return n

    queued = await parked.aio_run_many_no_wait(list(range(5)))
    async with ty.worker("quick", tasks=[quick]):
        done = await quick.aio_run_no_wait(1)
        await done.aio_result()
    unknown = uuid.uuid4()
    ids = [h.run_id for h in queued] + [done.run_id, unknown, queued[0].run_id]
    result = await ty.runs.aio_cancel_many(ids)
    assert (result.matched, result.changed, result.skipped, result.more) == (7, 5, 2, False)
    reasons = {skip.run_id: skip.reason for skip in result.reasons}
    assert "already succeeded" in reasons[done.run_id]
    assert "no run" in reasons[unknown]
    for handle in queued:
        assert (await ty.runs.aio_get(handle.run_id)).status is RunStatus.CANCELLED
    assert (await ty.runs.aio_get(done.run_id)).status is RunStatus.SUCCEEDED


async def test_cancel_many_by_filter_touches_only_what_matches(ty: Taskyard) -> None:
    @ty.task(name="export", schedule_timeout="1h")
    async def export(n: int) -> int:
        return n

    @ty.task(name="other", schedule_timeout="1h")
    async def other(n: int) -> int:
        return n

    eu = await export.aio_run_many_no_wait(list(range(4)), metadata={"region": "eu"})
    us = await export.aio_run_many_no_wait(list(range(3)), metadata={"region": "us"})
    elsewhere = await other.aio_run_many_no_wait(list(range(2)), metadata={"region": "eu"})
    # The sync twin, from a thread: the engine serves from this test's event loop.
    eu_only = {"task": ["export"], "metadata": {"region": "eu"}}
    result = await asyncio.to_thread(lambda: ty.runs.cancel_many(**eu_only))
    assert (result.matched, result.changed, result.skipped) == (4, 4, 0)
    for handle in eu:
        assert (await ty.runs.aio_get(handle.run_id)).status is RunStatus.CANCELLED
    for handle in [*us, *elsewhere]:
        assert (await ty.runs.aio_get(handle.run_id)).status is RunStatus.QUEUED
    again = await ty.runs.aio_cancel_many(task=["export"], metadata={"region": "eu"})
    assert again.matched == 0  # finished runs are not matched for cancelling


async def test_replay_many_by_status_runs_the_failed_again(ty: Taskyard) -> None:
    tries: dict[int, int] = {}

    @ty.task(name="flaky")
    async def flaky(n: int, ctx: Context) -> int:
        tries[n] = tries.get(n, 0) + 1
        if tries[n] == 1 and n % 2:
            raise RuntimeError(f"first try of {n} fails")
        return n

    async with ty.worker("flaky", tasks=[flaky]):
        handles = await flaky.aio_run_many_no_wait(list(range(6)))
        first = await ty.runs.aio_wait([handle.run_id for handle in handles], timeout=30)
        assert sum(view.status is RunStatus.FAILED for view in first.values()) == 3
        result = await ty.runs.aio_replay_many(status=["failed"], task=["flaky"])
        assert (result.matched, result.changed, result.skipped) == (3, 3, 0)
        outputs = {await handle.aio_result() for handle in handles}
    assert outputs == set(range(6))
    assert sorted(n for n, count in tries.items() if count == 2) == [1, 3, 5]


async def test_replay_many_skips_unfinished_runs_and_workflow_steps(ty: Taskyard) -> None:
    @ty.task(name="waiting", schedule_timeout="1h")
    async def waiting(n: int) -> int:
        return n

    wf: Workflow[int] = ty.workflow("pipeline", input=int)

    @wf.task()
    async def step(n: int) -> int:
        return n

    queued = await waiting.aio_run_no_wait(1)
    async with ty.worker("pipeline", workflows=[wf]):
        run = await wf.aio_run_no_wait(1)
        await run.aio_result()
    view = await ty.runs.aio_get(run.run_id)
    [step_run] = view.steps
    result = await ty.runs.aio_replay_many([queued.run_id, step_run.run_id, run.run_id])
    assert (result.matched, result.changed, result.skipped) == (3, 0, 3)
    reasons = " ".join(skip.reason for skip in result.reasons)
    assert "only finished runs can be replayed" in reasons
    assert "trigger the workflow again" in reasons


async def test_a_filter_changes_at_most_ten_thousand_runs_a_call(ty: Taskyard) -> None:
    @ty.task(name="flood", schedule_timeout="1h")
    async def flood(n: int) -> int:
        return n

    await flood.aio_run_many_no_wait(list(range(MAX_BULK + 30)))
    first = await ty.runs.aio_cancel_many(task=["flood"])
    assert (first.changed, first.more) == (MAX_BULK, True)
    second = await ty.runs.aio_cancel_many(task=["flood"])
    assert (second.changed, second.more) == (30, False)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({}, "give run_ids or filter"),
        ({"run_ids": [str(uuid.uuid4())], "filter": {}}, "give run_ids or filter"),
        ({"run_ids": []}, "at least 1"),
        ({"run_ids": ["not-a-uuid"]}, "run_ids"),
        ({"filter": {"status": ["lost"]}}, "status"),
        ({"filter": {"colour": "red"}}, "colour"),
    ],
)
async def test_bad_bulk_requests_are_refused_with_the_reason(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens, body: object, problem: str
) -> None:
    for path in ("/api/v1/runs/cancel", "/api/v1/runs/replay"):
        async with http.post(path, json=body, headers=tenant.headers("client")) as response:
            assert response.status == 422
            assert problem in (await response.json())["error"]["message"]


async def test_too_many_ids_are_refused(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    body = {"run_ids": [str(uuid.uuid4()) for _ in range(MAX_BULK + 1)]}
    async with http.post("/api/v1/runs/cancel", json=body, headers=tenant.headers()) as response:
        assert response.status == 422
        assert "run_ids" in (await response.json())["error"]["message"]
