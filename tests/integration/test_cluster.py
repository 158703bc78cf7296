"""Several engine nodes on one database, in this process: tenants spread over the nodes by lease,
calls to any node forwarded to the owner, workers sent to the owner, leases handed over when a
node stops or joins, and Postgres refusing a batch fenced by a lease that moved on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from taskyard.domain.leases import owner_among
from taskyard.engine import Engine
from taskyard.store.leases import LeaseRepository
from taskyard.store.tenants import TenantRepository
from taskyard_sdk import Taskyard
from tests.conftest import TenantTokens, engine_settings, new_tenant
from tests.support import execute, scrape, value, wait_until


def node_settings(db_url: str, tmp_path: Path, name: str) -> object:
    return engine_settings(
        db_url, tmp_path / name, node_name=name, lease_seconds=2.0, lease_renew=0.2
    )


@pytest.fixture
async def nodes(db_url: str, tmp_path: Path) -> AsyncIterator[list[Engine]]:
    """Two engine nodes sharing one database."""
    first = Engine(node_settings(db_url, tmp_path, "node-a"))  # type: ignore[arg-type]
    second = Engine(node_settings(db_url, tmp_path, "node-b"))  # type: ignore[arg-type]
    await first.start()
    await second.start()
    try:
        yield [first, second]
    finally:
        await second.stop()
        await first.stop()


async def owners(db_url: str) -> dict[uuid.UUID, uuid.UUID | None]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT tenant_id, node_id FROM tenant_leases WHERE expires_at > now()"
        )
    finally:
        await conn.close()
    return {row["tenant_id"]: row["node_id"] for row in rows}


async def spread(db_url: str, nodes: list[Engine], tenants: list[TenantTokens]) -> bool:
    """Every tenant owned by exactly one node (leased, and recovered there), and every node
    owning some."""
    held = await owners(db_url)
    by_node = {
        engine.node_id: [t for t in tenants if held.get(t.tenant_id) == engine.node_id]
        for engine in nodes
    }
    return (
        all(t.tenant_id in held for t in tenants)
        and all(by_node.values())
        and all(_served_by_one(nodes, t) for t in tenants)
    )


def _served_by_one(nodes: list[Engine], tenant: TenantTokens) -> bool:
    return sum(node.cluster.lease_of(tenant.tenant_id) is not None for node in nodes) == 1


NODES = ("node-a", "node-b")


async def make_tenants(engine: Engine, count: int) -> list[TenantTokens]:
    """`count` tenants or more: until each node of NODES would own some (placement is by hash
    of the tenant's random id, so a few tenants can all fall to one node)."""
    made: list[TenantTokens] = []
    while len(made) < count or {owner_among(t.tenant_id, NODES) for t in made} != set(NODES):
        made.append(await new_tenant(engine, f"t{len(made)}-{uuid.uuid4().hex[:6]}"))
    return made


def owner_of(nodes: list[Engine], tenant: TenantTokens) -> Engine:
    [owner] = [node for node in nodes if node.cluster.lease_of(tenant.tenant_id) is not None]
    return owner


def other_than(nodes: list[Engine], engine: Engine) -> Engine:
    [other] = [node for node in nodes if node is not engine]
    return other


async def test_tenants_are_spread_and_any_node_serves_any_call(
    nodes: list[Engine], db_url: str
) -> None:
    tenants = await make_tenants(nodes[0], 8)
    await wait_until(lambda: spread(db_url, nodes, tenants), 10, "the tenants to be spread")
    for tenant in tenants:
        owner = owner_of(nodes, tenant)
        elsewhere = other_than(nodes, owner)
        # HTTP to the node that does not own the tenant: forwarded, answered by the owner.
        async with aiohttp.ClientSession(base_url=elsewhere.url) as http:
            async with http.post(
                "/api/v1/runs", json={"task": "add", "input": 1}, headers=tenant.headers()
            ) as response:
                assert response.status == 201, await response.text()
                run_id = (await response.json())["run_id"]
            async with http.get(f"/api/v1/runs/{run_id}", headers=tenant.headers()) as response:
                assert response.status == 200
                assert (await response.json())["status"] == "queued"
            # Errors are the owner's, unchanged.
            async with http.post(
                "/api/v1/runs", json={"task": ""}, headers=tenant.headers()
            ) as response:
                assert response.status == 422
                assert "body.task" in (await response.json())["error"]["message"]
        # The run is in the owner's queue actor, not the other node's.
        assert owner.services.actors.existing_queue(tenant.tenant_id, "default") is not None
        assert elsewhere.services.actors.existing_queue(tenant.tenant_id, "default") is None
    assert sum(node.http_forwarded for node in nodes) >= 3 * len(tenants)
    for node in nodes:
        samples = await scrape(node.url)
        assert value(samples, "taskyard_cluster_nodes") == 2
        held = sum(node.cluster.lease_of(t.tenant_id) is not None for t in tenants)
        assert value(samples, "taskyard_cluster_leases") == len(node.cluster.leases) >= held > 0
        assert value(samples, "taskyard_cluster_forwarded_calls_total") == node.http_forwarded


async def test_a_worker_connecting_to_the_wrong_node_runs_on_the_owner(
    nodes: list[Engine],
) -> None:
    tenant = await new_tenant(nodes[0], f"t-{uuid.uuid4().hex[:6]}")
    await wait_until(lambda: _served(nodes, tenant), 10, "the tenant to be owned")
    owner = owner_of(nodes, tenant)
    elsewhere = other_than(nodes, owner)
    ty = Taskyard(url=elsewhere.url, token=tenant.admin)

    @ty.task()
    async def double(n: int) -> int:
        return n * 2

    try:
        async with ty.worker("w", tasks=[double]):
            results = await asyncio.gather(*(double.aio_run(n) for n in range(20)))
            assert results == [n * 2 for n in range(20)]
            # Attached to the owner, having been told where it is by the node it dialled.
            assert [s.name for s in owner.services.registry.sessions.values()] == ["w"]
            assert elsewhere.services.registry.sessions == {}
    finally:
        await ty.aio_close()


async def test_a_node_that_stops_hands_its_tenants_over_and_work_goes_on(
    db_url: str, tmp_path: Path
) -> None:
    first = Engine(node_settings(db_url, tmp_path, "node-a"))  # type: ignore[arg-type]
    second = Engine(node_settings(db_url, tmp_path, "node-b"))  # type: ignore[arg-type]
    await first.start()
    await second.start()
    try:
        tenants = await make_tenants(first, 6)
        await wait_until(lambda: spread(db_url, [first, second], tenants), 10, "spread")
        moving = [t for t in tenants if second.cluster.lease_of(t.tenant_id) is not None]
        tenant = moving[0]
        ty = Taskyard(url=f"{second.url},{first.url}", token=tenant.admin)

        @ty.task()
        async def slow(n: int) -> int:
            await asyncio.sleep(0.3)
            return n

        try:
            async with ty.worker("w", tasks=[slow], slots=5):
                started = [await slow.aio_run_no_wait(n) for n in range(10)]
                await asyncio.sleep(0.4)  # some are running on the worker now
                loop = asyncio.get_running_loop()
                began = loop.time()
                await second.stop()  # as SIGTERM does: hands its tenants back first
                await wait_until(lambda: _all_held(first, moving), 5, "the other node to take them")
                handed_over = loop.time() - began
                results = [await run.aio_result() for run in started]
                assert results == list(range(10))
                later = await slow.aio_run(99)  # through the node that remains
                assert later == 99
        finally:
            await ty.aio_close()
        print(f"{len(moving)} tenants handed over in {handed_over * 1000:.0f} ms")
        assert handed_over < 2, handed_over
        held = await owners(db_url)
        assert all(held[t.tenant_id] == first.node_id for t in tenants)
    finally:
        await second.stop()
        await first.stop()


async def test_a_node_that_joins_takes_its_share(db_url: str, tmp_path: Path) -> None:
    first = Engine(node_settings(db_url, tmp_path, "node-a"))  # type: ignore[arg-type]
    await first.start()
    second = None
    try:
        tenants = await make_tenants(first, 8)
        await wait_until(
            lambda: _all_owned_by(db_url, tenants, first.node_id), 10, "the first node's"
        )
        second = Engine(node_settings(db_url, tmp_path, "node-b"))  # type: ignore[arg-type]
        await second.start()
        await wait_until(lambda: spread(db_url, [first, second], tenants), 10, "rebalancing")
        assert first.cluster.handovers >= 1
        assert second.cluster.takeovers == 0  # every lease it took was handed back to it
    finally:
        if second is not None:
            await second.stop()
        await first.stop()


async def test_postgres_refuses_a_batch_fenced_by_a_lease_that_moved_on(
    engine: Engine, tenant: TenantTokens, db_url: str
) -> None:
    """A node whose lease was taken over (it was frozen, say) writes nothing more for the
    tenant: its batch is refused by the fence, its waiters told that the tenant moved, and the
    node drops the tenant."""
    await wait_until(lambda: _served([engine], tenant), 10, "the tenant to be owned")
    conn = await asyncpg.connect(db_url)
    try:
        # Another node takes the lease over, as after this one's term ran out.
        intruder = uuid.uuid4()
        await conn.execute("INSERT INTO engine_nodes (node_id) VALUES ($1)", intruder)
        await conn.execute(
            "UPDATE tenant_leases SET node_id = $2, epoch = epoch + 1 WHERE tenant_id = $1",
            tenant.tenant_id,
            intruder,
        )
        status, body = await trigger_add(engine, tenant)
        # Still leased here as far as this node knows: its write is refused.
        assert status == 503, body
        assert body["error"]["code"] in ("tenant_moved", "unavailable")
        assert (
            await conn.fetchval("SELECT count(*) FROM runs WHERE tenant_id = $1", tenant.tenant_id)
            == 0
        )
        await wait_until(
            lambda: _not_held(engine, tenant), 5, "the node to drop the tenant it lost"
        )
        assert engine.persister.sample().lanes["triggers"].errors.get("fenced", 0) >= 1
    finally:
        await conn.close()


async def trigger_add(engine: Engine, tenant: TenantTokens) -> tuple[int, Any]:
    """POST one `add` run to `engine` as `tenant`: the answer's status and JSON body."""
    async with (
        aiohttp.ClientSession(base_url=engine.url) as http,
        http.post(
            "/api/v1/runs", json={"task": "add", "input": 1}, headers=tenant.headers()
        ) as response,
    ):
        return response.status, await response.json()


async def _served(nodes: list[Engine], tenant: TenantTokens) -> bool:
    return _served_by_one(nodes, tenant)


async def _all_owned_by(db_url: str, tenants: list[TenantTokens], node: uuid.UUID) -> bool:
    held = await owners(db_url)
    return all(held.get(t.tenant_id) == node for t in tenants)


async def _not_held(engine: Engine, tenant: TenantTokens) -> bool:
    return tenant.tenant_id not in engine.cluster.leases


async def _all_held(engine: Engine, tenants: list[TenantTokens]) -> bool:
    return all(engine.cluster.lease_of(t.tenant_id) is not None for t in tenants)


async def test_a_queue_stopped_with_a_decision_pending_stops_at_once(
    engine: Engine, tenant: TenantTokens
) -> None:
    """A tenant handed back stops its queue actors; a message they handle on the way out that
    leaves an assignment to decide must not crash the actor (it would restart and hold the
    handover up for the stop's whole grace)."""
    status, body = await trigger_add(engine, tenant)
    assert status == 201, body
    queue = engine.services.actors.existing_queue(tenant.tenant_id, "default")
    assert queue is not None
    await queue.start()  # started: a stop lets it handle what its mailbox holds
    queue.tell(queue.enqueue, [])  # handled with the stop queued behind it: a decision pending
    began = asyncio.get_running_loop().time()
    await queue.stop()
    assert asyncio.get_running_loop().time() - began < 1
    assert queue.restarts == 0


async def test_a_lease_renewal_and_a_fenced_batch_cannot_deadlock(db_url: str) -> None:
    """A batch's fence locks its tenants' lease rows in tenant order; a renewal must take them
    in the same order, or each can hold a row the other waits for, and Postgres kills one (a
    batch of triggers refused, or a node's renewal lost and its leases with it)."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
    node = uuid.uuid4()
    try:
        repository = TenantRepository(pool)
        low, high = sorted([(await repository.create_tenant(f"t{i}")).tenant_id for i in (1, 2)])
        for tenant_id in (high, low):  # stored highest first: a plain scan meets `high` first
            await pool.execute(
                "INSERT INTO tenant_leases VALUES ($1, $2, 1, now() + interval '1 minute')",
                tenant_id,
                node,
            )
        async with pool.acquire() as batch, batch.transaction():
            # A batch that has fenced `low` and goes on to `high`, as one fence call does.
            await batch.fetchval("SELECT taskyard_fence($1, $2, $3)", node, [low], [1])
            renewal = asyncio.create_task(LeaseRepository(pool, node, 60).renew())
            await asyncio.sleep(0.5)  # the renewal is waiting for `low` now
            await batch.fetchval("SELECT taskyard_fence($1, $2, $3)", node, [high], [1])
        assert await asyncio.wait_for(renewal, 10) == {low: 1, high: 1}
    finally:
        await pool.close()


async def test_a_worker_whose_registration_is_lost_with_the_owner_tries_again(
    nodes: list[Engine],
) -> None:
    """A worker registers its workflows on every connection, through whichever node it
    reached; when that node loses the owner with the call in flight (502 owner_lost), the
    worker connects again rather than dying."""
    tenant = await new_tenant(nodes[0], f"t-{uuid.uuid4().hex[:6]}")
    await wait_until(lambda: _served(nodes, tenant), 10, "the tenant to be owned")
    owner = owner_of(nodes, tenant)
    elsewhere = other_than(nodes, owner)
    # The owner's address, as the others read it, answers every call by hanging up: as an
    # owner that dies with each forwarded call in flight.
    dead = await asyncio.start_server(lambda _, writer: writer.close(), "127.0.0.1", 0)
    dead_url = f"http://127.0.0.1:{dead.sockets[0].getsockname()[1]}"
    await execute(
        owner.settings.database_url,
        "UPDATE engine_nodes SET url = $2 WHERE node_id = $1",
        owner.node_id,
        dead_url,
    )
    ty = Taskyard(url=elsewhere.url, token=tenant.admin, retry_for=0.5)
    flow = ty.workflow("registered-again")

    @flow.task()
    async def only(_: object) -> str:
        return "ran"

    worker = ty.worker("w", workflows=[flow])
    try:
        entering = asyncio.create_task(worker.__aenter__())
        await asyncio.sleep(2)  # its registration is lost in flight, again and again
        assert not entering.done(), entering
        await execute(
            owner.settings.database_url,
            "UPDATE engine_nodes SET url = $2 WHERE node_id = $1",
            owner.node_id,
            owner.url,
        )
        await asyncio.wait_for(entering, 20)
        assert (await flow.aio_run(None))["only"] == "ran"
    finally:
        await worker.stop()
        await ty.aio_close()
        dead.close()
