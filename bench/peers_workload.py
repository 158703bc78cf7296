"""Peers: Taskyard beside PgQueuer, Procrastinate and Celery (Redis broker), every measure taken
for every system in the same invocation, with Taskyard/peer ratios.

- enqueue one by one: jobs enqueued from one asyncio client, each in a call of its own (the SDK's
  `aio_run_no_wait`; the peers' single defer), jobs per second
- enqueue in batches: 1,000 jobs to a call (`aio_run_many_no_wait`; the peers' batch APIs;
  Celery has none and is left out)
- the same two through Taskyard's outbox, the way PgQueuer and Procrastinate enqueue: the SDK
  writes the rows through the application's own asyncpg connection (`aio_run_in` on an
  autocommit connection, one job a transaction; `aio_run_many_in`, 1,000 a transaction); jobs
  per second with the engine stopped (the application's work alone, as the peers' figures are),
  and while an engine drains them into its tenant, until the last commit and until the last run
  exists (the outbox seen empty, polled every 20 ms)
- drain: N jobs already queued, one worker process started; jobs per second from its first
  finished job to the last (so process start-up counts for no one)
- end to end (throughput): from the first enqueue to the last job finished (for Taskyard: its
  result committed), batches of 1,000, several worker processes
- latency: enqueue -> start at a steady rate, measured by a timestamp the job takes when it
  starts (the peers keep no results here, so trigger -> result has no peer counterpart)"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import latency, outbox, throughput
from bench.harness import (
    engine_setup,
    fresh_database,
    percentiles,
    summary,
    write_result,
)
from bench.peers.base import Peer
from taskyard_sdk import Taskyard

PEERS = {
    "pgqueuer": "bench.peers.pgqueuer_peer:PgQueuerPeer",
    "procrastinate": "bench.peers.procrastinate_peer:ProcrastinatePeer",
    "celery": "bench.peers.celery_peer:CeleryPeer",
}


def load(name: str) -> type[Peer]:
    module, _, cls = PEERS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise SystemExit(
            f"peer {name!r} is not installed: {exc}. Run with "
            f"`uv run --group bench-{name} python -m bench peers`."
        ) from None


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


async def peer_throughput(
    name: str, tasks: int, workers: int, runs: int, logs: Path
) -> list[float]:
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


async def peer_latency(
    name: str, rate: float, seconds: float, runs: int, logs: Path
) -> list[dict[str, float]]:
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
                    results.append(
                        percentiles(
                            [(starts[n] - t) * 1000 for n, t in sent.items() if n in starts]
                        )
                    )
            return results
        finally:
            process.kill()
            await process.wait()
            reader.cancel()


async def enqueue_rates(
    enqueue_one: Callable[[int], Awaitable[None]],
    enqueue_batch: Callable[[range], Awaitable[None]] | None,
    single: int,
    batched: int,
    first: int,
) -> tuple[float, float | None]:
    """Jobs per second enqueued one call at a time, and in calls of 1,000."""
    started = time.perf_counter()
    for n in range(first, first + single):
        await enqueue_one(n)
    one_by_one = single / (time.perf_counter() - started)
    if enqueue_batch is None:
        return one_by_one, None
    started = time.perf_counter()
    await enqueue_batch(range(first + single, first + single + batched))
    return one_by_one, batched / (time.perf_counter() - started)


async def drain_rate(
    completed: Callable[[], Awaitable[int]],
    start_worker: Callable[[], Awaitable[object]],
    total: int,
    timeout: float = 600,
) -> float:
    """With `total` jobs queued, start one worker process; jobs per second from its first
    finished job to the last."""
    await start_worker()
    deadline = time.monotonic() + timeout
    while (first := await completed()) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker finished nothing")
        await asyncio.sleep(0.002)
    started = time.perf_counter()
    while (done := await completed()) < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {total} finished")
        await asyncio.sleep(0.01)
    return (total - first) / (time.perf_counter() - started)


async def peer_enqueue_and_drain(
    name: str, single: int, batched: int, drain: int, runs: int, logs: Path
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"one_by_one": [], "batches": [], "drain": []}
    for run in range(runs):
        async with peer_setup(name) as peer:
            batch = peer.enqueue if name != "celery" else None
            one, many = await enqueue_rates(
                peer.enqueue_one, batch, single, batched, run * 10_000_000
            )
            rates["one_by_one"].append(one)
            if many is not None:
                rates["batches"].append(many)
        rates["drain"].append(await peer_drain(name, drain, logs))
    return rates


async def peer_drain(name: str, drain: int, logs: Path) -> float:
    async with peer_setup(name) as peer:
        await peer.enqueue(range(drain))
        processes: list[asyncio.subprocess.Process] = []

        async def start() -> None:
            processes.extend(await peer.start_workers(1, "throughput", logs))

        try:
            return await drain_rate(peer.completed, start, drain)
        finally:
            for process in processes:
                process.kill()
                await process.wait()


async def taskyard_enqueue_and_drain(
    single: int, batched: int, drain: int, runs: int
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {
        "one_by_one": [],
        "batches": [],
        "drain": [],
        **{measure: [] for measure in OUTBOX_MEASURES},
    }
    for run in range(runs):
        one, many = await taskyard_enqueue(single, batched, run * 10_000_000)
        rates["one_by_one"].append(one)
        rates["batches"].append(many)
        for measure, value in (
            await taskyard_outbox_enqueue(single, batched, run * 10_000_000)
        ).items():
            rates[measure].append(value)
        rates["drain"].append(await taskyard_drain(drain))
    return rates


async def taskyard_enqueue(single: int, batched: int, first: int) -> tuple[float, float]:
    async with engine_setup() as setup:
        ty = Taskyard(setup.engine.url, setup.token)
        noop = ty.task(name="noop", schedule_timeout="1h")(_noop)

        async def one(n: int) -> None:
            await noop.aio_run_no_wait(n)

        async def batch(numbers: range) -> None:
            for start in range(numbers.start, numbers.stop, 1000):
                await noop.aio_run_many_no_wait(range(start, min(start + 1000, numbers.stop)))

        try:
            await one(-1)  # the SDK's session
            rate, many = await enqueue_rates(one, batch, single, batched, first)
        finally:
            await ty.aio_close()
        assert many is not None
        return rate, many


async def taskyard_outbox_enqueue(single: int, batched: int, first: int) -> dict[str, float]:
    """Rates of enqueueing through an application database's outbox, one row a transaction and
    1,000 a transaction: with the engine stopped (the application's part alone, as the peers'
    enqueue is theirs), then while the engine drains, until committed and until every run
    exists."""
    async with outbox.outbox_engine("app") as (setup, app_url):
        ty = Taskyard(setup.engine.url, setup.token)
        noop = ty.task(name="noop", schedule_timeout="1h")(_noop)
        conn = await asyncpg.connect(app_url)

        async def drained(started: float, timeout: float = 600) -> float:
            """Seconds from `started` until the outbox is seen empty."""
            deadline = time.monotonic() + timeout
            while await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {outbox.sdk_outbox.TABLE})"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the outbox is not drained after {timeout}s")
                await asyncio.sleep(outbox.EMPTY_POLL)
            return time.perf_counter() - started

        async def one_by_one(numbers: range) -> float:
            started = time.perf_counter()
            for n in numbers:
                await noop.aio_run_in(conn, n)
            return started

        async def batches(numbers: range) -> float:
            started = time.perf_counter()
            for start in range(numbers.start, numbers.stop, 1000):
                async with conn.transaction():
                    await noop.aio_run_many_in(
                        conn, list(range(start, min(start + 1000, numbers.stop)))
                    )
            return started

        def rate(count: int, started: float) -> float:
            return count / (time.perf_counter() - started)

        try:
            await noop.aio_run_in(conn, -1)  # the statement's plan, the engine's first drain
            await drained(time.perf_counter())
            figures = {}
            setup.engine.terminate()
            numbers = range(first, first + single)
            figures["one_by_one_outbox"] = rate(single, await one_by_one(numbers))
            numbers = range(numbers.stop, numbers.stop + batched)
            figures["batches_outbox"] = rate(batched, await batches(numbers))
            setup.engine.start()
            await drained(time.perf_counter())
            numbers = range(numbers.stop, numbers.stop + single)
            started = await one_by_one(numbers)
            figures["one_by_one_outbox_draining"] = rate(single, started)
            figures["one_by_one_outbox_runs"] = single / await drained(started)
            numbers = range(numbers.stop, numbers.stop + batched)
            started = await batches(numbers)
            figures["batches_outbox_draining"] = rate(batched, started)
            figures["batches_outbox_runs"] = batched / await drained(started)
        finally:
            await conn.close()
            await ty.aio_close()
    return figures


async def taskyard_drain(drain: int) -> float:
    async with engine_setup() as setup:
        ty = Taskyard(setup.engine.url, setup.token)
        try:
            await ty.task(name="noop", schedule_timeout="1h")(_noop).aio_run_many_no_wait(
                range(drain)
            )
        finally:
            await ty.aio_close()
        db = await asyncpg.connect(setup.db_url)

        async def completed() -> int:
            return int(await db.fetchval("SELECT count(*) FROM runs WHERE status = 'succeeded'"))

        async def start() -> None:
            setup.workers(1)

        try:
            return await drain_rate(completed, start, drain)
        finally:
            await db.close()


async def _noop(n: int) -> int:
    return n


async def taskyard_side(
    tasks: int, workers: int, runs: int, rate: float, seconds: float
) -> tuple[list[float], list[dict[str, float]]]:
    figures = await throughput.run_throughput(tasks, [workers], runs, 200, 2000)
    rates = figures[f"{workers}_workers"]["tasks_per_second"]["runs"]
    latencies = []
    async with (
        engine_setup() as setup,
        aiohttp.ClientSession(
            base_url=setup.engine.url,
            headers=setup.headers,
            connector=aiohttp.TCPConnector(limit=0),
        ) as http,
    ):
        setup.workers(1)
        await setup.wait_for_workers(http, 1)
        await latency.steady(http, rate, min(5.0, seconds))
        for _ in range(runs):
            samples = await latency.steady(http, rate, seconds)
            latencies.append(percentiles([s[0] * 1000 for s in samples]))
    return rates, latencies


MEASURES = {  # figure -> (label, unit)
    "one_by_one": ("enqueue one by one", "jobs/s"),
    "batches": ("enqueue in batches of 1,000", "jobs/s"),
    "drain": ("drain, one worker process", "jobs/s"),
    "throughput": ("end to end", "tasks/s"),
}
OUTBOX_MEASURES = {  # Taskyard's outbox figure -> (label, the peers' measure it is set beside)
    "one_by_one_outbox": ("enqueue one by one, outbox, engine stopped", "one_by_one"),
    "one_by_one_outbox_draining": ("enqueue one by one, outbox, engine draining", "one_by_one"),
    "one_by_one_outbox_runs": ("enqueue one by one, outbox, until the runs exist", "one_by_one"),
    "batches_outbox": ("enqueue in batches of 1,000, outbox, engine stopped", "batches"),
    "batches_outbox_draining": ("enqueue in batches of 1,000, outbox, engine draining", "batches"),
    "batches_outbox_runs": ("enqueue in batches of 1,000, outbox, until the runs exist", "batches"),
}


async def main(
    peers: list[str],
    tasks: int,
    workers: int,
    runs: int,
    rate: float,
    seconds: float,
    single: int,
    batched: int,
    drain: int,
) -> None:
    for name in peers:
        load(name)  # fail early when a peer's group is not installed
    logs = Path(tempfile.mkdtemp(prefix="taskyard-peers-"))
    systems: dict[str, dict[str, Any]] = {}
    rates, latencies = await taskyard_side(tasks, workers, runs, rate, seconds)
    systems["taskyard"] = {
        "throughput": rates,
        "latencies": latencies,
        **await taskyard_enqueue_and_drain(single, batched, drain, runs),
    }
    for name in peers:
        systems[name] = {
            "throughput": await peer_throughput(name, tasks, workers, runs, logs),
            "latencies": await peer_latency(name, rate, seconds, runs, logs),
            **await peer_enqueue_and_drain(name, single, batched, drain, runs, logs),
        }
    figures: dict[str, Any] = {}
    table = []
    ours = {measure: summary(systems["taskyard"][measure])["median"] for measure in MEASURES}
    outbox_ours = {
        measure: summary(systems["taskyard"][measure])["median"] for measure in OUTBOX_MEASURES
    }
    ours_p50 = summary([r["p50"] for r in systems["taskyard"]["latencies"]])["median"]
    for name, data in systems.items():
        figures[name] = {measure: summary(data[measure]) for measure in MEASURES if data[measure]}
        p50 = summary([r["p50"] for r in data["latencies"]])
        p99 = summary([r["p99"] for r in data["latencies"]])
        figures[name] |= {"start_p50_ms": p50, "start_p99_ms": p99}
        for measure, (label, unit) in MEASURES.items():
            if measure not in figures[name]:
                continue
            value = figures[name][measure]["median"]
            ratio = ""
            if name != "taskyard":
                figures[name][f"{measure}_ratio"] = ours[measure] / value
                ratio = f"  (taskyard/{name} {ours[measure] / value:.2f}x)"
            table.append((f"{name}: {label}", f"{value:,.0f} {unit}{ratio}"))
        if name == "taskyard":
            for measure, (label, _) in OUTBOX_MEASURES.items():
                figures[name][measure] = summary(data[measure])
                value = figures[name][measure]["median"]
                table.append((f"{name}: {label}", f"{value:,.0f} jobs/s"))
        else:
            for measure, (label, theirs) in OUTBOX_MEASURES.items():
                if theirs in figures[name]:
                    ratio = outbox_ours[measure] / figures[name][theirs]["median"]
                    figures[name][f"{measure}_ratio"] = ratio
                    table.append((f"taskyard/{name}: {label}", f"{ratio:.2f}x"))
        ratio = "" if name == "taskyard" else f"  (taskyard/{name} {ours_p50 / p50['median']:.2f}x)"
        table.append(
            (
                f"{name}: enqueue -> start p50 / p99",
                f"{p50['median']:.1f} / {p99['median']:.1f} ms{ratio}",
            )
        )
    await write_result(
        "peers",
        {
            "peers": peers,
            "tasks": tasks,
            "workers": workers,
            "runs": runs,
            "rate": rate,
            "seconds": seconds,
            "single": single,
            "batched": batched,
            "drain": drain,
        },
        figures,
        table,
    )
