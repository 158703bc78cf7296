"""Kill things and count the work afterwards: the engine (kill -9 with thousands of runs in
flight), a worker mid-task, PostgreSQL mid-run. Nothing acknowledged may be lost; duplicates
(at-least-once execution) are counted and reported."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from taskyard.engine import Engine
from taskyard.store.db import connect
from taskyard.store.embedded import EmbeddedPostgres
from taskyard.store.migrator import migrate
from taskyard.testing import EngineProcess, clean_env
from tests.conftest import engine_settings
from tests.e2e.conftest import Deploy
from tests.support import LEDGER_TABLE, WorkerProcess, execute, scalar, wait_until

pytestmark = pytest.mark.slow


async def ledger_report(db_url: str, expected: set[int]) -> tuple[int, int]:
    """(lost, duplicates) of the acknowledged work, by the ledger the task writes."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch("SELECT n, count(*) AS times FROM ledger GROUP BY n")
    finally:
        await conn.close()
    done = {row["n"]: row["times"] for row in rows}
    lost = len(expected - set(done))
    duplicates = sum(times - 1 for n, times in done.items() if n in expected)
    return lost, duplicates


async def trigger_batches(
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    first: int,
    count: int,
    batch: int = 500,
    options: dict[str, object] | None = None,
) -> set[int]:
    """Trigger `record` runs; returns the numbers whose trigger was acknowledged."""
    acknowledged: set[int] = set()
    for start in range(first, first + count, batch):
        numbers = range(start, min(start + batch, first + count))
        runs = [
            {"task": "record", "input": n, "options": options or {"retries": 5}} for n in numbers
        ]
        async with http.post(
            "/api/v1/runs/batch", json={"runs": runs}, headers=headers
        ) as response:
            if response.status == 201:
                acknowledged.update(numbers)
            else:
                print("DEBUG", response.status, await response.text())
    return acknowledged


async def test_engine_killed_with_5000_runs_in_flight_loses_nothing(
    db_url: str, deploy: Deploy, record_property: pytest.RecordProperty
) -> None:
    await execute(db_url, LEDGER_TABLE)
    deployment = deploy("--heartbeat-interval", "0.5", "--heartbeat-timeout", "3")
    engine = deployment.engine
    for i in range(2):
        deployment.worker(f"w{i}", slots=50, sleep=0.05)
    async with aiohttp.ClientSession(base_url=engine.url) as http:
        acknowledged = await trigger_batches(http, deployment.headers, 0, 5000)
    assert len(acknowledged) == 5000
    await wait_until(lambda: _ledger_at_least(db_url, 800), 60, "work to be under way")
    engine.kill()  # kill -9: nothing is flushed, nothing is said goodbye
    done_before = await scalar(db_url, "SELECT count(DISTINCT n) FROM ledger")
    engine.start()
    await wait_until(lambda: _succeeded(db_url, 5000), 180, "every run to succeed")
    lost, duplicates = await ledger_report(db_url, acknowledged)
    print(
        f"engine kill -9: {done_before} done before the kill, lost {lost}, duplicates {duplicates}"
    )
    record_property("duplicates", duplicates)
    assert lost == 0
    assert await scalar(db_url, "SELECT count(*) FROM runs WHERE status <> 'succeeded'") == 0


async def test_engine_killed_with_flow_controlled_runs_in_flight_loses_none_and_leaks_no_key(
    db_url: str, deploy: Deploy
) -> None:
    """Runs held by concurrency keys and rate limits when the engine dies: after the restart
    every one finishes (a key slot leaked by the crash would leave its key's runs waiting)."""
    await execute(db_url, LEDGER_TABLE)
    deployment = deploy("--heartbeat-interval", "0.5", "--heartbeat-timeout", "3")
    engine = deployment.engine
    for i in range(2):
        deployment.worker(f"w{i}", slots=20, sleep=0.02)
    options = {
        "retries": 5,
        "concurrency": [{"expression": "string(input % 4)", "max_runs": 2}],
        "rate_limits": [{"dynamic_key": "'ledger'", "limit": 200, "duration": "second"}],
    }
    async with aiohttp.ClientSession(base_url=engine.url) as http:
        acknowledged = await trigger_batches(http, deployment.headers, 0, 400, options=options)
    assert len(acknowledged) == 400
    await wait_until(lambda: _ledger_at_least(db_url, 80), 60, "work to be under way")
    engine.kill()
    engine.start()
    await wait_until(lambda: _succeeded(db_url, 400), 120, "every run to succeed")
    lost, duplicates = await ledger_report(db_url, acknowledged)
    print(f"flow-controlled kill -9: lost {lost}, duplicates {duplicates}")
    assert lost == 0
    assert await scalar(db_url, "SELECT count(*) FROM runs WHERE flow IS NULL") == 0


async def _ledger_at_least(db_url: str, count: int) -> bool:
    return await scalar(db_url, "SELECT count(*) FROM ledger") >= count


async def _succeeded(db_url: str, count: int) -> bool:
    return await scalar(db_url, "SELECT count(*) FROM runs WHERE status = 'succeeded'") >= count


async def test_a_worker_killed_mid_task_is_retried_elsewhere_after_the_heartbeat_timeout(
    engine: Engine, db_url: str, data_dir: Path, tmp_path: Path
) -> None:
    await execute(db_url, LEDGER_TABLE)
    token = (data_dir / "token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    stuck = WorkerProcess(
        engine.url, token, db_url, "stuck", tmp_path / "stuck.log", slots=1, sleep=60
    ).start()
    healthy = WorkerProcess(engine.url, token, db_url, "healthy", tmp_path / "healthy.log")
    try:
        async with aiohttp.ClientSession(base_url=engine.url) as http:
            async with http.post(
                "/api/v1/runs",
                headers=headers,
                json={"task": "record", "input": 1, "options": {"retries": 1}},
            ) as response:
                run_id = (await response.json())["run_id"]
            await wait_until(lambda: _ledger_at_least(db_url, 1), 30, "the stuck worker to start")
            healthy.start()
            await wait_until(lambda: _connected(http, headers, 2), 30, "both workers")
            stuck.kill()
            killed_at = time.time()
            await wait_until(lambda: _ledger_at_least(db_url, 2), 30, "the retry")
            async with http.get(
                f"/api/v1/runs/{run_id}/result", headers=headers, params={"timeout": 30}
            ) as response:
                view = await response.json()
    finally:
        stuck.kill()
        healthy.kill()
    assert view["status"] == "succeeded"
    assert [a["status"] for a in view["attempts"]] == ["failed", "succeeded"]
    assert view["attempts"][0]["error"]["type"] == "WorkerLost"
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT worker, attempt, extract(epoch FROM at) AS at FROM ledger ORDER BY at"
        )
    finally:
        await conn.close()
    assert [(r["worker"], r["attempt"]) for r in rows] == [("stuck", 1), ("healthy", 2)]
    waited = float(rows[1]["at"]) - killed_at
    assert waited >= engine.settings.heartbeat_timeout * 0.9, waited


async def _connected(http: aiohttp.ClientSession, headers: dict[str, str], count: int) -> bool:
    async with http.get("/api/v1/workers", headers=headers) as response:
        return len(await response.json()) >= count


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A throwaway cluster of this test's own (initdb in a temporary folder): restarting the
    machine's server would pull it from under everything else using it. Not under tmp_path:
    pytest takes group and other access off its temporary root whenever a session starts, which
    would lock the cluster's own account out of its data directory between two restarts."""
    folder = Path(tempfile.mkdtemp(prefix="taskyard-test-pg-"))
    cluster = EmbeddedPostgres(folder)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def test_postgres_restarted_mid_run_loses_nothing_acknowledged(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    db_url = own_postgres.url
    conn = await connect(db_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    data_dir = tmp_path / "data"
    async with Engine(engine_settings(db_url, data_dir)) as engine:
        await _count_work_through_a_restart(engine, own_postgres, db_url, data_dir, tmp_path)


async def _count_work_through_a_restart(
    engine: Engine, cluster: EmbeddedPostgres, db_url: str, data_dir: Path, tmp_path: Path
) -> None:
    await execute(db_url, LEDGER_TABLE)
    token = (data_dir / "token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    workers = [
        WorkerProcess(
            engine.url, token, db_url, f"w{i}", tmp_path / f"w{i}.log", slots=20, sleep=0.01
        ).start()
        for i in range(2)
    ]
    # The task itself writes to Postgres too: give it retries with back-off to ride the outage.
    options = {"retries": 20, "backoff_factor": 2, "backoff_max_seconds": 1}
    acknowledged: set[int] = set()
    try:
        async with aiohttp.ClientSession(base_url=engine.url) as http:
            # Workers that start during the outage could not open their ledger pool.
            await wait_until(lambda: _connected(http, headers, 2), 30, "workers to connect")

            async def keep_triggering() -> None:
                for round_number in range(12):
                    acknowledged.update(
                        await trigger_batches(
                            http, headers, round_number * 200, 200, batch=50, options=options
                        )
                    )
                    await asyncio.sleep(0.2)

            producer = asyncio.create_task(keep_triggering())
            await asyncio.sleep(0.8)
            await asyncio.to_thread(cluster.stop)  # fast shutdown: sessions cut off
            await asyncio.to_thread(cluster.start)
            await producer
            assert len(acknowledged) >= 1000
            await wait_until(
                lambda: _succeeded(db_url, len(acknowledged)),
                120,
                "every acknowledged run to succeed",
            )
            async with http.get("/healthz") as response:
                assert response.status == 200
    finally:
        for worker in workers:
            worker.kill()
    lost, duplicates = await ledger_report(db_url, acknowledged)
    print(
        f"postgres restart: {len(acknowledged)} acknowledged, lost {lost}, duplicates {duplicates}"
    )
    assert lost == 0
    statuses = await scalar(db_url, "SELECT count(*) FROM runs WHERE status <> 'succeeded'")
    assert statuses == 0


async def test_a_reattached_run_keeps_the_rate_limit_units_its_lost_assignment_took(
    own_postgres: EmbeddedPostgres, db_url: str, tmp_path: Path
) -> None:
    """An assignment the engine could not write before it was killed (Postgres was down) took
    rate-limit units that were not written either. When the worker reclaims the run after the
    restart, its units count again: the window's limit holds across the crash."""
    await execute(db_url, LEDGER_TABLE)  # the ledger lives outside the cluster that goes down
    engine = EngineProcess(
        [
            "--database-url",
            own_postgres.url,
            "--data-dir",
            str(tmp_path / "engine"),
            "--heartbeat-interval",
            "0.5",
            "--heartbeat-timeout",
            "10",
            "--database-wait",
            "60",
        ],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    token = (tmp_path / "engine" / "token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    # The first run holds the key; the second waits for it, then takes a unit of the limit.
    key = {"concurrency": [{"expression": "'one'", "max_runs": 1}], "retries": 0}
    limited = {**key, "rate_limits": [{"key": "scarce"}]}
    worker = WorkerProcess(
        engine.url, token, db_url, "w", tmp_path / "w.log", slots=5, sleep=2
    ).start()
    try:
        async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as http:
            await wait_until(lambda: _connected(http, {}, 1), 30, "the worker")
            async with http.put(
                "/api/v1/rate-limits/scarce", json={"limit": 2, "duration": "minute"}
            ) as response:
                assert response.status == 200, await response.text()
            async with http.post(
                "/api/v1/runs/batch",
                json={
                    "runs": [
                        {"task": "record", "input": 1, "options": key},
                        {"task": "record", "input": 2, "options": limited},
                    ]
                },
            ) as response:
                assert response.status == 201, await response.text()
                second = (await response.json())["runs"][1]["run_id"]
            await wait_until(lambda: _ledger_at_least(db_url, 1), 30, "the first run to start")
            await asyncio.to_thread(own_postgres.stop)
            # The first run ends; the second is assigned while nothing can be written.
            await wait_until(lambda: _ledger_at_least(db_url, 2), 30, "the second run")
            engine.kill()
            await asyncio.to_thread(own_postgres.start)
            await asyncio.to_thread(engine.start, 60)
            async with http.get(
                f"/api/v1/runs/{second}/result", params={"timeout": 30}
            ) as response:
                view = await response.json()
            assert view["status"] == "succeeded", view
            async with http.get(f"/api/v1/runs/{second}/events") as response:
                history = await response.json()
            assert "reattached" in str(history), history
            async with http.get("/api/v1/rate-limits/scarce") as response:
                usage = await response.json()
            async with http.post(
                "/api/v1/runs/batch",
                json={"runs": [{"task": "record", "input": n, "options": limited} for n in (3, 4)]},
            ) as r:
                assert r.status == 201, await r.text()
                last = (await r.json())["runs"][1]["run_id"]
            await wait_until(lambda: _ledger_at_least(db_url, 3), 30, "a third run to start")
            await asyncio.sleep(2.5)  # the third has ended; the key is free for the fourth
            async with http.get(f"/api/v1/runs/{last}") as response:
                waiting = await response.json()
    finally:
        worker.kill()
        engine.kill()
    assert waiting["status"] == "queued", waiting  # the limit's two units are spent
    assert "scarce" in (waiting["waiting_reason"] or ""), waiting
    assert await scalar(db_url, "SELECT count(*) FROM ledger") == 3
    assert (usage["used"], usage["available"]) == (1, 1), usage


async def test_postgres_restarted_while_the_engine_starts_does_not_stop_it(
    own_postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    """The engine is held mid-start (another session locks the table it registers itself in)
    when Postgres restarts under it: it starts again from the top and serves, as it waits for a
    database that is not up yet, instead of giving up."""
    holder = await connect(own_postgres.url)
    await migrate(holder)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("LOCK TABLE engine_nodes IN ACCESS EXCLUSIVE MODE")
    engine = Engine(engine_settings(own_postgres.url, tmp_path / "data"))
    starting = asyncio.create_task(engine.start())
    try:
        await wait_until(
            lambda: _waiting_for_a_lock(own_postgres.url), 30, "the engine to wait for the lock"
        )
        await asyncio.to_thread(own_postgres.stop)  # cuts every session, the holder's too
        await asyncio.to_thread(own_postgres.start)
        await asyncio.wait_for(starting, 60)
        async with (
            aiohttp.ClientSession(base_url=engine.url) as http,
            http.get("/healthz") as response,
        ):
            assert response.status == 200
    finally:
        starting.cancel()
        await engine.stop()
        with contextlib.suppress(Exception):
            await holder.close()


async def _waiting_for_a_lock(db_url: str) -> bool:
    return await scalar(db_url, "SELECT count(*) FROM pg_locks WHERE NOT granted") > 0
