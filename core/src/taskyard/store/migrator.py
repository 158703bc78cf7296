"""Apply the numbered SQL files in `migrations/` in order, once each, safely under concurrency.

Each migration runs in its own transaction and is recorded in `taskyard_migrations`. A migration
that must not hold its locks for long is cut into parts by `-- taskyard: commit` lines, each part
committed on its own (and written so it can run again after a crash between parts); a part marked
`-- taskyard: commit, outside a transaction` is one statement that cannot run inside one (CREATE
INDEX CONCURRENTLY). The last part records the migration. An advisory lock serialises engines that
start together; the second one finds the work done. A database that
holds a migration this build does not know (a newer engine migrated it) is refused, not guessed at.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# pg_advisory_lock key: "taskyard" folded into a bigint, so other applications' locks do not clash.
_LOCK_KEY = int.from_bytes(b"taskyard", "big") & 0x7FFF_FFFF_FFFF_FFFF
_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_PART = re.compile(r"^-- taskyard: commit(, outside a transaction)?$", re.MULTILINE)


class MigrationError(RuntimeError):
    """The database's schema cannot be brought to this build's version."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    def parts(self) -> list[tuple[str, bool]]:
        """The SQL of each part, and whether it runs in a transaction."""
        pieces = _PART.split(self.sql)  # text, marker, text, marker, ...
        parts = [(pieces[0], True)]
        for outside, sql in zip(pieces[1::2], pieces[2::2], strict=True):
            parts.append((sql, outside is None))
        return parts


def available_migrations() -> list[Migration]:
    """The migrations shipped with this build, in order."""
    folder = resources.files("taskyard").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(
                Migration(
                    int(match.group(1)),
                    entry.name.removesuffix(".sql"),
                    entry.read_text(encoding="utf-8"),
                )
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {versions}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    migrations = available_migrations()
    # Tried, not waited for: a session blocked in pg_advisory_lock holds a snapshot, which the
    # other's CREATE INDEX CONCURRENTLY waits for (a deadlock).
    while True:
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            break
        await asyncio.sleep(0.05)
    try:
        await conn.execute("""
            CREATE TABLE IF NOT EXISTS taskyard_migrations (
                version     integer PRIMARY KEY,
                name        text NOT NULL,
                applied_at  timestamptz NOT NULL DEFAULT now()
            )""")
        rows = await conn.fetch("SELECT version, name FROM taskyard_migrations ORDER BY version")
        applied = {row["version"]: row["name"] for row in rows}
        known = {m.version for m in migrations}
        unknown = [name for version, name in applied.items() if version not in known]
        if unknown:
            raise MigrationError(
                f"the database has migration(s) {', '.join(unknown)} that this build of Taskyard "
                f"does not know; it was migrated by a newer engine. Upgrade taskyard-engine."
            )
        done = []
        for migration in migrations:
            if migration.version in applied:
                continue
            log.info("applying migration %s", migration.name)
            *first, (last, _) = migration.parts()
            for sql, in_transaction in first:
                if in_transaction:
                    async with conn.transaction():
                        await conn.execute(sql)
                else:
                    await conn.execute(sql)
            async with conn.transaction():
                await conn.execute(last)
                await conn.execute(
                    "INSERT INTO taskyard_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    """Names of migrations not yet applied (all of them on an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('taskyard_migrations') IS NOT NULL")
    applied = set()
    if exists:
        rows = await conn.fetch("SELECT version FROM taskyard_migrations")
        applied = {row["version"] for row in rows}
    return [m.name for m in available_migrations() if m.version not in applied]
