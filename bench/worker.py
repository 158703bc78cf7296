"""The benchmark worker process: no-op tasks, one that reports when it started, and the DAG
workload's workflows (a chain and a fan-out/fan-in of no-op steps).

Environment: TASKYARD_URL, TASKYARD_TOKEN, WORKER_NAME, SLOTS, and WORKFLOWS=1 for the DAG
workload's workflows (only then: a thousand more registered steps is not what the other workloads
measure).
"""

from __future__ import annotations

import os
import time

from taskyard_sdk import Taskyard, Workflow, WorkflowTask

ty = Taskyard()


@ty.task(schedule_timeout="1h")
async def noop(n: int) -> int:
    return n


@ty.task(schedule_timeout="1h")
async def stamp(sent: float) -> float:
    """Returns the time it started, so the client can measure trigger -> start."""
    return time.time()


def chain_workflow(length: int) -> Workflow[int]:
    chain = ty.workflow("bench-chain", input=int)
    previous: list[WorkflowTask[int, int]] = []
    for index in range(length):
        previous = [
            chain.task(name=f"step-{index:02d}", parents=previous, schedule_timeout="1h")(noop_step)
        ]
    return chain


def fan_workflow(width: int) -> Workflow[int]:
    fan = ty.workflow("bench-fan", input=int)
    split = fan.task(name="split", schedule_timeout="1h")(noop_step)
    leaves = [
        fan.task(name=f"leaf-{index:04d}", parents=[split], schedule_timeout="1h")(noop_step)
        for index in range(width)
    ]
    fan.task(name="join", parents=leaves, schedule_timeout="1h")(noop_step)
    return fan


async def noop_step(n: int) -> int:
    return n


CHAIN = 20
FAN = 1000

if __name__ == "__main__":
    workflows = [chain_workflow(CHAIN), fan_workflow(FAN)] if os.environ.get("WORKFLOWS") else []
    ty.worker(
        os.environ.get("WORKER_NAME", "bench"),
        tasks=[noop, stamp],
        workflows=workflows,
        slots=int(os.environ.get("SLOTS", "200")),
    ).start(log_level="warning")  # not a log line per run: it would be measured
