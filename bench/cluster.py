"""Several engine nodes on one database. Failover: a node is killed with kill -9 while clients
keep triggering runs for its tenants through the other nodes; the time from the kill to the
first run of each of those tenants that its new owner assigns, p50/max over several kills (and
when the tenants' leases moved). Throughput: no-op runs of several tenants through 1, 2 and 3
nodes, each tenant's client talking to one node, as behind a load balancer.

`python -m bench cluster --kills 5`; tests/e2e/test_cluster_failover.py runs one kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.harness import Workers, fresh_database, summary, trigger, wait_all, write_result
from taskyard.domain.auth import Role
from taskyard.domain.leases import owner_among
from taskyard.store.tenants import TenantRepository
from taskyard.testing import EngineProcess, clean_env


@dataclass
class Nodes:
    """`taskyard engine` processes on one database, each named and with a data folder of its
    own (`<root>/<name>`)."""

    db_url: str
    root: Path
    lease_seconds: float = 5.0
    flags: tuple[str, ...] = ()
    running: dict[str, EngineProcess] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # a restarted node keeps its address

    def start(self, name: str) -> EngineProcess:
        node = EngineProcess(
            [
                "--database-url",
                self.db_url,
                "--data-dir",
                str(self.root / name),
                "--node-name",
                name,
                "--lease-seconds",
                str(self.lease_seconds),
                *self.flags,
            ],
            clean_env(TASKYARD_LOG_LEVEL="warning"),
            self.root / f"{name}.log",
        )
        if name in self.ports:
            node.port = self.ports[name]
        self.ports[name] = node.port
        self.running[name] = node.start(60)
        return node

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def urls(self) -> str:
        """Every node's URL, as TASKYARD_URL takes them."""
        return ",".join(self.url(name) for name in self.ports)

    def kill(self, name: str) -> float:
        """kill -9; returns a time by which the node was dead."""
        self.running.pop(name).kill()
        return time.time()

    def terminate(self, name: str) -> float:
        self.running.pop(name).terminate()
        return time.time()

    def freeze(self, name: str) -> None:
        self.running[name].process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]

    def thaw(self, name: str) -> None:
        self.running[name].process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]

    def stop_all(self) -> None:
        for name in list(self.running):
            with contextlib.suppress(ProcessLookupError):
                self.thaw(name)
            self.kill(name)


@dataclass(frozen=True)
class TenantAccess:
    tenant_id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def create_tenants(db_url: str, count: int, prefix: str = "tenant") -> list[TenantAccess]:
    """`count` tenants with an admin token each (the nodes take them up as they appear)."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    try:
        repository = TenantRepository(pool)
        made = []
        for index in range(count):
            tenant = await repository.create_tenant(f"{prefix}-{index:02d}")
            _, secret = await repository.create_token(tenant.tenant_id, Role.ADMIN)
            made.append(TenantAccess(tenant.tenant_id, tenant.name, secret))
        return made
    finally:
        await pool.close()


async def owners(db_url: str) -> dict[uuid.UUID, str | None]:
    """tenant -> the name of the node whose lease on it is current (None: none is)."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT l.tenant_id, n.name FROM tenant_leases l "
            "LEFT JOIN engine_nodes n ON n.node_id = l.node_id AND l.expires_at > now()"
        )
        return {row["tenant_id"]: row["name"] for row in rows}
    finally:
        await conn.close()


async def until_spread(
    db_url: str, tenants: list[TenantAccess], nodes: list[str], timeout: float = 60.0
) -> dict[uuid.UUID, str]:
    """Until every tenant is held by the node of `nodes` it belongs to."""
    deadline = time.monotonic() + timeout
    while True:
        held = await owners(db_url)
        placed = {t.tenant_id: held.get(t.tenant_id) for t in tenants}
        if all(node == owner_among(tenant, nodes) for tenant, node in placed.items()):
            return {tenant: node for tenant, node in placed.items() if node is not None}
        if time.monotonic() > deadline:
            raise RuntimeError(f"tenants not spread over {nodes} after {timeout}s: {placed}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def cluster(
    count: int, tenants: int, *, workers: bool = True, lease_seconds: float = 5.0
) -> AsyncIterator[tuple[Nodes, list[TenantAccess], list[Workers]]]:
    """A fresh database, `count` nodes, `tenants` tenants spread over them and (`workers`) one
    bench worker process per tenant given every node's URL."""
    async with fresh_database() as db_url:
        root = Path(tempfile.mkdtemp(prefix="taskyard-cluster-"))
        nodes = Nodes(db_url, root, lease_seconds)
        started: list[Workers] = []
        try:
            for index in range(count):
                nodes.start(f"node{index + 1}")
            made = await create_tenants(db_url, tenants)
            await until_spread(db_url, made, list(nodes.running))
            if workers:
                for tenant in made:
                    logs = root / tenant.name
                    logs.mkdir()
                    started.append(Workers(nodes.urls, tenant.token, 1, 200, logs).start())
                await until_workers(nodes, made)
            yield nodes, made, started
        finally:
            for pool in started:
                pool.stop()
            nodes.stop_all()


async def until_workers(nodes: Nodes, tenants: list[TenantAccess], timeout: float = 60) -> None:
    """Until every tenant's worker is attached (asked through any node)."""
    url = nodes.url(next(iter(nodes.running)))
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(base_url=url) as http:
        for tenant in tenants:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get("/api/v1/workers", headers=tenant.headers) as response:
                        if response.status == 200 and await response.json():
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no worker of {tenant.name} attached after {timeout}s")
                await asyncio.sleep(0.1)


# -- failover ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failover:
    node: str
    tenants: int  # that it owned
    leases_moved: float  # seconds from the kill until every one was held by another node
    first_assignment: float  # seconds from the kill until each had a run assigned: the slowest


async def probe(http: aiohttp.ClientSession, tenant: TenantAccess, stop: asyncio.Event) -> int:
    """Trigger a no-op run every 50 ms until `stop`; returns how many were acknowledged (a
    trigger the cluster cannot place yet waits for an owner, or fails and is tried again)."""
    acknowledged = 0
    for n in itertools.count():
        if stop.is_set():
            return acknowledged
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with http.post(
                "/api/v1/runs",
                json={"task": "noop", "input": n},
                headers=tenant.headers,
                timeout=aiohttp.ClientTimeout(total=15),
            ) as response:
                acknowledged += response.status == 201
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    raise AssertionError("unreachable")


async def first_assigned_after(db_url: str, tenant_ids: list[uuid.UUID], after: float) -> float:
    """Once every tenant has a run assigned after `after` (epoch seconds): the latest of their
    first such assignments."""
    while True:
        conn = await asyncpg.connect(db_url)
        try:
            rows = await conn.fetch(
                "SELECT tenant_id, extract(epoch FROM min(assigned_at))::float8 AS first "
                "FROM runs WHERE tenant_id = ANY($1) AND assigned_at > to_timestamp($2) "
                "GROUP BY tenant_id",
                tenant_ids,
                after,
            )
        finally:
            await conn.close()
        if len(rows) == len(tenant_ids):
            return max(row["first"] for row in rows)
        await asyncio.sleep(0.1)


async def kill_one(nodes: Nodes, tenants: list[TenantAccess], victim: str | None) -> Failover:
    """Kill `victim`, or (None, or it owns no tenant: placement may leave a node without one)
    the node that owns the most."""
    placed = await until_spread(nodes.db_url, tenants, list(nodes.running))
    if victim not in placed.values():
        victim = Counter(placed.values()).most_common(1)[0][0]
    owned = [t for t in tenants if placed[t.tenant_id] == victim]
    survivor = next(name for name in nodes.running if name != victim)
    stop = asyncio.Event()
    async with aiohttp.ClientSession(base_url=nodes.url(survivor)) as http:
        probes = [asyncio.create_task(probe(http, tenant, stop)) for tenant in owned]
        await asyncio.sleep(0.5)  # the probes are under way before the kill
        killed_at = nodes.kill(victim)
        moved_at = None
        assigned = asyncio.create_task(
            first_assigned_after(nodes.db_url, [t.tenant_id for t in owned], killed_at)
        )
        while moved_at is None:
            held = await owners(nodes.db_url)
            if all(held.get(t.tenant_id) not in (None, victim) for t in owned):
                moved_at = time.time()
            else:
                await asyncio.sleep(0.05)
        first = await asyncio.wait_for(assigned, 60)
        stop.set()
        await asyncio.gather(*probes)
    return Failover(victim, len(owned), moved_at - killed_at, first - killed_at)


async def run_failover(kills: int, tenants: int, lease_seconds: float) -> list[Failover]:
    """Kill each node in turn (restarted under its name before the next kill)."""
    samples = []
    async with cluster(3, tenants, lease_seconds=lease_seconds) as (nodes, made, _):
        names = list(nodes.running)
        for index in range(kills):
            sample = await kill_one(nodes, made, names[index % len(names)])
            samples.append(sample)
            nodes.start(sample.node)
            await until_spread(nodes.db_url, made, names)
            await until_workers(nodes, made)
    return samples


# -- throughput --------------------------------------------------------------------------------


async def run_throughput(count: int, tenants: int, tasks: int) -> float:
    """Runs per second: `tasks` no-op runs split over the tenants, triggered in batches and
    waited for, tenant i's client talking to node i mod `count`."""
    async with cluster(count, tenants) as (nodes, made, _):
        names = list(nodes.running)
        sessions = [
            aiohttp.ClientSession(
                base_url=nodes.url(names[index % count]),
                headers=tenant.headers,
                timeout=aiohttp.ClientTimeout(total=None),
            )
            for index, tenant in enumerate(made)
        ]
        try:
            share = tasks // tenants

            async def one(http: aiohttp.ClientSession, count: int) -> None:
                await wait_all(http, await trigger(http, "noop", count, concurrency=2))

            await asyncio.gather(*(one(http, 500) for http in sessions))  # warm up
            started = time.perf_counter()
            await asyncio.gather(*(one(http, share) for http in sessions))
            return share * tenants / (time.perf_counter() - started)
        finally:
            for http in sessions:
                await http.close()


async def main(kills: int, tenants: int, lease_seconds: float, tasks: int, runs: int) -> None:
    samples = await run_failover(kills, tenants, lease_seconds)
    first = [s.first_assignment for s in samples]
    moved = [s.leases_moved for s in samples]
    figures: dict[str, Any] = {
        "failover": {
            "first_assignment_seconds": {
                "p50": statistics.median(first),
                "max": max(first),
                "runs": first,
            },
            "leases_moved_seconds": {"p50": statistics.median(moved), "max": max(moved)},
            "kills": [s.__dict__ for s in samples],
        },
        "throughput": {},
    }
    table = [
        (
            f"failover, kill -9 to first assignment ({kills} kills)",
            f"p50 {statistics.median(first):.2f}s, max {max(first):.2f}s",
        ),
        (
            "failover, kill -9 to every lease moved",
            f"p50 {statistics.median(moved):.2f}s, max {max(moved):.2f}s",
        ),
    ]
    for count in (1, 2, 3):
        rates = [await run_throughput(count, tenants, tasks) for _ in range(runs)]
        figures["throughput"][f"{count}_nodes"] = summary(rates)
        table.append(
            (
                f"throughput, {count} node{'s' * (count > 1)}: runs/s",
                f"{statistics.median(rates):.0f} "
                f"(range {min(rates):.0f}-{max(rates):.0f}, {runs} runs)",
            )
        )
    await write_result(
        "cluster",
        {
            "kills": kills,
            "tenants": tenants,
            "lease_seconds": lease_seconds,
            "tasks": tasks,
            "runs": runs,
        },
        figures,
        table,
    )
