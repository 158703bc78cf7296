"""Transactional enqueue: triggers written into the application's own database, in its own
transaction, as rows of the `taskyard_outbox` table. The engine drains the table (see
docs/outbox.md): a committed row becomes exactly one run, a rolled-back one never existed.

The table is created by `SCHEMA` (`taskyard outbox install --database-url ...`, `install()` /
`aio_install()`, or one `op.execute` per statement in an Alembic migration). Rows are written
through whichever connection the application holds: an asyncpg connection, a psycopg 3
connection (sync or async), or a SQLAlchemy session or connection (sync or async). A statement
trigger NOTIFYs the engine when the transaction commits, so an idle engine sees a row at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from taskyard_sdk._errors import InvalidRequest
from taskyard_sdk.ids import new_run_id

TABLE = "taskyard_outbox"
CHANNEL = "taskyard_outbox"  # notified with the table's schema when rows commit

Kind = Literal["task", "workflow", "event"]

SCHEMA: tuple[str, ...] = (
    # Serialises concurrent installs (CREATE ... IF NOT EXISTS alone races on the catalog).
    "SELECT pg_advisory_xact_lock(7320604115376125780)",
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id          uuid PRIMARY KEY,   -- the run's (workflow run's, event's) id, chosen by the SDK
    kind        text NOT NULL CHECK (kind IN ('task', 'workflow', 'event')),
    target      text NOT NULL,      -- the task, the workflow, or the event's key
    body        jsonb NOT NULL,     -- the trigger as the REST API takes it
    created_at  timestamptz NOT NULL DEFAULT now(),
    ready_at    timestamptz NOT NULL DEFAULT now(),  -- a failed row waits until then
    claimed_until timestamptz,      -- an engine is triggering it (its lease)
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text                -- why the engine could not trigger it yet
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_ready ON {TABLE} (ready_at) WHERE claimed_until IS NULL",
    f"""CREATE OR REPLACE FUNCTION {TABLE}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', TG_TABLE_SCHEMA);
    RETURN NULL;
END $$""",
    f"""CREATE OR REPLACE TRIGGER {TABLE}_notify AFTER INSERT ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_notify()""",
)

# One statement for one row or many: arrays of text, cast in SQL, so that no driver's own codecs
# for uuid or jsonb (which an application may have replaced) are involved.
_INSERT = (
    f"INSERT INTO {TABLE} (id, kind, target, body) "
    "SELECT CAST(i AS uuid), k, t, CAST(b AS jsonb) "
    "FROM unnest(CAST({0} AS text[]), CAST({1} AS text[]), CAST({2} AS text[]), "
    "CAST({3} AS text[])) AS r(i, k, t, b)"
)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One trigger, as it is stored."""

    id: UUID
    kind: Kind
    target: str
    body: bytes  # JSON


def new_row(kind: Kind, target: str, model: type[BaseModel], request: dict[str, Any]) -> OutboxRow:
    """A row for `request`, checked against the model the REST API checks it with: what the
    engine would refuse is refused here, inside the application's transaction."""
    _check(kind, target, model, request)
    return OutboxRow(new_run_id(), kind, target, to_json(request))


def new_rows(
    kind: Kind, target: str, model: type[BaseModel], common: dict[str, Any], inputs: Sequence[Any]
) -> list[OutboxRow]:
    """Rows for triggers that differ only in their input (JSON-able, checked against the task's
    or workflow's input model already): what they share is checked once, not once a row."""
    _check(kind, target, model, common)
    return [
        OutboxRow(new_run_id(), kind, target, to_json({**common, "input": value}))
        for value in inputs
    ]


def _check(kind: Kind, target: str, model: type[BaseModel], request: dict[str, Any]) -> None:
    try:
        model.model_validate(request)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidRequest(422, "invalid", f"{kind} {target!r}: {problems}") from None


def write(conn: Any, rows: Sequence[OutboxRow]) -> None:
    """Insert rows through a sync connection (psycopg, SQLAlchemy Session or Connection), in
    whatever transaction it has open."""
    if not rows:
        return
    driver = _driver(conn)
    if driver.is_async:
        raise TypeError(
            f"{type(conn).__name__} is asynchronous: use the aio_ variant "
            f"(await task.aio_run_in(conn, ...))"
        )
    driver.execute(conn, rows)


async def aio_write(conn: Any, rows: Sequence[OutboxRow]) -> None:
    """Insert rows through an async connection (asyncpg, psycopg AsyncConnection, SQLAlchemy
    AsyncSession or AsyncConnection), in whatever transaction it has open."""
    if not rows:
        return
    driver = _driver(conn)
    if not driver.is_async:
        raise TypeError(
            f"{type(conn).__name__} is synchronous: use the variant without aio_ "
            f"(task.run_in(conn, ...))"
        )
    await driver.execute(conn, rows)


def install(conn: Any) -> None:
    """Create the outbox table through a psycopg connection, committed at once."""
    with conn.transaction():
        for statement in SCHEMA:
            conn.execute(statement)


async def aio_install(conn: Any) -> None:
    """Create the outbox table through an asyncpg or psycopg async connection."""
    async with conn.transaction():
        for statement in SCHEMA:
            await conn.execute(statement)


# -- drivers -------------------------------------------------------------------------------------


def _columns(rows: Sequence[OutboxRow]) -> tuple[list[str], list[str], list[str], list[str]]:
    return (
        [str(row.id) for row in rows],
        [row.kind for row in rows],
        [row.target for row in rows],
        [row.body.decode() for row in rows],
    )


class _Asyncpg:
    is_async = True
    sql = _INSERT.format("$1", "$2", "$3", "$4")

    async def execute(self, conn: Any, rows: Sequence[OutboxRow]) -> None:
        await conn.execute(self.sql, *_columns(rows))


class _Psycopg:
    sql = _INSERT.format("%s", "%s", "%s", "%s")

    def __init__(self, is_async: bool) -> None:
        self.is_async = is_async

    def execute(self, conn: Any, rows: Sequence[OutboxRow]) -> Any:
        return conn.execute(self.sql, _columns(rows))  # a coroutine for an AsyncConnection


class _SqlAlchemy:
    def __init__(self, is_async: bool) -> None:
        from sqlalchemy import text

        self.is_async = is_async
        self.statement = text(_INSERT.format(":ids", ":kinds", ":targets", ":bodies"))

    def execute(self, conn: Any, rows: Sequence[OutboxRow]) -> Any:
        ids, kinds, targets, bodies = _columns(rows)
        parameters = {"ids": ids, "kinds": kinds, "targets": targets, "bodies": bodies}
        return conn.execute(self.statement, parameters)  # awaitable for the async ones


def _driver(conn: Any) -> _Asyncpg | _Psycopg | _SqlAlchemy:
    """The driver of `conn`, by the package its class (or a class it derives from, such as
    SQLModel's Session) comes from."""
    packages = {klass.__module__.split(".")[0] for klass in type(conn).__mro__}
    if "asyncpg" in packages:
        if not hasattr(conn, "is_in_transaction"):  # a pool: each call takes any connection
            raise TypeError(
                "an asyncpg pool runs each statement on a connection of its choosing, outside "
                "your transaction: acquire a connection and open the transaction on it"
            )
        return _Asyncpg()
    if "psycopg" in packages:
        return _Psycopg(is_async=inspect.iscoroutinefunction(conn.execute))
    if "sqlalchemy" in packages:
        return _SqlAlchemy(is_async=inspect.iscoroutinefunction(conn.execute))
    raise TypeError(
        f"cannot write to the outbox through {type(conn).__module__}.{type(conn).__name__}: "
        f"give an asyncpg connection, a psycopg 3 connection (sync or async) or a SQLAlchemy "
        f"session or connection (sync or async)"
    )
