"""Edge: what one request costs the engine. For each operation, N of them one after the other
(each waiting for the previous answer): the engine's CPU time per operation (all its threads,
from /proc/<pid>/task/*/schedstat, in nanoseconds), the wall time per operation, and for the SDK
measures the client's own CPU per call.

Operations, in the order they run on each fresh engine:
- `read`: `GET /api/v1/whoami`, an authenticated read and nothing else
- `trigger`: `POST /api/v1/runs`, one run (committed before the answer)
- `batch_run`: one run inside `POST /api/v1/runs/batch` of 1,000
- `sdk_run_no_wait`: `await task.aio_run_no_wait(n)` through the SDK
- `sdk_run_many_no_wait`: one run inside `await task.aio_run_many_no_wait(1000 inputs)`
- `result_poll`: `GET /api/v1/runs/{id}/result` of a finished run (answered at once)
- `sdk_run`: `await task.aio_run(n)`: trigger, a worker process runs it, the result comes back
- `result_frame`: a worker's `completed` frame, until the engine's `ack` (the result committed),
  from a protocol client holding 1,000 assigned runs
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import Setup, engine_setup, percentiles, summary, wait_all, write_result
from taskyard_sdk import Taskyard, protocol

Measure = dict[str, float]


def engine_cpu(pid: int) -> float:
    """CPU seconds the process's threads have used so far."""
    total = 0
    for thread in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((thread / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


async def timed(
    pid: int, count: int, operations: int, body: Callable[[], Awaitable[list[float] | None]]
) -> Measure:
    """Run `body` (which performs `count` requests covering `operations` operations) and
    return µs of engine CPU, µs of wall time and µs of client CPU per operation; when `body`
    returns per-call latencies, their p50 and p99 in ms."""
    await asyncio.sleep(0.2)  # let the previous step's writes settle
    cpu_before, client_before = engine_cpu(pid), time.process_time()
    started = time.perf_counter()
    latencies = await body()
    wall = time.perf_counter() - started
    await asyncio.sleep(0.05)  # what the last request left behind (its flush) counts too
    cpu = engine_cpu(pid) - cpu_before
    client = time.process_time() - client_before
    measure = {
        "engine_cpu_us": cpu / operations * 1e6,
        "wall_us": wall / operations * 1e6,
        "client_cpu_us": client / operations * 1e6,
        "requests": count,
    }
    if latencies:
        shares = percentiles([latency * 1000 for latency in latencies])
        measure["p50_ms"], measure["p99_ms"] = shares["p50"], shares["p99"]
    return measure


async def read(http: aiohttp.ClientSession, count: int) -> None:
    for _ in range(count):
        async with http.get("/api/v1/whoami") as response:
            await response.read()
            assert response.status == 200, response.status


async def trigger(http: aiohttp.ClientSession, count: int, first: int) -> list[str]:
    ids = []
    for n in range(first, first + count):
        async with http.post("/api/v1/runs", json={"task": "noop", "input": n}) as response:
            assert response.status == 201, await response.text()
            ids.append((await response.json())["run_id"])
    return ids


async def batch(http: aiohttp.ClientSession, count: int, first: int) -> list[str]:
    ids = []
    for start in range(first, first + count * 1000, 1000):
        runs = [{"task": "noop", "input": n} for n in range(start, start + 1000)]
        async with http.post("/api/v1/runs/batch", json={"runs": runs}) as response:
            assert response.status == 201, await response.text()
            ids += [ref["run_id"] for ref in (await response.json())["runs"]]
    return ids


async def result_polls(http: aiohttp.ClientSession, run_ids: list[str]) -> None:
    for run_id in run_ids:
        async with http.get(f"/api/v1/runs/{run_id}/result") as response:
            assert (await response.json())["status"] == "succeeded"


async def engine_messages(ws: aiohttp.ClientWebSocketResponse) -> list[Any]:
    """The messages of the engine's next frame (one object, or a list of them under load)."""
    return list(protocol.decode_engine_frame((await ws.receive()).data))


async def result_frames(setup: Setup, http: aiohttp.ClientSession, count: int) -> Measure:
    """A protocol client takes `count` runs, then reports each one's end in its own frame and
    waits for the engine's ack (sent once the result is committed)."""
    async with http.ws_connect("/api/v1/workers/connect") as ws:
        await ws.send_str(
            protocol.Hello(
                protocol=protocol.PROTOCOL_VERSION,
                worker_id=uuid.uuid4(),
                name="frames",
                slots=count,
                tasks=[protocol.TaskDefinition(name="framed")],
            ).model_dump_json()
        )
        [welcome] = await engine_messages(ws)
        assert isinstance(welcome, protocol.Welcome), welcome
        async with http.post(
            "/api/v1/runs/batch",
            json={"runs": [{"task": "framed", "input": n} for n in range(count)]},
        ) as response:
            assert response.status == 201, await response.text()
        assigned: list[protocol.Assign] = []
        while len(assigned) < count:
            for message in await engine_messages(ws):
                assert isinstance(message, protocol.Assign), message
                assigned.append(message)

        async def report() -> list[float]:
            latencies = []
            for assign in assigned:
                sent = time.perf_counter()
                await ws.send_str(
                    protocol.Completed(
                        run_id=assign.run_id, attempt=assign.attempt, output=assign.input
                    ).model_dump_json()
                )
                [ack] = await engine_messages(ws)
                assert isinstance(ack, protocol.Ack), ack
                latencies.append(time.perf_counter() - sent)
            return latencies

        return await timed(setup.engine.pid, count, count, report)


async def one_engine(sizes: dict[str, int]) -> dict[str, Measure]:
    figures: dict[str, Measure] = {}
    async with (
        engine_setup() as setup,
        aiohttp.ClientSession(base_url=setup.engine.url, headers=setup.headers) as http,
    ):
        pid = setup.engine.pid
        ty = Taskyard(setup.engine.url, setup.token)

        @ty.task(name="noop", schedule_timeout="1h")
        async def noop(n: int) -> int:
            return n

        n = sizes["single"]
        await read(http, 200)  # warm-up: first requests build caches and connections
        await trigger(http, 200, 0)
        await batch(http, 1, 0)

        async def reads() -> None:
            await read(http, sizes["read"])

        figures["read"] = await timed(pid, sizes["read"], sizes["read"], reads)
        triggered: list[str] = []
        queued: list[str] = []  # the other runs queued before a worker drains them all

        async def triggers() -> None:
            triggered.extend(await trigger(http, n, 10_000))

        figures["trigger"] = await timed(pid, n, n, triggers)

        async def batches() -> None:
            queued.extend(await batch(http, sizes["batches"], 100_000))

        figures["batch_run"] = await timed(pid, sizes["batches"], sizes["batches"] * 1000, batches)

        async def sdk_no_wait() -> list[float]:
            latencies = []
            for i in range(n):
                sent = time.perf_counter()
                queued.append(str((await noop.aio_run_no_wait(i)).run_id))
                latencies.append(time.perf_counter() - sent)
            return latencies

        await noop.aio_run_no_wait(0)  # the SDK's own session and caches
        figures["sdk_run_no_wait"] = await timed(pid, n, n, sdk_no_wait)

        async def sdk_many() -> None:
            inputs = list(range(1000))
            for _ in range(sizes["batches"]):
                queued.extend(str(h.run_id) for h in await noop.aio_run_many_no_wait(inputs))

        figures["sdk_run_many_no_wait"] = await timed(
            pid, sizes["batches"], sizes["batches"] * 1000, sdk_many
        )

        workers = setup.workers(1, 200)
        await setup.wait_for_workers(http, 1)
        await wait_all(http, [*triggered, *queued])

        async def polls() -> None:
            await result_polls(http, triggered)

        figures["result_poll"] = await timed(pid, n, n, polls)

        async def sdk_run() -> list[float]:
            latencies = []
            for i in range(sizes["runs"]):
                sent = time.perf_counter()
                assert await noop.aio_run(i) == i
                latencies.append(time.perf_counter() - sent)
            return latencies

        for i in range(50):
            await noop.aio_run(i)
        figures["sdk_run"] = await timed(pid, sizes["runs"], sizes["runs"], sdk_run)
        workers.stop()
        figures["result_frame"] = await result_frames(setup, http, sizes["frames"])
        await ty.aio_close()
    return figures


LABELS = {
    "read": "authenticated read (GET /whoami)",
    "trigger": "single trigger (POST /runs)",
    "batch_run": "a run inside POST /runs/batch of 1,000",
    "sdk_run_no_wait": "SDK aio_run_no_wait, sequential",
    "sdk_run_many_no_wait": "a run inside SDK aio_run_many_no_wait(1,000)",
    "result_poll": "result long-poll of a finished run",
    "sdk_run": "SDK aio_run (trigger, run on a worker, result)",
    "result_frame": "worker result frame -> ack (committed)",
}


async def main(runs: int, single: int) -> None:
    sizes = {
        "read": single * 2,
        "single": single,
        "batches": 10,
        "runs": single // 2,
        "frames": single,
    }
    samples = [await one_engine(sizes) for _ in range(runs)]
    figures: dict[str, Any] = {}
    table = []
    for name, label in LABELS.items():
        keys = [key for key in samples[0][name] if key != "requests"]
        figures[name] = {key: summary([sample[name][key] for sample in samples]) for key in keys}
        cpu, wall = figures[name]["engine_cpu_us"], figures[name]["wall_us"]
        text = (
            f"engine CPU {cpu['median']:.0f} µs (range {cpu['min']:.0f}-{cpu['max']:.0f}), "
            f"wall {wall['median']:.0f} µs"
        )
        if name.startswith("sdk"):
            text += f", client CPU {figures[name]['client_cpu_us']['median']:.0f} µs"
        if "p50_ms" in figures[name]:
            text += (
                f", p50 {figures[name]['p50_ms']['median']:.2f} ms, "
                f"p99 {figures[name]['p99_ms']['median']:.2f} ms"
            )
        table.append((label, text))
    await write_result("edge", {"runs": runs, **sizes, "cores": os.cpu_count()}, figures, table)
