"""Chaos: a mixed workload on a throwaway PostgreSQL cluster while a driver restarts Postgres
(fast shutdowns and crashes), kills the engine and the workers with kill -9 and restarts them,
and pushes events in the middle of the outages. Then every acknowledged run is accounted for:
bench/chaos_checks.py judges the ledgers the tasks wrote (bench/chaos_worker.py) against the
engine's views, the cron ticks and the faults.

The fault plan and the workload come from one seed, so a run can be repeated; the timing of a
shared machine still varies. `python -m bench chaos --minutes 3`; tests/e2e/test_chaos.py runs a
short one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import asyncpg

from bench import chaos_worker as workload
from bench.chaos_checks import (
    CHECKS,
    TERMINAL,
    Acked,
    CronTicks,
    Evidence,
    Execution,
    Outage,
    Push,
    TaskRule,
    Verdict,
    judge,
    read_ledger,
)
from taskyard.store.embedded import EmbeddedPostgres
from taskyard.testing import EngineProcess, clean_env

WORKER_SCRIPT = Path(__file__).with_name("chaos_worker.py")
CRONS = (("chaos-latest", "latest"), ("chaos-all", "all"))
TERMINAL_SQL = "(" + ", ".join(f"'{status}'" for status in sorted(TERMINAL)) + ")"


@dataclass(frozen=True)
class ChaosSettings:
    seconds: float = 180.0  # of workload under faults; then the drain
    seed: int = 1
    workers: int = 3
    slots: int = 10
    postgres_every: tuple[float, float] = (5.0, 40.0)
    kill_every: tuple[float, float] = (6.0, 20.0)  # an engine or a worker, at random
    down: tuple[float, float] = (0.0, 2.0)
    # Longer than a worker's longest pause between reconnection attempts (5 s, jittered up to
    # 7.5 s): a worker still running its attempts is not declared lost because the engine came
    # back between two of its tries.
    heartbeat_timeout: float = 10.0
    drain_timeout: float = 300.0


@dataclass(frozen=True)
class PlannedFault:
    at: float  # seconds after the workload began
    kind: Literal["postgres", "engine", "worker"]
    down: float
    worker: int = 0
    mode: Literal["fast", "immediate"] = "fast"  # a Postgres shutdown, or a crash


def plan_faults(settings: ChaosSettings) -> list[PlannedFault]:
    """Postgres restarts every `postgres_every` seconds and kills every `kill_every`, the first
    of each early and the first two kills one engine and one worker, so a short run has every
    kind of fault."""
    rng = random.Random(settings.seed)
    faults = []
    at = rng.uniform(3.0, 8.0)
    while at < settings.seconds - 2:
        faults.append(
            PlannedFault(
                at, "postgres", rng.uniform(*settings.down), mode=rng.choice(("fast", "immediate"))
            )
        )
        at += rng.uniform(*settings.postgres_every)
    first: list[Literal["engine", "worker"]] = ["engine", "worker"]
    rng.shuffle(first)
    at = rng.uniform(8.0, 14.0)
    while at < settings.seconds - 2:
        kind = first.pop() if first else rng.choice(("engine", "worker"))
        faults.append(
            PlannedFault(
                at, kind, rng.uniform(*settings.down), worker=rng.randrange(settings.workers)
            )
        )
        at += rng.uniform(*settings.kill_every)
    return sorted(faults, key=lambda fault: fault.at)


@dataclass
class WorkerProcesses:
    """The workers: slot i runs incarnations w{i}.1, w{i}.2, ..., each with its own ledger (and
    `prefix` before its name, where several tenants' workers share one judgement)."""

    url: str
    token: str
    slots: int
    root: Path
    prefix: str = ""
    running: dict[int, tuple[str, subprocess.Popen[bytes]]] = field(default_factory=dict)
    incarnations: Counter[int] = field(default_factory=Counter)

    @property
    def ledgers(self) -> Path:
        return self.root / "ledgers"

    def start(self, slot: int) -> str:
        self.incarnations[slot] += 1
        label = f"{self.prefix}w{slot}.{self.incarnations[slot]}"
        self.ledgers.mkdir(parents=True, exist_ok=True)
        env = clean_env(
            TASKYARD_URL=self.url,
            TASKYARD_TOKEN=self.token,
            WORKER_NAME=label,
            SLOTS=str(self.slots),
            CHAOS_LEDGER=str(self.ledgers / f"{label}.jsonl"),
        )
        with (self.root / f"{label}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, str(WORKER_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        self.running[slot] = (label, process)
        return label

    def kill(self, slot: int) -> tuple[str, float]:
        """kill -9; returns the process's label and a time by which it was dead."""
        label, process = self.running.pop(slot)
        process.kill()
        process.wait()
        return label, time.time()

    def stop_all(self) -> float:
        for slot in list(self.running):
            self.kill(slot)
        return time.time()


class ChaosRun:
    def __init__(self, settings: ChaosSettings, root: Path) -> None:
        self.settings = settings
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(settings.seed * 7919 + 1)  # the workload's own stream
        # Not under `root`: pytest resets its temporary root to mode 0700 whenever a session
        # starts, which would lock the cluster's own account out of its data directory.
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="taskyard-chaos-pg-"))
        self.cluster = EmbeddedPostgres(self.cluster_dir)
        self.engine: EngineProcess | None = None
        self.workers: WorkerProcesses | None = None
        self.http: aiohttp.ClientSession | None = None
        self.numbers = itertools.count(1)
        self.acked: list[Acked] = []
        self.refused: Counter[str] = Counter()
        self.pushes: list[Push] = []
        self.outages: list[Outage] = []
        self.kills: dict[str, float] = {}
        # await_go jobs: when to push the event (once its run is seen waiting), until a push
        # of it is acknowledged; then it must wake its run, with no second push to help.
        self.waiting: dict[int, float] = {}
        self.suspended: set[int] = set()  # jobs whose run the ledgers show waiting
        self.pushing: set[int] = set()
        self.tailed: dict[Path, int] = {}  # ledger -> bytes read
        self.crons: dict[str, tuple[str, str, float]] = {}  # name -> (id, catch_up, created)
        self.deleted: dict[str, float] = {}  # cron name -> when it was deleted
        self.in_flight: set[asyncio.Task[None]] = set()
        self.tokens = itertools.count(1)

    # -- processes ---------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.cluster.start)
        data_dir = self.root / "engine"
        self.engine = EngineProcess(
            [
                "--database-url",
                self.cluster.url,
                "--data-dir",
                str(data_dir),
                "--heartbeat-interval",
                "1",
                "--heartbeat-timeout",
                str(self.settings.heartbeat_timeout),
                "--database-wait",
                "120",
            ],
            clean_env(TASKYARD_LOG_LEVEL="warning"),
            self.root / "engine.log",
        )
        await asyncio.to_thread(self.engine.start, 120)
        token = (data_dir / "token").read_text().strip()
        self.http = aiohttp.ClientSession(
            base_url=self.engine.url, headers={"Authorization": f"Bearer {token}"}
        )
        self.workers = WorkerProcesses(self.engine.url, token, self.settings.slots, self.root)
        for slot in range(self.settings.workers):
            self.workers.start(slot)
        await self._until_workers(self.settings.workers)
        status, body = await self.call(
            "PUT",
            f"/api/v1/rate-limits/{workload.RATE_LIMIT}",
            {"limit": workload.RATE_LIMIT_PER_SECOND, "duration": "second"},
        )
        if status != 200:
            raise RuntimeError(f"could not set the rate limit: {status} {body}")
        for name, catch_up in CRONS:
            status, body = await self.call(
                "POST",
                "/api/v1/crons",
                {
                    "name": name,
                    "task": workload.tick.name,
                    "expression": "* * * * * *",
                    "catch_up": catch_up,
                },
            )
            if status != 201:
                raise RuntimeError(f"could not create cron {name}: {status} {body}")
            self.crons[name] = (body["cron_id"], catch_up, time.time())

    async def _until_workers(self, count: int) -> None:
        for _ in range(600):
            status, body = await self.call("GET", "/api/v1/workers")
            if status == 200 and len(body) >= count:
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{count} workers did not connect")

    async def stop(self) -> float:
        stopped_at = self.workers.stop_all() if self.workers else time.time()
        if self.http is not None:
            await self.http.close()
        if self.engine is not None:
            self.engine.kill()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.cluster.stop)
        shutil.rmtree(self.cluster_dir, ignore_errors=True)
        return stopped_at

    # -- requests ----------------------------------------------------------------------------

    async def call(
        self, method: str, path: str, body: Any = None, timeout: float = 20.0
    ) -> tuple[int | None, Any]:
        """(status, JSON body), or (None, None) when the engine did not answer."""
        assert self.http is not None
        try:
            async with self.http.request(
                method, path, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r:
                data = await r.json(content_type=None) if r.status != 204 else None
                return r.status, data
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None, None

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def trigger(self, kind: str, jobs: list[dict[str, Any]]) -> None:
        if kind == "dag":
            path, body = f"/api/v1/workflows/{workload.dag.name}/runs", {"input": jobs[0]}
        elif len(jobs) == 1:
            path, body = "/api/v1/runs", {"task": kind, "input": jobs[0]}
        else:
            path, body = (
                "/api/v1/runs/batch",
                {"runs": [{"task": kind, "input": job} for job in jobs]},
            )
        status, data = await self.call("POST", path, body)
        if status is None or not 200 <= status < 300:
            self.refused[f"{kind} {status or 'no answer'}"] += len(jobs)
            return
        refs = data.get("runs", [data])
        self.acked.extend(
            Acked(ref["run_id"], kind, job) for ref, job in zip(refs, jobs, strict=True)
        )

    async def push(self, key: str, n: int, *, during_outage: bool = False) -> None:
        token = f"{n}:{next(self.tokens)}"
        sent = time.time()
        status, data = await self.call(
            "POST", "/api/v1/events", {"key": key, "payload": {"n": n, "token": token}}
        )
        acknowledged = status is not None and 200 <= status < 300
        triggered = tuple(str(run_id) for run_id in data["triggered"]) if acknowledged else ()
        self.pushes.append(
            Push(
                key,
                n,
                token,
                sent,
                acknowledged,
                during_outage,
                event_id=data["event_id"] if acknowledged else None,
                created_at=datetime.fromisoformat(data["created_at"]).timestamp()
                if acknowledged
                else None,
                triggered=triggered,
            )
        )
        if key == workload.ORDER_EVENT:
            self.acked.extend(Acked(run_id, "order", {"n": n}) for run_id in triggered)

    async def push_go(self, n: int, *, during_outage: bool = False) -> None:
        self.pushing.add(n)
        try:
            await self.push(workload.GO_EVENT, n, during_outage=during_outage)
        finally:
            self.pushing.discard(n)
            if self.pushes[-1].acknowledged:
                self.waiting.pop(n, None)
            elif n in self.waiting:
                self.waiting[n] = time.time() + 1.0  # not acknowledged: it does not count

    def ready_to_push(self) -> list[int]:
        return [n for n in self.waiting if n in self.suspended and n not in self.pushing]

    def outage_pushes(self) -> None:
        """Events pushed while something is down: an order, and the events some waits need."""
        self.spawn(self.push(workload.ORDER_EVENT, next(self.numbers), during_outage=True))
        for n in self.ready_to_push()[:3]:
            self.spawn(self.push_go(n, during_outage=True))

    # -- the workload ------------------------------------------------------------------------

    def job(self, **fields: Any) -> dict[str, Any]:
        return {"n": next(self.numbers), **fields}

    async def produce(self, until: float) -> None:
        """Every half second a mix of triggers, each in its own task so an outage holds up
        none of the others."""
        rng = self.rng
        began = time.time()
        for tick in itertools.count():
            if time.time() >= until:
                return
            self.spawn(
                self.trigger(
                    "flaky", [self.job(fail=rng.choice((0, 0, 1, 2)), ms=rng.randrange(300))]
                )
            )
            if tick % 2 == 0:
                self.spawn(
                    self.trigger(rng.choice(("doomed", "fatal")), [self.job(ms=rng.randrange(200))])
                )
            if tick % 4 == 0:  # bursts keep the keys backlogged
                self.spawn(
                    self.trigger(
                        "keyed",
                        [
                            self.job(key=rng.choice(("k0", "k1")), ms=rng.randrange(300, 1000))
                            for _ in range(6)
                        ],
                    )
                )
            if tick % 4 == 2:  # and the rate limit saturated
                self.spawn(
                    self.trigger("limited", [self.job(ms=rng.randrange(100)) for _ in range(5)])
                )
            if tick % 2 == 1:
                self.spawn(self.trigger("dag", [self.job(ms=rng.randrange(100))]))
            if tick % 3 == 0:
                self.spawn(self.trigger("nap", [self.job(seconds=round(rng.uniform(1, 6), 2))]))
            if tick % 3 == 1:
                job = self.job()
                self.waiting[job["n"]] = time.time() + rng.uniform(1, 6)
                self.spawn(self.trigger("await_go", [job]))
            if tick % 4 == 3:
                self.spawn(self.push(workload.ORDER_EVENT, next(self.numbers)))
            await asyncio.sleep(max(0.0, began + (tick + 1) * 0.5 - time.time()))

    async def release_waits(self, stopping: asyncio.Event) -> None:
        """Push each waiting durable run's event when due and its run is seen waiting (an
        event pushed before a wait began does not count), until one push is acknowledged."""
        while not stopping.is_set():
            self.tail_ledgers()
            now = time.time()
            for n in self.ready_to_push():
                if self.waiting[n] <= now:
                    self.spawn(self.push_go(n))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)

    def tail_ledgers(self) -> None:
        """Note the await_go jobs whose run has suspended (its wait began), from the new lines
        of the ledgers."""
        if self.workers is None:
            return
        for path in self.workers.ledgers.glob("*.jsonl"):
            with path.open("rb") as ledger:
                ledger.seek(self.tailed.get(path, 0))
                data = ledger.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
            self.tailed[path] = self.tailed.get(path, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    note = json.loads(line)
                except ValueError:
                    continue
                if (
                    note["ev"] == "end"
                    and note["task"] == workload.await_go.name
                    and note["outcome"] == "Suspended"
                ):
                    self.suspended.add(int(note["n"]))

    async def _query(self, sql: str, *args: Any) -> list[asyncpg.Record] | None:
        """A query on the engine's database, or None while Postgres is down."""
        try:
            conn = await asyncpg.connect(self.cluster.url, timeout=5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return None
        try:
            return list(await conn.fetch(sql, *args, timeout=10))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    # -- faults ------------------------------------------------------------------------------

    async def inject(
        self, faults: list[PlannedFault], began: float, stopping: asyncio.Event
    ) -> None:
        for fault in faults:
            delay = began + fault.at - time.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
            if stopping.is_set():
                return
            await self.fault(fault)

    async def fault(self, fault: PlannedFault) -> None:
        assert self.engine is not None
        assert self.workers is not None
        down_at = time.time()
        if fault.kind == "postgres":
            await asyncio.to_thread(self.cluster.stop, fault.mode)
            target, detail = "postgres", f"restart ({fault.mode})"
        elif fault.kind == "engine":
            self.engine.kill()
            target, detail = "engine", "kill -9"
        else:
            slot = self.busiest_worker(fault.worker)
            target, killed_at = self.workers.kill(slot)
            self.kills[target] = killed_at
            detail = "kill -9"
        self.outage_pushes()
        await asyncio.sleep(fault.down)
        restart_at = time.time()
        if fault.kind == "postgres":
            await asyncio.to_thread(self.cluster.start)
        elif fault.kind == "engine":
            await asyncio.to_thread(self.engine.start, 180)
        else:
            self.workers.start(slot)
        self.outages.append(Outage(fault.kind, target, down_at, restart_at, time.time(), detail))

    def busiest_worker(self, planned: int) -> int:
        """The worker with the most attempts under way (by its ledger): a kill mid-attempt is
        the one that tests something. The planned one when none is busy."""
        assert self.workers is not None
        busy = Counter[int]()
        for slot, (label, _) in self.workers.running.items():
            path = self.workers.ledgers / f"{label}.jsonl"
            lines = path.read_text(errors="replace").splitlines() if path.exists() else []
            executions, _ = read_ledger(lines)
            busy[slot] = sum(1 for execution in executions if execution.end is None)
        most = max(busy.values(), default=0)
        if most == 0 or busy[planned] == most:
            return planned
        return min(slot for slot, count in busy.items() if count == most)

    # -- the end -----------------------------------------------------------------------------

    async def drain(self, deadline: float) -> None:
        """Every cron deleted, every run finished (or the deadline passed)."""
        for name, (cron_id, _, _) in self.crons.items():
            while time.time() < deadline:
                status, _ = await self.call("DELETE", f"/api/v1/crons/{cron_id}")
                if status in (200, 204, 404):
                    break
                await asyncio.sleep(0.5)
            self.deleted[name] = time.time()
        while time.time() < deadline:
            rows = await self._query(
                f"SELECT count(*) AS n FROM runs WHERE status NOT IN {TERMINAL_SQL}"
            )
            if rows is not None and rows[0]["n"] == 0:
                return
            await asyncio.sleep(1)

    async def views(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        semaphore = asyncio.Semaphore(8)

        async def one(run_id: str) -> None:
            async with semaphore:
                for _ in range(20):
                    status, body = await self.call("GET", f"/api/v1/runs/{run_id}")
                    if status == 200:
                        found[run_id] = body
                        return
                    if status == 404:
                        return
                    await asyncio.sleep(0.5)

        await asyncio.gather(*(one(run_id) for run_id in run_ids))
        return found

    async def missing_events(self) -> list[str]:
        missing = []
        for push in self.pushes:
            if push.acknowledged:
                status, _ = await self.call("GET", f"/api/v1/events/{push.event_id}")
                if status == 404:
                    missing.append(str(push.event_id))
        return missing

    async def cron_ticks(self) -> list[CronTicks]:
        crons = []
        for name, (_, catch_up, created) in self.crons.items():
            rows = (
                await self._query(
                    "SELECT metadata->>'tick' AS tick, status FROM runs "
                    "WHERE metadata->>'cron' = $1",
                    name,
                )
                or []
            )
            crons.append(
                CronTicks(
                    name,
                    catch_up,
                    created,
                    self.deleted[name],
                    [
                        (datetime.fromisoformat(row["tick"]).timestamp(), row["status"])
                        for row in rows
                    ],
                )
            )
        return crons


def task_rules() -> tuple[dict[str, TaskRule], dict[str, TaskRule]]:
    """How the workload's runs must end: by kind, and a DAG's by step."""

    def on_purpose(error: str) -> Any:
        return lambda attempt, job: error

    def never(attempt: int, job: Any) -> None:
        return None

    def number(job: Any) -> Any:
        return job["n"]

    tasks = {
        "flaky": TaskRule(
            workload.flaky.options.retries,
            lambda attempt, job: "DeliberateFailure" if attempt <= job.get("fail", 0) else None,
            number,
        ),
        "doomed": TaskRule(
            workload.doomed.options.retries, on_purpose("DeliberateFailure"), number
        ),
        "fatal": TaskRule(workload.fatal.options.retries, on_purpose("NonRetryableError"), number),
        "keyed": TaskRule(workload.keyed.options.retries, never, number),
        "limited": TaskRule(workload.limited.options.retries, never, number),
        "nap": TaskRule(workload.nap.options.retries, never, number),
    }
    steps = {}
    for step in workload.dag.tasks:
        name = step.step
        steps[name] = TaskRule(
            step.options.retries,
            (lambda attempt, job: "DeliberateFailure" if attempt == 1 else None)
            if name == "b"
            else never,
            lambda job, name=name: workload.dag_outputs(job["n"])[name],
        )
    return tasks, steps


async def run_chaos(settings: ChaosSettings, root: Path) -> Verdict:
    """The whole run: start, the workload under faults, the drain, the judgement."""
    chaos = ChaosRun(settings, root)
    plan = plan_faults(settings)
    stopping, drained = asyncio.Event(), asyncio.Event()
    drained_in: float | None = None
    try:
        await chaos.start()
        began = time.time()
        pushes = asyncio.create_task(chaos.release_waits(drained))
        postgres = asyncio.create_task(
            chaos.inject([f for f in plan if f.kind == "postgres"], began, stopping)
        )
        kills = asyncio.create_task(
            chaos.inject([f for f in plan if f.kind != "postgres"], began, stopping)
        )
        await chaos.produce(began + settings.seconds)
        stopping.set()
        await asyncio.gather(postgres, kills)  # a fault under way ends with its restart
        while chaos.in_flight:
            await asyncio.gather(*list(chaos.in_flight))
        chaos_ended = time.time()
        await chaos.drain(time.time() + settings.drain_timeout)
        drained_in = time.time() - chaos_ended
        drained.set()
        await pushes
        while chaos.in_flight:
            await asyncio.gather(*list(chaos.in_flight))
        acked_ids = [a.run_id for a in chaos.acked]
        views = await chaos.views(acked_ids)
        unsettled = [
            str(step["run_id"])
            for view in views.values()
            if view.get("kind") == "workflow" and view["status"] != "succeeded"
            for step in view.get("steps") or []
        ]
        step_views = await chaos.views(unsettled)
        missing = await chaos.missing_events()
        crons = await chaos.cron_ticks()
        rows = await chaos._query(
            f"SELECT count(*) AS n FROM runs WHERE status NOT IN {TERMINAL_SQL}"
        )
        unfinished = -1 if rows is None else int(rows[0]["n"])
    finally:
        stopped_at = await chaos.stop()
    evidence = {
        "acked": [asdict(a) for a in chaos.acked],
        "views": views,
        "step_views": step_views,
        "pushes": [asdict(p) for p in chaos.pushes],
        "missing_events": missing,
        "outages": [asdict(o) for o in chaos.outages],
        "kills": chaos.kills,
        "stopped_at": stopped_at,
        "crons": [asdict(c) for c in crons],
        "unfinished_anywhere": unfinished,
        "figures": {
            "triggers not acknowledged": dict(sorted(chaos.refused.items())),
            "drain after the faults stopped": f"{drained_in:.1f}s"
            if drained_in is not None
            else "-",
        },
    }
    (root / "evidence.json").write_text(json.dumps(evidence))
    return judge_again(root)


def read_ledgers(root: Path, pattern: str) -> tuple[list[Execution], list[dict[str, Any]]]:
    """The executions and notes of the ledgers under `root` that match `pattern`."""
    executions: list[Execution] = []
    notes: list[dict[str, Any]] = []
    for path in sorted(root.glob(pattern)):
        found, noted = read_ledger(path.read_text(errors="replace").splitlines())
        executions += found
        notes += noted
    return executions, notes


def judge_workload(**observed: Any) -> Verdict:
    """Judge what a run of bench/chaos_worker.py's workload observed (Evidence's fields up to
    `unfinished_anywhere`) by the workload's own rules."""
    rules, dag_rules = task_rules()
    return judge(
        Evidence(
            **observed,
            rules=rules,
            dag_outputs=workload.dag_outputs,
            dag_rules=dag_rules,
            durable_tasks=frozenset({workload.nap.name, workload.await_go.name}),
            order_event=workload.ORDER_EVENT,
            keyed_task=workload.keyed.name,
            max_runs=workload.KEY_MAX_RUNS,
            limited_task=workload.limited.name,
            rate_limit=workload.RATE_LIMIT_PER_SECOND,
            rate_window=1.0,
        )
    )


def judge_again(root: Path) -> Verdict:
    """Judge a finished run from what it left in `root`: its ledgers and evidence.json (the
    engine's views, pushes, faults and cron ticks)."""
    data = json.loads((root / "evidence.json").read_text())
    executions, notes = read_ledgers(root, "ledgers/*.jsonl")
    unfinished = int(data["unfinished_anywhere"])
    verdict = judge_workload(
        acked=[Acked(**a) for a in data["acked"]],
        views=data["views"],
        step_views=data["step_views"],
        executions=executions,
        notes=notes,
        pushes=[Push(**{**p, "triggered": tuple(p["triggered"])}) for p in data["pushes"]],
        missing_events=data["missing_events"],
        outages=[Outage(**o) for o in data["outages"]],
        kills=data["kills"],
        stopped_at=data["stopped_at"],
        crons=[CronTicks(**{**c, "runs": [tuple(r) for r in c["runs"]]}) for c in data["crons"]],
        unfinished_anywhere=max(unfinished, 0),
    )
    if unfinished < 0:
        verdict.violations["unfinished"].append("could not count the unfinished runs")
    verdict.figures.update(data["figures"])
    verdict.figures["logs"] = str(root)
    return verdict


def table(verdict: Verdict) -> list[tuple[str, str]]:
    rows = [(name, _show(value)) for name, value in verdict.figures.items()]
    rows += [(f"violations: {check}", str(len(verdict.violations[check]))) for check in CHECKS]
    return rows


def report(verdict: Verdict, limit: int = 10) -> str:
    """The violations and the known issues seen, a few lines of each."""
    lines = []
    for title, found in [
        *verdict.violations.items(),
        *((f"known issue {issue}", seen) for issue, seen in verdict.known.items()),
    ]:
        if found:
            lines.append(f"{title}: {len(found)}")
            lines += [f"  {line}" for line in found[:limit]]
    return "\n".join(lines) or "no violations"


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return str(value)


async def main(minutes: float, seed: int, workers: int, again: str | None = None) -> None:
    from bench.harness import write_result

    settings = ChaosSettings(seconds=minutes * 60, seed=seed, workers=workers)
    if again is not None:
        verdict = judge_again(Path(again))
        print("\n".join(f"  {name}  {value}" for name, value in table(verdict)))
    else:
        root = Path(tempfile.mkdtemp(prefix="taskyard-chaos-"))
        verdict = await run_chaos(settings, root)
        figures = {
            **verdict.figures,
            "violations": {check: verdict.violations[check] for check in CHECKS},
            "known issues": verdict.known,
        }
        await write_result(
            "chaos", asdict(settings), figures, table(verdict), postgres=_cluster_version()
        )
    print("\n" + report(verdict))
    if verdict.total_violations:
        raise SystemExit(1)


def _cluster_version() -> str:
    """The throwaway cluster's server version (its binaries'), for the result file."""
    from taskyard.store.embedded import find_binaries

    found = subprocess.run(
        [str(find_binaries() / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or "unknown"
