"""The cost of one assignment decision: the queue actor's dispatcher choosing the next run for a
worker, with 10,000 concurrency keys active (each with runs waiting behind max_runs=1) and 100
workers, against the same queue without keys. In process, no engine: this is the in-memory
decision the engine makes per assignment, measured alone."""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

from bench.harness import summary, write_result
from taskyard.domain.dispatch import Dispatcher, WorkerSlots
from taskyard.domain.flow import Flow
from taskyard.domain.runs import Run
from taskyard.ids import new_id
from taskyard_sdk.models import Concurrency, RunStatus, TaskOptions

TENANT = uuid.uuid4()
CONNECTED: Any = object()  # a live session, as far as the dispatcher is concerned


def measure(
    keys: int, per_key: int, workers: int, slots: int, assignments: int, keyed: bool
) -> dict[str, float]:
    options = TaskOptions(
        concurrency=(Concurrency(expression="input.user", max_runs=1),) if keyed else ()
    )
    runs: dict[uuid.UUID, Run] = {}
    pool = {
        w.worker_id: w
        for w in (
            WorkerSlots(uuid.uuid4(), CONNECTED, tasks=frozenset({"task"}), slots=slots)
            for _ in range(workers)
        )
    }
    dispatcher = Dispatcher(runs, pool, None)

    def add(key: int) -> None:
        run = Run(
            tenant_id=TENANT,
            run_id=new_id(),
            task="task",
            queue="q",
            status=RunStatus.QUEUED,
            attempt=1,
            priority=2,
            options=options,
            created_at=0,
            queued_at=0,
            flow=Flow((str(key),)) if keyed else None,
        )
        runs[run.run_id] = run
        dispatcher.add(run, arriving=True)

    for _ in range(per_key):
        for key in range(keys):
            add(key)
    running: deque[tuple[WorkerSlots, Run]] = deque()
    done = 0
    picking = 0.0  # only the decisions are timed, not the arrivals and completions around them
    clock = time.perf_counter
    while done < assignments:
        for worker in pool.values():
            while worker.free > 0:
                before = clock()
                run = dispatcher.pick(worker, 0.0)
                picking += clock() - before
                assert run is not None, "the backlog ran out; raise per_key"
                worker.running.hold(run.run_id, 1)
                running.append((worker, run))
                done += 1
        # the oldest half finishes: their keys free up and a new run arrives for each
        for _ in range(len(running) // 2):
            worker, run = running.popleft()
            del worker.running[run.run_id]
            dispatcher.forget(run)
            del runs[run.run_id]
            add(int(run.flow.keys[0]) if run.flow else 0)
    return {"us_per_assignment": picking / done * 1e6, "active_keys": len(dispatcher.groups)}


async def main(keys: int, workers: int, runs: int) -> None:
    settings = {
        "keys": keys,
        "per_key": 3,
        "workers": workers,
        "slots": 10,
        "assignments": 200_000,
        "runs": runs,
    }
    figures: dict[str, Any] = {}
    for label, keyed in (("10k_keys", True), ("no_keys", False)):
        samples = [measure(keys, 3, workers, 10, 200_000, keyed) for _ in range(runs)]
        figures[label] = {name: summary([s[name] for s in samples]) for name in samples[0]}
    keyed_us = figures["10k_keys"]["us_per_assignment"]["median"]
    plain_us = figures["no_keys"]["us_per_assignment"]["median"]
    table = [
        (
            f"{keys:,} active keys, {workers} workers",
            f"{keyed_us:.2f} us an assignment "
            f"(range {figures['10k_keys']['us_per_assignment']['min']:.2f}-"
            f"{figures['10k_keys']['us_per_assignment']['max']:.2f})",
        ),
        ("no concurrency keys", f"{plain_us:.2f} us an assignment"),
        ("keys cost", f"{keyed_us / plain_us:.2f}x"),
    ]
    await write_result("assign", settings, figures, table)
