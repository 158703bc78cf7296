"""Migrations apply once, in order, under concurrency, and refuse unknown database versions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from taskyard.config import EngineSettings
from taskyard.engine import Engine
from taskyard.store.migrator import (
    MigrationError,
    available_migrations,
    migrate,
    pending_migrations,
)


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
