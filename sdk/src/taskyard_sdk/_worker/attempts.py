"""Running the attempts the engine assigns: each in an asyncio task of its own (a sync function
on the worker's thread pool, never on asyncio's default executor, which user code may need for
itself), cancelled when the engine says so, its outcome handed to the outbox. Durable tasks log
their entries and suspend through here too.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from taskyard_sdk import protocol
from taskyard_sdk._context import BatchContext, Context, current_run
from taskyard_sdk._durable import DurableContext, Suspended, current_durable
from taskyard_sdk._errors import NonRetryableError, RetryAfter
from taskyard_sdk._task import BatchTask, batch_bodies
from taskyard_sdk._worker.outbox import AttemptKey, Outbox, Result
from taskyard_sdk.logs import current_run_fields, run_fields
from taskyard_sdk.models import ErrorInfo
from taskyard_sdk.otel import attempt_failed, attempt_span

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard
    from taskyard_sdk._task import Task

log = logging.getLogger("taskyard.worker")


@dataclass(eq=False)
class _Execution:
    assign: protocol.Assign  # a batch's: its first run's, with every input
    context: Context
    task: asyncio.Task[None] | None = None
    inner: asyncio.Future[Any] | None = None
    cancel_reason: str | None = None
    batch: list[AttemptKey] = field(default_factory=list)  # a batch task's runs, in order
    cancelled: dict[AttemptKey, str] = field(default_factory=dict)  # of those, and why

    def attempts(self) -> list[AttemptKey]:
        return self.batch or [(self.assign.run_id, self.assign.attempt)]


class _InvalidTaskInput(Exception):
    pass


_BEFORE_WELCOME = protocol.Welcome(  # no attempt runs before the engine's welcome replaces it
    worker_id=uuid.UUID(int=0), heartbeat_interval=5.0, max_message_bytes=1024 * 1024
)


class Attempts:
    """The attempts running on one worker. `state` is what the worker's lifespan yielded."""

    def __init__(
        self,
        name: str,
        client: Taskyard,
        tasks: dict[str, Task[Any, Any]],
        outbox: Outbox,
        state: Callable[[], Any],
    ) -> None:
        self.name = name
        self.client = client
        self.tasks = tasks
        self.outbox = outbox
        self.state = state
        self.welcome = _BEFORE_WELCOME  # the engine's: what it accepts, the tenant's name
        self.completed = 0
        self.failed = 0
        self._executions: dict[AttemptKey, _Execution] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self._executions)

    def keys(self) -> list[AttemptKey]:
        return list(self._executions)

    def open(self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor) -> None:
        self._loop = loop
        self._executor = executor

    def running(self) -> list[asyncio.Task[None]]:
        return [e.task for e in self._executions.values() if e.task is not None]

    def cancel_all(self, reason: str) -> None:
        for execution in list(self._executions.values()):
            self._cancel(execution, reason)

    def cancel(self, message: protocol.Cancel) -> None:
        key = (message.run_id, message.attempt)
        execution = self._executions.get(key)
        if execution is None:
            return
        if execution.batch:  # the batch goes on for its other runs, unless none is left
            execution.cancelled[key] = message.reason
            if len(execution.cancelled) < len(execution.batch):
                return
        self._cancel(execution, message.reason)

    def assign_batch(self, batch: protocol.AssignBatch) -> None:
        """One call of a batch task's function for all the batch's runs."""
        keys = [(run.run_id, run.attempt) for run in batch.runs]
        if any(key in self._executions for key in keys):
            return  # sent again
        assert self._loop is not None
        first = batch.runs[0]
        assign = protocol.Assign(
            run_id=first.run_id,
            attempt=first.attempt,
            task=batch.task,
            input=[run.input for run in batch.runs],
            metadata=first.metadata,
            execution_timeout=batch.execution_timeout,
        )
        context = BatchContext(
            runs=keys,
            run_id=first.run_id,
            attempt=first.attempt,
            task=batch.task,
            metadata=first.metadata,
            loop=self._loop,
            send=self.outbox.send,
            log_line_bytes=self.welcome.max_log_line_bytes,
        )
        execution = _Execution(assign, context, batch=keys)
        for key in keys:
            self._executions[key] = execution
        execution.task = asyncio.create_task(
            self._execute(execution), name=f"batch:{batch.task}:{len(keys)}:{first.run_id}"
        )

    def assign(self, assign: protocol.Assign) -> None:
        key = (assign.run_id, assign.attempt)
        if key in self._executions:
            return
        assert self._loop is not None
        task = self.tasks.get(assign.task)
        context: Context
        send = self.outbox.send
        if task is not None and task.options.durable:
            context = DurableContext(
                history=assign.history or [],
                input=assign.input,
                record=functools.partial(self._record, assign),
                suspend=functools.partial(self._suspend, assign),
                spawn=self._spawn,
                run_id=assign.run_id,
                attempt=assign.attempt,
                task=assign.task,
                metadata=assign.metadata,
                loop=self._loop,
                send=send,
                step=assign.context,
                log_line_bytes=self.welcome.max_log_line_bytes,
            )
        else:
            context = Context(
                run_id=assign.run_id,
                attempt=assign.attempt,
                task=assign.task,
                metadata=assign.metadata,
                loop=self._loop,
                send=send,
                step=assign.context,
                log_line_bytes=self.welcome.max_log_line_bytes,
            )
        execution = _Execution(assign, context)
        self._executions[key] = execution
        execution.task = asyncio.create_task(
            self._execute(execution), name=f"task:{assign.task}:{assign.run_id}"
        )

    def _cancel(self, execution: _Execution, reason: str) -> None:
        if execution.cancel_reason is None:
            execution.cancel_reason = reason
        execution.context._cancel()  # sync functions see ctx.cancelled: a thread cannot be stopped
        task = self.tasks.get(execution.assign.task)
        if (
            task is not None
            and task.is_async
            and execution.inner is not None
            and not execution.inner.done()
        ):
            execution.inner.cancel()  # async functions see CancelledError

    # -- durable tasks ---------------------------------------------------------------------------

    async def _record(self, assign: protocol.Assign, entry: protocol.DurableEntry) -> None:
        """Log a durable entry; returns once the engine has committed it."""
        await self.outbox.record(
            protocol.Record(run_id=assign.run_id, attempt=assign.attempt, entry=entry)
        )

    def _suspend(
        self, assign: protocol.Assign, position: int, call: str, wait: protocol.WaitSpec
    ) -> None:
        """The attempt stops to wait: the suspension is kept like a result until acknowledged."""
        message = protocol.Suspend(
            run_id=assign.run_id, attempt=assign.attempt, position=position, call=call, wait=wait
        )
        self.outbox.result((assign.run_id, assign.attempt), message)

    async def _spawn(
        self, task: Task[Any, Any], inputs: list[Any], keys: list[str]
    ) -> list[uuid.UUID]:
        """Children of the running durable run, created once: their idempotency keys name the
        run and the log position, so a replay that spawns again gets the same runs."""
        runs = (
            task._trigger(value, None, None, key, options=False)
            for value, key in zip(inputs, keys, strict=True)
        )
        spawned: list[uuid.UUID] = []
        for body in batch_bodies(runs, {"options": task._options_json}):
            data = await self.client.transport.request("POST", "/api/v1/runs/batch", body=body)
            spawned += [uuid.UUID(ref["run_id"]) for ref in data["runs"]]
        return spawned

    # -- running one attempt ---------------------------------------------------------------------

    async def _execute(self, execution: _Execution) -> None:
        """One attempt, in a span of its own (with OpenTelemetry): the task's spans nest in it."""
        assign = execution.assign
        current_run.set(assign.run_id)  # this asyncio task's own context: runs it triggers
        current_run_fields.set(  # and every line logged while it runs
            run_fields(
                assign.run_id, task=assign.task, attempt=assign.attempt, tenant=self.welcome.tenant
            )
        )
        root = assign.context.workflow_run_id if assign.context else assign.run_id
        with attempt_span(
            assign.task, assign.run_id, assign.attempt, assign.metadata, root
        ) as span:
            result = await self._attempt(execution)
            if isinstance(result, protocol.Failed):
                attempt_failed(span, result.error.type, result.error.message)
        if result is None:
            return
        keys = execution.attempts()
        if isinstance(result, list):  # a batch's outputs, by run
            outcomes = result
        elif execution.batch:  # a batch's failure is each of its runs'
            outcomes = [result.model_copy(update={"run_id": r, "attempt": a}) for r, a in keys]
        else:
            outcomes = [result]
        for key, outcome in zip(keys, outcomes, strict=True):
            self.outbox.result(key, self._unless_cancelled(execution, key, outcome))

    def _unless_cancelled(self, execution: _Execution, key: AttemptKey, result: Result) -> Result:
        """A batch's run cancelled while the batch went on ends cancelled, whatever the rest."""
        reason = execution.cancelled.get(key)
        if reason is None or not isinstance(result, protocol.Completed | protocol.Failed):
            return result
        return protocol.Failed(
            run_id=key[0],
            attempt=key[1],
            cancelled=True,
            error=ErrorInfo(type="Cancelled", message=reason),
        )

    async def _attempt(self, execution: _Execution) -> Result | list[Result] | None:
        """Run it: its result, or None when it suspended (a durable wait)."""
        assign = execution.assign
        if isinstance(execution.context, DurableContext):
            current_durable.set(execution.context)
        ref = {"run_id": assign.run_id, "attempt": assign.attempt}
        for run_id, attempt in execution.attempts():
            self.outbox.send(protocol.Started(run_id=run_id, attempt=attempt))
        started = time.monotonic()
        log.info("%s[%s] attempt %d started", assign.task, assign.run_id, assign.attempt)
        result: Result | list[Result]
        try:
            output = await self._call(execution)
            result = self._completed(execution, output)
        except Suspended:
            for key in execution.attempts():
                self._executions.pop(key, None)
            return None  # it waits; the suspension (sent already) is its outcome for now
        except asyncio.CancelledError:
            if execution.cancel_reason is None:
                raise  # the worker itself is being torn down
            result = protocol.Failed(
                **ref,
                cancelled=True,
                error=ErrorInfo(type="Cancelled", message=execution.cancel_reason),
            )
        except NonRetryableError as exc:
            result = protocol.Failed(**ref, retryable=False, error=_error_info(exc))
        except RetryAfter as exc:
            result = protocol.Failed(**ref, retry_after=exc.seconds, error=_error_info(exc))
        except _InvalidTaskInput as exc:
            result = protocol.Failed(
                **ref, retryable=False, error=ErrorInfo(type="InvalidInput", message=str(exc))
            )
        except Exception as exc:
            result = protocol.Failed(**ref, error=_error_info(exc))
        finally:
            for key in execution.attempts():
                self._executions.pop(key, None)
        if execution.cancel_reason is not None and isinstance(result, protocol.Completed | list):
            result = protocol.Failed(
                **ref,
                cancelled=True,
                error=ErrorInfo(type="Cancelled", message=execution.cancel_reason),
            )
        took = time.monotonic() - started
        if isinstance(result, protocol.Completed | list):
            self.completed += 1
            log.info("%s[%s] succeeded in %.3fs", assign.task, assign.run_id, took)
        else:
            self.failed += 1
            if isinstance(result, protocol.Failed):
                log.warning(
                    "%s[%s] attempt %d failed in %.3fs: %s: %s",
                    assign.task,
                    assign.run_id,
                    assign.attempt,
                    took,
                    result.error.type,
                    result.error.message,
                )
        return result

    async def _call(self, execution: _Execution) -> Any:
        assign = execution.assign
        task = self.tasks.get(assign.task)
        if task is None:
            raise NonRetryableError(f"worker {self.name} has no task {assign.task!r}")
        try:
            value = task.decode_input(assign.input)
        except ValidationError as exc:
            raise _InvalidTaskInput(f"input for task {task.name!r} is invalid: {exc}") from None
        if task.is_async:
            execution.inner = asyncio.ensure_future(task(value, execution.context, self.state()))
        else:
            assert self._loop is not None
            call = functools.partial(
                contextvars.copy_context().run, task, value, execution.context, self.state()
            )
            execution.inner = self._loop.run_in_executor(self._executor, call)
        if task.is_async:
            if execution.cancel_reason is not None:
                execution.inner.cancel()
            return await execution.inner
        # A sync function cannot be interrupted: wait for it even if cancelled.
        return await asyncio.shield(execution.inner)

    def _completed(self, execution: _Execution, output: Any) -> Result | list[Result]:
        assign = execution.assign
        task = self.tasks[assign.task]
        if not execution.batch:
            return self._encoded(task, {"run_id": assign.run_id, "attempt": assign.attempt}, output)
        assert isinstance(task, BatchTask)
        try:
            outputs = task.split_outputs(output, len(execution.batch))
        except ValueError as exc:
            return protocol.Failed(
                run_id=assign.run_id,
                attempt=assign.attempt,
                retryable=False,
                error=ErrorInfo(type="BatchOutputMismatch", message=str(exc)),
            )
        return [
            self._encoded(task, {"run_id": run_id, "attempt": attempt}, value)
            for (run_id, attempt), value in zip(execution.batch, outputs, strict=True)
        ]

    def _encoded(self, task: Task[Any, Any], ref: dict[str, Any], output: Any) -> Result:
        """A run's output as the message that sends it, or the failure it is (not JSON, or
        not storable, or too large)."""
        try:
            data = task.encode_output(output)
            message = protocol.Completed(**ref, output=data)
            encoded = protocol.encode(message)
        except Exception as exc:
            return protocol.Failed(
                **ref,
                retryable=False,
                error=ErrorInfo(
                    type="OutputNotSerializable",
                    message=f"task {task.name!r} returned a value that cannot be sent as "
                    f"JSON: {exc}",
                ),
            )
        unstorable = _unstorable(encoded, data)
        if unstorable is not None:
            return protocol.Failed(
                **ref,
                retryable=False,
                error=ErrorInfo(
                    type="OutputNotStorable",
                    message=f"task {task.name!r} returned a value the engine cannot store: "
                    f"{unstorable}",
                ),
            )
        welcome = self.welcome
        frame_room = welcome.max_message_bytes - 1024  # for the message around the output
        limit = min(welcome.max_output_bytes, frame_room)
        if len(encoded) <= limit:
            return message
        size = len(encoded) - len(protocol.encode(protocol.Completed(**ref))) + len(b"null")
        if size > limit:
            setting = "max_output_bytes" if limit < frame_room else "max_request_bytes"
            return protocol.Failed(
                **ref,
                retryable=False,
                error=ErrorInfo(
                    type="OutputTooLarge",
                    message=f"task {task.name!r} returned {size:,} bytes of JSON; the engine "
                    f"keeps outputs up to {limit:,} bytes ({setting}). Store large data "
                    f"elsewhere and return a reference.",
                ),
            )
        return message


def _unstorable(encoded: bytes, data: Any) -> str | None:
    """Why output cannot be stored by the engine (NUL characters, nesting too deep); its
    encoded message rules both out for most outputs without a walk."""
    where = protocol.nul_at(data, "output") if b"\\u0000" in encoded else None
    if where is not None:
        return f"{where} {protocol.NUL_REFUSAL}"
    deep = protocol.too_deep(encoded, data)
    if deep is not None:
        return (
            f"output.{deep} nests more than {protocol.MAX_JSON_DEPTH} levels deep; the "
            f"limit is {protocol.MAX_JSON_DEPTH}"
        )
    return None


def _error_info(exc: BaseException) -> ErrorInfo:
    """The error a task raised; NUL characters, which the engine cannot store, replaced."""
    return ErrorInfo(
        type=type(exc).__name__,
        message=_printable(str(exc)),
        traceback=_printable("".join(traceback.format_exception(exc))),
    )


def _printable(text: str) -> str:
    return text.replace("\x00", "\ufffd")
