"""A worker's health: a watch on its event loop, and (when asked for) `/health` and `/metrics`
on a port of its own.

Both run on a thread of their own, not on the loop: a loop blocked by a synchronous call inside
an async task (the usual cause: `time.sleep`, a blocking client, CPU-bound work) can answer
nothing, and that is when a probe most needs an answer. The watch notices a loop that has not
ticked for longer than the threshold, looks at the loop thread's stack to name the task whose
code is running, and logs it; `/health` answers 503 while it lasts.

`/metrics` is Prometheus's text format, written here by hand: a dozen gauges and counters do not
justify a dependency for every worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskyard_sdk._worker.worker import Worker

log = logging.getLogger("taskyard.worker")

TICK = 0.05  # seconds between the loop's ticks: the watch's resolution


@dataclass(frozen=True, slots=True)
class Block:
    """A stretch of time the loop did not run."""

    since: float  # time.time() when it began
    seconds: float  # how long it had lasted when last seen (or in all, once it ended)
    task: str | None  # the task whose code was running, if it was a task's
    where: str  # the innermost frame then: file:line in function


class LoopWatch:
    """Ticks on the loop; a thread notices when the ticks stop."""

    def __init__(
        self, name: str, threshold: float, task_codes: Callable[[], dict[CodeType, str]]
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.task_codes = task_codes  # the code of each task's function, to name the blocker
        self.blocked: Block | None = None  # now
        self.last_block: Block | None = None  # the latest that ended
        self.blocks = 0
        self.blocked_seconds = 0.0
        self._last_tick = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._stop.clear()
        self._tick()
        self._thread = threading.Thread(
            target=self._watch, name=f"taskyard-watch-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _tick(self) -> None:
        self._last_tick = time.monotonic()
        assert self._loop is not None
        self._timer = self._loop.call_later(TICK, self._tick)

    def _watch(self) -> None:
        while not self._stop.wait(TICK):
            lag = time.monotonic() - self._last_tick - TICK
            if lag > self.threshold:
                if self.blocked is None:
                    self.blocked = self._blocker(lag)
                    self.blocks += 1
                    log.warning(
                        "worker %s: its event loop has been blocked for %.1fs%s (at %s): a "
                        "synchronous call inside an async task stops every other task and "
                        "the heartbeats; make the task sync (def) or await the call in a thread",
                        self.name,
                        lag,
                        f" by task {self.blocked.task!r}" if self.blocked.task else "",
                        self.blocked.where,
                    )
                else:
                    self.blocked = _lasting(self.blocked, lag)
            elif self.blocked is not None:
                ended = self.blocked
                self.blocked_seconds += ended.seconds
                self.last_block = ended
                self.blocked = None
                log.warning(
                    "worker %s: its event loop ran again after %.1fs blocked%s",
                    self.name,
                    ended.seconds,
                    f" by task {ended.task!r}" if ended.task else "",
                )

    def _blocker(self, lag: float) -> Block:
        """The loop thread's stack now: the task whose function is on it, and where it is."""
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        where = "unknown"
        if frame is not None:
            code = frame.f_code
            where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        codes = self.task_codes()
        task = None
        while frame is not None:
            if frame.f_code in codes:
                task = codes[frame.f_code]
                break
            frame = frame.f_back
        return Block(since=time.time() - lag, seconds=lag, task=task, where=where)


def _lasting(block: Block, lag: float) -> Block:
    return Block(since=block.since, seconds=lag, task=block.task, where=block.where)


class HealthServer:
    """`/health` (JSON; 503 while the loop is blocked) and `/metrics` for one worker."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker = worker
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name=f"taskyard-health-{self.worker.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def health(self) -> tuple[int, dict[str, Any]]:
        worker, watch = self.worker, self.worker.watch
        blocked = watch.blocked
        body = {
            "status": "unhealthy" if blocked else "ok",
            "worker": worker.name,
            "worker_id": str(worker.worker_id),
            "connected": worker.connection.connected.is_set(),
            "slots": worker.slots,
            "running": len(worker.attempts),
            "unacknowledged_results": len(worker.outbox.results),
            "loop_blocked": _block(blocked),
            "last_loop_block": _block(watch.last_block),
        }
        return (503 if blocked else 200), body

    def metrics(self) -> str:
        worker, watch = self.worker, self.worker.watch
        blocked = watch.blocked.seconds if watch.blocked else 0.0
        labels = f'worker="{_escape(worker.name)}",queue="{_escape(worker.queue)}"'
        lines = []
        for name, kind, text, number in (
            ("taskyard_worker_slots", "gauge", "Tasks it runs at once.", worker.slots),
            ("taskyard_worker_running", "gauge", "Attempts running now.", len(worker.attempts)),
            (
                "taskyard_worker_unacknowledged_results",
                "gauge",
                "Results the engine has not acknowledged yet.",
                len(worker.outbox.results),
            ),
            (
                "taskyard_worker_connected",
                "gauge",
                "1 while connected to the engine.",
                int(worker.connection.connected.is_set()),
            ),
            (
                "taskyard_worker_attempts_succeeded",
                "counter",
                "Attempts that succeeded.",
                worker.completed,
            ),
            (
                "taskyard_worker_attempts_failed",
                "counter",
                "Attempts that did not succeed.",
                worker.failed,
            ),
            (
                "taskyard_worker_loop_blocks",
                "counter",
                "Times its event loop was blocked past the threshold.",
                watch.blocks,
            ),
            (
                "taskyard_worker_loop_blocked_seconds",
                "counter",
                "Seconds its event loop spent blocked past the threshold.",
                watch.blocked_seconds + blocked,
            ),
        ):
            full = f"{name}_total" if kind == "counter" else name
            lines += [
                f"# HELP {full} {text}",
                f"# TYPE {full} {kind}",
                f"{full}{{{labels}}} {number}",
            ]
        return "\n".join(lines) + "\n"


def _block(block: Block | None) -> dict[str, Any] | None:
    if block is None:
        return None
    return {
        "since": block.since,
        "seconds": round(block.seconds, 3),
        "task": block.task,
        "where": block.where,
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _handler(server: HealthServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/health":
                status, body = server.health()
                self._answer(status, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                self._answer(200, "text/plain; version=0.0.4", server.metrics().encode())
            else:
                self._answer(404, "text/plain", b"try /health or /metrics\n")

        def _answer(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return  # probes every few seconds would fill the log

    return Handler
