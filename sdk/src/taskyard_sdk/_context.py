"""What a running task knows about itself, and can tell the engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Literal
from uuid import UUID

from pydantic_core import to_jsonable_python

from taskyard_sdk import protocol
from taskyard_sdk._durations import Duration, parse_duration

LogLevel = Literal["debug", "info", "warning", "error"]
Message = protocol.Log | protocol.Stream | protocol.RefreshTimeout


class Context:
    """Passed to every task function as its second argument.

    `log` and `refresh_timeout` may be called from async tasks and from sync tasks (which run on
    the worker's thread pool) alike.
    """

    def __init__(self, *, run_id: UUID, attempt: int, task: str, metadata: dict[str, str],
                 loop: asyncio.AbstractEventLoop,
                 send: Callable[[Message], None]) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.task = task
        self.metadata = metadata
        self._loop = loop
        self._send = send
        self._cancelled = False  # a plain flag: assignment is atomic, sync tasks poll it

    @property
    def cancelled(self) -> bool:
        """True once the engine asked this attempt to stop (sync tasks should check it)."""
        return self._cancelled

    def log(self, message: object, level: LogLevel = "info") -> None:
        """Add a line (or several) to the run's log, visible through the API."""
        self._post(protocol.Log(run_id=self.run_id, attempt=self.attempt,
                                message=str(message), level=level))

    def stream(self, data: Any) -> None:
        """Send a JSON-able chunk to whoever follows the run live (`handle.aio_stream()`,
        `GET /api/v1/runs/{id}/stream`). Chunks are not stored."""
        self._post(protocol.Stream(run_id=self.run_id, attempt=self.attempt,
                                   data=to_jsonable_python(data)))

    def refresh_timeout(self, duration: Duration) -> None:
        """Give this attempt `duration` more time from now, instead of its execution_timeout."""
        seconds = parse_duration(duration, name="refresh_timeout")
        self._post(protocol.RefreshTimeout(run_id=self.run_id, attempt=self.attempt,
                                           seconds=seconds))

    def _post(self, message: Message) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._send(message)
        else:
            self._loop.call_soon_threadsafe(self._send, message)

    def _cancel(self) -> None:
        self._cancelled = True
