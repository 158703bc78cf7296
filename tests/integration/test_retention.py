"""Retention against a real engine: expired history goes (by batches, then whole partitions),
unfinished runs and their trees stay, each tenant keeps its own retention, and the engine serves
throughout. Sweeps are run as of a later day (`sweep(now=...)`): the runs are real, the calendar
is moved."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from taskyard.domain.retention import first_id_of
from taskyard.engine import Engine
from taskyard_sdk import Context, NotFound, RunStatus, Taskyard
from tests.conftest import new_tenant
from tests.support import connected, scalar, wait_until

DAY = timedelta(days=1)


async def history_of(db_url: str, run_id: uuid.UUID) -> dict[str, int]:
    """How many rows of each history table a run has."""
    return {
        table: await scalar(db_url, f"SELECT count(*) FROM {table} WHERE run_id = $1", run_id)
        for table in ("runs", "run_events", "run_logs", "run_keys")
    }


async def partitions(db_url: str, parent: str) -> set[str]:
    async with connected(db_url) as conn:
        rows = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass",
            parent,
        )
    return {row["relname"] for row in rows}


@pytest.fixture
async def clients(engine: Engine) -> AsyncIterator[tuple[Taskyard, Taskyard, uuid.UUID]]:
    """Tenant A (the engine's 7 days) and tenant B (30 days of its own)."""
    a, b = await new_tenant(engine, "a"), await new_tenant(engine, "b")
    assert await engine.repository.set_retention(b.tenant_id, 30)
    ty_a, ty_b = Taskyard(url=engine.url, token=a.admin), Taskyard(url=engine.url, token=b.admin)
    yield ty_a, ty_b, a.tenant_id
    await ty_a.aio_close()
    await ty_b.aio_close()


async def test_expired_history_goes_while_unfinished_trees_and_longer_retentions_stay(
    engine: Engine, db_url: str, clients: tuple[Taskyard, Taskyard, uuid.UUID]
) -> None:
    ty_a, ty_b, _ = clients
    assert engine.retention is not None
    release = asyncio.Event()

    @ty_a.task(name="quick")
    async def quick(n: int, ctx: Context) -> int:
        ctx.log(f"quick {n}")
        return n

    @ty_a.task(name="parent")
    async def parent(n: int) -> int:
        await quick.aio_run(100 + n)  # a child of this run: it takes the parent's time
        await release.wait()
        return n

    @ty_b.task(name="quick")
    async def quick_b(n: int) -> int:
        return n

    flow = ty_a.workflow("two-steps")

    @flow.task()
    async def first(n: int) -> int:
        return n + 1

    @flow.task(parents=[first])
    async def second(n: int, ctx: Context) -> int:
        return ctx.parent_output(first) * 2

    async with (
        ty_a.worker("a", tasks=[quick, parent], workflows=[flow], slots=8),
        ty_b.worker("b", tasks=[quick_b], slots=8),
    ):
        done = [await quick.aio_run_no_wait(n) for n in range(20)]
        keyed = await quick.aio_run_no_wait(99, idempotency_key="once")
        workflow = await flow.aio_run_no_wait(1)
        event = await ty_a.events.aio_push("signal", {"n": 1})
        waiting = await parent.aio_run_no_wait(7)
        kept_b = [await quick_b.aio_run_no_wait(n) for n in range(5)]
        assert [await h.aio_result(timeout=10) for h in done] == list(range(20))
        assert await keyed.aio_result(timeout=10) == 99
        assert await workflow.aio_result(timeout=10) == {"first": 2, "second": 4}
        assert [await h.aio_result(timeout=10) for h in kept_b] == list(range(5))

        async def child_finished() -> bool:
            children = (await waiting.aio_get()).children
            return (
                len(children) == 1
                and (await ty_a.runs.aio_get(children[0])).status is RunStatus.SUCCEEDED
            )

        await wait_until(child_finished, 10, "the parent's child to finish")
        [child] = (await waiting.aio_get()).children
        steps = [uuid.UUID(str(step.run_id)) for step in (await workflow.aio_get()).steps]
        assert len(steps) == 2
        assert (await history_of(db_url, done[0].run_id))["run_logs"] == 1
        assert (await history_of(db_url, keyed.run_id))["run_keys"] == 1

        # B keeps triggering while the sweeps run: the engine serves throughout.
        stop = asyncio.Event()

        async def load() -> int:
            count = 0
            while not stop.is_set():
                assert await quick_b.aio_run(count, timeout=10) == count
                count += 1
            return count

        loading = asyncio.create_task(load())
        now = datetime.now(UTC)

        # Three days on, nothing has expired.
        early = await engine.retention.sweep(now + 3 * DAY)
        assert (early.dropped, early.runs_deleted, early.events_deleted) == ([], 0, 0)

        # Eight days on, A's finished history has gone, in batches (B's 30 days hold the day).
        later = await engine.retention.sweep(now + 8 * DAY)
        assert later.dropped == []
        for handle in [*done, keyed, workflow]:
            with pytest.raises(NotFound):
                await handle.aio_get()
            assert set((await history_of(db_url, handle.run_id)).values()) == {0}
        for step in steps:
            assert set((await history_of(db_url, step)).values()) == {0}
        with pytest.raises(NotFound):
            await ty_a.events.aio_get(event.event_id)
        assert later.events_deleted == 1
        # ... but not the running parent, nor its finished child (one tree), nor anything of B's.
        assert (await waiting.aio_get()).status is RunStatus.RUNNING
        assert (await ty_a.runs.aio_get(child)).status is RunStatus.SUCCEEDED
        assert [(await h.aio_get()).status for h in kept_b] == [RunStatus.SUCCEEDED] * 5
        # An expired key is free again: a new run.
        again = await quick.aio_run_no_wait(98, idempotency_key="once")
        assert again.run_id != keyed.run_id
        assert await again.aio_result(timeout=10) == 98

        # 31 days on, B's have expired too, but the unfinished parent holds today's partition:
        # everything else of it goes by batches.
        held = await engine.retention.sweep(now + 31 * DAY)
        today = f"runs_p{now:%Y%m%d}"
        assert today in held.held
        assert today in await partitions(db_url, "runs")
        assert f"events_p{now:%Y%m%d}" in held.dropped  # no run holds pushed events
        for handle in kept_b:
            with pytest.raises(NotFound):
                await handle.aio_get()
        assert (await waiting.aio_get()).status is RunStatus.RUNNING
        assert (await ty_a.runs.aio_get(child)).status is RunStatus.SUCCEEDED

        stop.set()
        served = await asyncio.wait_for(loading, 30)
        assert served > 0
        release.set()
        assert await waiting.aio_result(timeout=10) == 7

        # Once it ended, and its retention passed, the day's partitions are dropped whole.
        last = await engine.retention.sweep(now + 40 * DAY)
        for table in ("runs", "run_events", "run_logs", "durable_log"):
            assert f"{table}_p{now:%Y%m%d}" in last.dropped
            assert f"{table}_p{now:%Y%m%d}" not in await partitions(db_url, table)
        assert f"runs_p{now + 40 * DAY:%Y%m%d}" in await partitions(db_url, "runs")  # made ahead
        with pytest.raises(NotFound):
            await waiting.aio_get()
        assert await scalar(db_url, "SELECT count(*) FROM run_keys") == 0
        # Still serving; today's runs now land in the default partition.
        assert await quick.aio_run(5, timeout=10) == 5


async def test_a_sweep_runs_on_one_node_on_its_own_schedule(db_url: str, data_dir: Path) -> None:
    from tests.conftest import engine_settings

    async with Engine(engine_settings(db_url, data_dir, retention_every=0.2)) as engine:
        assert engine.retention is not None

        async def swept() -> bool:
            return engine.retention is not None and engine.retention.last is not None

        await wait_until(swept, 10, "the first sweep")
        async with connected(db_url) as conn:
            holder = await conn.fetchval(
                "SELECT node_id FROM cluster_leases WHERE name = 'retention'"
            )
        assert holder == engine.node_id


async def test_postgres_and_the_engine_agree_on_the_first_id_of_a_moment(db_url: str) -> None:
    """Partitions are bounded by Postgres' taskyard_uuid_at, sweeps by first_id_of."""
    moments = [
        datetime(2026, 12, 7, tzinfo=UTC),
        datetime(2030, 1, 1, 12, 30, 15, 123000, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    ]
    async with connected(db_url) as conn:
        for moment in moments:
            assert await conn.fetchval("SELECT taskyard_uuid_at($1)", moment) == first_id_of(moment)
