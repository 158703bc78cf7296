"""Chaos on a cluster: three engine nodes on one database and 20 tenants, each with a chaos
worker (bench/chaos_worker.py), a per-second cron, and a client triggering its share of 10,000
runs through the SDK with idempotency keys: retried and failing tasks, a concurrency key of max 2,
a DAG, durable sleeps. One node is killed with kill -9, then another, then both are restarted.
bench/chaos_checks.py judges what the tasks' ledgers and the engine say: every acknowledged run
finished as its definition says, no key ever ran more than 2 attempts at once (from the ledgers'
start and end times), no cron tick fired twice or was missed, and no error reached the client
(the SDK retries by itself what it may: keyed triggers fail over between the nodes it is given).

`python -m bench cluster-chaos`; tests/e2e/test_cluster_chaos.py runs it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import random
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import chaos_worker as workload
from bench.chaos import TERMINAL_SQL, WorkerProcesses, judge_workload, read_ledgers, report
from bench.chaos_checks import (
    CHECKS,
    Acked,
    CronTicks,
    Outage,
    Verdict,
)
from bench.cluster import Nodes, TenantAccess, create_tenants, owners, until_spread, until_workers
from bench.harness import fresh_database
from taskyard_sdk import Taskyard
from taskyard_sdk._runnable import Runnable

CRON = "chaos-all"  # every tenant's per-second cron (catch-up "all": no tick may be missed)
# The workload's mix, by kind: weight and how a job of it is drawn.
KINDS: dict[str, int] = {"flaky": 50, "keyed": 20, "dag": 10, "nap": 10, "doomed": 5, "fatal": 5}
RUNNABLES: dict[str, Runnable[Any, Any]] = {
    "flaky": workload.flaky,
    "keyed": workload.keyed,
    "dag": workload.dag,
    "nap": workload.nap,
    "doomed": workload.doomed,
    "fatal": workload.fatal,
}


@dataclass(frozen=True)
class ClusterChaosSettings:
    runs: int = 10_000  # triggered at a steady pace over `seconds`, spread over the tenants
    tenants: int = 20
    seconds: float = 60.0
    seed: int = 1
    slots: int = 10  # of each tenant's worker
    lease_seconds: float = 5.0
    # The kills and the restart, as fractions of `seconds`: one node, then another, then both
    # come back (and take their tenants back from the survivor).
    first_kill: float = 0.2
    second_kill: float = 0.45
    restart: float = 0.7
    drain_timeout: float = 300.0


@dataclass(frozen=True)
class Kill:
    node: str
    tenants: int  # that it owned when it was killed
    leases_moved: float  # seconds until every one was held by another node


def through(runnable: Runnable[Any, Any], client: Taskyard) -> Runnable[Any, Any]:
    """The workload's task or workflow, triggered through `client` (one tenant's)."""
    bound = copy.copy(runnable)
    bound.client = client
    return bound


@dataclass
class ClusterChaos:
    settings: ClusterChaosSettings
    root: Path
    db_url: str
    nodes: Nodes = field(init=False)
    tenants: list[TenantAccess] = field(default_factory=list)
    clients: dict[str, Taskyard] = field(default_factory=dict)
    workers: dict[str, WorkerProcesses] = field(default_factory=dict)
    crons: dict[str, tuple[str, float]] = field(default_factory=dict)  # tenant -> (id, created)
    deleted: dict[str, float] = field(default_factory=dict)
    acked: list[Acked] = field(default_factory=list)
    tenant_of: dict[str, TenantAccess] = field(default_factory=dict)  # run id -> its tenant
    client_errors: list[str] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        (self.root / "nodes").mkdir(parents=True, exist_ok=True)
        self.nodes = Nodes(
            self.db_url,
            self.root / "nodes",
            self.settings.lease_seconds,
            # As in bench/chaos.py: a worker whose node died is given time to reconnect.
            flags=("--heartbeat-interval", "1", "--heartbeat-timeout", "10"),
        )

    # -- setting up --------------------------------------------------------------------------

    async def start(self) -> None:
        for index in range(3):
            await asyncio.to_thread(self.nodes.start, f"node{index + 1}")
        self.tenants = await create_tenants(self.db_url, self.settings.tenants, prefix="chaos")
        await until_spread(self.db_url, self.tenants, list(self.nodes.running))
        for tenant in self.tenants:
            self.clients[tenant.name] = Taskyard(self.nodes.urls, tenant.token)
            workers = WorkerProcesses(
                self.nodes.urls,
                tenant.token,
                self.settings.slots,
                self.root / tenant.name,
                prefix=f"{tenant.name}.",
            )
            workers.start(0)
            self.workers[tenant.name] = workers
        await until_workers(self.nodes, self.tenants, timeout=120)
        await asyncio.gather(*(self.create_cron(tenant) for tenant in self.tenants))

    async def create_cron(self, tenant: TenantAccess) -> None:
        body = {
            "name": CRON,
            "task": workload.tick.name,
            "expression": "* * * * * *",
            "catch_up": "all",
        }
        status, answer = await self.call(tenant, "POST", "/api/v1/crons", body)
        if status != 201:
            raise RuntimeError(f"could not create {tenant.name}'s cron: {status} {answer}")
        self.crons[tenant.name] = (answer["cron_id"], time.time())

    async def call(
        self, tenant: TenantAccess, method: str, path: str, body: Any = None
    ) -> tuple[int | None, Any]:
        """One REST call as `tenant`, through the first live node: (status, JSON body), or
        (None, None) when it did not answer."""
        url = self.nodes.url(next(iter(self.nodes.running)))
        try:
            async with (
                aiohttp.ClientSession(base_url=url, headers=tenant.headers) as http,
                http.request(
                    method, path, json=body, timeout=aiohttp.ClientTimeout(total=30)
                ) as response,
            ):
                data = await response.json(content_type=None) if response.status != 204 else None
                return response.status, data
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None, None

    # -- the workload ------------------------------------------------------------------------

    async def produce(self) -> None:
        """`runs` triggers at a steady pace, round the tenants, each in a task of its own (a
        trigger waiting out a failover holds up no other)."""
        rng = random.Random(self.settings.seed)
        kinds, weights = list(KINDS), list(KINDS.values())
        began = time.monotonic()
        pace = self.settings.seconds / self.settings.runs
        for n in range(1, self.settings.runs + 1):
            delay = began + n * pace - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tenant = self.tenants[n % len(self.tenants)]
            kind = rng.choices(kinds, weights)[0]
            job: dict[str, Any] = {"n": n, "ms": rng.randrange(60)}
            if kind == "flaky":
                job["fail"] = rng.choice((0, 0, 0, 1, 2))
            elif kind == "keyed":
                job["key"] = f"{tenant.name}/k{rng.randrange(2)}"  # keys are per tenant
            elif kind == "nap":
                job["seconds"] = rng.uniform(1.0, 4.0)
            self.spawn(self.trigger(tenant, kind, job))

    def spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def trigger(self, tenant: TenantAccess, kind: str, job: dict[str, Any]) -> None:
        runnable = through(RUNNABLES[kind], self.clients[tenant.name])
        try:
            handle = await runnable.aio_run_no_wait(
                workload.Job(**job), idempotency_key=f"{tenant.name}:{job['n']}"
            )
        except Exception as exc:  # any error the SDK let through is what the check counts
            self.client_errors.append(
                f"{tenant.name} {kind} job {job['n']}: {type(exc).__name__}: {exc}"
            )
            return
        self.acked.append(Acked(str(handle.run_id), kind, job))
        self.tenant_of[str(handle.run_id)] = tenant

    # -- faults ------------------------------------------------------------------------------

    async def faults(self, began: float) -> None:
        settings = self.settings
        killed = []
        for at in (settings.first_kill, settings.second_kill):
            await asyncio.sleep(max(0.0, began + at * settings.seconds - time.time()))
            killed.append(await self.kill_busiest())
        await asyncio.sleep(max(0.0, began + settings.restart * settings.seconds - time.time()))
        for node, killed_at in killed:
            restart_at = time.time()
            await asyncio.to_thread(self.nodes.start, node)
            self.outages.append(
                Outage("engine", node, killed_at, restart_at, time.time(), "kill -9")
            )

    async def kill_busiest(self) -> tuple[str, float]:
        """kill -9 of the node that owns the most tenants now; returns it and when it was
        dead, once its tenants are owned elsewhere."""
        held = await owners(self.db_url)
        counts = Counter(node for node in held.values() if node in self.nodes.running)
        victim = counts.most_common(1)[0][0]
        owned = [tenant for tenant, node in held.items() if node == victim]
        killed_at = self.nodes.kill(victim)
        while True:
            held = await owners(self.db_url)
            if all(held.get(tenant) not in (None, victim) for tenant in owned):
                break
            await asyncio.sleep(0.05)
        self.kills.append(Kill(victim, len(owned), time.time() - killed_at))
        return victim, killed_at

    # -- the end -----------------------------------------------------------------------------

    async def drain(self) -> float:
        """Every cron deleted, then every run finished; how long the runs took to finish."""
        for tenant in self.tenants:
            cron_id, _ = self.crons[tenant.name]
            await self.clients[tenant.name].crons.aio_delete(cron_id)
            self.deleted[tenant.name] = time.time()
        began = time.time()
        deadline = began + self.settings.drain_timeout
        while time.time() < deadline:
            if not await self.unfinished():
                break
            await asyncio.sleep(1)
        return time.time() - began

    async def unfinished(self) -> int:
        conn = await asyncpg.connect(self.db_url)
        try:
            count = await conn.fetchval(
                f"SELECT count(*) FROM runs WHERE status NOT IN {TERMINAL_SQL}"
            )
            return int(count)
        finally:
            await conn.close()

    async def views(self, run_ids: dict[str, TenantAccess]) -> dict[str, dict[str, Any]]:
        """GET /api/v1/runs/{id} of each run, as its tenant."""
        found: dict[str, dict[str, Any]] = {}
        url = self.nodes.url(next(iter(self.nodes.running)))
        sessions = {
            tenant.name: aiohttp.ClientSession(base_url=url, headers=tenant.headers)
            for tenant in self.tenants
        }
        semaphore = asyncio.Semaphore(8)

        async def one(run_id: str, tenant: TenantAccess) -> None:
            async with semaphore, sessions[tenant.name].get(f"/api/v1/runs/{run_id}") as r:
                if r.status == 200:
                    found[run_id] = await r.json()

        try:
            await asyncio.gather(*(one(run_id, tenant) for run_id, tenant in run_ids.items()))
        finally:
            for session in sessions.values():
                await session.close()
        return found

    async def cron_ticks(self) -> list[CronTicks]:
        conn = await asyncpg.connect(self.db_url)
        try:
            rows = await conn.fetch(
                "SELECT tenant_id, metadata->>'tick' AS tick, status FROM runs "
                "WHERE metadata->>'cron' = $1",
                CRON,
            )
        finally:
            await conn.close()
        ticks: dict[uuid.UUID, list[tuple[float, str]]] = {t.tenant_id: [] for t in self.tenants}
        for row in rows:
            tick = datetime.fromisoformat(row["tick"]).timestamp()
            ticks[row["tenant_id"]].append((tick, row["status"]))
        return [
            CronTicks(
                f"{tenant.name}/{CRON}",
                "all",
                self.crons[tenant.name][1],
                self.deleted[tenant.name],
                ticks[tenant.tenant_id],
            )
            for tenant in self.tenants
        ]

    async def stop(self) -> float:
        stopped_at = time.time()
        for workers in self.workers.values():
            stopped_at = workers.stop_all()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.aio_close()
        self.nodes.stop_all()
        return stopped_at


async def run_cluster_chaos(settings: ClusterChaosSettings, root: Path) -> Verdict:
    """Start the cluster, trigger the workload through the kills and the restart, drain, and
    judge."""
    async with fresh_database() as db_url:
        chaos = ClusterChaos(settings, root, db_url)
        try:
            await chaos.start()
            began = time.time()
            faults = asyncio.create_task(chaos.faults(began))
            await chaos.produce()
            await faults
            while chaos.in_flight:
                await asyncio.gather(*list(chaos.in_flight))
            triggered_in = time.time() - began
            drained_in = await chaos.drain()
            tenant_of = chaos.tenant_of
            views = await chaos.views(tenant_of)
            failed_steps = {
                str(step["run_id"]): tenant_of[run_id]
                for run_id, view in views.items()
                if view.get("kind") == "workflow" and view["status"] != "succeeded"
                for step in view.get("steps") or []
            }
            step_views = await chaos.views(failed_steps)
            crons = await chaos.cron_ticks()
            unfinished = await chaos.unfinished()
        finally:
            stopped_at = await chaos.stop()
    executions, notes = read_ledgers(root, "*/ledgers/*.jsonl")
    verdict = judge_workload(
        acked=chaos.acked,
        views=views,
        step_views=step_views,
        executions=executions,
        notes=notes,
        pushes=[],
        missing_events=[],
        outages=chaos.outages,
        kills={},  # no worker is killed: every repeat of work needs explaining
        stopped_at=stopped_at,
        crons=crons,
        unfinished_anywhere=unfinished,
    )
    verdict.violations["client_errors"] = chaos.client_errors
    verdict.figures["triggered in"] = f"{triggered_in:.1f}s"
    verdict.figures["drained in"] = f"{drained_in:.1f}s"
    verdict.figures["kills"] = [asdict(kill) for kill in chaos.kills]
    verdict.figures["logs"] = str(root)
    (root / "verdict.json").write_text(
        json.dumps({"figures": verdict.figures, "violations": verdict.violations}, default=str)
    )
    return verdict


def table(verdict: Verdict) -> list[tuple[str, str]]:
    rows = [
        (name, str(value))
        for name, value in verdict.figures.items()
        if name not in ("kills", "most rate-limited starts in one window, by the ledger")
    ]
    moved = [kill["leases_moved"] for kill in verdict.figures["kills"]]
    rows.append(
        (
            "kill -9 to every lease moved",
            ", ".join(
                f"{kill['node']} ({kill['tenants']} tenants) {kill['leases_moved']:.2f}s"
                for kill in verdict.figures["kills"]
            )
            + (f"; p50 {statistics.median(moved):.2f}s" if moved else ""),
        )
    )
    rows += [
        (f"violations: {check}", str(len(verdict.violations[check])))
        for check in (*CHECKS, "client_errors")
    ]
    return rows


async def main(settings: ClusterChaosSettings) -> None:
    from bench.harness import write_result

    root = Path(tempfile.mkdtemp(prefix="taskyard-cluster-chaos-"))
    verdict = await run_cluster_chaos(settings, root)
    figures = {**verdict.figures, "violations": verdict.violations, "known issues": verdict.known}
    await write_result("cluster-chaos", asdict(settings), figures, table(verdict))
    print("\n" + report(verdict))
    if verdict.total_violations:
        raise SystemExit(1)
