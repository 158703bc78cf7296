"""`slot_cost` against a real engine and worker: a task that takes two slots of a three-slot
worker never runs beside another like it, a one-slot task fills the slot left, and a run no
connected worker has room for says why it waits."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from taskyard_sdk import Taskyard
from tests.conftest import TenantTokens
from tests.integration.test_worker_protocol import hello, receive_type
from tests.support import wait_until


def most_slots_in_use(spans: list[tuple[int, float, float]]) -> int:
    """The most slots taken at once, from (cost, start, end) spans."""
    return max(
        sum(cost for cost, begun, ended in spans if begun <= start < ended) for _, start, _ in spans
    )


async def test_a_task_takes_its_slot_cost_and_the_slots_left_go_to_cheaper_runs(
    ty: Taskyard,
) -> None:
    spans: list[tuple[int, float, float]] = []

    @ty.task(name="train", slot_cost=2)
    async def train(n: int) -> int:
        began = time.monotonic()
        await asyncio.sleep(0.3)
        spans.append((2, began, time.monotonic()))
        return n

    @ty.task(name="tag")
    async def tag(n: int) -> int:
        began = time.monotonic()
        await asyncio.sleep(0.1)
        spans.append((1, began, time.monotonic()))
        return n

    async with ty.worker("gpu", tasks=[train, tag], slots=3):
        handles = [await train.aio_run_no_wait(n) for n in range(4)]
        handles += [await tag.aio_run_no_wait(n) for n in range(6)]
        assert [await h.aio_result(timeout=30) for h in handles] == [*range(4), *range(6)]
    trains = [span for span in spans if span[0] == 2]
    assert most_slots_in_use(trains) == 2  # never two trainings at once on three slots
    assert most_slots_in_use(spans) == 3  # the slot left ran tagging beside a training


def test_a_worker_without_the_slots_for_a_task_is_refused_at_once(ty: Taskyard) -> None:
    @ty.task(name="render", slot_cost=4)
    async def render(n: int) -> int:
        return n

    with pytest.raises(ValueError, match=r"has 2 slots and could never run task 'render'"):
        ty.worker("small", tasks=[render], slots=2)


async def test_a_run_no_worker_has_room_for_says_why_it_waits(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    huge = {"name": "huge", "options": {"slot_cost": 4}}
    async with http.ws_connect("/api/v1/workers/connect", headers=tenant.headers("worker")) as ws:
        await ws.send_json(hello(slots=3, tasks=[huge]))
        await receive_type(ws, "welcome")
        async with http.post(
            "/api/v1/runs", json={"task": "huge"}, headers=tenant.headers()
        ) as response:
            run_id = (await response.json())["run_id"]
        view: dict[str, object] = {}

        reason = (
            "task 'huge' takes 4 slots (slot_cost) and no connected worker has that many "
            "(the most is 3)"
        )

        async def explained() -> bool:
            # Until the queue has the worker's registration, it says no worker has the task.
            async with http.get(f"/api/v1/runs/{run_id}", headers=tenant.headers()) as response:
                view.update(await response.json())
            return view.get("waiting_reason") == reason

        await wait_until(explained, 5, f"the waiting reason {reason!r}")
        assert view["status"] == "queued"
