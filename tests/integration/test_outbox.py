"""Transactional enqueue: runs, workflow runs and events written through the application's own
connection exist if and only if its transaction commits, with each driver the SDK takes, drained
from an application database or from the engine's own."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from taskyard.config import OutboxBinding
from taskyard.engine import Engine
from taskyard_sdk import (
    InvalidInput,
    InvalidRequest,
    ResultTimeout,
    RunHandle,
    RunStatus,
    Taskyard,
    Workflow,
)
from taskyard_sdk import outbox as sdk_outbox
from tests.conftest import engine_settings
from tests.support import connected, wait_until

ORDERS = "CREATE TABLE orders (order_id integer PRIMARY KEY, receipt_run uuid NOT NULL)"


class Receipt(BaseModel):
    order_id: int


@pytest.fixture
async def app_url(empty_db_url: str) -> str:
    """An application's database, apart from the engine's: its own table and the outbox."""
    async with connected(empty_db_url) as conn:
        await conn.execute(ORDERS)
        await sdk_outbox.aio_install(conn)
    return empty_db_url


async def started(db_url: str, data_dir: Path, *bindings: OutboxBinding) -> Engine:
    engine = Engine(engine_settings(db_url, data_dir, outbox=list(bindings), outbox_poll=0.2))
    await engine.start()
    return engine


@pytest.fixture
async def app_engine(db_url: str, data_dir: Path, app_url: str) -> AsyncIterator[Engine]:
    """An engine draining the application database's outbox into its local tenant."""
    engine = await started(db_url, data_dir, OutboxBinding(tenant="default", url=app_url))
    yield engine
    await engine.stop()


@pytest.fixture
async def client(app_engine: Engine, data_dir: Path) -> AsyncIterator[Taskyard]:
    ty = Taskyard(url=app_engine.url, token=(data_dir / "token").read_text().strip())
    yield ty
    await ty.aio_close()


def receipts(ty: Taskyard, seen: list[int]) -> Any:
    @ty.task(name="send-receipt")
    async def send_receipt(receipt: Receipt) -> str:
        seen.append(receipt.order_id)
        return f"receipt for {receipt.order_id}"

    return send_receipt


# -- one transaction per driver ------------------------------------------------------------------


async def through_asyncpg(url: str, write: Callable[..., Any], commit: bool) -> Any:
    async with connected(url) as conn:
        transaction = conn.transaction()
        await transaction.start()
        result = await write(conn)
        await (transaction.commit() if commit else transaction.rollback())
        return result


async def through_psycopg_async(url: str, write: Callable[..., Any], commit: bool) -> Any:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        result = await write(conn)
        await (conn.commit() if commit else conn.rollback())
        return result


async def through_psycopg(url: str, write: Callable[..., Any], commit: bool) -> Any:
    def work() -> Any:
        with psycopg.connect(url) as conn:
            result = write(conn)
            conn.commit() if commit else conn.rollback()
            return result

    return await asyncio.to_thread(work)


async def through_sqlalchemy(url: str, write: Callable[..., Any], commit: bool) -> Any:
    def work() -> Any:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with Session(engine) as session:
                result = write(session)
                session.commit() if commit else session.rollback()
                return result
        finally:
            engine.dispose()

    return await asyncio.to_thread(work)


async def through_sqlalchemy_async(url: str, write: Callable[..., Any], commit: bool) -> Any:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with AsyncSession(engine) as session:
            result = await write(session)
            await (session.commit() if commit else session.rollback())
            return result
    finally:
        await engine.dispose()


ASYNC_DRIVERS = {
    "asyncpg": through_asyncpg,
    "psycopg-async": through_psycopg_async,
    "sqlalchemy-async": through_sqlalchemy_async,
}
SYNC_DRIVERS = {"psycopg": through_psycopg, "sqlalchemy": through_sqlalchemy}


def order_sql(driver: str) -> str:
    if driver in ("asyncpg",):
        return "INSERT INTO orders VALUES ($1, $2)"
    if driver.startswith("psycopg"):
        return "INSERT INTO orders VALUES (%s, %s)"
    return "INSERT INTO orders VALUES (:order_id, :run_id)"


def order_writer(driver: str, task: Any, order_id: int) -> Callable[..., Any]:
    """What the application does in its transaction: enqueue the receipt, store its run id
    in the order's own row."""
    sql = order_sql(driver)

    def arguments(run_id: uuid.UUID) -> tuple[Any, ...]:
        if driver == "asyncpg":
            return (order_id, run_id)
        if driver.startswith("psycopg"):
            return ((order_id, run_id),)
        return (text(sql), {"order_id": order_id, "run_id": run_id})

    if driver in ASYNC_DRIVERS:

        async def write_async(conn: Any) -> RunHandle[str]:
            handle = await task.aio_run_in(conn, Receipt(order_id=order_id))
            statement = (sql,) if driver != "sqlalchemy-async" else ()
            await conn.execute(*statement, *arguments(handle.run_id))
            return handle

        return write_async

    def write(conn: Any) -> RunHandle[str]:
        handle = task.run_in(conn, Receipt(order_id=order_id))
        statement = (sql,) if driver != "sqlalchemy" else ()
        conn.execute(*statement, *arguments(handle.run_id))
        return handle

    return write


async def run_exists(engine: Engine, run_id: uuid.UUID) -> bool:
    return bool(await engine.pool.fetchval("SELECT count(*) FROM runs WHERE run_id = $1", run_id))


async def outbox_rows(url: str) -> int:
    async with connected(url) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM taskyard_outbox"))


@pytest.mark.parametrize("driver", [*ASYNC_DRIVERS, *SYNC_DRIVERS])
async def test_a_run_exists_if_and_only_if_the_transaction_commits(
    driver: str, app_engine: Engine, client: Taskyard, app_url: str
) -> None:
    seen: list[int] = []
    task = receipts(client, seen)
    through = {**ASYNC_DRIVERS, **SYNC_DRIVERS}[driver]
    async with client.worker("receipts", tasks=[task]):
        rolled_back = (await through(app_url, order_writer(driver, task, 1), False)).run_id
        committed = await through(app_url, order_writer(driver, task, 2), True)
        assert await committed.aio_result(timeout=30) == "receipt for 2"  # waits for the drain
    assert seen == [2]
    assert not await run_exists(app_engine, rolled_back)
    assert (
        await app_engine.pool.fetchval("SELECT count(*) FROM runs WHERE task = 'send-receipt'") == 1
    )
    async with connected(app_url) as conn:
        assert await conn.fetch("SELECT order_id, receipt_run FROM orders") == [
            (2, committed.run_id)
        ]
    # An application database's row goes once its run committed, which may be after it ran.
    await wait_until(lambda: _drained(app_url), 30, "the committed row to be deleted")


async def test_a_handle_waits_for_a_run_the_engine_has_not_drained_yet(
    app_engine: Engine, client: Taskyard, app_url: str
) -> None:
    seen: list[int] = []
    task = receipts(client, seen)
    async with client.worker("receipts", tasks=[task]), connected(app_url) as conn:
        async with conn.transaction():
            handle = await task.aio_run_in(conn, Receipt(order_id=7))
        assert handle.enqueued
        assert await handle.aio_result(timeout=30) == "receipt for 7"


async def test_many_concurrent_transactions_give_exactly_the_committed_runs(
    app_engine: Engine, client: Taskyard, app_url: str
) -> None:
    task = receipts(client, [])
    pool = await asyncpg.create_pool(app_url, min_size=10, max_size=10)
    committed: set[uuid.UUID] = set()
    rolled_back: set[uuid.UUID] = set()

    async def application(worker: int) -> None:
        rng = random.Random(worker)
        for n in range(100):
            order_id = worker * 1000 + n
            async with pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                handle = await task.aio_run_in(conn, Receipt(order_id=order_id))
                await conn.execute(order_sql("asyncpg"), order_id, handle.run_id)
                if rng.random() < 0.5:
                    await transaction.commit()
                    committed.add(handle.run_id)
                else:
                    await transaction.rollback()
                    rolled_back.add(handle.run_id)

    try:
        await asyncio.gather(*(application(worker) for worker in range(10)))
    finally:
        await pool.close()
    assert len(committed) + len(rolled_back) == 1000
    assert 300 < len(committed) < 700
    await wait_until(lambda: _drained(app_url), 30, "the outbox to be drained")
    runs = {
        row["run_id"]
        for row in await app_engine.pool.fetch(
            "SELECT run_id FROM runs WHERE task = 'send-receipt'"
        )
    }
    assert runs == committed


async def test_workflows_and_events_go_through_the_outbox_too(
    app_engine: Engine, client: Taskyard, app_url: str
) -> None:
    signup: Workflow[dict[str, Any]] = client.workflow("signup", on_events=["user:created"])

    @signup.task()
    async def welcome(user: dict[str, Any]) -> str:
        return f"welcome {user['name']}"

    async with client.worker("signups", workflows=[signup]):
        async with await psycopg.AsyncConnection.connect(app_url) as conn:
            handle = await signup.aio_run_in(conn, {"name": "ann"})
            event_id = await client.events.aio_push_in(conn, "user:created", {"name": "bob"})
            await conn.commit()
        assert (await handle.aio_result(timeout=30))["welcome"] == "welcome ann"
        await wait_until(lambda: _event_stored(app_engine, event_id), 30, "the event")
        [triggered] = (await client.events.aio_get(event_id)).triggered
        done = await client.runs.aio_wait([triggered], timeout=30)
        assert done[triggered].status is RunStatus.SUCCEEDED


async def _drained(url: str) -> bool:
    return await outbox_rows(url) == 0


async def _failed(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM taskyard_outbox WHERE last_error > ''"))


async def _event_stored(engine: Engine, event_id: uuid.UUID) -> bool:
    found = await engine.pool.fetchval("SELECT count(*) FROM events WHERE event_id = $1", event_id)
    return bool(found)


async def test_bad_input_is_refused_inside_the_transaction(client: Taskyard, app_url: str) -> None:
    task = receipts(client, [])
    async with connected(app_url) as conn:
        async with conn.transaction():
            with pytest.raises(InvalidInput, match="send-receipt"):
                await task.aio_run_in(conn, {"order_id": "not a number"})
            with pytest.raises(InvalidRequest, match="metadata"):
                await task.aio_run_in(conn, Receipt(order_id=1), metadata={"k": 3})
            with pytest.raises(InvalidRequest, match="priority"):
                await task.aio_run_in(conn, Receipt(order_id=1), priority=10_000)
            await conn.execute(order_sql("asyncpg"), 1, uuid.uuid4())  # the transaction goes on
        assert await conn.fetchval("SELECT count(*) FROM taskyard_outbox") == 0
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1


async def test_the_wrong_kind_of_connection_is_a_clear_error(
    client: Taskyard, app_url: str
) -> None:
    task = receipts(client, [])
    with pytest.raises(TypeError, match="asyncpg connection, a psycopg 3 connection"):
        await task.aio_run_in(object(), Receipt(order_id=1))
    async with connected(app_url) as conn:
        with pytest.raises(TypeError, match="asynchronous: use the aio_ variant"):
            task.run_in(conn, Receipt(order_id=1))
    with (
        psycopg.connect(app_url) as sync_conn,
        pytest.raises(TypeError, match="synchronous: use the variant without aio_"),
    ):
        await task.aio_run_in(sync_conn, Receipt(order_id=1))


async def test_rows_committed_while_the_engine_is_down_run_when_it_is_back(
    db_url: str, data_dir: Path, app_url: str
) -> None:
    binding = OutboxBinding(tenant="default", url=app_url)
    engine = await started(db_url, data_dir, binding)
    await engine.stop()  # the engine is down from here on
    ty = Taskyard(url="http://127.0.0.1:1", token="unused")
    task = receipts(ty, [])
    async with connected(app_url) as conn, conn.transaction():
        handles = await task.aio_run_many_in(conn, [Receipt(order_id=n) for n in range(50)])
    await ty.aio_close()
    engine = await started(db_url, data_dir, binding)
    try:
        ids = {handle.run_id for handle in handles}
        await wait_until(lambda: _drained(app_url), 30, "the outbox to be drained")
        found = await engine.pool.fetch("SELECT run_id FROM runs WHERE run_id = ANY($1)", ids)
        assert {row["run_id"] for row in found} == ids
    finally:
        await engine.stop()


async def test_the_engines_own_outbox_is_deleted_with_the_runs_insert(
    db_url: str, data_dir: Path
) -> None:
    engine = await started(db_url, data_dir, OutboxBinding(tenant="default"))
    try:
        [drainer] = engine.outboxes
        ty = Taskyard(url=engine.url, token=(data_dir / "token").read_text().strip())
        seen: list[int] = []
        task = receipts(ty, seen)
        async with ty.worker("receipts", tasks=[task]), connected(db_url) as conn:
            async with conn.transaction():
                handle = await task.aio_run_in(conn, Receipt(order_id=3))
            assert await handle.aio_result(timeout=30) == "receipt for 3"
            assert await conn.fetchval("SELECT count(*) FROM taskyard_outbox") == 0
        assert drainer.own
        assert drainer.drained == 1
        await ty.aio_close()
    finally:
        await engine.stop()


async def test_a_row_the_engine_cannot_trigger_waits_with_its_error_and_is_tried_again(
    app_engine: Engine, client: Taskyard, app_url: str
) -> None:
    later: Workflow[int] = client.workflow("registered-later")

    @later.task()
    async def step(value: int) -> int:
        return value * 2

    async with connected(app_url) as conn:
        handle = await later.aio_run_in(conn, 21)  # autocommit: committed at once
        await wait_until(lambda: _failed(conn), 30, "the row to fail")
        error = await conn.fetchval("SELECT last_error FROM taskyard_outbox")
        assert "no workflow 'registered-later'" in error
        async with client.worker("later", workflows=[later]):  # registers the workflow
            outputs = await handle.aio_result(timeout=60)
        assert outputs["step"] == 42
        assert await conn.fetchval("SELECT count(*) FROM taskyard_outbox") == 0


@pytest.mark.parametrize("where", ["application", "engine"])
async def test_a_row_left_behind_after_its_run_committed_does_not_run_again(
    where: str, db_url: str, data_dir: Path, app_url: str
) -> None:
    """A crash between the runs' commit and the rows' delete leaves rows whose runs exist: drained
    again, they are deleted, and nothing runs twice (the event starts no second workflow run)."""
    outbox_url = app_url if where == "application" else db_url
    binding = OutboxBinding(tenant="default", url=app_url if where == "application" else None)
    engine = await started(db_url, data_dir, binding)
    ty = Taskyard(url=engine.url, token=(data_dir / "token").read_text().strip())
    seen: list[int] = []
    task = receipts(ty, seen)
    greeted = ty.workflow("greeted", on_events=["user:created"])

    @greeted.task()
    async def hello(user: dict[str, str]) -> str:
        seen.append(-1)
        return user["name"]

    try:
        async with ty.worker("once", tasks=[task], workflows=[greeted]):
            await greeted.aio_register()
            async with connected(outbox_url) as conn:
                async with conn.transaction():
                    handle = await task.aio_run_in(conn, Receipt(order_id=5))
                    event_id = await ty.events.aio_push_in(conn, "user:created", {"name": "ann"})
                rows = await conn.fetch("SELECT id, kind, target, body FROM taskyard_outbox")
                assert await handle.aio_result(timeout=30) == "receipt for 5"
                await wait_until(lambda: _event_stored(engine, event_id), 30, "the event")
                [started_run] = (await ty.events.aio_get(event_id)).triggered
                await ty.runs.aio_wait([started_run], timeout=30)
                assert sorted(seen) == [-1, 5]
                await wait_until(lambda: _drained(outbox_url), 30, "the outbox to be drained")
                await conn.executemany(  # the rows as a crash would have left them
                    "INSERT INTO taskyard_outbox (id, kind, target, body) VALUES ($1, $2, $3, $4)",
                    [tuple(row) for row in rows],
                )
                await wait_until(lambda: _drained(outbox_url), 30, "the rows to be drained again")
            await asyncio.sleep(0.5)  # time for a second execution to show, were there one
        assert sorted(seen) == [-1, 5]
        kinds = await engine.pool.fetch("SELECT kind, count(*) FROM runs GROUP BY kind")
        assert sorted(map(tuple, kinds)) == [("task", 2), ("workflow", 1)]  # receipt, step
        assert await engine.pool.fetchval("SELECT count(*) FROM events") == 1
        assert (await ty.runs.aio_get(handle.run_id)).status is RunStatus.SUCCEEDED
    finally:
        await ty.aio_close()
        await engine.stop()


async def test_the_application_database_dropping_the_drainer_loses_and_repeats_nothing(
    app_engine: Engine, client: Taskyard, app_url: str
) -> None:
    task = receipts(client, [])
    async with connected(app_url) as conn:
        async with conn.transaction():
            handles = await task.aio_run_many_in(conn, [Receipt(order_id=n) for n in range(5000)])
        for _ in range(5):  # the drainer's connections are cut, again and again, as it drains
            await asyncio.sleep(0.05)
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await wait_until(lambda: _drained(app_url), 60, "the outbox to be drained")
    runs = await app_engine.pool.fetch("SELECT run_id, status FROM runs")
    assert {row["run_id"] for row in runs} == {handle.run_id for handle in handles}
    assert {row["status"] for row in runs} == {"queued"}


async def test_waiting_for_a_run_that_never_arrives_times_out(client: Taskyard) -> None:
    task = receipts(client, [])
    handle = RunHandle(task, uuid.uuid4(), enqueued=True)  # as if its row were never drained
    with pytest.raises(ResultTimeout):
        await handle.aio_result(timeout=0.5)
    with pytest.raises(ResultTimeout):
        await client.runs.aio_wait([handle.run_id], timeout=0.3, enqueued=True)


async def test_an_asyncpg_pool_is_refused(client: Taskyard, app_url: str) -> None:
    task = receipts(client, [])
    pool = await asyncpg.create_pool(app_url, min_size=1, max_size=1)
    try:
        with pytest.raises(TypeError, match="acquire a connection"):
            await task.aio_run_in(pool, Receipt(order_id=1))
        async with pool.acquire() as conn, conn.transaction():  # a pool's connection is fine
            await task.aio_run_in(conn, Receipt(order_id=1))
    finally:
        await pool.close()
