"""A worker's own `/health` and `/metrics`: its slots, what runs, what waits for an ack, its
connection; and a loop blocked by a synchronous call inside an async task, reported while it
lasts (a 503 naming the task, from a thread the blocked loop does not stop) and logged."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskyard_sdk import Taskyard


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Poller(threading.Thread):
    """Asks /health every 50 ms from a thread of its own, keeping each answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            status, body = get(f"{self.url}/health")
            self.answers.append((status, json.loads(body)))


async def test_a_blocked_loop_is_reported_with_the_task_that_blocks_it(
    ty: Taskyard, caplog: pytest.LogCaptureFixture
) -> None:
    @ty.task(name="sleepy")
    async def sleepy(seconds: float) -> float:
        time.sleep(seconds)  # noqa: ASYNC251 (the mistake this catches)
        return seconds

    @ty.task(name="polite")
    async def polite(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    worker = ty.worker(
        "napper", tasks=[sleepy, polite], slots=4, health_port=0, block_threshold=0.5
    )
    async with worker:
        status, body = await asyncio.to_thread(get, f"{worker.health_url}/health")
        assert status == 200
        healthy = json.loads(body)
        assert healthy["status"] == "ok"
        assert healthy["connected"] is True
        assert (healthy["slots"], healthy["running"], healthy["loop_blocked"]) == (4, 0, None)

        await polite.aio_run(0.7, timeout=10)  # awaiting is fine: no block
        poller = Poller(worker.health_url)
        poller.start()
        with caplog.at_level(logging.WARNING, logger="taskyard.worker"):
            assert await sleepy.aio_run(1.5, timeout=20) == 1.5
            await asyncio.sleep(0.3)  # the watch sees the loop run again
        poller.done.set()
        await asyncio.to_thread(poller.join)

        blocked = [body for status, body in poller.answers if status == 503]
        assert blocked, poller.answers
        assert blocked[0]["status"] == "unhealthy"
        assert blocked[0]["loop_blocked"]["task"] == "sleepy"
        assert "test_worker_health.py" in blocked[0]["loop_blocked"]["where"]
        warnings = [r.getMessage() for r in caplog.records if "blocked" in r.getMessage()]
        assert any("blocked for" in text and "task 'sleepy'" in text for text in warnings)
        assert any("ran again after" in text for text in warnings)

        status, body = await asyncio.to_thread(get, f"{worker.health_url}/health")
        after = json.loads(body)
        assert status == 200
        assert after["last_loop_block"]["task"] == "sleepy"
        assert after["last_loop_block"]["seconds"] >= 1.0

        status, text = await asyncio.to_thread(get, f"{worker.health_url}/metrics")
        assert status == 200
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        assert samples["taskyard_worker_slots"] == 4
        assert samples["taskyard_worker_connected"] == 1
        assert samples["taskyard_worker_running"] == 0
        assert samples["taskyard_worker_attempts_succeeded_total"] == 2
        assert samples["taskyard_worker_loop_blocks_total"] == 1  # the polite task never was
        assert samples["taskyard_worker_loop_blocked_seconds_total"] >= 1.0


async def test_without_a_health_port_the_worker_serves_none(ty: Taskyard) -> None:
    @ty.task(name="idle")
    async def idle(n: int) -> int:
        return n

    async with ty.worker("quiet", tasks=[idle]) as worker:
        with pytest.raises(RuntimeError, match="health_port"):
            _ = worker.health_url
