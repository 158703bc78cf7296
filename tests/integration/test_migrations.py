"""Migrations apply once, in order, under concurrency, and refuse unknown database versions."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from taskyard.config import EngineSettings
from taskyard.domain.auth import Role
from taskyard.engine import Engine
from taskyard.store.migrator import (
    MigrationError,
    available_migrations,
    migrate,
    pending_migrations,
)
from taskyard_sdk.ids import uuid7_bytes


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_is_idempotent(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        assert await pending_migrations(conn) == [m.name for m in available_migrations()]
        first = await migrate(conn)
        assert first == [m.name for m in available_migrations()]
        assert await migrate(conn) == []
        assert await pending_migrations(conn) == []
        recorded = await conn.fetchval("SELECT count(*) FROM taskyard_migrations")
        assert recorded == len(first)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_each_file_once(empty_db_url: str) -> None:
    connections = [await asyncpg.connect(empty_db_url) for _ in range(5)]
    try:
        results = await asyncio.gather(*(migrate(conn) for conn in connections))
        applied = [name for result in results for name in result]
        assert sorted(applied) == sorted(m.name for m in available_migrations())
        assert await connections[0].fetchval("SELECT count(*) FROM tenants") == 0
    finally:
        for conn in connections:
            await conn.close()


async def test_unknown_migration_in_database_is_refused(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO taskyard_migrations (version, name) VALUES (9999, '9999_from_the_future')"
        )
        with pytest.raises(MigrationError, match=r"9999_from_the_future.*Upgrade taskyard-engine"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_engine_with_no_migrate_refuses_an_unmigrated_database(
    empty_db_url: str, tmp_path: Path
) -> None:
    settings = EngineSettings(database_url=empty_db_url, port=0, data_dir=tmp_path, migrate=False)
    with pytest.raises(MigrationError, match="taskyard migrate"):
        await Engine(settings).start()


async def test_engine_migrates_on_start_and_bootstraps_a_local_tenant(
    empty_db_url: str, tmp_path: Path
) -> None:
    settings = EngineSettings(database_url=empty_db_url, port=0, data_dir=tmp_path)
    async with Engine(settings) as engine:
        assert await pending_migrations_of(engine) == []
        token_file = tmp_path / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        principal = await engine.authenticate(f"Bearer {token_file.read_text().strip()}")
        assert principal.tenant_name == "default"
        assert principal.role == "admin"
    token_file.unlink()
    async with Engine(settings) as engine:
        assert not token_file.exists(), "bootstrap happens only on an empty database"
        assert await engine.repository.count_tenants() == 1


async def pending_migrations_of(engine: Engine) -> list[str]:
    async with engine.pool.acquire() as conn:
        return await pending_migrations(conn)


async def test_an_existing_history_becomes_a_partition_without_a_copy(
    empty_db_url: str, tmp_path: Path
) -> None:
    """Upgrading a database that holds history: each table becomes the legacy partition of its
    partitioned successor (the same file on disk, nothing copied), its rows and idempotency keys
    still answer, and identity sequences go on from where they were."""
    conn = await asyncpg.connect(empty_db_url)
    tenant_id, run_id, key = uuid.uuid4(), uuid.UUID(bytes=uuid7_bytes()), "before-upgrade"
    try:
        await conn.execute(
            "CREATE TABLE taskyard_migrations (version integer PRIMARY KEY, name text NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for migration in available_migrations():
            if migration.version < 14:
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO taskyard_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
        await conn.execute("INSERT INTO tenants (tenant_id, name) VALUES ($1, 'old')", tenant_id)
        await conn.execute(
            "INSERT INTO runs (tenant_id, run_id, task, queue, status, attempt, priority, "
            "options, idempotency_key, created_at, queued_at, finished_at, output) "
            "VALUES ($1, $2, 'old-task', 'default', 'succeeded', 1, 1, '{}', $3, now(), now(), "
            "now(), '42')",
            tenant_id,
            run_id,
            key,
        )
        for _ in range(3):
            await conn.execute(
                "INSERT INTO run_events (tenant_id, run_id, at, attempt, type) "
                "VALUES ($1, $2, now(), 1, 'queued')",
                tenant_id,
                run_id,
            )
        files = {
            table: await conn.fetchval("SELECT pg_relation_filenode($1::regclass)", table)
            for table in ("runs", "run_events")
        }
        assert await migrate(conn) == ["0014_history_partitions"]
        for table, filenode in files.items():
            assert (
                await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = $1", table)
                == b"p"
            )
            legacy = f"{table}_legacy"
            assert (
                await conn.fetchval("SELECT pg_relation_filenode($1::regclass)", legacy) == filenode
            )
        assert await conn.fetchval("SELECT run_id FROM run_keys WHERE key = $1", key) == run_id
        seq = await conn.fetchval(
            "INSERT INTO run_events (tenant_id, run_id, at, attempt, type) "
            "VALUES ($1, $2, now(), 1, 'started') RETURNING seq",
            tenant_id,
            run_id,
        )
        assert seq == 4  # after the legacy rows' 1, 2, 3: a run's events stay in order
        tomorrow = f"runs_p{datetime.now(UTC).date() + timedelta(days=1):%Y%m%d}"
        assert await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", tomorrow)
    finally:
        await conn.close()

    settings = EngineSettings(database_url=empty_db_url, port=0, data_dir=tmp_path)
    async with Engine(settings) as engine:
        _, token = await engine.repository.create_token(tenant_id, Role.ADMIN, "test")
        async with aiohttp.ClientSession(
            engine.url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            again = await http.post(
                "/api/v1/runs", json={"task": "old-task", "idempotency_key": key}
            )
            assert again.status == 200, await again.text()
            assert (await again.json())["run_id"] == str(run_id)
            old = await http.get(f"/api/v1/runs/{run_id}")
            assert old.status == 200, await old.text()
            assert (await old.json())["output"] == 42
