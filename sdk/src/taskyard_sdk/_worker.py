"""The worker: connects to the engine, runs the tasks it is assigned, reports back, reconnects.

Results are kept in an outbox and sent again after every reconnect until the engine acknowledges
them as committed, so a result is never lost to a dropped connection or an engine restart. Async
task functions run on the worker's event loop; sync ones on the worker's own thread pool (never
on asyncio's default executor, which user code may need for itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import os
import random
import signal
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import BaseModel, ValidationError

from taskyard_sdk import protocol
from taskyard_sdk._context import Context, current_run
from taskyard_sdk._durable import DurableContext, Suspended, current_durable
from taskyard_sdk._errors import (
    AuthenticationError,
    EngineUnreachable,
    InvalidRequest,
    NonRetryableError,
    PermissionDenied,
    RetryAfter,
    TaskyardError,
    Unavailable,
)
from taskyard_sdk._task import batch_bodies
from taskyard_sdk.models import ErrorInfo, LabelValue

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard
    from taskyard_sdk._task import Task
    from taskyard_sdk._workflow import Workflow

log = logging.getLogger("taskyard.worker")

AttemptKey = tuple[uuid.UUID, int]
Result = protocol.Completed | protocol.Failed | protocol.Suspend
RecordKey = tuple[uuid.UUID, int, int]  # (run, attempt, position)

_PENDING_LIMIT = 10_000  # logs and other non-result messages kept while disconnected
_CLOSE_FATAL = {  # reconnecting would not help
    protocol.CLOSE_PROTOCOL_ERROR: "a protocol error",
    protocol.CLOSE_TOKEN_REVOKED: "its token was revoked",
}
_RESEND_EVERY_BEATS = 3  # a result unacknowledged for this many heartbeats is sent again


class WorkerStopped(TaskyardError):
    """The worker could not run: the engine refused it (e.g. a bad token)."""


@dataclass(eq=False)
class _Execution:
    assign: protocol.Assign
    context: Context
    task: asyncio.Task[None] | None = None
    inner: asyncio.Future[Any] | None = None
    cancel_reason: str | None = None


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
    ) -> None:
        if not tasks:
            raise ValueError(f"worker {name!r} needs at least one task")
        names = [task.name for task in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"worker {name!r}: task names must be unique, got {names}")
        if slots < 1:
            raise ValueError(f"worker {name!r}: slots must be at least 1")
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
        self.completed = 0
        self.failed = 0
        self._executions: dict[AttemptKey, _Execution] = {}
        self._outbox: dict[AttemptKey, Result] = {}
        # Durable entries sent and not yet confirmed committed: re-sent after a reconnect.
        self._records: dict[RecordKey, tuple[protocol.Record, asyncio.Future[None]]] = {}
        self._pending: deque[BaseModel] = deque(maxlen=_PENDING_LIMIT)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_queue: asyncio.Queue[BaseModel] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connected = asyncio.Event()  # set while connected (Events bind no loop)
        self._runner: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None  # `with worker:` runs it there
        self._heartbeat_interval = 5.0
        self.max_message_bytes = 1024 * 1024

    # -- running ---------------------------------------------------------------------------------

    def start(self, *, log_level: str | None = None) -> None:
        """Run until SIGINT or SIGTERM, then drain: take no new work, let running tasks finish
        within `drain_timeout`, deliver their results.

        As a process's main loop, it logs to stderr (connection, registrations, each attempt,
        `ctx.log` lines) at `log_level`, or TASKYARD_LOG_LEVEL, default INFO, unless the
        program configured logging itself. `aio_start` leaves logging to the application."""
        _log_to_stderr(log_level or os.environ.get("TASKYARD_LOG_LEVEL", "info"))
        asyncio.run(self.aio_start(handle_signals=True))

    async def aio_start(self, *, handle_signals: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._connected.clear()
        self._send_queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(
            max_workers=self.slots, thread_name_prefix=f"taskyard-{self.name}"
        )
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
            if handle_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    self._loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=False, cancel_futures=True)

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
        connection = asyncio.create_task(self._stay_connected())
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
            for execution in list(self._executions.values()):
                if execution.task is not None:
                    execution.task.cancel()
            await asyncio.gather(
                *(e.task for e in self._executions.values() if e.task), return_exceptions=True
            )

    async def _drain(self) -> None:
        """Stop taking work, give running tasks `drain_timeout`, then deliver results."""
        log.info("worker %s draining (%d running)", self.name, len(self._executions))
        self._send(protocol.Drain())
        running = [e.task for e in self._executions.values() if e.task is not None]
        if running:
            await asyncio.wait(running, timeout=self.drain_timeout)
        for execution in list(self._executions.values()):
            self._cancel(execution, "the worker is shutting down")
        remaining = [e.task for e in self._executions.values() if e.task is not None]
        if remaining:
            await asyncio.wait(remaining, timeout=5)
        # Results are only safe once acknowledged: wait a little for the last acks.
        for _ in range(100):
            if not self._outbox or self._ws is None or self._ws.closed:
                break
            await asyncio.sleep(0.05)

    # -- the connection --------------------------------------------------------------------------

    async def _stay_connected(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._session()
                delay = 0.1
            except (AuthenticationError, PermissionDenied, WorkerStopped):
                raise
            except (
                aiohttp.ClientError,
                OSError,
                TimeoutError,
                EngineUnreachable,
                Unavailable,
            ) as exc:
                log.warning(
                    "worker %s: connection to %s failed (%s); retrying in %.1fs",
                    self.name,
                    self.client.url,
                    exc,
                    delay,
                )
            self._connected.clear()
            await asyncio.sleep(delay * (0.5 + random.random()))
            # At most 0.75 s between tries: a restarted engine holds its recovered runs for
            # `recovery_hold` (1 s) for their workers to claim; one that came back later found
            # its attempt given to another worker, and the work ran twice.
            delay = min(delay * 2, 0.5)

    async def _session(self) -> None:
        for workflow in self.workflows:  # on every connect: the engine may be a new one
            try:
                info = await workflow.aio_register()
            except InvalidRequest as exc:
                raise WorkerStopped(
                    f"the engine refused workflow {workflow.name!r}: {exc}"
                ) from exc
            log.info(
                "worker %s registered workflow %r (version %d)",
                self.name,
                workflow.name,
                info.version,
            )
        headers = self.client.transport.headers
        session = self.client.transport.session()
        url = self.client.url + "/api/v1/workers/connect"
        try:
            ws = await session.ws_connect(url, headers=headers, heartbeat=None, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise AuthenticationError(
                    401,
                    "unauthorized",
                    f"the engine refused worker {self.name}'s token: check TASKYARD_TOKEN",
                ) from exc
            if exc.status == 403:
                raise PermissionDenied(
                    403, "forbidden", "workers need a token with role worker or admin"
                ) from exc
            raise
        self._ws = ws
        writer: asyncio.Task[None] | None = None
        heartbeats: asyncio.Task[None] | None = None
        try:
            await ws.send_str(
                protocol.Hello(
                    protocol=protocol.PROTOCOL_VERSION,
                    worker_id=self.worker_id,
                    name=self.name,
                    queue=self.queue,
                    slots=self.slots,
                    labels=self.labels,
                    tasks=[
                        protocol.TaskDefinition(name=t.name, options=t.options, crons=t.crons)
                        for t in self.tasks.values()
                    ],
                    # Running attempts, and finished ones whose result is not acknowledged yet:
                    # the engine keeps both assigned to this worker instead of retrying them.
                    in_flight=[
                        protocol.AttemptRef(run_id=r, attempt=a)
                        for r, a in {**self._executions, **self._outbox}
                    ],
                ).model_dump_json()
            )
            welcome = await self._welcome(ws)
            self._heartbeat_interval = welcome.heartbeat_interval
            self.max_message_bytes = welcome.max_message_bytes
            writer = asyncio.create_task(self._write(ws))
            for result in self._outbox.values():  # results not yet acknowledged
                self._send(result)
            for record, _ in self._records.values():
                self._send(record)
            while self._pending:
                self._send(self._pending.popleft())
            heartbeats = asyncio.create_task(self._heartbeat())
            self._connected.set()
            log.info(
                "worker %s connected to %s: queue %r, %d slots, tasks %s",
                self.name,
                self.client.url,
                self.queue,
                self.slots,
                ", ".join(self.tasks),
            )
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._on_frame(message.data)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    break
            if ws.close_code in _CLOSE_FATAL:
                raise WorkerStopped(
                    f"the engine closed worker {self.name}'s connection: "
                    f"{_CLOSE_FATAL[ws.close_code]} ({ws.close_code})"
                )
        finally:
            self._ws = None
            for task in (writer, heartbeats):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (writer, heartbeats) if t), return_exceptions=True)
            await ws.close()

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse) -> protocol.Welcome:
        first = await ws.receive(timeout=15)
        if first.type is not aiohttp.WSMsgType.TEXT:
            raise aiohttp.ClientError(f"connection closed during handshake ({first.type.name})")
        message = protocol.engine_message.validate_json(first.data)
        if isinstance(message, protocol.Error):
            raise WorkerStopped(f"the engine refused worker {self.name}: {message.message}")
        if not isinstance(message, protocol.Welcome):
            raise aiohttp.ClientError(f"expected welcome, got {message.type}")
        return message

    async def _heartbeat(self) -> None:
        """Heartbeats, and results still unacknowledged a while later sent again (the engine
        acks only what it has committed; a result it could not write is re-sent)."""
        unacked: set[AttemptKey] = set()
        beats = 0
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            self._send(protocol.Heartbeat())
            beats += 1
            if beats % _RESEND_EVERY_BEATS == 0:
                for key in unacked & self._outbox.keys():
                    self._send(self._outbox[key])
                unacked = set(self._outbox)

    def _send(self, message: BaseModel) -> None:
        if self._ws is None or self._send_queue is None:
            if not isinstance(
                message,
                protocol.Completed
                | protocol.Failed
                | protocol.Heartbeat
                | protocol.Started
                | protocol.Drain
                | protocol.Suspend
                | protocol.Record,
            ):
                self._pending.append(message)  # results wait in the outbox instead
            return
        self._send_queue.put_nowait(message)

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """What was queued meanwhile goes in one frame (up to MAX_FRAME_MESSAGES)."""
        assert self._send_queue is not None
        queue = self._send_queue
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < protocol.MAX_FRAME_MESSAGES:
                batch.append(queue.get_nowait())
            try:
                await ws.send_frame(protocol.encode_frame(batch), aiohttp.WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return

    # -- messages from the engine ----------------------------------------------------------------

    def _on_frame(self, data: str) -> None:
        try:
            messages = protocol.decode_engine_frame(data)
        except ValueError:
            messages = self._each_message(data)
        for message in messages:
            if isinstance(message, protocol.Assign):
                self._on_assign(message)
            elif isinstance(message, protocol.Cancel):
                execution = self._executions.get((message.run_id, message.attempt))
                if execution is not None:
                    self._cancel(execution, message.reason)
            elif isinstance(message, protocol.Ack):
                for ref in message.results:
                    self._outbox.pop((ref.run_id, ref.attempt), None)
            elif isinstance(message, protocol.Recorded):
                pending = self._records.pop(
                    (message.run_id, message.attempt, message.position), None
                )
                if pending is not None and not pending[1].done():
                    pending[1].set_result(None)
            elif isinstance(message, protocol.Error):
                self._on_error(message)

    def _each_message(self, data: str) -> list[Any]:
        """A frame that did not parse as a whole: what can be read of it, one message at a
        time, each problem logged."""
        try:
            parsed = json.loads(data)
        except ValueError:
            log.error("worker %s: the engine sent a frame that is not JSON", self.name)
            return []
        messages = []
        for item in parsed if isinstance(parsed, list) else [parsed]:
            try:
                messages.append(protocol.engine_message.validate_python(item))
            except ValidationError as exc:
                log.error("worker %s: cannot read a message from the engine: %s", self.name, exc)
        return messages

    def _on_error(self, error: protocol.Error) -> None:
        if error.ref is not None and (error.ref.run_id, error.ref.attempt) in self._outbox:
            # The engine will never accept this result: keeping it would re-send it forever.
            del self._outbox[(error.ref.run_id, error.ref.attempt)]
        if error.ref is not None:  # durable entries of an attempt the engine no longer runs
            for key in [
                k for k in self._records if (k[0], k[1]) == (error.ref.run_id, error.ref.attempt)
            ]:
                _, done = self._records.pop(key)
                if not done.done():
                    done.set_exception(
                        TaskyardError(f"the engine refused a durable entry: {error.message}")
                    )
        log.warning("worker %s: the engine reported %s: %s", self.name, error.code, error.message)

    def _on_assign(self, assign: protocol.Assign) -> None:
        key = (assign.run_id, assign.attempt)
        if key in self._executions:
            return
        assert self._loop is not None
        task = self.tasks.get(assign.task)
        context: Context
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
                send=self._send,
                step=assign.context,
            )
        else:
            context = Context(
                run_id=assign.run_id,
                attempt=assign.attempt,
                task=assign.task,
                metadata=assign.metadata,
                loop=self._loop,
                send=self._send,
                step=assign.context,
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
        assert self._loop is not None
        record = protocol.Record(run_id=assign.run_id, attempt=assign.attempt, entry=entry)
        done: asyncio.Future[None] = self._loop.create_future()
        self._records[(assign.run_id, assign.attempt, entry.position)] = (record, done)
        self._send(record)
        await done

    def _suspend(
        self, assign: protocol.Assign, position: int, call: str, wait: protocol.WaitSpec
    ) -> None:
        """The attempt stops to wait: the suspension is kept like a result until acknowledged."""
        message = protocol.Suspend(
            run_id=assign.run_id, attempt=assign.attempt, position=position, call=call, wait=wait
        )
        self._outbox[(assign.run_id, assign.attempt)] = message
        self._send(message)

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
        assign = execution.assign
        current_run.set(assign.run_id)  # this asyncio task's own context: runs it triggers
        if isinstance(execution.context, DurableContext):
            current_durable.set(execution.context)
        ref = {"run_id": assign.run_id, "attempt": assign.attempt}
        self._send(protocol.Started(**ref))
        started = time.monotonic()
        log.info("%s[%s] attempt %d started", assign.task, assign.run_id, assign.attempt)
        result: Result
        try:
            output = await self._call(execution)
            result = self._completed(execution, output)
        except Suspended:
            self._executions.pop((assign.run_id, assign.attempt), None)
            return  # it waits; the suspension (sent already) is its outcome for now
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
            self._executions.pop((assign.run_id, assign.attempt), None)
        if execution.cancel_reason is not None and isinstance(result, protocol.Completed):
            result = protocol.Failed(
                **ref,
                cancelled=True,
                error=ErrorInfo(type="Cancelled", message=execution.cancel_reason),
            )
        took = time.monotonic() - started
        if isinstance(result, protocol.Completed):
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
        self._outbox[(assign.run_id, assign.attempt)] = result
        self._send(result)

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
            execution.inner = asyncio.ensure_future(task(value, execution.context, self.state))
        else:
            assert self._loop is not None
            call = functools.partial(
                contextvars.copy_context().run, task, value, execution.context, self.state
            )
            execution.inner = self._loop.run_in_executor(self._executor, call)
        if task.is_async:
            if execution.cancel_reason is not None:
                execution.inner.cancel()
            return await execution.inner
        # A sync function cannot be interrupted: wait for it even if cancelled.
        return await asyncio.shield(execution.inner)

    def _completed(self, execution: _Execution, output: Any) -> Result:
        assign = execution.assign
        task = self.tasks[assign.task]
        ref = {"run_id": assign.run_id, "attempt": assign.attempt}
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
        size = len(encoded)
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
        if size > self.max_message_bytes - 1024:
            return protocol.Failed(
                **ref,
                retryable=False,
                error=ErrorInfo(
                    type="OutputTooLarge",
                    message=f"task {task.name!r} returned {size} bytes; the engine accepts at most "
                    f"{self.max_message_bytes - 1024}. Store large data elsewhere and return "
                    f"a reference.",
                ),
            )
        return message


class _InvalidTaskInput(Exception):
    pass


def _log_to_stderr(level: str) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


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
