"""The benchmark worker process: no-op tasks, and one that reports when it started.

Environment: TASKYARD_URL, TASKYARD_TOKEN, WORKER_NAME, SLOTS.
"""

from __future__ import annotations

import os
import time

from taskyard_sdk import Taskyard

ty = Taskyard()


@ty.task(schedule_timeout="1h")
async def noop(n: int) -> int:
    return n


@ty.task(schedule_timeout="1h")
async def stamp(sent: float) -> float:
    """Returns the time it started, so the client can measure trigger -> start."""
    return time.time()


if __name__ == "__main__":
    ty.worker(os.environ.get("WORKER_NAME", "bench"), tasks=[noop, stamp],
              slots=int(os.environ.get("SLOTS", "200"))).start()
