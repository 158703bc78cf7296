"""`GET /metrics` after a known workload, parsed with prometheus_client's own parser: runs
triggered and finished by status, retries, queue depth falling to 0, queue waits and attempt
durations, the persister's batches, HTTP requests by route; and who may scrape."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from taskyard.engine import Engine
from taskyard_sdk import TaskFailed, Taskyard
from tests.conftest import engine_settings
from tests.support import Samples, scrape, value, wait_until


async def test_a_known_workload_is_counted(engine: Engine, ty: Taskyard) -> None:
    gate = asyncio.Event()

    @ty.task(name="ok")
    async def ok(n: int) -> int:
        if n < 10:  # the first ten hold ten slots until the gate opens
            await gate.wait()
        return n

    @ty.task(name="flaky", retries=2)
    async def flaky(n: int) -> int:
        raise ValueError(f"flaky {n}")

    where = {"tenant": "default", "queue": "default"}
    handles = [await ok.aio_run_no_wait(n) for n in range(50)]

    async def counted(name: str, expected: float, **labels: str) -> None:
        async def check() -> bool:
            return value(await scrape(engine.url), name, **where, **labels) == expected

        await wait_until(check, 10, f"{name} {labels} at {expected}")

    await counted("taskyard_runs_triggered_total", 50, task="ok")
    before = await scrape(engine.url)
    assert value(before, "taskyard_queue_depth", **where) == 50  # no worker yet
    assert value(before, "taskyard_queue_oldest_age_seconds", **where) > 0

    async with ty.worker("metered", tasks=[ok, flaky], slots=13):
        failing = [await flaky.aio_run_no_wait(n) for n in range(3)]
        for handle in failing:
            with pytest.raises(TaskFailed):
                await handle.aio_result(timeout=30)
        for handle in handles[10:]:
            await handle.aio_result(timeout=30)
        await counted("taskyard_runs_running", 10)
        during = await scrape(engine.url)
        assert value(during, "taskyard_workers", **where) == 1
        assert value(during, "taskyard_worker_slots", **where) == 13
        assert value(during, "taskyard_worker_slots_used", **where) == 10
        assert value(during, "taskyard_queue_depth", **where) == 0
        gate.set()
        for handle in handles[:10]:
            await handle.aio_result(timeout=30)
    after = await scrape(engine.url)

    finished = "taskyard_runs_finished_total"
    assert value(after, finished, **where, task="ok", status="succeeded") == 50
    assert value(after, finished, **where, task="flaky", status="failed") == 3
    assert value(after, "taskyard_retries_total", **where, task="flaky") == 6  # 2 for each
    assert value(after, "taskyard_queue_depth", **where) == 0
    assert value(after, "taskyard_runs_running", **where) == 0
    assert value(after, "taskyard_queue_oldest_age_seconds", **where) == 0
    waits = "taskyard_queue_wait_seconds"
    assert value(after, f"{waits}_count", **where, task="ok") == 50
    assert value(after, f"{waits}_bucket", **where, task="ok", le="+Inf") == 50
    assert value(after, f"{waits}_sum", **where, task="ok") > 0
    durations = "taskyard_attempt_duration_seconds_count"
    assert value(after, durations, **where, task="flaky") == 9  # every attempt, retried or not
    assert value(after, "taskyard_persister_rows_written_total") > 0
    assert value(after, "taskyard_persister_batch_rows_count", lane="ordered") > 0
    assert value(after, "taskyard_persister_pending_rows") >= 0
    assert value(after, "taskyard_postgres_errors_total", lane="ordered", kind="connection") == 0
    assert value(after, "taskyard_websocket_frames_total", socket="worker", direction="in") > 0
    assert value(after, "taskyard_websocket_frames_total", socket="worker", direction="out") > 0
    requests = "taskyard_http_requests_total"
    assert value(after, requests, route="/metrics", method="GET", status="200") >= 3
    assert value(after, "process_resident_memory_bytes") > 0


async def test_runs_of_made_up_tasks_do_not_grow_the_series(engine: Engine, ty: Taskyard) -> None:
    """Past 500 task names in a queue, the rest are counted as `_other`."""
    payload = [{"task": f"made-up-{n}", "input": n} for n in range(520)]
    await ty.transport.request("POST", "/api/v1/runs/batch", json_body={"runs": payload})
    triggered = "taskyard_runs_triggered_total"
    samples: Samples = {}

    async def all_counted() -> bool:
        nonlocal samples
        samples = await scrape(engine.url)
        return sum(n for (name, _), n in samples.items() if name == triggered) == len(payload)

    await wait_until(all_counted, 10, "the 520 runs counted")
    names = {dict(labels)["task"] for name, labels in samples if name == triggered}
    assert len(names) == 501
    assert "_other" in names
    where = {"tenant": "default", "queue": "default"}
    assert value(samples, "taskyard_runs_triggered_total", **where, task="_other") == 20


@pytest.fixture
async def guarded(db_url: str, data_dir: Path) -> AsyncIterator[Engine]:
    settings = engine_settings(db_url, data_dir, metrics_token="scrape-me", host="0.0.0.0")
    async with Engine(settings) as running:
        yield running


async def test_the_scrape_token_is_required_when_configured(guarded: Engine) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with http.get(f"{guarded.url}/metrics", headers=headers) as response:
                assert response.status == 401
                assert "--metrics-token" in await response.text()
    samples = await scrape(guarded.url, "scrape-me")
    assert value(samples, "taskyard_persister_pending_rows") == 0


async def test_without_a_token_only_this_machine_may_scrape(db_url: str, data_dir: Path) -> None:
    address = _outward_address()
    settings = engine_settings(db_url, data_dir, host="0.0.0.0")
    async with Engine(settings) as running, aiohttp.ClientSession() as http:
        port = running.url.rsplit(":", 1)[1]
        async with http.get(f"http://{address}:{port}/metrics") as response:
            assert response.status == 403
            assert "TASKYARD_METRICS_TOKEN" in await response.text()
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200


def _outward_address() -> str:
    """This machine's address on its network (no packet is sent: a UDP socket's connect only
    picks the route)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: routed by default, never answered
        except OSError as exc:
            pytest.fail(f"this machine has no network address to scrape from: {exc}")
        address: str = probe.getsockname()[0]
    if address.startswith("127."):
        pytest.fail("this machine has no address but loopback to scrape from")
    return address
