"""The write-behind persister: group commit, latest-state-wins, barriers, backpressure, refusals."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from taskyard.ids import new_id
from taskyard.store import batch_sql
from taskyard.store.batch import (
    WriteBatch,
    batch_committed,
    register_node,
    write_batch,
    written_before,
)
from taskyard.store.db import WRITE_PLANNER, create_pool
from taskyard.store.persister import Persister
from taskyard.store.rows import (
    durable_entry_row,
    new_run_row,
    pushed_event_row,
    rate_usage_row,
    run_event_row,
    run_log_row,
)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_url)
    yield pool
    await pool.close()


@pytest.fixture
async def persister(pool: asyncpg.Pool) -> AsyncIterator[Persister]:
    node = uuid.uuid4()
    await register_node(pool, node)
    actor = Persister(pool, node, linger=0.002)
    await actor.start()
    yield actor
    await actor.stop()


TENANT = uuid.UUID(int=1)


def new_run(run_id: uuid.UUID, key: str | None = None) -> tuple[object, ...]:
    return new_run_row(
        tenant_id=TENANT,
        run_id=run_id,
        task="t",
        queue="default",
        status="queued",
        priority=2,
        options_json="{}",
        input_json="null",
        metadata_json="{}",
        created_at=time.time(),
        idempotency_key=key,
    )


def exploded_run() -> tuple[object, ...]:
    """A run Postgres refuses (its status breaks a check constraint)."""
    return new_run_row(
        tenant_id=TENANT,
        run_id=new_id(),
        task="t",
        queue="default",
        status="exploded",
        priority=2,
        options_json="{}",
        input_json="null",
        metadata_json="{}",
        created_at=time.time(),
    )


def state(run_id: uuid.UUID, status: str, attempt: int = 1) -> tuple[object, ...]:
    return (TENANT, run_id, status, attempt, None, time.time(), None, None, None, None, None, None)


async def test_many_writes_share_few_transactions(persister: Persister, pool: asyncpg.Pool) -> None:
    ids = [new_id() for _ in range(2000)]
    inserts = [persister.insert_runs([new_run(run_id)]) for run_id in ids]
    results = await asyncio.gather(*inserts)
    assert all(result[0].created for result in results)
    before = persister.flushes
    for run_id in ids:
        persister.write(
            [state(run_id, "assigned")],
            [
                run_event_row(
                    tenant_id=TENANT,
                    run_id=run_id,
                    at=time.time(),
                    attempt=1,
                    type="assigned",
                    worker_id=None,
                    detail=None,
                )
            ],
            [],
        )
    await persister.barrier()
    assert persister.flushes - before < 20
    assert await pool.fetchval("SELECT count(*) FROM runs WHERE status = 'assigned'") == 2000
    assert await pool.fetchval("SELECT count(*) FROM run_events WHERE type = 'assigned'") == 2000


async def test_the_latest_state_of_a_run_wins(persister: Persister, pool: asyncpg.Pool) -> None:
    run_id = new_id()
    await persister.insert_runs([new_run(run_id)])
    persister.write([state(run_id, "assigned"), state(run_id, "running")], [], [])
    for status, attempt in (("queued", 2), ("succeeded", 2)):
        persister.write([state(run_id, status, attempt)], [], [])
    await persister.barrier()
    row = await pool.fetchrow("SELECT status, attempt FROM runs WHERE run_id = $1", run_id)
    assert (row["status"], row["attempt"]) == ("succeeded", 2)


async def test_a_barrier_resolves_only_after_commit(persister: Persister, db_url: str) -> None:
    run_id = new_id()
    inserted = persister.insert_runs([new_run(run_id)])  # not awaited: the barrier is enough
    await persister.barrier()
    assert inserted.done()
    other = await asyncpg.connect(db_url)  # another session sees it: it is committed
    try:
        assert await other.fetchval("SELECT count(*) FROM runs WHERE run_id = $1", run_id) == 1
    finally:
        await other.close()
    empty = persister.barrier()
    await asyncio.wait_for(empty, 1)  # nothing pending: resolves at once


async def test_producers_wait_when_the_buffer_is_full(pool: asyncpg.Pool) -> None:
    node = uuid.uuid4()
    await register_node(pool, node)
    small = Persister(pool, node, linger=0.05, max_pending=10)
    await small.start()
    try:
        future = small.insert_runs([new_run(new_id()) for _ in range(20)])
        await asyncio.sleep(0)  # let the actor take the rows
        await asyncio.sleep(0.01)
        waiter = asyncio.ensure_future(small.capacity())
        await asyncio.sleep(0.01)
        assert not waiter.done(), "full: producers wait"
        await future
        await asyncio.wait_for(waiter, 5)
    finally:
        await small.stop()


async def test_a_refused_batch_fails_its_waiters_and_the_next_batch_works(
    persister: Persister, pool: asyncpg.Pool
) -> None:
    bad = persister.insert_runs([exploded_run()])
    with pytest.raises(asyncpg.CheckViolationError):
        await bad
    good = await persister.insert_runs([new_run(new_id())])
    assert good[0].created
    assert await pool.fetchval("SELECT count(*) FROM runs") == 1


async def test_idempotency_keys_dedupe_within_and_across_batches(persister: Persister) -> None:
    first, second = new_id(), new_id()
    results = await persister.insert_runs([new_run(first, "k"), new_run(second, "k")])
    assert [(r.run_id, r.created) for r in results] == [(first, True), (first, False)]
    [again] = await persister.insert_runs([new_run(new_id(), "k")])
    assert (again.run_id, again.created) == (first, False)


async def test_a_committed_batch_is_recognised_on_retry(pool: asyncpg.Pool) -> None:
    node = uuid.uuid4()
    await register_node(pool, node)
    first = new_id()
    async with pool.acquire() as conn:
        await write_batch(
            conn, WriteBatch(uuid.uuid4(), [new_run(first, "k")], {}, [], [], {}), (node, "ordered")
        )
        batch = WriteBatch(
            uuid.uuid4(), [new_run(new_id()), new_run(new_id(), "k")], {}, [], [], {}
        )
        assert not await batch_committed(conn, node, "ordered", batch.batch_id)
        written = await write_batch(conn, batch, (node, "ordered"))
        assert await batch_committed(conn, node, "ordered", batch.batch_id)
        # a retry that finds the batch committed reads what became of its runs
        assert await written_before(conn, batch) == written
        assert [outcome.run_id == first for outcome in written.values()] == [False, True]


async def test_new_runs_written_twice_are_found_as_created(pool: asyncpg.Pool) -> None:
    """A batch of new runs alone carries no mark: written again (its commit's answer was lost),
    it finds its own runs, created, and keyed runs still find the run that was there first."""
    first, keyed = new_id(), new_id()
    async with pool.acquire() as conn:
        [earlier] = (
            await write_batch(
                conn, WriteBatch(uuid.uuid4(), [new_run(first, "k")], {}, [], [], {}), None
            )
        ).values()
        batch = WriteBatch(uuid.uuid4(), [new_run(new_id()), new_run(keyed, "k")], {}, [], [], {})
        once = await write_batch(conn, batch, None)
        again = await write_batch(conn, batch, None)
    assert once == again
    assert [(outcome.created, outcome.run_id == earlier.run_id) for outcome in again.values()] == [
        (True, False),
        (False, True),
    ]
    assert await pool.fetchval("SELECT count(*) FROM runs") == 2


async def test_refused_new_runs_do_not_take_the_engines_own_writes_down(pool: asyncpg.Pool) -> None:
    node = uuid.uuid4()
    await register_node(pool, node)
    slow = Persister(pool, node, linger=0.05)  # both writes land in one batch
    await slow.start()
    try:
        run_id = new_id()
        await slow.insert_runs([new_run(run_id)])
        slow.write([state(run_id, "succeeded")], [], [])
        bad = slow.insert_runs([exploded_run()])
        await slow.barrier()
        with pytest.raises(asyncpg.CheckViolationError):
            await bad
        assert (
            await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "succeeded"
        )
    finally:
        await slow.stop()


async def test_a_row_postgres_refuses_costs_only_itself(pool: asyncpg.Pool) -> None:
    """The engine's own writes, one of which Postgres refuses (a status its check constraint
    forbids), in one batch: the others are written, and only that row is given up."""
    node = uuid.uuid4()
    await register_node(pool, node)
    slow = Persister(pool, node, linger=0.05)  # every write below lands in one batch
    await slow.start()
    try:
        run_ids = [new_id() for _ in range(7)]
        await slow.insert_runs([new_run(run_id) for run_id in run_ids])
        poisoned = run_ids[3]
        slow.write(
            [
                state(run_id, "exploded" if run_id == poisoned else "succeeded")
                for run_id in run_ids
            ],
            [(TENANT, run_ids[0], time.time(), 1, "note", None, None)],
            [(TENANT, run_ids[1], time.time(), 1, "info", "a log line")],
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await slow.barrier()  # what waited cannot know whose row went: it hears why
        statuses = dict(await pool.fetch("SELECT run_id, status FROM runs"))
        assert statuses == {
            run_id: "queued" if run_id == poisoned else "succeeded" for run_id in run_ids
        }
        assert await pool.fetchval("SELECT count(*) FROM run_events WHERE type = 'note'") == 1
        assert await pool.fetchval("SELECT count(*) FROM run_logs") == 1
        slow.write([state(poisoned, "failed")], [], [])
        await slow.barrier()  # the lane goes on
        assert (
            await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", poisoned) == "failed"
        )
    finally:
        await slow.stop()


async def test_every_kind_of_write_in_one_batch(pool: asyncpg.Pool) -> None:
    """A batch of every kind of row is one statement; each kind lands."""
    node = uuid.uuid4()
    await register_node(pool, node)
    existing = new_id()
    async with pool.acquire() as conn:
        await write_batch(
            conn, WriteBatch(uuid.uuid4(), [new_run(existing)], {}, [], [], {}), (node, "ordered")
        )
    now = time.time()
    batch = WriteBatch(
        uuid.uuid4(),
        [new_run(new_id())],
        {existing: state(existing, "running")},
        [
            run_event_row(
                tenant_id=TENANT,
                run_id=existing,
                at=now,
                attempt=1,
                type="timeout_refreshed",
                worker_id=None,
                detail={"seconds": 5},
            )
        ],
        [
            run_log_row(
                tenant_id=TENANT, run_id=existing, at=now, attempt=1, level="info", message="hi"
            )
        ],
        {(TENANT, "t"): "{}"},
        pushed_events=[
            pushed_event_row(
                tenant_id=TENANT,
                event_id=new_id(),
                key="k",
                payload_json=b"{}",
                metadata={},
                created_at=now,
                triggered=[],
                replay_of=None,
            )
        ],
        rate_usage={
            (TENANT, bucket): rate_usage_row(
                tenant_id=TENANT,
                key=bucket,
                lim=10,
                duration="minute",
                configured=False,
                usage=usage,
            )
            for bucket, usage in (("openai", [[1, 2]]), ("idle", []))
        },
        durable={
            (TENANT, existing, 0): durable_entry_row(
                tenant_id=TENANT,
                run_id=existing,
                position=0,
                kind="memo",
                call="f()",
                done=True,
                result=1,
                wait=None,
                finished_at=now,
            )
        },
    )
    async with pool.acquire() as conn:
        inserted = await write_batch(conn, batch, (node, "ordered"))
        assert [outcome.created for outcome in inserted.values()] == [True]
        assert await batch_committed(conn, node, "ordered", batch.batch_id)
    counts = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM runs) AS runs, "
        "(SELECT status FROM runs WHERE run_id = $1) AS status, "
        "(SELECT count(*) FROM run_events) AS events, (SELECT count(*) FROM run_logs) AS logs, "
        "(SELECT count(*) FROM task_definitions) AS definitions, "
        "(SELECT count(*) FROM events) AS pushed, "
        "(SELECT count(*) FROM rate_limits) AS buckets, "
        "(SELECT count(*) FROM durable_log) AS durable",
        existing,
    )
    assert dict(counts) == {
        "runs": 2,
        "status": "running",
        "events": 1,
        "logs": 1,
        "definitions": 1,
        "pushed": 1,
        "buckets": 1,
        "durable": 1,
    }
    # JSON columns hold JSON values, not strings of JSON
    stored = await pool.fetchrow(
        "SELECT (SELECT detail FROM run_events) AS detail, "
        "(SELECT result FROM durable_log) AS result, "
        "(SELECT jsonb_typeof(payload) FROM events) AS payload, "
        "(SELECT usage FROM rate_limits) AS usage"
    )
    assert dict(stored) == {
        "detail": {"seconds": 5},
        "result": 1,
        "payload": "object",
        "usage": [[1, 2]],
    }


async def test_a_run_inserted_and_updated_in_one_batch_keeps_its_update(pool: asyncpg.Pool) -> None:
    """The statements of one statement see the database as it was before it: a batch that
    inserts a run and updates it is written statement by statement instead."""
    node = uuid.uuid4()
    await register_node(pool, node)
    run_id = new_id()
    batch = WriteBatch(
        uuid.uuid4(), [new_run(run_id)], {run_id: state(run_id, "assigned")}, [], [], {}
    )
    async with pool.acquire() as conn:
        await write_batch(conn, batch, (node, "ordered"))
        assert await batch_committed(conn, node, "ordered", batch.batch_id)
    assert await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "assigned"


async def test_triggered_runs_commit_while_the_ordered_lane_is_stuck(
    persister: Persister, pool: asyncpg.Pool, db_url: str
) -> None:
    """A trigger never waits behind the engine's own writes: with the ordered lane blocked on a
    row lock, triggered runs still commit, and the ordered write lands once the lock goes."""
    run_id = new_id()
    await persister.insert_triggered([new_run(run_id)])
    locker = await asyncpg.connect(db_url)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE", run_id)
        persister.write([state(run_id, "assigned")], [], [])
        stuck = persister.barrier()
        triggered = [new_id() for _ in range(3)]
        for other in triggered:
            [outcome] = await asyncio.wait_for(persister.insert_triggered([new_run(other)]), 5)
            assert outcome.created
        assert not stuck.done()
        await lock.rollback()
        await asyncio.wait_for(stuck, 5)
    finally:
        await locker.close()
    assert await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "assigned"
    assert await pool.fetchval("SELECT count(*) FROM runs") == 4


async def test_run_states_are_written_through_the_primary_key(pool: asyncpg.Pool) -> None:
    """The plan Postgres caches for the prepared state write, on a partition of runs that grew
    since it was last analysed: a seq scan of it would cost milliseconds per flush (it did,
    once), and a hash join scans every partition."""
    async with pool.acquire() as conn:
        await conn.fetch(batch_sql.INSERT_RUNS, [new_run(new_id()) for _ in range(5000)])
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for name, value in WRITE_PLANNER.items():  # as the engine's persister plans
            await conn.execute(f"SET {name} = {value}")
        plan = "\n".join(
            row[0]
            for row in await conn.fetch(
                "EXPLAIN " + batch_sql.UPDATE_RUNS, [state(new_id(), "running")]
            )
        )
        await conn.execute("RESET plan_cache_mode")
    assert "Seq Scan" not in plan, plan
    scans = [line for line in plan.splitlines() if "Index Scan using" in line]
    assert scans, plan
    # every partition by its primary key, the small ones too (another index with tenant_id
    # first would tie there, and a plan cached then would read all of a tenant's runs)
    assert all("_pkey on runs_" in line for line in scans), plan


async def test_rows_nobody_waits_for_go_with_the_next_awaited_batch(pool: asyncpg.Pool) -> None:
    """A run's assignment and start are written within write_delay, or at once with a batch
    someone waits for: many transitions, one transaction."""
    node = uuid.uuid4()
    await register_node(pool, node)
    delayed = Persister(pool, node, write_delay=0.3)
    await delayed.start()
    try:
        run_id = new_id()
        await delayed.insert_runs([new_run(run_id)])
        before = delayed.flushes
        delayed.write([state(run_id, "assigned")], [], [])
        delayed.write([state(run_id, "running")], [], [])
        await asyncio.sleep(0.1)
        assert (
            await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "queued"
        ), "still waiting for company"
        delayed.write([state(run_id, "succeeded")], [], [])
        await asyncio.wait_for(delayed.barrier(), 0.2)  # a barrier does not wait the delay out
        assert delayed.flushes - before == 1
        assert (
            await pool.fetchval("SELECT status FROM runs WHERE run_id = $1", run_id) == "succeeded"
        )

        delayed.write([state(run_id, "succeeded", attempt=2)], [], [])
        for _ in range(100):  # alone, it is written once the delay is over
            if await pool.fetchval("SELECT attempt FROM runs WHERE run_id = $1", run_id) == 2:
                break
            await asyncio.sleep(0.02)
        assert await pool.fetchval("SELECT attempt FROM runs WHERE run_id = $1", run_id) == 2
    finally:
        await delayed.stop()


async def test_states_that_may_wait_are_replaced_before_they_are_written(
    pool: asyncpg.Pool,
) -> None:
    """Under load: an assignment held for write_delay is replaced by the run's end, so the run's
    row is updated once; the end is written at once; a flush writes what is held."""
    node = uuid.uuid4()
    await register_node(pool, node)
    holding = Persister(pool, node, write_delay=5.0)
    await holding.start()
    try:
        ended, waiting = new_id(), new_id()
        await holding.insert_runs([new_run(ended), new_run(waiting)])
        holding.write([state(ended, "assigned"), state(waiting, "assigned")], [], [], may_wait=True)
        await holding.barrier()  # other batches go; the held states stay
        statuses = dict(await pool.fetch("SELECT run_id, status FROM runs"))
        assert statuses == {ended: "queued", waiting: "queued"}
        holding.write([state(ended, "succeeded")], [], [])
        await asyncio.wait_for(holding.barrier(), 1)
        statuses = dict(await pool.fetch("SELECT run_id, status FROM runs"))
        assert statuses == {ended: "succeeded", waiting: "queued"}
        await asyncio.wait_for(holding.flush(), 1)
        statuses = dict(await pool.fetch("SELECT run_id, status FROM runs"))
        assert statuses == {ended: "succeeded", waiting: "assigned"}, "flush writes what is held"
    finally:
        await holding.stop()


async def test_a_batch_rolled_back_by_a_deadlock_is_written_again(
    persister: Persister, pool: asyncpg.Pool
) -> None:
    """Postgres rolls back one side of a deadlock: nothing of the batch was written, so it is
    written again whole, and its new runs are created, not refused."""
    await pool.execute(
        """
        CREATE SEQUENCE deadlocks;
        CREATE FUNCTION lose_one_deadlock() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('deadlocks') = 1 THEN  -- a sequence: not rolled back with the batch
                RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER lose_one_deadlock BEFORE INSERT ON runs
            FOR EACH ROW EXECUTE FUNCTION lose_one_deadlock();
        """
    )
    run_id = new_id()
    [outcome] = await persister.insert_runs([new_run(run_id)])
    assert outcome.created
    assert await pool.fetchval("SELECT count(*) FROM runs WHERE run_id = $1", run_id) == 1
    conflicts = [lane.errors.get("conflict", 0) for lane in persister.sample().lanes.values()]
    assert sum(conflicts) == 1
