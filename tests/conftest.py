"""Fixtures: a real PostgreSQL, a migrated template database cloned per test, in-process engines."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from taskyard.config import EngineSettings
from taskyard.domain.auth import Role
from taskyard.engine import Engine
from taskyard.store.migrator import migrate
from taskyard_sdk import Taskyard
from tests.support import ADMIN_URL, database_url

_PREFIX = "taskyard_test_"
_DUMP_BEFORE_TIMEOUT = 10.0  # seconds before the test's timeout
_counter = itertools.count()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Shortly before a test times out, print where each asyncio task is waiting: the timeout's
    own report shows only threads, and a hung test is almost always a task awaiting something."""
    timeout = float(item.config.getini("timeout") or 0)
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        timeout = float(marker.args[0])
    timer = None
    if timeout > _DUMP_BEFORE_TIMEOUT:
        timer = threading.Timer(timeout - _DUMP_BEFORE_TIMEOUT, _print_tasks, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()


def _print_tasks(nodeid: str) -> None:
    print(f"\n{nodeid} is about to time out; its asyncio tasks:", file=sys.stderr)
    for task in list(asyncio.tasks._all_tasks):  # every loop's, from this thread
        if not task.done():
            print(f"--- {task.get_name()}", file=sys.stderr)
            task.print_stack(limit=12, file=sys.stderr)


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    name = f"{_PREFIX}{os.getpid()}_template"

    async def create() -> None:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            # Only this run's own names: databases of other runs (perhaps in another container,
            # whose pids mean nothing here) are never touched, dead or alive.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(database_url(name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    yield name
    asyncio.run(drop())


async def _new_database(template: str | None) -> str:
    name = f"{_PREFIX}{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await admin.close()
    return name


async def _drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db_url(template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    name = await _new_database(template_database)
    yield database_url(name)
    await _drop_database(name)


@pytest.fixture
async def empty_db_url() -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    name = await _new_database(None)
    yield database_url(name)
    await _drop_database(name)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def engine_settings(db_url: str, data_dir: Path, **overrides: object) -> EngineSettings:
    """Settings for test engines: fast heartbeats, so lost workers are noticed in about 1 s."""
    values: dict[str, object] = {
        "database_url": db_url,
        "port": 0,
        "data_dir": data_dir,
        "migrate": False,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 1.0,
    }
    values.update(overrides)
    return EngineSettings.model_validate(values)


@pytest.fixture
async def engine(db_url: str, data_dir: Path) -> AsyncIterator[Engine]:
    """An in-process engine on a free port, serving this test's database."""
    async with Engine(engine_settings(db_url, data_dir)) as running:
        yield running


@pytest.fixture
async def ty(engine: Engine, data_dir: Path) -> AsyncIterator[Taskyard]:
    """An SDK client with the engine's bootstrap admin token."""
    client = Taskyard(url=engine.url, token=(data_dir / "token").read_text().strip())
    yield client
    await client.aio_close()
    await asyncio.to_thread(client.close)  # what sync tasks opened through the blocking API


@dataclass(frozen=True)
class TenantTokens:
    """A tenant with one token per role."""

    tenant_id: uuid.UUID
    admin: str
    client: str
    worker: str
    viewer: str

    def headers(self, role: Role | str = Role.ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, Role(role).value)}"}


async def new_tenant(engine: Engine, name: str) -> TenantTokens:
    """A tenant with one token of each role."""
    created = await engine.repository.create_tenant(name)
    secrets = {
        role: (await engine.repository.create_token(created.tenant_id, role))[1] for role in Role
    }
    return TenantTokens(
        created.tenant_id,
        secrets[Role.ADMIN],
        secrets[Role.CLIENT],
        secrets[Role.WORKER],
        secrets[Role.VIEWER],
    )


@pytest.fixture
async def tenant(engine: Engine) -> TenantTokens:
    return await new_tenant(engine, f"acme-{uuid.uuid4().hex[:6]}")


@pytest.fixture
async def http(engine: Engine) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=engine.url) as session:
        yield session
