"""Pausing against a real engine and workers: a paused queue, task, workflow or worker is
assigned nothing new, its triggers are accepted and wait saying "paused", running attempts
finish, resuming starts what waited, and a pause outlives an engine restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskyard.engine import Engine
from taskyard_sdk import NotFound, PauseKind, RunHandle, RunStatus, RunView, Taskyard
from tests.conftest import TenantTokens, engine_settings
from tests.support import wait_until


async def waits_saying(
    handle: RunHandle[Any] | Callable[[], Awaitable[RunView]], reason: str
) -> None:
    """The run stays queued, and says why."""
    get = handle.aio_get if isinstance(handle, RunHandle) else handle

    async def explained() -> bool:
        view = await get()
        assert view.status is RunStatus.QUEUED, view
        return view.waiting_reason == reason

    await wait_until(explained, 5, f"the run to wait saying {reason!r}")
    await asyncio.sleep(0.3)  # and it goes on waiting
    assert (await get()).status is RunStatus.QUEUED


async def test_a_paused_queue_lets_running_attempts_finish_and_holds_new_ones(
    ty: Taskyard,
) -> None:
    release = asyncio.Event()

    @ty.task(name="slow")
    async def slow(n: int) -> int:
        await release.wait()
        return n

    @ty.task(name="quick")
    async def quick(n: int) -> int:
        return n

    async with ty.worker("w", tasks=[slow, quick], slots=4):
        running = await slow.aio_run_no_wait(1)
        await wait_until(lambda: _status(running, RunStatus.RUNNING), 5, "the first run to start")
        paused = await ty.pauses.aio_pause(queue="default", reason="incident 42")
        assert (paused.kind, paused.name, paused.paused) == (PauseKind.QUEUE, "default", True)
        assert paused.reason == "incident 42"
        held = [await quick.aio_run_no_wait(n) for n in range(3)]  # accepted while paused
        for handle in held:
            await waits_saying(handle, "paused: queue 'default' is paused")
        release.set()
        assert await running.aio_result(timeout=10) == 1  # what ran, finished
        assert [p.name for p in await ty.pauses.aio_list()] == ["default"]

        resumed = await ty.pauses.aio_resume(queue="default")
        assert not resumed.paused
        assert [await h.aio_result(timeout=10) for h in held] == [0, 1, 2]
        assert await ty.pauses.aio_list() == []


async def test_a_paused_task_or_workflow_waits_while_others_run(ty: Taskyard) -> None:
    @ty.task(name="export")
    async def export(n: int) -> int:
        return n

    @ty.task(name="index")
    async def index(n: int) -> int:
        return n

    flow = ty.workflow("nightly", input=int)

    @flow.task()
    async def crunch(n: int) -> int:
        return n * 2

    async with ty.worker("w", tasks=[export, index, flow]):
        await ty.pauses.aio_pause(task=export)
        await ty.pauses.aio_pause(workflow=flow)
        exporting = await export.aio_run_no_wait(1)
        nightly = await flow.aio_run_no_wait(3)
        assert await index.aio_run(7) == 7  # the rest of the queue runs
        await waits_saying(exporting, "paused: task 'export' is paused")
        step = await _step_run(ty, nightly, "crunch")
        await waits_saying(step, "paused: workflow 'nightly' is paused")

        await ty.pauses.aio_resume(task="export")
        assert await exporting.aio_result(timeout=10) == 1
        await ty.pauses.aio_resume(workflow="nightly")
        assert await nightly.aio_result(timeout=10) == {"crunch": 6}


async def test_a_paused_worker_is_given_nothing_new(
    ty: Taskyard, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    ran_on: list[str] = []

    def work_on(name: str):  # type: ignore[no-untyped-def]
        @ty.task(name="work")
        async def work(n: int) -> int:
            ran_on.append(name)
            return n

        return work

    first, second = work_on("first"), work_on("second")
    async with ty.worker("first", tasks=[first]) as one, ty.worker("second", tasks=[second]):
        await ty.pauses.aio_pause(worker=one)
        assert [await first.aio_run(n) for n in range(6)] == list(range(6))
        assert set(ran_on) == {"second"}
        [described] = [w for w in await _workers(ty) if w["worker_id"] == str(one.worker_id)]
        assert described["paused"] is True
        await ty.pauses.aio_resume(worker=one)
    with pytest.raises(NotFound, match="no connected worker"):
        await ty.pauses.aio_pause(worker="0190a0a0-0000-7000-8000-000000000000")


async def test_only_paused_workers_say_so(ty: Taskyard) -> None:
    @ty.task(name="solo")
    async def solo(n: int) -> int:
        return n

    async with ty.worker("only", tasks=[solo]) as only:
        await ty.pauses.aio_pause(worker=only.worker_id)
        handle = await solo.aio_run_no_wait(5)
        await waits_saying(handle, "paused: every connected worker with task 'solo' is paused")
        await ty.pauses.aio_resume(worker=only)
        assert await handle.aio_result(timeout=10) == 5


async def test_a_pause_outlives_a_restart(db_url: str, data_dir: Path) -> None:
    async with Engine(engine_settings(db_url, data_dir)) as engine:
        ty = Taskyard(url=engine.url, token=(data_dir / "token").read_text().strip())
        await ty.pauses.aio_pause(queue="default")
        await ty.aio_close()
    async with Engine(engine_settings(db_url, data_dir)) as engine:
        ty = Taskyard(url=engine.url, token=(data_dir / "token").read_text().strip())

        @ty.task(name="after")
        async def after(n: int) -> int:
            return n

        try:
            async with ty.worker("w", tasks=[after]):
                handle = await after.aio_run_no_wait(9)
                await waits_saying(handle, "paused: queue 'default' is paused")
                queues = await ty.transport.request("GET", "/api/v1/queues")
                assert [q["paused"] for q in queues] == [True]
                await ty.pauses.aio_resume(queue="default")
                assert await handle.aio_result(timeout=10) == 9
        finally:
            await ty.aio_close()


async def test_bad_targets_are_refused_clearly(
    http: aiohttp.ClientSession, tenant: TenantTokens, ty: Taskyard
) -> None:
    async with http.post("/api/v1/queues/bad%20name/pause", headers=tenant.headers()) as response:
        assert response.status == 422
        assert "path.name" in (await response.json())["error"]["message"]
    async with http.post("/api/v1/workers/not-an-id/pause", headers=tenant.headers()) as response:
        assert response.status == 422
        assert "path.worker_id" in (await response.json())["error"]["message"]
    async with http.post("/api/v1/tasks/t/pause", headers=tenant.headers("viewer")) as response:
        assert response.status == 403
    with pytest.raises(TypeError, match="exactly one of"):
        await ty.pauses.aio_pause(queue="a", task="b")


async def _status(handle: RunHandle[Any], status: RunStatus) -> bool:
    return (await handle.aio_get()).status is status


async def _step_run(
    ty: Taskyard, workflow_run: RunHandle[Any], step: str
) -> Callable[[], Awaitable[RunView]]:
    """How to read the run of one step of a workflow run, once it exists."""
    found: list[uuid.UUID] = []

    async def created() -> bool:
        view = await workflow_run.aio_get()
        found.extend(child.run_id for child in view.steps if child.step == step)
        return bool(found)

    await wait_until(created, 5, f"step {step!r} to be created")
    return lambda: ty.runs.aio_get(found[0])


async def _workers(ty: Taskyard) -> list[dict[str, object]]:
    workers: list[dict[str, object]] = await ty.transport.request("GET", "/api/v1/workers")
    return workers
