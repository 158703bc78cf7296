"""What every workload needs: a fresh database, an engine and workers in their own processes,
statistics over repeated runs, machine facts, and a result written to bench/results/."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from taskyard.testing import EngineProcess, clean_env

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
ADMIN_URL = os.environ.get(
    "TASKYARD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def database_url(name: str) -> str:
    return urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    name = f"taskyard_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield database_url(name)
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class Workers:
    """bench/worker.py processes."""

    url: str
    token: str
    count: int
    slots: int
    logs: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> Workers:
        for i in range(self.count):
            env = clean_env(
                TASKYARD_URL=self.url,
                TASKYARD_TOKEN=self.token,
                WORKER_NAME=f"bench-{i}",
                SLOTS=str(self.slots),
                **self.extra_env,
            )
            with (self.logs / f"worker-{i}.log").open("ab") as log:
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, str(ROOT / "worker.py")],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        self.processes.clear()


@dataclass
class Setup:
    engine: EngineProcess
    db_url: str
    token: str
    logs: Path
    started: list[Workers] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def workers(self, count: int, slots: int = 200, **env: str) -> Workers:
        """Worker processes (bench/worker.py with `env` added), stopped when the setup ends if
        not before."""
        workers = Workers(self.engine.url, self.token, count, slots, self.logs, env).start()
        self.started.append(workers)
        return workers

    async def wait_for_workers(self, http: aiohttp.ClientSession, count: int) -> None:
        for _ in range(600):
            async with http.get("/api/v1/workers") as response:
                if len(await response.json()) >= count:
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{count} workers did not connect")


@contextlib.asynccontextmanager
async def engine_setup(*flags: str) -> AsyncIterator[Setup]:
    """A fresh database and an engine process serving it."""
    async with fresh_database() as db_url:
        logs = Path(tempfile.mkdtemp(prefix="taskyard-bench-"))
        engine = EngineProcess(
            ["--database-url", db_url, "--data-dir", str(logs / "data"), *flags],
            clean_env(TASKYARD_LOG_LEVEL="warning"),
            logs / "engine.log",
        )
        engine.start()
        token = (logs / "data" / "token").read_text().strip()
        setup = Setup(engine, db_url, token, logs)
        try:
            yield setup
        finally:
            for workers in setup.started:
                workers.stop()
            engine.kill()


def process_memory(pid: int) -> dict[str, int]:
    """Resident and peak resident memory of a process, in bytes (Linux)."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return {"rss": values.get("VmRSS", 0), "peak_rss": values.get("VmHWM", 0)}


async def trigger(
    http: aiohttp.ClientSession,
    task: str,
    count: int,
    *,
    batch: int = 1000,
    concurrency: int = 4,
    first: int = 0,
) -> list[str]:
    """Trigger `count` runs in batches, a few requests at a time; returns their ids in order."""
    ids: list[list[str]] = [[] for _ in range(0, count, batch)]
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int, start: int) -> None:
        runs = [
            {"task": task, "input": n}
            for n in range(first + start, first + min(start + batch, count))
        ]
        async with semaphore, http.post("/api/v1/runs/batch", json={"runs": runs}) as response:
            if response.status != 201:
                raise RuntimeError(f"trigger failed: {response.status} {await response.text()}")
            ids[index] = [ref["run_id"] for ref in (await response.json())["runs"]]

    await asyncio.gather(*(one(i, start) for i, start in enumerate(range(0, count, batch))))
    return [run_id for chunk in ids for run_id in chunk]


async def wait_all(
    http: aiohttp.ClientSession, run_ids: Sequence[str], timeout: float = 600
) -> None:
    """Until every run has finished (their results are committed)."""
    deadline = time.monotonic() + timeout
    pending = list(run_ids)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} runs unfinished after {timeout}s")
        chunks = [pending[i : i + 10_000] for i in range(0, len(pending), 10_000)]
        pending = []
        for chunk in chunks:
            async with http.post(
                "/api/v1/runs/wait", json={"run_ids": chunk, "timeout": 30}
            ) as response:
                body = await response.json()
                failed = [r for r in body["runs"] if r["status"] != "succeeded"]
                if failed:
                    raise RuntimeError(f"{len(failed)} runs did not succeed: {failed[0]}")
                pending += body["pending"]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median and range of repeated measurements."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]

    return {"p50": at(50), "p95": at(95), "p99": at(99), "max": ordered[-1], "count": len(ordered)}


async def postgres_counters(db_url: str) -> dict[str, int]:
    """Transactions committed on the database and the cluster's WAL position."""
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT xact_commit + xact_rollback AS transactions, "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        return {"transactions": int(row["transactions"]), "wal": int(row["wal"])}
    finally:
        await conn.close()


def machine() -> dict[str, Any]:
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        (
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or None,
        "versions": {
            p: version(p)
            for p in (
                "taskyard-engine",
                "taskyard-sdk",
                "asyncpg",
                "aiohttp",
                "pydantic",
                "uvloop",
                "orjson",
            )
        },
    }


async def postgres_version() -> str:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


async def write_result(
    workload: str,
    settings: dict[str, Any],
    figures: dict[str, Any],
    table: list[tuple[str, str]],
    *,
    postgres: str | None = None,
) -> Path:
    """Save the figures with the machine facts and settings, and print the table. `postgres`:
    the server's version, for a workload that runs a cluster of its own."""
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{workload}-{stamp}.json"
    facts = machine()
    facts["postgres"] = postgres or await postgres_version()
    path.write_text(
        json.dumps(
            {
                "workload": workload,
                "at": stamp,
                "machine": facts,
                "settings": settings,
                "figures": figures,
            },
            indent=2,
        )
        + "\n"
    )
    width = max(len(name) for name, _ in table)
    print(f"\n{workload}")
    for name, value in table:
        print(f"  {name:<{width}}  {value}")
    print(f"\nwritten to {path.relative_to(ROOT.parent)}")
    return path
