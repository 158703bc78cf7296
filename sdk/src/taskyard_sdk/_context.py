"""What a running task knows about itself, and can tell the engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from uuid import UUID

from pydantic_core import to_jsonable_python

from taskyard_sdk import protocol
from taskyard_sdk._durations import Duration, parse_duration
from taskyard_sdk.models import ErrorInfo, StepContext

_task_log = logging.getLogger("taskyard.task")
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

if TYPE_CHECKING:
    from taskyard_sdk._task import Task

LogLevel = Literal["debug", "info", "warning", "error"]
Message = protocol.Log | protocol.Stream | protocol.RefreshTimeout
Out = TypeVar("Out")

current_run: ContextVar[UUID | None] = ContextVar("taskyard_current_run", default=None)
"""The run whose task code is executing: runs triggered from there are its children."""


class Context:
    """Passed to every task function as its second argument.

    `log` and `refresh_timeout` may be called from async tasks and from sync tasks (which run on
    the worker's thread pool) alike.
    """

    def __init__(
        self,
        *,
        run_id: UUID,
        attempt: int,
        task: str,
        metadata: dict[str, str],
        loop: asyncio.AbstractEventLoop,
        send: Callable[[Message], None],
        step: StepContext | None = None,
        log_line_bytes: int = 64 * 1024,
    ) -> None:
        self.run_id = run_id
        self.attempt = attempt
        self.task = task
        self.metadata = metadata
        self._step = step
        self._loop = loop
        self._send = send
        self._log_line_bytes = log_line_bytes  # the engine's welcome says
        self._cancelled = False  # a plain flag: assignment is atomic, sync tasks poll it

    @property
    def cancelled(self) -> bool:
        """True once the engine asked this attempt to stop (sync tasks should check it)."""
        return self._cancelled

    # -- workflow steps ----------------------------------------------------------------------------

    @property
    def workflow_run_id(self) -> UUID | None:
        """For a workflow's step: the workflow run it belongs to."""
        return self._step.workflow_run_id if self._step else None

    @property
    def failures(self) -> dict[str, ErrorInfo]:
        """For the on_failure step: the steps that failed for good, with their errors."""
        return dict(self._step.failures) if self._step else {}

    @property
    def parent_outputs(self) -> dict[str, Any]:
        """For a workflow's step: the outputs of its parents that succeeded, by step name, as
        JSON data (`parent_output` decodes one to its type)."""
        return dict(self._step.parents) if self._step else {}

    def parent_output(self, parent: Task[Any, Out]) -> Out:
        """The output of a parent step, decoded to its declared output type."""
        step = self._parent_step(parent)
        assert self._step is not None
        if step in self._step.skipped:
            raise LookupError(
                f"parent step {step!r} was skipped: it has no output (check ctx.was_skipped first)"
            )
        return parent.decode_output(self._step.parents[step])

    def was_skipped(self, parent: Task[Any, Any]) -> bool:
        """Whether a parent step was skipped (by skip_if, or because its parents were)."""
        step = self._parent_step(parent)
        assert self._step is not None
        return step in self._step.skipped

    def _parent_step(self, parent: Task[Any, Any]) -> str:
        step = getattr(parent, "step", None)
        if self._step is None:
            raise LookupError(f"task {self.task!r} is not a workflow step: it has no parents")
        if step is None or (step not in self._step.parents and step not in self._step.skipped):
            raise LookupError(f"{parent!r} is not a parent of step {self._step.step!r}")
        return str(step)

    def log(self, message: object, level: LogLevel = "info") -> None:
        """Add a line (or several) to the run's log, visible through the API, and to the
        worker's own log (logger `taskyard.task`, at the same level)."""
        text = str(message)
        _task_log.log(_LEVELS[level], "%s[%s] %s", self.task, self.run_id, text)
        kept = protocol.cut_line(text, self._log_line_bytes)
        self._post(
            protocol.Log(run_id=self.run_id, attempt=self.attempt, message=kept, level=level)
        )

    def stream(self, data: Any) -> None:
        """Send a JSON-able chunk to whoever follows the run live (`handle.aio_stream()`,
        `GET /api/v1/runs/{id}/stream`). Chunks are not stored."""
        self._post(
            protocol.Stream(run_id=self.run_id, attempt=self.attempt, data=to_jsonable_python(data))
        )

    def refresh_timeout(self, duration: Duration) -> None:
        """Give this attempt `duration` more time from now, instead of its execution_timeout."""
        seconds = parse_duration(duration, name="refresh_timeout")
        self._post(
            protocol.RefreshTimeout(run_id=self.run_id, attempt=self.attempt, seconds=seconds)
        )

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


class BatchContext(Context):
    """The context of a batch task's attempt: what it logs, streams or asks (more time) goes
    to every run of the batch, each of which shows it."""

    def __init__(self, *, runs: list[tuple[UUID, int]], **context: Any) -> None:
        super().__init__(**context)
        self.runs = runs  # (run id, attempt) of each run of the batch, in input order

    @property
    def run_ids(self) -> list[UUID]:
        return [run_id for run_id, _ in self.runs]

    def _post(self, message: Message) -> None:
        for run_id, attempt in self.runs:
            super()._post(message.model_copy(update={"run_id": run_id, "attempt": attempt}))
