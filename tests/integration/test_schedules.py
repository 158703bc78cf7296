"""Crons and one-off schedules: one run per tick, pause, code-declared crons, kill -9 of the engine
across ticks (no tick doubled, the catch-up policy holds), one-offs on time and across a restart,
and the errors."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from taskyard.engine import Engine
from taskyard.testing import EngineProcess, clean_env
from taskyard_sdk import Conflict, InvalidRequest, RunStatus, Taskyard
from tests.conftest import engine_settings


async def _ticks(db_url: str, cron: str) -> list[float]:
    """The tick each of a cron's runs was started for, in order (duplicates kept)."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT metadata->>'tick' AS tick FROM runs "
            "WHERE metadata->>'cron' = $1 ORDER BY run_id",
            cron,
        )
    finally:
        await conn.close()
    return sorted(datetime.fromisoformat(row["tick"]).timestamp() for row in rows)


async def test_a_per_second_cron_starts_one_run_a_tick_and_a_paused_one_none(
    ty: Taskyard, db_url: str
) -> None:
    @ty.task()
    async def heartbeat(n: Any) -> None:
        return None

    live = await heartbeat.aio_create_cron("every-second", "* * * * * *", input=1)
    paused = await heartbeat.aio_create_cron("paused", "* * * * * *", input=2)
    assert live.next_fire_at is not None
    assert (live.next_fire_at - datetime.now(UTC)).total_seconds() <= 1
    await ty.crons.aio_pause(paused.cron_id)
    begun = time.time()
    await asyncio.sleep(10.2)
    await ty.crons.aio_delete(live.cron_id)
    ticks = await _ticks(db_url, "every-second")
    assert len(ticks) == len(set(ticks)), "a tick fired twice"
    assert [b - a for a, b in itertools.pairwise(ticks)] == [1.0] * (len(ticks) - 1)
    assert 9 <= len(ticks) <= 11, ticks
    assert all(begun - 1 < tick < begun + 11 for tick in ticks)
    assert await _ticks(db_url, "paused") == []
    view = await ty.crons.aio_get(paused.cron_id)
    assert (view.paused, view.next_fire_at) == (True, None)
    resumed = await ty.crons.aio_resume(paused.cron_id)
    assert resumed.next_fire_at is not None
    # Resuming counts from now: a catch-up after a restart does not fire the paused time.
    assert resumed.last_tick is not None
    assert resumed.last_tick.timestamp() > begun + 10


async def test_crons_declared_in_code_follow_the_code(ty: Taskyard) -> None:
    @ty.task(on_crons=["0 3 * * *", "*/15 * * * *"])
    async def nightly(n: Any) -> None:
        return None

    async with ty.worker("with-crons", tasks=[nightly]):
        await asyncio.sleep(0.3)
    crons = {c.expression: c for c in await ty.crons.aio_list()}
    assert set(crons) == {"0 3 * * *", "*/15 * * * *"}
    assert all(c.declared_in_code and c.task == "nightly" for c in crons.values())

    nightly.crons = ["0 3 * * *"]  # the next deploy drops one
    async with ty.worker("with-fewer-crons", tasks=[nightly]):
        await asyncio.sleep(0.3)
    assert [c.expression for c in await ty.crons.aio_list()] == ["0 3 * * *"]

    wf = ty.workflow("weekly-report", on_crons=["0 8 * * 1"])

    @wf.task()
    async def report(n: Any) -> None:
        return None

    await wf.aio_register()
    crons = [c for c in await ty.crons.aio_list() if c.workflow == "weekly-report"]
    assert [c.expression for c in crons] == ["0 8 * * 1"]


async def test_a_one_off_schedule_fires_once_on_time(ty: Taskyard) -> None:
    @ty.task()
    async def remind(text: str) -> str:
        return text

    at = datetime.now(UTC) + timedelta(seconds=2)
    scheduled = await remind.aio_schedule(at, input="call the bank")
    assert scheduled.run_id is None
    assert [s.schedule_id for s in await ty.schedules.aio_list()] == [scheduled.schedule_id]
    async with ty.worker("reminders", tasks=[remind]):
        for _ in range(100):
            view = await ty.schedules.aio_get(scheduled.schedule_id)
            if view.run_id is not None:
                break
            await asyncio.sleep(0.05)
        assert view.run_id is not None
        run = (await ty.runs.aio_wait([view.run_id], timeout=10))[view.run_id]
        assert (run.status, run.output) == (RunStatus.SUCCEEDED, "call the bank")
    delay = (run.created_at - at).total_seconds()
    print(f"one-off schedule fired {delay * 1000:.1f} ms after its time")
    assert 0 <= delay < 0.1
    with pytest.raises(Conflict) as fired:
        await ty.schedules.aio_reschedule(scheduled.schedule_id, at + timedelta(hours=1))
    assert "already fired" in str(fired.value)


async def test_a_one_off_schedule_survives_an_engine_restart(db_url: str, data_dir: Path) -> None:
    async with Engine(engine_settings(db_url, data_dir)) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        wf = ty.workflow("later")

        @wf.task()
        async def step(n: int) -> int:
            return n

        await wf.aio_register()
        moved = await wf.aio_schedule(datetime.now(UTC) + timedelta(hours=1), input=1)
        soon = await wf.aio_schedule(datetime.now(UTC) + timedelta(seconds=1.5), input=2)
        # rescheduled to about when the other fires; the restart is in between
        await ty.schedules.aio_reschedule(
            moved.schedule_id, datetime.now(UTC) + timedelta(seconds=1.5)
        )
        await ty.aio_close()
    await asyncio.sleep(2)  # both times pass while the engine is down
    async with Engine(engine_settings(db_url, data_dir)) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        for _ in range(100):
            views = await ty.schedules.aio_list()
            if all(v.run_id for v in views):
                break
            await asyncio.sleep(0.05)
        assert {v.schedule_id for v in views} == {moved.schedule_id, soon.schedule_id}
        assert all(v.run_id for v in views)
        runs = await ty.runs.aio_list(task=["later"])
        assert len(runs.runs) == 2  # each fired once
        await ty.aio_close()


@pytest.mark.slow
async def test_engine_killed_across_ticks_neither_doubles_nor_loses_by_policy(
    db_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "engine"
    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(data_dir)],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    token = (data_dir / "token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as http:
            for name, catch_up in (("latest", "latest"), ("all", "all")):
                async with http.post(
                    "/api/v1/crons",
                    json={
                        "name": name,
                        "task": "tick",
                        "expression": "* * * * * *",
                        "catch_up": catch_up,
                    },
                ) as response:
                    assert response.status == 201, await response.text()
        await asyncio.sleep(3.2)
        engine.kill()  # kill -9, between ticks or in the middle of one
        killed_at = time.time()
        await asyncio.sleep(3.5)
        engine.start()
        restarted_at = time.time()
        await asyncio.sleep(3.2)
    finally:
        engine.kill()
    latest, every = await _ticks(db_url, "latest"), await _ticks(db_url, "all")
    for ticks in (latest, every):
        assert len(ticks) == len(set(ticks)), f"a tick fired twice: {ticks}"
    # catch_up=all: every second from the first tick to the last, the downtime included
    assert [b - a for a, b in itertools.pairwise(every)] == [1.0] * (len(every) - 1)
    assert every[-1] - every[0] >= 8
    # catch_up=latest: of the ticks missed while down, only the latest fired
    missed = [t for t in latest if killed_at < t < restarted_at - 1]
    assert len(missed) <= 1, latest
    gaps = [b - a for a, b in itertools.pairwise(latest)]
    assert max(gaps) >= 2, latest  # the skipped ones
    assert len(latest) < len(every)


async def test_bad_crons_and_schedules_are_refused(
    ty: Taskyard, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {ty.config.token}"}
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        (
            "POST",
            "/api/v1/crons",
            {"name": "c", "task": "t", "expression": "61 * * * *"},
            422,
            "cron expression '61 * * * *' is not valid",
        ),
        (
            "POST",
            "/api/v1/crons",
            {"name": "c", "task": "t", "expression": "* * *"},
            422,
            "has 3 fields; it needs 5",
        ),
        (
            "POST",
            "/api/v1/crons",
            {"name": "c", "task": "t", "expression": "0 0 30 2 *"},
            422,
            "cron expression '0 0 30 2 *' never fires",
        ),
        (
            "POST",
            "/api/v1/crons",
            {"name": "c", "task": "t", "expression": "0 9 * * *", "timezone": "Mars/Olympus"},
            422,
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            "POST",
            "/api/v1/crons",
            {"name": "c", "expression": "0 9 * * *"},
            422,
            "name either a task or a workflow",
        ),
        ("POST", "/api/v1/schedules", {"task": "t", "at": past}, 422, "is in the past"),
        (
            "POST",
            "/api/v1/schedules",
            {"task": "t", "workflow": "w", "at": soon},
            422,
            "name either a task or a workflow",
        ),
    ]
    for method, path, body, status, message in cases:
        async with http.request(method, path, json=body, headers=headers) as response:
            error = (await response.json())["error"]
        assert response.status == status, (body, error)
        assert message in error["message"], (message, error["message"])
    body = {"name": "dup", "task": "t", "expression": "0 9 * * *", "timezone": "Europe/Paris"}
    async with http.post("/api/v1/crons", json=body, headers=headers) as response:
        assert response.status == 201
        created = await response.json()
    assert created["next_fire_at"].endswith(("+00:00", "Z"))
    async with http.post("/api/v1/crons", json=body, headers=headers) as response:
        assert response.status == 409
        assert "already has a cron named 'dup'" in (await response.json())["error"]["message"]
    async with http.delete(
        "/api/v1/crons/00000000-0000-0000-0000-000000000000", headers=headers
    ) as response:
        assert response.status == 404
    wf = ty.workflow("bad-cron", on_crons=["not a cron"])

    @wf.task()
    async def step(n: Any) -> None:
        return None

    with pytest.raises(InvalidRequest) as refused:
        await wf.aio_register()
    assert "on_crons: cron expression 'not a cron' has 3 fields" in str(refused.value)
