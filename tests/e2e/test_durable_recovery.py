"""Durable tasks when processes die: a sleep survives kill -9 of its worker and of the engine and
ends on its original schedule, once; an event pushed while the engine is down wakes the run it
matches (and not the other); 10,000 sleeping durable runs hold no worker slot and all wake."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from taskyard.testing import EngineProcess
from taskyard_sdk import Taskyard
from tests.e2e.conftest import Deploy
from tests.support import LEDGER_TABLE

pytestmark = pytest.mark.slow


async def _query(db_url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():  # type: ignore[operator]
                return
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _status_count(db_url: str, task: str, status: str) -> int:
    rows = await _query(
        db_url, "SELECT count(*) AS n FROM runs WHERE task = $1 AND status = $2", task, status
    )
    return int(rows[0]["n"])


FLAGS = ("--heartbeat-interval", "0.3", "--heartbeat-timeout", "1.5")


async def _trigger(engine: EngineProcess, token: str, task: str, inputs: list[Any]) -> None:
    async with aiohttp.ClientSession(
        base_url=engine.url, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        for start in range(0, len(inputs), 1000):
            runs = [{"task": task, "input": n} for n in inputs[start : start + 1000]]
            async with http.post("/api/v1/runs/batch", json={"runs": runs}) as response:
                assert response.status == 201, await response.text()


async def test_a_durable_sleep_survives_kill_9_of_worker_and_engine(
    db_url: str, deploy: Deploy
) -> None:
    await _query(db_url, LEDGER_TABLE)
    deployment = deploy(*FLAGS)
    engine, token = deployment.engine, deployment.token
    first = deployment.worker("first")
    triggered = time.time()
    await _trigger(engine, token, "nap", [1])
    await _until(lambda: _status_count(db_url, "nap", "pending"), 20, "the nap to begin")
    first.kill()  # kill -9 of the worker during the sleep
    deployment.worker("second")
    await asyncio.sleep(0.5)
    engine.kill()  # and of the engine
    engine.start()
    restarted = time.time()
    await _until(lambda: _status_count(db_url, "nap", "succeeded"), 30, "the nap to end")
    [run] = await _query(
        db_url,
        "SELECT output, extract(epoch FROM finished_at)::float8 "
        "AS finished FROM runs WHERE task = 'nap'",
    )
    ledger = await _query(db_url, "SELECT n FROM ledger")
    print(
        f"durable sleep of 3 s: ended {run['finished'] - triggered:.2f}s after the trigger, "
        f"{run['finished'] - restarted:.2f}s after the engine restart"
    )
    assert [row["n"] for row in ledger] == [1]  # it finished once
    # Slept its 3 s, measured from the memoised start (so within the time since the trigger,
    # however long the restart took on a loaded machine).
    assert 3.0 <= float(run["output"]) <= run["finished"] - triggered
    assert run["finished"] < restarted + 3.0  # the clock was not started again


async def test_an_event_pushed_while_the_engine_is_down_wakes_the_run_it_matches(
    db_url: str, deploy: Deploy
) -> None:
    await _query(db_url, LEDGER_TABLE)
    deployment = deploy(*FLAGS)
    engine, token = deployment.engine, deployment.token
    deployment.worker("w")
    await _trigger(engine, token, "await_upgrade", [1, 2])
    await _until(lambda: _status_count(db_url, "await_upgrade", "pending"), 20, "waits")
    await _until(lambda: _pending(db_url, 2), 20, "both waits")
    engine.kill()
    ty = Taskyard(engine.url, token, retry_for=30)  # the client retries until it is back
    try:
        push = asyncio.create_task(
            ty.events.aio_push("user:upgraded", {"user_id": 1, "plan": "team"})
        )
        await asyncio.sleep(1.5)
        assert not push.done()
        engine.start()
        await push
        await _until(lambda: _status_count(db_url, "await_upgrade", "succeeded"), 20, "wake")
        await asyncio.sleep(0.5)
    finally:
        await ty.aio_close()
    rows = await _query(
        db_url,
        "SELECT input::text AS n, status, output::text AS output "
        "FROM runs WHERE task = 'await_upgrade' ORDER BY input::text",
    )
    assert [(r["n"], r["status"], r["output"]) for r in rows] == [
        ("1", "succeeded", '"team"'),
        ("2", "pending", None),
    ]


async def _pending(db_url: str, count: int) -> bool:
    return await _status_count(db_url, "await_upgrade", "pending") >= count


async def test_ten_thousand_sleeping_durable_runs_hold_no_slots_and_all_wake(
    db_url: str, deploy: Deploy
) -> None:
    await _query(db_url, LEDGER_TABLE)
    deployment = deploy(*FLAGS)
    engine, token = deployment.engine, deployment.token
    deployment.worker("w", slots=100)
    await asyncio.sleep(1)  # let it register the task
    began = time.time()
    wake_at = began + 25
    await _trigger(
        engine, token, "nap_until", [{"n": n, "wake_at": wake_at} for n in range(10_000)]
    )
    # All asleep at once through a worker with 100 slots: the sleepers hold none.
    await _until(lambda: _asleep(db_url, 10_000), 24, "10,000 runs asleep")
    asleep_after = time.time() - began
    memory = _rss_mb(engine.pid)
    await _until(lambda: _done(db_url, 10_000), 120, "10,000 runs to wake and finish")
    woke_in = time.time() - wake_at
    ledger = await _query(db_url, "SELECT count(DISTINCT n) AS n, count(*) AS rows FROM ledger")
    print(
        f"10,000 durable sleepers: all asleep {asleep_after:.1f}s after the trigger, engine "
        f"RSS {memory:.0f} MB while they slept, all woken and finished {woke_in:.1f}s after "
        f"their wake time"
    )
    assert (ledger[0]["n"], ledger[0]["rows"]) == (10_000, 10_000)
    assert memory < 1024


async def _asleep(db_url: str, count: int) -> bool:
    return await _status_count(db_url, "nap_until", "pending") >= count


async def _done(db_url: str, count: int) -> bool:
    return await _status_count(db_url, "nap_until", "succeeded") >= count


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0
