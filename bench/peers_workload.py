"""Peers: the no-op throughput and latency workloads run, in the same invocation, against
Taskyard and against PgQueuer, Procrastinate and Celery (Redis broker), with ratios.

Throughput counts from the first enqueue to the last job finished (for Taskyard: its result
committed). Latency is enqueue -> start, measured by a timestamp the job takes when it starts
(Celery, PgQueuer and Procrastinate keep no results here, so trigger -> result has no peer
counterpart)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench import latency, throughput
from bench.harness import engine_setup, fresh_database, percentiles, summary, write_result
from bench.peers.base import Peer

PEERS = {"pgqueuer": "bench.peers.pgqueuer_peer:PgQueuerPeer",
         "procrastinate": "bench.peers.procrastinate_peer:ProcrastinatePeer",
         "celery": "bench.peers.celery_peer:CeleryPeer"}


def load(name: str) -> type[Peer]:
    module, _, cls = PEERS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise SystemExit(f"peer {name!r} is not installed: {exc}. Run with "
                         f"`uv run --group bench-{name} python -m bench peers`.") from None


@contextlib.asynccontextmanager
async def peer_setup(name: str) -> AsyncIterator[Peer]:
    async with fresh_database() as db_url:
        peer = load(name)(db_url)
        await peer.setup()
        try:
            yield peer
        finally:
            await peer.close()


async def until_completed(peer: Peer, target: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while await peer.completed() < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{peer.name}: only {await peer.completed()} of {target} done")
        await asyncio.sleep(0.05)


async def peer_throughput(name: str, tasks: int, workers: int, runs: int,
                          logs: Path) -> list[float]:
    async with peer_setup(name) as peer:
        processes = await peer.start_workers(workers, "throughput", logs)
        try:
            await peer.enqueue(range(2000))  # warm-up
            await until_completed(peer, 2000)
            rates, done = [], 2000
            for run in range(runs):
                first = 100_000 * (run + 1)
                started = time.perf_counter()
                await peer.enqueue(range(first, first + tasks))
                done += tasks
                await until_completed(peer, done)
                rates.append(tasks / (time.perf_counter() - started))
            return rates
        finally:
            for process in processes:
                process.kill()
                await process.wait()


async def peer_latency(name: str, rate: float, seconds: float, runs: int,
                       logs: Path) -> list[dict[str, float]]:
    async with peer_setup(name) as peer:
        [process] = await peer.start_workers(1, "latency", logs)
        starts: dict[int, float] = {}

        async def read_starts() -> None:
            assert process.stdout is not None
            async for line in process.stdout:
                parts = line.decode().split()
                if len(parts) == 3 and parts[0] == "started":
                    starts[int(parts[1])] = float(parts[2])

        reader = asyncio.create_task(read_starts())
        try:
            results = []
            for run in range(runs + 1):  # the first is the warm-up
                sent: dict[int, float] = {}
                base = run * 1_000_000
                count = int(rate * (min(5.0, seconds) if run == 0 else seconds))
                loop = asyncio.get_running_loop()
                start = loop.time()
                for i in range(count):
                    await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
                    sent[base + i] = time.time()
                    await peer.enqueue(range(base + i, base + i + 1))
                for _ in range(1200):  # up to a minute for the last starts to be reported
                    if all(n in starts for n in sent):
                        break
                    await asyncio.sleep(0.05)
                if run:
                    results.append(percentiles([(starts[n] - t) * 1000 for n, t in sent.items()
                                                if n in starts]))
            return results
        finally:
            process.kill()
            await process.wait()
            reader.cancel()


async def taskyard_side(tasks: int, workers: int, runs: int, rate: float,
                        seconds: float) -> tuple[list[float], list[dict[str, float]]]:
    figures = await throughput.run_throughput(tasks, [workers], runs, 200, 2000)
    rates = figures[f"{workers}_workers"]["tasks_per_second"]["runs"]
    latencies = []
    async with engine_setup() as setup, aiohttp.ClientSession(
            base_url=setup.engine.url, headers=setup.headers,
            connector=aiohttp.TCPConnector(limit=0)) as http:
        setup.workers(1)
        await setup.wait_for_workers(http, 1)
        await latency.steady(http, rate, min(5.0, seconds))
        for _ in range(runs):
            samples = await latency.steady(http, rate, seconds)
            latencies.append(percentiles([s[0] * 1000 for s in samples]))
    return rates, latencies


async def main(peers: list[str], tasks: int, workers: int, runs: int, rate: float,
               seconds: float) -> None:
    for name in peers:
        load(name)  # fail early when a peer's group is not installed
    logs = Path(tempfile.mkdtemp(prefix="taskyard-peers-"))
    systems: dict[str, dict[str, Any]] = {}
    rates, latencies = await taskyard_side(tasks, workers, runs, rate, seconds)
    systems["taskyard"] = {"rates": rates, "latencies": latencies}
    for name in peers:
        systems[name] = {"rates": await peer_throughput(name, tasks, workers, runs, logs),
                         "latencies": await peer_latency(name, rate, seconds, runs, logs)}
    figures: dict[str, Any] = {}
    table = []
    ours = summary(systems["taskyard"]["rates"])["median"]
    ours_p50 = summary([r["p50"] for r in systems["taskyard"]["latencies"]])["median"]
    for name, data in systems.items():
        rate_summary = summary(data["rates"])
        p50 = summary([r["p50"] for r in data["latencies"]])
        p99 = summary([r["p99"] for r in data["latencies"]])
        figures[name] = {"tasks_per_second": rate_summary, "start_p50_ms": p50,
                         "start_p99_ms": p99}
        ratio = "" if name == "taskyard" else (
            f"  taskyard/{name}: throughput {ours / rate_summary['median']:.1f}x, "
            f"start p50 {ours_p50 / p50['median']:.1f}x")
        table.append((name, f"{rate_summary['median']:.0f} tasks/s, start p50 "
                            f"{p50['median']:.1f} ms, p99 {p99['median']:.1f} ms{ratio}"))
    await write_result("peers", {"peers": peers, "tasks": tasks, "workers": workers,
                                 "runs": runs, "rate": rate, "seconds": seconds},
                       figures, table)
