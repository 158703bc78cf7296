"""The QueueActor: one per tenant and task queue. It owns the queue's unfinished runs, the ready
queue and its flow control (a `Dispatcher`: priority, FIFO/LIFO, concurrency keys, rate limits,
labels, sticky workers), its workers' slots, and every lifecycle decision: assignment, start,
completion, retry with back-off, timeouts, cancellation, lost workers.

Decisions are made in memory; each state change is handed to the persister (write-behind) and the
run's latest state is written in the next batch. Acknowledgements wait for the commit: a result is
acked to its worker, and waiters are told a run finished, only once the batch that holds it has
committed.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from taskyard.actors.base import Actor
from taskyard.actors.waiters import RunEnd, RunWaiters
from taskyard.domain.dispatch import Connection, Dispatcher, Refusal, WorkerSlots
from taskyard.domain.durable import DurableWait, DurableWaits
from taskyard.domain.expressions import ExpressionError, check
from taskyard.domain.notices import RunChanged, RunEnded
from taskyard.domain.runs import Run, error_json, json_bytes, retry_delay
from taskyard.domain.workflows import WAIT_FILTER_NAMES
from taskyard.errors import Conflict
from taskyard.store.db import TRANSIENT_ERRORS
from taskyard.store.rows import durable_entry_row, run_event_row, run_log_row, run_state_row
from taskyard_sdk import protocol
from taskyard_sdk.models import RunStatus

if TYPE_CHECKING:
    from taskyard.actors.rate_limits import SharedRateLimiter
    from taskyard.actors.streams import RunStreams
    from taskyard.actors.timers import Entry, Timers
    from taskyard.actors.workers import WorkerSession
    from taskyard.domain.events import PushedEvent
    from taskyard.store.events import EventRepository
    from taskyard.store.persister import Persister
    from taskyard.store.rows import Row
    from taskyard.store.runs import RunRepository

log = logging.getLogger(__name__)
T = TypeVar("T")

_RECENTLY_FINISHED = 100_000  # remembered so a result re-sent after its ack was lost is acked again


def assign_json(
    run: Run,
    input_json: bytes | None,
    context_json: bytes | None,
    history_json: bytes | None = None,
) -> bytes:
    """A `protocol.Assign` message, encoded directly: the payload is embedded as the JSON it
    already is (decoding and re-encoding it per assignment was the hot path's largest cost)."""
    return (
        b'{"type":"assign","run_id":"%s","attempt":%d,"task":%s,"input":%s,'
        b'"metadata":%s,"execution_timeout":%s%s%s}'
        % (
            str(run.run_id).encode(),
            run.attempt,
            orjson.dumps(run.task),
            input_json if input_json is not None else b"null",
            orjson.dumps(run.metadata),
            orjson.dumps(run.options.execution_timeout),
            b',"context":' + context_json if context_json is not None else b"",
            b',"history":' + history_json if history_json is not None else b"",
        )
    )


Assignment = tuple[Run, bytes | None, bytes | None, bytes | None]  # input, context, history


def ack_json(refs: list[tuple[uuid.UUID, int]]) -> bytes:
    """A `protocol.Ack` of (run, attempt) pairs, encoded directly (one per committed batch of
    results: building a model per result cost more than the rest of the ack)."""
    return orjson.dumps(
        {
            "type": "ack",
            "results": [{"run_id": run_id, "attempt": attempt} for run_id, attempt in refs],
        }
    )


StepsEnded = Callable[[uuid.UUID, list["StepEnded"]], None]
StepEnded = tuple[uuid.UUID, str, RunStatus, bytes | None, bytes | None, uuid.UUID | None]
"""(workflow_run_id, step, status, output, error, worker) of a workflow step's run that ended."""


def _bad_filter(wait: protocol.WaitSpec) -> str | None:
    """Why a durable wait's event filter cannot be used (it would never match), if it cannot."""
    for event in wait.events:
        if event.filter is not None:
            try:
                check(event.filter, WAIT_FILTER_NAMES)
            except ExpressionError as exc:
                return f"the filter of the wait for {event.key!r}: {exc}"
    return None


def _outcome(run_id: uuid.UUID, document: dict[str, Any] | None) -> dict[str, Any]:
    """What a durable run's wait for a child returns: its status, output or error."""
    if document is None:
        return {"run_id": str(run_id), "status": "missing", "output": None, "error": None}
    return {
        "run_id": str(run_id),
        "status": document["status"],
        "output": document.get("output"),
        "error": document.get("error"),
    }


def _ended(run: Run) -> RunEnded:
    """A run's end, as alerts and lifecycle observers see it."""
    error = orjson.loads(run.error_json) if run.error_json else {}
    workflow = run.task[: -len(run.step) - 1] if run.step else None
    return RunEnded(
        tenant_id=run.tenant_id,
        run_id=run.run_id,
        kind="task",
        task=run.task,
        workflow=workflow,
        workflow_run_id=run.workflow_run_id,
        status=run.status.value,
        attempt=run.attempt,
        error_type=error.get("type"),
        error_message=error.get("message"),
    )


async def _until_read(read: Callable[[], Awaitable[T]], what: str) -> T:
    """A read a durable wait depends on, tried again while Postgres is away (a restart, a
    pool refilling): giving up would leave the wait blind to an event or to its children."""
    delay = 0.1
    while True:
        try:
            return await read()
        except TRANSIENT_ERRORS as exc:
            log.warning("could not read %s (%s); trying again in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _cached_size(run: Run) -> int:
    assert run.input_json is not None
    return len(run.input_json) + (len(run.context_json) if run.context_json else 0)


class QueueActor(Actor):
    def __init__(
        self,
        tenant_id: uuid.UUID,
        queue: str,
        *,
        persister: Persister,
        timers: Timers,
        repository: RunRepository,
        waiters: RunWaiters,
        streams: RunStreams,
        connected_workers: Callable[[uuid.UUID, str], Awaitable[list[WorkerSession]]],
        steps_ended: StepsEnded,
        worker_grace: float,
        limiter: SharedRateLimiter,
        events: EventRepository,
        runs_ended: Callable[[uuid.UUID, list[RunEnded]], None] | None = None,
        observe_all: bool = False,
        runs_changed: Callable[[uuid.UUID, list[RunChanged]], None] | None = None,
        recovery_hold: float = 0.0,
        input_cache_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(f"queue:{tenant_id}:{queue}")
        self.tenant_id = tenant_id
        self.queue = queue
        self.persister = persister
        self.timers = timers
        self.repository = repository
        self.waiters = waiters
        self.streams = streams
        self.connected_workers = connected_workers
        self.steps_ended = steps_ended
        self.worker_grace = worker_grace
        self.limiter = limiter
        self.event_repository = events
        self.runs_ended = runs_ended  # failed runs for alerts; every ended run for observers
        self.observe_all = observe_all
        self.runs_changed = runs_changed  # lifecycle observers: every state written
        self.recovery_hold = recovery_hold
        self.input_cache_bytes = input_cache_bytes
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self.runs: dict[uuid.UUID, Run] = {}
        self.workers: dict[uuid.UUID, WorkerSlots] = {}
        self.dispatcher = Dispatcher(self.runs, self.workers, self.limiter)
        self.expiries: list[tuple[float, uuid.UUID]] = []  # (schedule deadline, run), a heap
        self._expiry_armed: float | None = None
        self._rate_armed: dict[str, float] = {}  # bucket -> when its wake-up timer fires
        self.finished: OrderedDict[uuid.UUID, tuple[int, uuid.UUID | None]] = OrderedDict()
        self.cached_bytes = 0
        self._dispatch_pending = False
        self._dispatch_told = False  # a _dispatch_due message is on its way
        self._hold_until = 0.0
        # What the current message decided, flushed by after_message():
        self._states: dict[uuid.UUID, Run] = {}  # runs whose state changed in this message
        self._events: list[Row] = []
        self._logs: list[Row] = []
        self._timers: list[Entry] = []
        self._acks: dict[Connection, list[tuple[uuid.UUID, int]]] = {}  # (run, attempt)
        self._finished_now: list[RunEnd] = []
        self._steps_ended: list[StepEnded] = []
        self.durable = DurableWaits()  # suspended durable runs: what each waits for
        self._durable_rows: list[Row] = []
        self._resuming: list[tuple[uuid.UUID, int]] = []
        self._ended: list[RunEnded] = []
        self._changed: dict[uuid.UUID, RunChanged] = {}
        self._recorded: dict[Connection, list[protocol.Recorded]] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Rebuild from Postgres: every unfinished run of this queue, as last written."""
        await self.persister.flush()
        await self.limiter.ready()
        self._reset()
        now = self.clock()
        recovered = await self.repository.load_active_runs(self.tenant_id, self.queue)
        suspended = [run.run_id for run in recovered if run.status is RunStatus.PENDING]
        waits = await self.repository.open_waits(self.tenant_id, suspended) if suspended else {}
        for run in recovered:
            self._adopt(run, now)
        for run_id in suspended:
            self._resume_wait(self.runs[run_id], waits.get(run_id), now)
        if recovered and self.recovery_hold:
            # After an engine restart some "queued" runs may in fact be running on a worker whose
            # assignment was not written: give workers a moment to reconnect and claim them.
            self._hold_until = now + self.recovery_hold
            self._timer(self._hold_until, self._hold_over, None)
        self.recovery_hold = 0.0  # a later restart of this actor alone has nothing to wait for
        for session in await self.connected_workers(self.tenant_id, self.queue):
            self._join(session, None)
        self._schedule_dispatch()
        self.after_message()

    async def on_failure(self, error: BaseException) -> None:
        self._reset()

    def _adopt(self, run: Run, now: float) -> None:
        """Take over a run loaded from Postgres after a restart."""
        self.runs[run.run_id] = run
        if run.status is RunStatus.PENDING:
            return  # a suspended durable run: its wait is re-armed from its log
        if run.status is RunStatus.QUEUED:
            if run.retry_at is not None and run.retry_at > now:
                self._timer(run.retry_at, self._retries_due, (run.run_id, run.attempt))
            else:
                self._make_ready(run, now, keep_queued_at=True)
            return
        self.dispatcher.hold(run)
        # Assigned or running on a worker that has not reconnected yet: wait for it, then retry.
        assert run.worker_id is not None
        worker = self.workers.get(run.worker_id)
        if worker is None:
            worker = self.workers[run.worker_id] = WorkerSlots(run.worker_id, None, away_since=now)
            self._timer(now + self.worker_grace, self._grace_expired, run.worker_id)
        worker.running[run.run_id] = run.attempt
        if run.deadline is not None:
            self._deadline_timer(run)

    # -- arrivals --------------------------------------------------------------------------------

    def enqueue(self, runs: list[Run]) -> None:
        """New runs, already committed."""
        now = self.clock()
        for run in runs:
            if run.run_id in self.runs:  # also loaded by a concurrent recovery
                continue
            self.runs[run.run_id] = run
            if run.input_json is not None:
                size = _cached_size(run)
                if self.cached_bytes + size > self.input_cache_bytes:
                    run.input_json = run.context_json = None  # read back when assigned
                else:
                    self.cached_bytes += size
            self._make_ready(run, now, keep_queued_at=True, arriving=True)
        self._schedule_dispatch()

    def _make_ready(
        self, run: Run, now: float, *, keep_queued_at: bool = False, arriving: bool = False
    ) -> None:
        run.status = RunStatus.QUEUED
        run.retry_at = None
        if not keep_queued_at:
            run.queued_at = now
        refusals = self.dispatcher.add(run, arriving=arriving)
        if refusals:
            self._refuse(refusals, now)
        if not run.ready:
            return
        deadline = run.queued_at + run.options.schedule_timeout
        heapq.heappush(self.expiries, (deadline, run.run_id))
        if self._expiry_armed is None or deadline < self._expiry_armed:
            self._expiry_armed = deadline
            self._timer(deadline, self._schedule_timeouts, deadline)

    # -- assignment ------------------------------------------------------------------------------

    def _schedule_dispatch(self) -> None:
        """Assign what can be assigned once this message is done: then and there when no other
        message waits, else after the messages already waiting (one decision for them all)."""
        self._dispatch_pending = True

    def _dispatch_due(self) -> None:
        self._dispatch_told = False
        self._dispatch()

    def _dispatch(self) -> None:
        self._dispatch_pending = False
        if not self.dispatcher.has_ready():
            return
        now = self.clock()
        if now < self._hold_until:
            return
        dispatcher = self.dispatcher
        batches: dict[WorkerSlots, list[Run]] = {}
        for run, worker in dispatcher.assign(now):
            self._assigned(run, now)
            batches.setdefault(worker, []).append(run)
        for worker, runs in batches.items():
            self._send_assignments(worker, runs)
        if dispatcher.refused:
            refused, dispatcher.refused = dispatcher.refused, []
            self._refuse(refused, now)
        for at, bucket in dispatcher.wakeups:
            armed = self._rate_armed.get(bucket)
            if armed is None or at < armed:
                self._rate_armed[bucket] = at
                self._timer(at, self._rate_wakeups, bucket)
        dispatcher.wakeups.clear()

    def _rate_wakeups(self, buckets: list[str]) -> None:
        now = self.clock()
        for bucket in dict.fromkeys(buckets):
            armed = self._rate_armed.get(bucket)
            if armed is not None and armed <= now + 0.001:
                del self._rate_armed[bucket]
                self.dispatcher.rate_freed(bucket)
        self._schedule_dispatch()

    def rate_limit_changed(self, bucket: str) -> None:
        """A limit was set or removed: what waits for it is decided again."""
        self._rate_armed.pop(bucket, None)
        self.dispatcher.rate_freed(bucket)
        self._schedule_dispatch()

    def _refuse(self, refusals: list[Refusal], now: float) -> None:
        """End runs flow control will not start: over a rate limit, or cancelled by a
        concurrency strategy (running ones are told to stop)."""
        for refusal in refusals:
            run = refusal.run
            if self.runs.get(run.run_id) is run and not run.status.terminal:
                self._end(run, refusal.status, refusal.error_type, refusal.message, now)

    def _hold_over(self, _: list[None]) -> None:
        self._schedule_dispatch()

    def _assigned(self, run: Run, now: float) -> None:
        """The dispatcher placed the run on a worker: its attempt's times, row and deadline."""
        run.assigned_at = now
        run.started_at = None
        run.deadline = now + run.options.execution_timeout
        self._save(run)
        self._deadline_timer(run)

    def _send_assignments(self, worker: WorkerSlots, runs: list[Run]) -> None:
        """Send assignments; payloads not in memory (and durable runs' logs) are read first. A
        run is durable if its options say so or its worker declares the task durable (a run
        triggered before any worker registered the task has the default options)."""
        durable = [run for run in runs if run.options.durable or run.task in worker.durable_tasks]
        cached = [run for run in runs if run.input_json is not None and run not in durable]
        missing = [run for run in runs if run.input_json is None or run in durable]
        if cached:
            self._send_assign(
                worker, [(run, run.input_json, run.context_json, None) for run in cached]
            )
        if missing:
            self.side_tasks.spawn(
                self._fetch_inputs(worker.worker_id, missing, [run.run_id for run in durable]),
                name=f"{self.name}:fetch-inputs",
            )

    async def _fetch_inputs(
        self, worker_id: uuid.UUID, runs: list[Run], durable: list[uuid.UUID]
    ) -> None:
        """Read payloads not cached in memory, and durable runs' logs. Runs outside the
        mailbox; reports back."""
        refs = [(run.run_id, run.attempt) for run in runs]
        try:
            inputs = await self.repository.fetch_inputs(self.tenant_id, [r for r, _ in refs])
            histories = (
                await self.repository.durable_history(self.tenant_id, durable) if durable else {}
            )
        except Exception:
            log.exception(
                "could not read inputs of %d runs; returning them to the queue", len(refs)
            )
            self._post(self._assignment_failed, worker_id, refs)
            return
        for run_id in durable:
            histories.setdefault(run_id, b"[]")
        self._post(self._send_fetched, worker_id, refs, inputs, histories)

    def _send_fetched(
        self,
        worker_id: uuid.UUID,
        refs: list[tuple[uuid.UUID, int]],
        inputs: dict[uuid.UUID, tuple[bytes | None, bytes | None]],
        histories: dict[uuid.UUID, bytes],
    ) -> None:
        worker = self.workers.get(worker_id)
        if worker is None or worker.session is None:
            return  # lost meanwhile: its attempts are handled by the lost-worker path
        ready = []
        for run_id, attempt in refs:
            run = self.runs.get(run_id)
            if (
                run is not None
                and run.attempt == attempt
                and run.worker_id == worker_id
                and run.status is RunStatus.ASSIGNED
            ):
                ready.append((run, *inputs.get(run_id, (None, None)), histories.get(run_id)))
            elif worker.running.get(run_id) == attempt:
                # Ended (cancelled, timed out) while its input was read: the worker never got
                # it, so it will never report it; its slot is free now.
                del worker.running[run_id]
                self._schedule_dispatch()
        if ready:
            self._send_assign(worker, ready)

    def _assignment_failed(self, worker_id: uuid.UUID, refs: list[tuple[uuid.UUID, int]]) -> None:
        now = self.clock()
        worker = self.workers.get(worker_id)
        for run_id, attempt in refs:
            run = self.runs.get(run_id)
            if worker is not None and worker.running.get(run_id) == attempt:
                del worker.running[run_id]
            if run is not None and run.attempt == attempt and run.status is RunStatus.ASSIGNED:
                run.worker_id = None
                run.assigned_at = None
                run.deadline = None
                self.dispatcher.forget(run)
                self._make_ready(run, now, keep_queued_at=True)
                self._record(run, "requeued", now, detail={"reason": "input unavailable"})
        self._schedule_dispatch()

    def _send_assign(self, worker: WorkerSlots, runs: list[Assignment]) -> None:
        assert worker.session is not None
        worker.session.send_many(assign_json(*assignment) for assignment in runs)

    # -- workers ---------------------------------------------------------------------------------

    def worker_joined(self, session: WorkerSession, in_flight: list[protocol.AttemptRef]) -> None:
        self._join(session, in_flight)
        self._schedule_dispatch()

    def _join(self, session: WorkerSession, in_flight: list[protocol.AttemptRef] | None) -> None:
        worker = self.workers.get(session.worker_id)
        if worker is None:
            worker = self.workers[session.worker_id] = WorkerSlots(session.worker_id, session)
        worker.session = session
        worker.away_since = None
        worker.tasks = frozenset(session.task_names)
        worker.durable_tasks = frozenset(d.name for d in session.definitions if d.options.durable)
        worker.slots = session.slots
        worker.labels = dict(session.labels)
        worker.draining = False
        self.dispatcher.worker_changed(worker)
        if in_flight is None:
            return  # rebuilt after a crash: trust what Postgres says the worker holds
        now = self.clock()
        reported = {ref.run_id: ref.attempt for ref in in_flight}
        # What we think it holds but it does not report is gone (the worker restarted).
        for run_id, attempt in list(worker.running.items()):
            if reported.get(run_id) != attempt:
                del worker.running[run_id]
                run = self.runs.get(run_id)
                if run is not None and run.attempt == attempt and run.worker_id == worker.worker_id:
                    self._attempt_failed(
                        run,
                        now,
                        error_json(
                            "WorkerLost", f"worker {session.name} reconnected without this attempt"
                        ),
                    )
        # What it reports: re-attach, or tell it to stop what no longer applies.
        for run_id, attempt in reported.items():
            if run_id in worker.running:
                continue
            run = self.runs.get(run_id)
            if run is not None and run.attempt == attempt and run.status is RunStatus.QUEUED:
                # Its assignment had not been written before a crash: it holds its keys (and
                # its rate-limit units) again.
                self.dispatcher.reattach(run, now)
                run.status = RunStatus.RUNNING
                run.worker_id = worker.worker_id
                run.assigned_at = run.started_at = now
                run.deadline = now + run.options.execution_timeout
                worker.running[run_id] = attempt
                self._record(run, "reattached", now)
                self._deadline_timer(run)
            else:
                worker.running[run_id] = attempt  # holds the slot until it reports the end
                session.send(
                    protocol.Cancel(
                        run_id=run_id, attempt=attempt, reason="this attempt is no longer current"
                    )
                )

    def worker_disconnected(self, session: WorkerSession) -> None:
        worker = self.workers.get(session.worker_id)
        if worker is None or worker.session is not session:
            return
        worker.session = None
        worker.away_since = self.clock()
        self._timer(worker.away_since + self.worker_grace, self._grace_expired, session.worker_id)

    def worker_draining(self, worker_id: uuid.UUID) -> None:
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.draining = True

    def _grace_expired(self, worker_ids: list[uuid.UUID]) -> None:
        now = self.clock()
        for worker_id in worker_ids:
            worker = self.workers.get(worker_id)
            # Still away, for the whole grace period (not since an earlier disconnection).
            if (
                worker is not None
                and worker.away_since is not None
                and now >= worker.away_since + self.worker_grace - 0.001
            ):
                self.worker_lost(worker_id, "did not reconnect within the heartbeat timeout")

    def worker_lost(self, worker_id: uuid.UUID, reason: str) -> None:
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return
        now = self.clock()
        for run_id, attempt in worker.running.items():
            run = self.runs.get(run_id)
            if run is not None and run.attempt == attempt and run.worker_id == worker_id:
                self._attempt_failed(run, now, error_json("WorkerLost", f"worker {reason}"))
        self._schedule_dispatch()

    # -- messages from a worker ------------------------------------------------------------------

    def worker_messages(self, session: WorkerSession, messages: list[Any]) -> None:
        worker = self.workers.get(session.worker_id)
        if worker is None or worker.session is not session:
            for message in messages:
                if isinstance(message, protocol.AttemptRef):
                    session.send(
                        protocol.Error(
                            code="not_connected",
                            message="this connection is no longer current",
                            ref=protocol.AttemptRef(run_id=message.run_id, attempt=message.attempt),
                        )
                    )
            return
        now = self.clock()
        logs = []
        for message in messages:
            if isinstance(message, protocol.Log):
                # A run this queue does not have (a worker's hello may claim any id) gets no
                # log rows: they would be stored under this tenant for nobody's run.
                if self._owns(worker, message) and message.run_id in self.runs:
                    logs.append(
                        run_log_row(
                            tenant_id=self.tenant_id,
                            run_id=message.run_id,
                            at=now,
                            attempt=message.attempt,
                            level=message.level,
                            message=message.message,
                        )
                    )
                else:
                    self._not_owner(session, message)
            elif isinstance(message, protocol.Stream):
                if self._current(worker, message) is not None:
                    self.streams.publish(self.tenant_id, message.run_id, message.data)
                else:
                    self._not_owner(session, message)
            elif isinstance(message, protocol.Started):
                self._on_started(worker, message, now)
            elif isinstance(message, protocol.Completed):
                self._on_completed(worker, message, now)
            elif isinstance(message, protocol.Failed):
                self._on_failed(worker, message, now)
            elif isinstance(message, protocol.RefreshTimeout):
                self._on_refresh(worker, message, now)
            elif isinstance(message, protocol.Record):
                self._on_record(worker, message, now)
            elif isinstance(message, protocol.Suspend):
                self._on_suspend(worker, message, now)
        self._logs += logs
        self._schedule_dispatch()

    def _owns(self, worker: WorkerSlots, ref: protocol.AttemptRef) -> bool:
        return worker.running.get(ref.run_id) == ref.attempt

    def _not_owner(self, session: Connection, ref: protocol.AttemptRef) -> None:
        done = self.finished.get(ref.run_id)
        attempt_ref = protocol.AttemptRef(run_id=ref.run_id, attempt=ref.attempt)
        if (
            done is not None
            and done == (ref.attempt, session.worker_id)
            and isinstance(ref, protocol.Completed | protocol.Failed)
        ):
            self._acks.setdefault(session, []).append((ref.run_id, ref.attempt))  # re-sent
            return
        session.send(
            protocol.Error(
                code="not_owner",
                ref=attempt_ref,
                message=f"run {ref.run_id} attempt {ref.attempt} is not assigned to this worker",
            )
        )

    def _current(self, worker: WorkerSlots, ref: protocol.AttemptRef) -> Run | None:
        """The run, if this attempt on this worker is still the one that counts."""
        run = self.runs.get(ref.run_id)
        if (
            run is not None
            and run.attempt == ref.attempt
            and run.worker_id == worker.worker_id
            and run.status in (RunStatus.ASSIGNED, RunStatus.RUNNING)
        ):
            return run
        return None

    def _on_started(self, worker: WorkerSlots, message: protocol.Started, now: float) -> None:
        if not self._owns(worker, message):
            assert worker.session is not None
            self._not_owner(worker.session, message)
            return
        run = self._current(worker, message)
        if run is not None and run.status is RunStatus.ASSIGNED:
            run.status = RunStatus.RUNNING
            run.started_at = now
            self._save(run)

    def _on_completed(self, worker: WorkerSlots, message: protocol.Completed, now: float) -> None:
        assert worker.session is not None
        if not self._owns(worker, message):
            self._not_owner(worker.session, message)
            return
        del worker.running[message.run_id]
        run = self._current(worker, message)
        if run is not None:
            run.output_json = json_bytes(message.output)
            run.error_json = None
            self._finish(run, RunStatus.SUCCEEDED, now)
        self._acks.setdefault(worker.session, []).append((message.run_id, message.attempt))

    def _on_failed(self, worker: WorkerSlots, message: protocol.Failed, now: float) -> None:
        assert worker.session is not None
        if not self._owns(worker, message):
            self._not_owner(worker.session, message)
            return
        del worker.running[message.run_id]
        run = self._current(worker, message)
        if run is not None:
            error = message.error
            self._attempt_failed(
                run,
                now,
                error_json(error.type, error.message, error.traceback),
                retryable=message.retryable,
                retry_after=message.retry_after,
            )
        self._acks.setdefault(worker.session, []).append((message.run_id, message.attempt))

    def _on_refresh(
        self, worker: WorkerSlots, message: protocol.RefreshTimeout, now: float
    ) -> None:
        run = self._current(worker, message)
        if run is None:
            assert worker.session is not None
            self._not_owner(worker.session, message)
            return
        run.deadline = now + message.seconds
        self._record(run, "timeout_refreshed", now, detail={"seconds": message.seconds})
        self._deadline_timer(run)

    # -- durable runs ----------------------------------------------------------------------------

    def _on_record(self, worker: WorkerSlots, message: protocol.Record, now: float) -> None:
        """A finished durable entry (a memoised result, children spawned): stored, and the
        worker told once it is committed. A record sent again is stored again (a no-op)."""
        assert worker.session is not None
        if self._current(worker, message) is None:
            self._not_owner(worker.session, message)
            return
        entry = message.entry
        self._durable_rows.append(
            durable_entry_row(
                tenant_id=self.tenant_id,
                run_id=message.run_id,
                position=entry.position,
                kind=entry.kind,
                call=entry.call,
                done=True,
                result=entry.result,
                wait=None,
                finished_at=now,
            )
        )
        self._recorded.setdefault(worker.session, []).append(
            protocol.Recorded(
                run_id=message.run_id, attempt=message.attempt, position=entry.position
            )
        )

    def _on_suspend(self, worker: WorkerSlots, message: protocol.Suspend, now: float) -> None:
        """A durable run waits: its attempt stops, its slot and keys are free, its wait is
        stored and armed. Acknowledged like a result once committed."""
        assert worker.session is not None
        run = self.runs.get(message.run_id)
        if not self._owns(worker, message):
            if (
                run is not None
                and run.status is RunStatus.PENDING
                and run.attempt == message.attempt
            ):
                self._acks.setdefault(worker.session, []).append(
                    (message.run_id, message.attempt)
                )  # sent again
            else:
                self._not_owner(worker.session, message)
            return
        del worker.running[message.run_id]
        run = self._current(worker, message)
        problem = _bad_filter(message.wait)
        if run is not None and problem is not None:  # it could only wait for ever
            self._attempt_failed(run, now, error_json("InvalidWait", problem), retryable=False)
        elif run is not None:
            self.dispatcher.forget(run)
            run.status = RunStatus.PENDING
            run.worker_id = None
            run.assigned_at = run.started_at = run.deadline = None
            self._record(
                run, "suspended", now, detail={"position": message.position, "call": message.call}
            )
            self._durable_rows.append(
                durable_entry_row(
                    tenant_id=self.tenant_id,
                    run_id=run.run_id,
                    position=message.position,
                    kind="wait",
                    call=message.call,
                    done=False,
                    result=None,
                    wait=message.wait.model_dump_json(),
                    finished_at=None,
                )
            )
            self._begin_wait(
                run, DurableWait(run.run_id, message.position, message.call, message.wait), now
            )
        self._acks.setdefault(worker.session, []).append((message.run_id, message.attempt))

    def _resume_wait(self, run: Run, stored: tuple[int, str, str] | None, now: float) -> None:
        """After a restart: a suspended run waits on for what its log says."""
        if stored is None:  # its wait was not written before the crash: replay it
            self._make_ready(run, now)
            return
        position, call, spec = stored
        self._begin_wait(
            run,
            DurableWait(run.run_id, position, call, protocol.WaitSpec.model_validate_json(spec)),
            now,
        )

    def _begin_wait(self, run: Run, wait: DurableWait, now: float) -> None:
        self.durable.add(wait)
        for at in wait.timers():
            self._timer(at, self._durable_due, run.run_id)
        if wait.spec.children:
            self._side_task(self._watch_children(run.run_id, wait.position, wait.spec.children))
        if wait.spec.events:
            # Events stored since the wait began are read first: one that came in time must
            # not lose to a timeout that passed while the engine was down.
            self._side_task(
                self._past_events(
                    run.run_id, wait.position, self.durable.patterns(run.run_id), wait.spec.since
                )
            )
        else:
            self._check_wait(run.run_id, now)

    def _check_wait(self, run_id: uuid.UUID, now: float) -> None:
        wait = self.durable.waits.get(run_id)
        run = self.runs.get(run_id)
        if wait is None or run is None:
            return
        outcome = wait.outcome(now)
        if outcome is None:
            return
        self.durable.remove(run_id)
        self._durable_rows.append(
            durable_entry_row(
                tenant_id=self.tenant_id,
                run_id=run_id,
                position=wait.position,
                kind="wait",
                call=wait.call,
                done=True,
                result=outcome,
                wait=wait.spec.model_dump_json(),
                finished_at=now,
            )
        )
        self._resuming.append((run_id, wait.position))

    def _resume(self, resumed: list[tuple[uuid.UUID, int]]) -> None:
        """Waits that ended, their results committed: the runs replay, with a log that has
        them (queued before the commit, a replay could read the log without its result)."""
        now = self.clock()
        for run_id, position in resumed:
            run = self.runs.get(run_id)
            if run is not None and run.status is RunStatus.PENDING:
                self._make_ready(run, now)
                self._record(run, "resumed", now, detail={"position": position})
        self._schedule_dispatch()

    def _durable_due(self, run_ids: list[uuid.UUID]) -> None:
        now = self.clock()
        for run_id in dict.fromkeys(run_ids):
            self._check_wait(run_id, now)

    def durable_events(self, events: list[PushedEvent]) -> None:
        """Events just committed: they may end durable runs' waits."""
        now = self.clock()
        for run_id in self.durable.events(events):
            self._check_wait(run_id, now)

    def _past_events_read(
        self, run_id: uuid.UUID, position: int, events: list[PushedEvent]
    ) -> None:
        wait = self.durable.waits.get(run_id)
        if wait is not None and wait.position == position:
            for event in events:
                wait.match(event)
            self._check_wait(run_id, self.clock())

    async def _past_events(
        self, run_id: uuid.UUID, position: int, patterns: list[str], since: float
    ) -> None:
        """Events pushed since the wait began count even if they came before it was armed (an
        engine restart in between, say)."""
        try:
            events = await _until_read(
                lambda: self.event_repository.since(self.tenant_id, patterns, since),
                f"past events for durable run {run_id}",
            )
        except Exception:
            log.exception(
                "could not read past events for durable run %s; it waits for new ones", run_id
            )
            events = []
        self._post(self._past_events_read, run_id, position, events)

    async def _watch_children(
        self, run_id: uuid.UUID, position: int, children: list[uuid.UUID]
    ) -> None:
        """Outside the mailbox: until every child has ended; reports their outcomes."""
        futures = self.waiters.watch(self.tenant_id, children)
        try:
            what = f"the children of durable run {run_id}"
            while True:
                statuses = await _until_read(
                    lambda: self.repository.run_statuses(self.tenant_id, children), what
                )
                pending = [
                    futures[c]
                    for c, status in statuses.items()
                    if not status.terminal and not futures[c].done()
                ]
                if len(statuses) == len(children) and not pending:
                    break
                await asyncio.wait(
                    pending or list(futures.values()),
                    timeout=30,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            documents = await _until_read(
                lambda: self.repository.run_documents(self.tenant_id, children), what
            )
        except Exception:
            log.exception("could not follow the children of durable run %s", run_id)
            return
        finally:
            self.waiters.unwatch(self.tenant_id, futures)
        outcomes = [_outcome(child, documents.get(child)) for child in children]
        self._post(self._children_ended, run_id, position, outcomes)

    def _children_ended(
        self, run_id: uuid.UUID, position: int, outcomes: list[dict[str, Any]]
    ) -> None:
        wait = self.durable.waits.get(run_id)
        if wait is not None and wait.position == position:
            wait.children = outcomes
            self._check_wait(run_id, self.clock())

    def _side_task(self, work: Any) -> None:
        self.side_tasks.spawn(work, name=f"{self.name}:durable")

    # -- outcomes --------------------------------------------------------------------------------

    def _attempt_failed(
        self,
        run: Run,
        now: float,
        error: bytes,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        final_status: RunStatus = RunStatus.FAILED,
    ) -> None:
        """The current attempt ended badly: retry if allowed, else finish the run."""
        run.error_json = error
        if not retryable or run.attempt > run.options.retries:
            self._finish(run, final_status, now)
            return
        run.finished_at = now
        self._attempt_ended(run, final_status)
        self.dispatcher.forget(run)
        delay = retry_delay(run.options, run.attempt, retry_after)
        run.attempt += 1
        run.finished_at = None
        run.worker_id = None
        run.assigned_at = run.started_at = run.deadline = None
        run.status = RunStatus.QUEUED
        if delay > 0:
            run.retry_at = now + delay
            self._record(run, "retry_scheduled", now, detail={"delay": delay})
            self._timer(run.retry_at, self._retries_due, (run.run_id, run.attempt))
        else:
            self._make_ready(run, now)
            self._record(run, "queued", now, detail={"retry": True})

    def _finish(self, run: Run, status: RunStatus, now: float) -> None:
        run.status = status
        self.dispatcher.forget(run)
        self.durable.remove(run.run_id)
        run.finished_at = now
        run.deadline = None
        self._save(run)
        del self.runs[run.run_id]
        if run.input_json is not None:
            self.cached_bytes -= _cached_size(run)
        if run.workflow_run_id is not None:
            assert run.step is not None
            self._steps_ended.append(
                (
                    run.workflow_run_id,
                    run.step,
                    status,
                    run.output_json,
                    run.error_json,
                    run.worker_id,
                )
            )
        if self.runs_ended is not None and (
            self.observe_all or status in (RunStatus.FAILED, RunStatus.TIMED_OUT)
        ):
            self._ended.append(_ended(run))
        self.finished[run.run_id] = (run.attempt, run.worker_id)
        if len(self.finished) > _RECENTLY_FINISHED:
            self.finished.popitem(last=False)
        self._finished_now.append(
            RunEnd(
                run.run_id,
                status,
                run.attempt,
                run.started_at,
                now,
                run.output_json,
                run.error_json,
            )
        )

    # The run's row holds the timeline of its current attempt (created, assigned, started,
    # finished, outcome): the usual transitions cost no event rows. Events are written for what
    # the row cannot hold: an attempt's outcome before the run moves on to another attempt, and
    # the rarer happenings (retry scheduled, timeout refreshed, reattached, replayed).

    def _save(self, run: Run) -> None:
        """Persist the run's current state (the latest state in a batch wins)."""
        self._states[run.run_id] = run  # its row is taken when the message is done
        if self.runs_changed is not None:
            self._changed[run.run_id] = RunChanged(
                self.tenant_id, run.run_id, run.task, run.status.value, run.attempt, run.worker_id
            )

    def _record(
        self, run: Run, event: str, now: float, detail: dict[str, Any] | None = None
    ) -> None:
        """Persist the run's current state and one event of its history."""
        self._save(run)
        self._events.append(
            run_event_row(
                tenant_id=run.tenant_id,
                run_id=run.run_id,
                at=now,
                attempt=run.attempt,
                type=event,
                worker_id=run.worker_id,
                detail=detail,
            )
        )

    def _attempt_ended(self, run: Run, outcome: RunStatus) -> None:
        """Keep the timeline of an attempt the run is about to leave behind."""
        assert run.finished_at is not None
        error = orjson.loads(run.error_json) if run.error_json else None
        self._events.append(
            run_event_row(
                tenant_id=run.tenant_id,
                run_id=run.run_id,
                at=run.finished_at,
                attempt=run.attempt,
                type=outcome.value,
                worker_id=run.worker_id,
                detail={
                    "error": error,
                    "assigned_at": run.assigned_at,
                    "started_at": run.started_at,
                },
            )
        )

    def _timer(self, at: float, handler: Callable[[list[Any]], Any], item: Any) -> None:
        self._timers.append((at, self, handler, item))

    def _deadline_timer(self, run: Run) -> None:
        """The execution timeout of the run's current attempt (at its current deadline)."""
        assert run.deadline is not None
        self._timer(run.deadline, self._execution_timeouts, (run.run_id, run.attempt, run.deadline))

    def after_message(self) -> None:
        """Assign what the message made assignable (see _schedule_dispatch), then hand what it
        decided to the persister and the timers; acks and finish notices wait for all of it to
        commit."""
        for _ in range(3):  # a decision may make another possible (a run refused, say)
            if not self._dispatch_pending or not self._mailbox.empty():
                break
            self._dispatch()
        if self._dispatch_pending and not self._dispatch_told:
            self._dispatch_told = True
            self.tell(self._dispatch_due)
        if self._states or self._events or self._logs:
            # States nobody waits for (assignments, starts, retries) may be held a moment:
            # under load most are replaced by the run's end before they are written.
            awaited = bool(
                self._acks
                or self._finished_now
                or self._recorded
                or self._resuming
                or self._durable_rows
                or self.runs_changed is not None
            )
            self.persister.write(
                [run_state_row(run) for run in self._states.values()],
                self._events,
                self._logs,
                may_wait=not awaited,
            )
            self._states, self._events, self._logs = {}, [], []
        if self._durable_rows:
            self.persister.durable(self._durable_rows)
            self._durable_rows = []
        if self._resuming:
            resuming, self._resuming = self._resuming, []
            self.persister.barrier().add_done_callback(
                lambda done: (
                    None
                    if done.cancelled() or done.exception() is not None
                    else self._post(self._resume, resuming)
                )
            )
        if self.limiter.dirty:  # written behind, with (or after) the assignments that took them
            self.persister.rate_usage(self.tenant_id, self.limiter.take_dirty())
        if self._timers:
            self.timers.schedule_many(self._timers)
            self._timers = []
        if self._steps_ended:  # after the write above: what follows from it is written later
            self.steps_ended(self.tenant_id, self._steps_ended)
            self._steps_ended = []
        if self._changed and self.runs_changed is not None:
            changed, self._changed = list(self._changed.values()), {}
            report, tenant = self.runs_changed, self.tenant_id

            def written(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    report(tenant, changed)

            self.persister.barrier().add_done_callback(written)
        if not self._acks and not self._finished_now and not self._recorded:
            return
        acks, self._acks = self._acks, {}
        recorded, self._recorded = self._recorded, {}
        finished, self._finished_now = self._finished_now, []
        ended, self._ended = self._ended, []
        tenant_id = self.tenant_id
        runs_ended = self.runs_ended

        def committed(barrier: asyncio.Future[None]) -> None:
            if barrier.cancelled() or barrier.exception() is not None:
                return  # not written: no acks, so workers re-send
            for session, refs in acks.items():
                session.send(ack_json(refs))
            for session, notices in recorded.items():
                session.send_many(notices)
            if finished:
                self.waiters.finished(tenant_id, finished)
            if ended and runs_ended is not None:
                runs_ended(tenant_id, ended)

        self.persister.barrier().add_done_callback(committed)

    # -- timers ----------------------------------------------------------------------------------

    def _schedule_timeouts(self, _: list[float]) -> None:
        """Runs still waiting in the queue at their schedule deadline end timed out. The queue's
        own heap of deadlines (not one engine timer per run) keeps a deep queue small."""
        now = self.clock()
        expiries = self.expiries
        while expiries and expiries[0][0] <= now:
            deadline, run_id = heapq.heappop(expiries)
            run = self.runs.get(run_id)
            if (
                run is None
                or not run.ready
                or run.queued_at + run.options.schedule_timeout != deadline
            ):
                continue  # started, finished, or queued again since (with a new deadline)
            reason = self.dispatcher.waiting_reason(run, now)
            run.error_json = error_json(
                "ScheduleTimeout",
                f"not started within schedule_timeout ({run.options.schedule_timeout:g}s)"
                + (f"; {reason}" if reason else ""),
            )
            self._finish(run, RunStatus.TIMED_OUT, now)
        self._expiry_armed = expiries[0][0] if expiries else None
        if self._expiry_armed is not None:
            self._timer(self._expiry_armed, self._schedule_timeouts, self._expiry_armed)

    def _execution_timeouts(self, items: list[tuple[uuid.UUID, int, float]]) -> None:
        now = self.clock()
        for run_id, attempt, deadline in items:
            run = self.runs.get(run_id)
            if (
                run is None
                or run.attempt != attempt
                or run.deadline != deadline
                or run.status not in (RunStatus.ASSIGNED, RunStatus.RUNNING)
            ):
                continue
            worker = self.workers.get(run.worker_id) if run.worker_id else None
            if worker is not None and worker.session is not None:
                worker.session.send(
                    protocol.Cancel(run_id=run_id, attempt=attempt, reason="execution timeout")
                )
            self._attempt_failed(
                run,
                now,
                error_json(
                    "ExecutionTimeout", f"attempt {attempt} ran longer than its execution_timeout"
                ),
                final_status=RunStatus.TIMED_OUT,
            )
        self._schedule_dispatch()

    def _retries_due(self, items: list[tuple[uuid.UUID, int]]) -> None:
        now = self.clock()
        for run_id, attempt in items:
            run = self.runs.get(run_id)
            if (
                run is not None
                and run.attempt == attempt
                and run.status is RunStatus.QUEUED
                and not run.ready
            ):
                self._make_ready(run, now)
                self._record(run, "queued", now, detail={"retry": True})
        self._schedule_dispatch()

    # -- requests from the API -------------------------------------------------------------------

    def cancel(self, run_id: uuid.UUID, reason: str) -> RunStatus:
        run = self.runs.get(run_id)
        if run is None:
            raise Conflict(f"run {run_id} is already finished")
        self._end(run, RunStatus.CANCELLED, "Cancelled", reason, self.clock())
        return RunStatus.CANCELLED

    def _end(self, run: Run, status: RunStatus, error_type: str, message: str, now: float) -> None:
        """End a run from the engine's side; a worker running it is told to stop."""
        if run.status in (RunStatus.ASSIGNED, RunStatus.RUNNING) and run.worker_id is not None:
            worker = self.workers.get(run.worker_id)
            if worker is not None and worker.session is not None:
                worker.session.send(
                    protocol.Cancel(run_id=run.run_id, attempt=run.attempt, reason=message)
                )
        run.error_json = error_json(error_type, message)
        self._finish(run, status, now)

    def replay(self, run: Run) -> None:
        """A finished run starts over with its next attempt (already loaded from Postgres)."""
        if run.run_id in self.runs:
            raise Conflict(f"run {run.run_id} is not finished; only finished runs can be replayed")
        now = self.clock()
        self._attempt_ended(run, run.status)
        run.attempt += 1
        run.output_json = run.error_json = None
        run.worker_id = None
        run.assigned_at = run.started_at = run.finished_at = None
        self.runs[run.run_id] = run
        self.finished.pop(run.run_id, None)
        self._make_ready(run, now, arriving=True)
        self._record(run, "replayed", now)
        self._schedule_dispatch()

    def waiting_reason(self, run_id: uuid.UUID) -> str | None:
        wait = self.durable.waits.get(run_id)
        if wait is not None:
            return wait.describe()
        run = self.runs.get(run_id)
        if run is None:
            return None
        now = self.clock()
        if run.retry_at is not None and run.retry_at > now:
            return f"retry {run.attempt} starts in {run.retry_at - now:.1f}s (back-off)"
        return self.dispatcher.waiting_reason(run, now)

    def stats(self) -> dict[str, int]:
        return {
            "active": len(self.runs),
            "ready": sum(1 for run in self.runs.values() if run.ready),
            "workers": sum(1 for w in self.workers.values() if w.session is not None),
            **self.dispatcher.stats(),
        }
