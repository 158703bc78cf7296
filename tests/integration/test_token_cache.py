"""Token lookups are cached, and revocation still takes effect at once: on the engine that
revokes, on another engine sharing the database, after a CLI revoke, and when the notification
that carries it could have been missed."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from taskyard.domain.auth import Role
from taskyard.engine import Engine
from taskyard.store.db import create_pool
from taskyard.store.tenants import TenantRepository
from taskyard.store.token_cache import TokenCache
from taskyard.testing import clean_env
from taskyard_sdk import RunStatus, Taskyard, WorkerStopped
from tests.conftest import TenantTokens, engine_settings
from tests.support import taskyard


async def whoami(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(
        f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        await response.read()
        return response.status


async def until_refused(http: aiohttp.ClientSession, url: str, token: str, within: float) -> float:
    """Seconds until the token is refused; fails after `within`."""
    started = time.monotonic()
    while await whoami(http, url, token) != 401:
        assert time.monotonic() - started < within, f"still accepted after {within}s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_revoked_on_another_engine_is_refused_at_once(
    engine: Engine, db_url: str, tmp_path: Path, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with Engine(engine_settings(db_url, tmp_path / "second")) as second:
        token, secret = await engine.repository.create_token(tenant.tenant_id, Role.CLIENT)
        assert await whoami(http, second.url, secret) == 200  # cached on the second engine
        async with http.delete(
            f"{engine.url}/api/v1/tokens/{token.token_id}", headers=tenant.headers()
        ) as response:
            assert response.status == 200
        assert await whoami(http, engine.url, secret) == 401  # the revoking engine: next request
        assert await until_refused(http, second.url, secret, within=1.0) < 0.5


async def test_revoked_from_the_cli_is_refused_at_once(
    engine: Engine, db_url: str, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    token, secret = await engine.repository.create_token(tenant.tenant_id, Role.WORKER)
    assert await whoami(http, engine.url, secret) == 200
    result = await asyncio.to_thread(
        taskyard, "token", "revoke", str(token.token_id), "--database-url", db_url, env=clean_env()
    )
    assert result.returncode == 0, result.stderr
    assert await until_refused(http, engine.url, secret, within=1.0) < 0.5


async def test_a_revocation_missed_while_the_listener_was_down_still_applies(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    """The listener's connection is killed and the token revoked behind its back (no notice
    reaches the engine): while the listener is down every request is looked up, and once it is
    back its cache starts empty, so the token is refused throughout, long before its cache entry
    would have expired."""
    _, secret = await engine.repository.create_token(tenant.tenant_id, Role.CLIENT)
    assert await whoami(http, engine.url, secret) == 200
    killed = await engine.pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%token_revoked%'"
    )
    assert killed == 1
    await engine.pool.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = "
        "sha256(convert_to($1, 'UTF8'))",
        secret,
    )
    assert await until_refused(http, engine.url, secret, within=5.0) < engine.token_cache.ttl
    for _ in range(100):
        listening = await engine.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN%token_revoked%'"
        )
        if listening:
            break
        await asyncio.sleep(0.05)
    assert listening == 1, "the listener is back"
    for _ in range(3):
        assert await whoami(http, engine.url, secret) == 401
        assert await whoami(http, engine.url, tenant.client) == 200


async def test_entries_expire_after_their_ttl(
    db_url: str, engine: Engine, tenant: TenantTokens
) -> None:
    """Belt and braces: even a revocation no engine was told of ends at the TTL."""
    pool = await create_pool(db_url)
    now = [1000.0]
    cache = TokenCache(TenantRepository(pool), db_url, ttl=30.0, clock=lambda: now[0])
    await cache.start()
    try:
        _, secret = await engine.repository.create_token(tenant.tenant_id, Role.CLIENT)
        principal = await cache.principal(secret)
        assert principal is not None
        assert principal.role is Role.CLIENT
        await pool.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = "
            "sha256(convert_to($1, 'UTF8'))",
            secret,
        )
        now[0] += 29.0
        assert await cache.principal(secret) is not None  # cached, and no notice was sent
        now[0] += 2.0
        assert await cache.principal(secret) is None
    finally:
        await cache.stop()
        await pool.close()


async def test_unknown_tokens_are_bounded(db_url: str) -> None:
    pool = await create_pool(db_url)
    cache = TokenCache(TenantRepository(pool), db_url, max_entries=100)
    await cache.start()
    try:
        for _ in range(300):
            assert await cache.principal(f"ty_{uuid.uuid4().hex}") is None
        assert len(cache._entries) <= 100
    finally:
        await cache.stop()
        await pool.close()


async def test_a_database_without_notifications_still_authenticates(
    engine: Engine, db_url: str, tenant: TenantTokens
) -> None:
    """With no listener at all (it cannot connect), every request is looked up: correct, just
    slower."""
    pool = await create_pool(db_url)
    cache = TokenCache(TenantRepository(pool), "postgresql://postgres@127.0.0.1:1/nowhere")
    await cache.start()
    try:
        _, secret = await engine.repository.create_token(tenant.tenant_id, Role.CLIENT)
        assert await cache.principal(secret) is not None
        await pool.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = "
            "sha256(convert_to($1, 'UTF8'))",
            secret,
        )
        assert await cache.principal(secret) is None
    finally:
        await cache.stop()
        await pool.close()


async def test_revoking_a_token_cuts_off_the_workers_connected_with_it(
    engine: Engine, db_url: str, tmp_path: Path, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    """A worker connected with a token, to this engine or another one, is disconnected when the
    token is revoked: its attempt is lost (and retried), what it sends after is not taken, and
    the SDK stops saying why instead of reconnecting."""
    started, release = asyncio.Event(), asyncio.Event()

    async with Engine(engine_settings(db_url, tmp_path / "second")) as second:
        for serving in (engine, second):
            started.clear()
            release.clear()
            # Triggered through the engine the worker is attached to: engines do not hand queued
            # runs to each other yet. The revocation itself always goes through `engine`.
            admin = Taskyard(url=serving.url, token=tenant.admin)

            @admin.task(name="held", retries=1)
            async def held(n: int) -> int:
                started.set()
                await release.wait()
                return n

            token, secret = await engine.repository.create_token(tenant.tenant_id, Role.WORKER)
            revoked_client = Taskyard(url=serving.url, token=secret)
            revoked = revoked_client.worker(f"revoked-{serving.port}", tasks=[held])
            running = asyncio.create_task(revoked.aio_start())
            await revoked.wait_connected()
            handle = await held.aio_run_no_wait(1)
            await asyncio.wait_for(started.wait(), 10)
            async with http.delete(
                f"{engine.url}/api/v1/tokens/{token.token_id}", headers=tenant.headers()
            ) as response:
                assert response.status == 200
            with pytest.raises(WorkerStopped, match="its token was revoked"):
                await asyncio.wait_for(running, 5)
            release.set()  # too late: the engine no longer listens to that worker
            for _ in range(100):
                view = await handle.aio_get()
                if view.attempt == 2:
                    break
                await asyncio.sleep(0.05)
            assert view.status is RunStatus.QUEUED
            assert view.attempt == 2
            first = view.attempts[0].error
            assert first is not None
            assert "token was revoked" in first.message
            fresh = Taskyard(url=serving.url, token=tenant.worker)
            async with fresh.worker("fresh", tasks=[held]):
                assert await handle.aio_result() == 1
            await fresh.aio_close()
            await revoked_client.aio_close()
            await admin.aio_close()
