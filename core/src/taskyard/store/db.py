"""Connecting to PostgreSQL: pools with our type codecs, and waiting for a server to come up."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import asyncpg
import orjson

log = logging.getLogger(__name__)

# Errors that mean "Postgres is unreachable or restarting right now": worth retrying.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.exceptions.InternalClientError,
)  # a connection left mid-operation by a failure

_JSONB_VERSION = b"\x01"  # jsonb's binary format is a version byte followed by the JSON text


def _unknown(value: Any) -> str:
    """orjson knows uuid.UUID but not asyncpg's own UUID type (ids read from Postgres)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


async def init_connection(conn: asyncpg.Connection) -> None:
    """Exchange json/jsonb as Python objects, encoded with orjson in the binary format."""
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        format="binary",
        encoder=lambda value: _JSONB_VERSION + orjson.dumps(value, default=_unknown),
        decoder=lambda data: orjson.loads(data[1:]),
    )
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        format="text",
        encoder=lambda value: orjson.dumps(value).decode(),
        decoder=orjson.loads,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections are handed back as they are. asyncpg's default reset runs one more
    round trip on every release (UNLISTEN, RESET ALL, advisory unlocks, CLOSE ALL) to undo
    session state; the engine leaves none on pooled connections (LISTEN has a connection of its
    own, advisory locks are transaction-scoped or released in `finally`, cursors live inside
    transactions), and asyncpg still rolls back a transaction left open."""


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    conn = await asyncpg.connect(url, **kwargs)
    await init_connection(conn)
    return conn


# The planner of the persister's connections (its own pool). Every statement of a write batch
# finds its rows by key, but a join of a batch's rows to `runs` can be planned as a hash join over
# a scan of every partition, and a plan cached while today's partition was small stays cached
# while it grows (until autovacuum analyses it). Nested loops over index lookups are always the
# right plan here, and prune the partitions row by row.
WRITE_PLANNER = {"enable_hashjoin": "off", "enable_mergejoin": "off", "enable_seqscan": "off"}


async def create_pool(
    url: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    wait_seconds: float = 30.0,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """A pool, retrying while the server is still starting (containers start together)."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=min_size,
                max_size=max_size,
                init=init_connection,
                reset=_keep_session,
                server_settings=server_settings,
            )
        except (OSError, asyncpg.CannotConnectNowError) as exc:
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(
                    f"cannot connect to PostgreSQL at {redact(url)}: {exc}"
                ) from exc
            log.info("PostgreSQL not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            assert pool is not None
            return pool


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached in time."""


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{location}"
