"""The worker: connects to the engine, runs the tasks it is assigned, reports back, reconnects.

Its parts, each in a module of its own: the `Connection` (the socket, hello, reconnects,
heartbeats), the `Attempts` it runs, and the `Outbox` that keeps results until the engine
acknowledges them as committed, so a result is never lost to a dropped connection or an engine
restart. This module is the public `Worker`: how it starts, drains and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from types import CodeType
from typing import TYPE_CHECKING, Any

from taskyard_sdk import protocol
from taskyard_sdk._worker.attempts import Attempts
from taskyard_sdk._worker.connection import Connection, WorkerStopped
from taskyard_sdk._worker.health import HealthServer, LoopWatch
from taskyard_sdk._worker.outbox import Outbox
from taskyard_sdk.logs import LogFormat, configure_logging
from taskyard_sdk.models import LabelValue

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard
    from taskyard_sdk._task import Task
    from taskyard_sdk._workflow import Workflow

log = logging.getLogger("taskyard.worker")


class Worker:
    """Runs tasks for the engine. `start()` blocks until SIGINT/SIGTERM (then drains);
    `await aio_start()` does the same in a running loop; `async with worker:` runs it in the
    background for the block's duration, and `with worker:` on a thread of its own (for
    synchronous code and tests)."""

    def __init__(
        self,
        client: Taskyard,
        name: str,
        tasks: Sequence[Task[Any, Any]],
        *,
        workflows: Sequence[Workflow[Any]] = (),
        slots: int = 100,
        labels: dict[str, LabelValue] | None = None,
        queue: str = "default",
        drain_timeout: float = 30.0,
        lifespan: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        health_port: int | None = None,
        health_host: str = "127.0.0.1",
        block_threshold: float = 1.0,
    ) -> None:
        if not tasks:
            raise ValueError(f"worker {name!r} needs at least one task")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"worker {name!r}: task names must be unique, got {names}")
        if slots < 1:
            raise ValueError(f"worker {name!r}: slots must be at least 1")
        for task in tasks:
            if task.options.slot_cost > slots:
                raise ValueError(
                    f"worker {name!r} has {slots} slots and could never run task {task.name!r}, "
                    f"which takes {task.options.slot_cost} (slot_cost): give it more slots"
                )
        self.client = client
        self.name = name
        self.tasks = {task.name: task for task in tasks}
        self.workflows = list(workflows)
        self.slots = slots
        self.labels = labels or {}
        self.queue = queue
        self.drain_timeout = drain_timeout
        self.lifespan = lifespan
        self.state: Any = None  # what the lifespan yielded, while the worker runs
        self.worker_id = uuid.uuid4()
        self.outbox = Outbox()
        self.attempts = Attempts(name, client, self.tasks, self.outbox, lambda: self.state)
        self.connection = Connection(self, self.attempts, self.outbox)
        self.watch = LoopWatch(name, block_threshold, self._task_codes)
        self.health_port = health_port
        self.health_host = health_host
        self._health: HealthServer | None = None
        self._connected = self.connection.connected
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None  # `with worker:` runs it there

    @property
    def completed(self) -> int:
        """Attempts that succeeded since the worker was made."""
        return self.attempts.completed

    @property
    def failed(self) -> int:
        """Attempts that did not succeed since the worker was made."""
        return self.attempts.failed

    @property
    def health_url(self) -> str:
        """Where its `/health` and `/metrics` are served (with `health_port`, once started)."""
        if self._health is None:
            raise RuntimeError(f"worker {self.name} serves no health port (health_port=...)")
        return self._health.url

    def _task_codes(self) -> dict[CodeType, str]:
        """Each task function's code, to name the task that blocks the loop."""
        return {
            code: task.name
            for task in self.tasks.values()
            if (code := getattr(task.fn, "__code__", None)) is not None
        }

    # -- running ---------------------------------------------------------------------------------

    def start(self, *, log_level: str | None = None, log_format: LogFormat | None = None) -> None:
        """Run until SIGINT or SIGTERM, then drain: take no new work, let running tasks finish
        within `drain_timeout`, deliver their results.

        As a process's main loop, it logs to stderr (connection, registrations, each attempt,
        `ctx.log` lines) at `log_level`, or TASKYARD_LOG_LEVEL, default INFO, as `log_format`
        ("text" or "json", or TASKYARD_LOG_FORMAT), each line about a run with its run id,
        task, attempt and tenant, unless the program configured logging itself. `aio_start`
        leaves logging to the application (`taskyard_sdk.logs.configure_logging` does it)."""
        if not logging.getLogger().handlers:
            configure_logging(
                log_level or os.environ.get("TASKYARD_LOG_LEVEL", "info"),
                log_format or _log_format(os.environ.get("TASKYARD_LOG_FORMAT", "text")),
            )
        asyncio.run(self.aio_start(handle_signals=True))

    async def aio_start(self, *, handle_signals: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._connected.clear()
        self.outbox.open()
        executor = ThreadPoolExecutor(
            max_workers=self.slots, thread_name_prefix=f"taskyard-{self.name}"
        )
        self.attempts.open(self._loop, executor)
        self.watch.start(self._loop)
        if self.health_port is not None:
            self._health = HealthServer(self, self.health_host, self.health_port)
            self._health.start()
        if handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._loop.add_signal_handler(sig, self._stopping.set)
        try:
            if self.lifespan is None:
                await self._run()
            else:
                # Opened before the first task, closed after the drain (the last has ended).
                async with self.lifespan() as state:
                    self.state = state
                    self._check_dependencies()
                    await self._run()
        finally:
            self.state = None
            self.watch.stop()
            if self._health is not None:
                self._health.stop()
                self._health = None
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(sig)
            executor.shutdown(wait=False, cancel_futures=True)

    def _check_dependencies(self) -> None:
        """Every task's dependencies are found in the state now, not at its first run."""
        for task in self.tasks.values():
            for dependency in task.dependencies:
                try:
                    dependency.resolve(self.state, task.name)
                except LookupError as exc:
                    raise WorkerStopped(f"worker {self.name}: {exc}") from None

    async def __aenter__(self) -> Worker:
        self._runner = asyncio.create_task(self.aio_start(), name=f"worker:{self.name}")
        while not self._connected.is_set():
            if self._runner.done():
                await self._runner  # raises why it could not start
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __enter__(self) -> Worker:
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self.aio_start())
            except BaseException as exc:  # handed to the thread that waits for the start
                failure.append(exc)

        self._thread = threading.Thread(
            target=run, name=f"taskyard-worker-{self.name}", daemon=True
        )
        self._thread.start()
        while not self._connected.is_set():
            if not self._thread.is_alive():
                raise failure[0] if failure else WorkerStopped(f"worker {self.name} stopped")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)  # drain, as on SIGTERM
        if self._thread is not None:
            self._thread.join()

    async def stop(self) -> None:
        """Drain and stop (from the worker's own loop)."""
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Until the worker is connected (it may be starting in another task)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def _run(self) -> None:
        assert self._stopping is not None
        stopping = asyncio.create_task(self._stopping.wait())
        connection = asyncio.create_task(self.connection.stay_connected())
        try:
            await asyncio.wait([stopping, connection], return_when=asyncio.FIRST_COMPLETED)
            if connection.done():
                await connection  # a fatal refusal
                return
            await self._drain()
        finally:
            stopping.cancel()
            connection.cancel()
            await asyncio.gather(stopping, connection, return_exceptions=True)
            running = self.attempts.running()
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _drain(self) -> None:
        """Stop taking work, give running tasks `drain_timeout`, then deliver results."""
        log.info("worker %s draining (%d running)", self.name, len(self.attempts))
        self.outbox.send(protocol.Drain())
        running = self.attempts.running()
        if running:
            await asyncio.wait(running, timeout=self.drain_timeout)
        self.attempts.cancel_all("the worker is shutting down")
        remaining = self.attempts.running()
        if remaining:
            await asyncio.wait(remaining, timeout=5)
        # Results are only safe once acknowledged: wait a little for the last acks.
        for _ in range(100):
            ws = self.connection.ws
            if not self.outbox.results or ws is None or ws.closed:
                break
            await asyncio.sleep(0.05)


def _log_format(given: str) -> LogFormat:
    if given not in ("text", "json"):
        raise ValueError(f"TASKYARD_LOG_FORMAT must be 'text' or 'json', not {given!r}")
    return "json" if given == "json" else "text"
