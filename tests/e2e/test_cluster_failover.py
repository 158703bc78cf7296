"""Engine nodes in processes of their own on one database: a node killed with kill -9 has its
tenants served by the others within seconds, and a node frozen with SIGSTOP while its lease
moves on wakes up to find it gone: what it still meant to write is refused, and no run is
executed twice. tests/e2e/test_cluster_chaos.py runs the whole workload through kills."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from bench.cluster import (
    Nodes,
    TenantAccess,
    cluster,
    create_tenants,
    kill_one,
    owners,
    until_spread,
    until_workers,
)
from tests.support import LEDGER_TABLE, WorkerProcess, execute, scalar, scrape, value, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_a_killed_nodes_tenants_are_served_elsewhere_within_ten_seconds() -> None:
    async with cluster(3, 6) as (nodes, tenants, _):
        failover = await kill_one(nodes, tenants, None)
    print(f"\n{failover}")
    assert failover.tenants >= 1
    assert failover.leases_moved < 10
    assert failover.first_assignment < 10


async def epoch(db_url: str, tenant: TenantAccess) -> int:
    return await scalar(
        db_url, "SELECT epoch FROM tenant_leases WHERE tenant_id = $1", tenant.tenant_id
    )


async def keep_triggering(
    url: str, tenant: TenantAccess, acked: list[str], stop: asyncio.Event
) -> None:
    """Batches of `record` runs through one node until `stop`; what is acknowledged counts
    (a refused or unanswered batch is simply not acknowledged)."""
    async with aiohttp.ClientSession(base_url=url, headers=tenant.headers) as http:
        n = 0
        while not stop.is_set():
            runs = [{"task": "record", "input": n + i} for i in range(10)]
            n += 10
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(
                    "/api/v1/runs/batch",
                    json={"runs": runs},
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response:
                    if response.status == 201:
                        acked += [ref["run_id"] for ref in (await response.json())["runs"]]
            await asyncio.sleep(0.05)


async def test_a_frozen_owner_wakes_up_to_write_nothing_and_run_nothing_twice(
    db_url: str, tmp_path: Path
) -> None:
    nodes = Nodes(db_url, tmp_path, lease_seconds=2.0)
    worker: WorkerProcess | None = None
    stop = asyncio.Event()
    acked: list[str] = []
    clients: list[asyncio.Task[None]] = []
    try:
        nodes.start("node-a")
        nodes.start("node-b")
        await execute(db_url, LEDGER_TABLE)
        [tenant] = await create_tenants(db_url, 1)
        placed = await until_spread(db_url, [tenant], ["node-a", "node-b"])
        frozen = placed[tenant.tenant_id]
        [other] = [name for name in ("node-a", "node-b") if name != frozen]
        worker = WorkerProcess(
            nodes.urls, tenant.token, db_url, "w1", tmp_path / "w1.log", slots=20, sleep=0.1
        ).start()
        await until_workers(nodes, [tenant])
        clients = [
            asyncio.create_task(keep_triggering(nodes.url(name), tenant, acked, stop))
            for name in (frozen, other)
        ]

        async def executed() -> int:
            return await scalar(db_url, "SELECT count(*) FROM ledger")

        await wait_until(lambda: _at_least(executed, 100), 30, "work under way")
        before = await epoch(db_url, tenant)
        nodes.freeze(frozen)
        # The lease runs out and the other node takes the tenant over; the worker, whose
        # engine answers no ping, moves to it, and work goes on there.
        await wait_until(lambda: _owned_by(db_url, tenant, other), 15, "the lease to move")
        moved = await epoch(db_url, tenant)
        assert moved > before
        moved_at = await executed()
        await wait_until(lambda: _at_least(executed, moved_at + 100), 30, "work on the new owner")
        nodes.thaw(frozen)
        # Awake: it learns its lease is gone and keeps its hands off.
        await wait_until(
            lambda: _counted(nodes.url(frozen), "taskyard_cluster_leases_lost_total"),
            15,
            "the woken node to drop the tenant",
        )
        await asyncio.sleep(2)  # the clients keep calling the woken node too
        stop.set()
        await asyncio.gather(*clients)
        # It may own the tenant again (it is its place), but only under a lease of its own,
        # handed over by the other node: never the old one.
        if (await owners(db_url))[tenant.tenant_id] == frozen:
            assert await epoch(db_url, tenant) > moved
        samples = await scrape(nodes.url(frozen))
        fenced = {
            lane: value(samples, "taskyard_postgres_errors_total", lane=lane, kind="fenced")
            for lane in ("ordered", "triggers")
        }
        print(f"\n{len(acked)} runs acknowledged; the woken node's fenced batches: {fenced}")

        # Every acknowledged run finishes, each executed once.
        async def all_done() -> bool:
            done = await scalar(
                db_url,
                "SELECT count(*) FROM runs WHERE run_id = ANY($1::uuid[]) AND status = 'succeeded'",
                [uuid.UUID(run_id) for run_id in acked],
            )
            return done == len(acked)

        await wait_until(all_done, 60, "every acknowledged run to succeed")
        assert await scalar(db_url, "SELECT count(*) - count(DISTINCT run_id) FROM ledger") == 0
        assert await scalar(
            db_url,
            "SELECT count(*) FROM ledger WHERE run_id = ANY($1::uuid[])",
            [uuid.UUID(run_id) for run_id in acked],
        ) == len(acked)
    finally:
        stop.set()
        for task in clients:
            task.cancel()
        if worker is not None:
            worker.kill()
        nodes.stop_all()


async def _at_least(count: Callable[[], Awaitable[int]], floor: int) -> bool:
    return await count() >= floor


async def _owned_by(db_url: str, tenant: TenantAccess, node: str) -> bool:
    return (await owners(db_url)).get(tenant.tenant_id) == node


async def _counted(url: str, metric: str) -> bool:
    return value(await scrape(url), metric) >= 1
