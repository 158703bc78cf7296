"""`GET /api/v1/queues` and `GET /api/v1/workers` after a known workload: the queue's depth, its
last hour by the minute, its queue waits, and the slots its worker has busy."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from taskyard_sdk import TaskFailed, Taskyard
from tests.support import wait_until


async def test_a_known_workload_is_counted(ty: Taskyard) -> None:
    gate = asyncio.Event()

    @ty.task(name="tally", retries=0)
    async def tally(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        await gate.wait()
        return n

    async def queues() -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = await ty.transport.request("GET", "/api/v1/queues")
        return answer

    async with ty.worker("tallier", tasks=[tally], slots=3):
        handles = [await tally.aio_run_no_wait(n) for n in (1, 2, 3, 4, 5, -1, -2)]

        async def three_running() -> bool:
            [queue] = await queues()
            return bool(queue["running"] == 3)

        await wait_until(three_running, 10, "three runs holding the worker's three slots")
        [queue] = await queues()
        assert queue["queue"] == "default"
        assert (queue["queued"], queue["workers"], queue["slots"], queue["slots_used"]) == (
            4,
            1,
            3,
            3,
        )
        assert queue["oldest_queued_at"] is not None
        workers = await ty.transport.request("GET", "/api/v1/workers")
        assert [(w["name"], w["slots"], w["slots_used"]) for w in workers] == [("tallier", 3, 3)]

        gate.set()
        for handle in handles:
            with contextlib.suppress(TaskFailed):
                await handle.aio_result()
        [queue] = await queues()
    minutes = queue["minutes"]
    assert len(minutes) == 60
    assert sum(m["started"] for m in minutes) == 7
    assert sum(m["succeeded"] for m in minutes) == 5
    assert sum(m["failed"] for m in minutes) == 2
    assert (queue["queued"], queue["running"], queue["oldest_queued_at"]) == (0, 0, None)
    assert queue["waits"]["count"] == 7
    assert 0 < queue["waits"]["p50"] <= queue["waits"]["p99"] <= queue["waits"]["max"]
