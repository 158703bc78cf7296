"""The QueueActor: one per tenant and task queue. It owns the queue's unfinished runs, the ready
queue and its flow control (a `Dispatcher`: priority, FIFO/LIFO, concurrency keys, rate limits,
labels, sticky workers), its workers' slots, and every lifecycle decision: assignment, start,
completion, retry with back-off, timeouts, cancellation, lost workers.

Decisions are made in memory; each state change goes into the actor's `QueueEffects`
(`queue_effects.py`), handed to the persister (write-behind) once the message is done. Acks wait
for the commit: a result is acked to its worker, and waiters are told a run finished, only once
the batch that holds it has committed. Suspended durable runs' waits are a `DurableRuns`
(`queue_durable.py`) the actor owns; the frames it sends most are encoded in `frames.py`.

Over 400 lines on purpose: what remains is one state machine, every transition of a run between
queued, assigned, running, pending and its end. Split across objects, each transition would be
read in two places.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from taskyard.actors.base import Actor
from taskyard.actors.changes import ChangeFeed
from taskyard.actors.frames import Assignment, assign_batch_json, assign_json
from taskyard.actors.queue_durable import DurableRuns, bad_filter
from taskyard.actors.queue_effects import QueueEffects, StepsEnded
from taskyard.domain.activity import QueueActivity
from taskyard.domain.dispatch import Connection, Dispatcher, Refusal, WorkerSlots
from taskyard.domain.meters import QueueMeters, QueueSample
from taskyard.domain.pauses import Pauses
from taskyard.domain.runs import Run, error_json, json_bytes, retry_delay
from taskyard.errors import Conflict
from taskyard.store.rows import run_log_row
from taskyard_sdk import protocol
from taskyard_sdk.models import RunStatus

if TYPE_CHECKING:
    from taskyard.actors.rate_limits import SharedRateLimiter
    from taskyard.actors.streams import RunStreams
    from taskyard.actors.timers import Timers
    from taskyard.actors.waiters import RunWaiters
    from taskyard.actors.workers import WorkerSession
    from taskyard.domain.durable import DurableWait
    from taskyard.domain.events import PushedEvent
    from taskyard.domain.leases import TenantLease
    from taskyard.domain.notices import RunEnded
    from taskyard.store.events import EventRepository
    from taskyard.store.persister import Persister
    from taskyard.store.runs import RunRepository

log = logging.getLogger(__name__)

_LEASE_RECHECK = 0.2  # seconds: how soon a queue whose lease term ran out looks again
_RECENTLY_FINISHED = 100_000  # remembered so a result re-sent after its ack was lost is acked again


# What a refusal is counted as in the queue's meters, by its error type.
_REFUSALS = {
    "RateLimitExceeded": "rate_limit_refused",
    "ConcurrencyLimit": "concurrency_cancelled",
}


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
        pauses: Callable[[uuid.UUID], Awaitable[Pauses]],
        runs_ended: Callable[[uuid.UUID, list[RunEnded]], None] | None = None,
        observe_all: bool = False,
        changes: ChangeFeed | None = None,
        recovery_hold: float = 0.0,
        input_cache_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        lease: TenantLease | None = None,
    ) -> None:
        super().__init__(f"queue:{tenant_id}:{queue}")
        self.tenant_id = tenant_id
        self.queue = queue
        self.persister = persister
        self.repository = repository
        self.streams = streams
        self.connected_workers = connected_workers
        self.worker_grace = worker_grace
        self.limiter = limiter
        self.pauses_of = pauses  # what is paused in the tenant, as stored
        self.recovery_hold = recovery_hold
        # The tenant's lease on this node (None: an engine of its own): nothing is assigned
        # outside its term, so an owner that was frozen cannot assign what a new owner has.
        self.lease = lease
        self.input_cache_bytes = input_cache_bytes
        self.clock = clock
        self.effects = QueueEffects(
            self,
            tenant_id,
            persister=persister,
            timers=timers,
            waiters=waiters,
            limiter=limiter,
            steps_ended=steps_ended,
            resumed=lambda resumed: self._post(self._resume, resumed),
            runs_ended=runs_ended,
            observe_all=observe_all,
            changes=changes or ChangeFeed(),
        )
        self.durable = DurableRuns(
            tenant_id, self.effects, repository=repository, events=events, waiters=waiters
        )
        self.activity = QueueActivity(since=clock())  # kept when the actor restarts
        self.meters = QueueMeters()  # likewise: counters only grow while the engine runs
        self._reset()

    def _reset(self) -> None:
        self.runs: dict[uuid.UUID, Run] = {}
        self.workers: dict[uuid.UUID, WorkerSlots] = {}
        self.dispatcher = Dispatcher(self.runs, self.workers, self.limiter, self.meters.count)
        self.expiries: list[tuple[float, uuid.UUID]] = []  # (schedule deadline, run), a heap
        self._expiry_armed: float | None = None
        self._rate_armed: dict[str, float] = {}  # bucket -> when its wake-up timer fires
        self._batch_armed: float | None = None  # when the next batch's wake-up timer fires
        self.finished: OrderedDict[uuid.UUID, tuple[int, uuid.UUID | None]] = OrderedDict()
        self.cached_bytes = 0
        self._dispatch_pending = False
        self._dispatch_told = False  # a _dispatch_due message is on its way
        self._hold_until = 0.0
        self.effects.clear()
        self.durable.clear()

    # -- lifecycle -------------------------------------------------------------------------------

    async def on_start(self) -> None:
        """Rebuild from Postgres: every unfinished run of this queue, as last written."""
        await self.persister.flush()
        await self.limiter.ready()
        self._reset()
        now = self.clock()
        self.dispatcher.pause(await self.pauses_of(self.tenant_id), self.queue)
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
            self.effects.timer(self._hold_until, self._hold_over, None)
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
                self.effects.timer(run.retry_at, self._retries_due, (run.run_id, run.attempt))
            else:
                self._make_ready(run, now, keep_queued_at=True)
            return
        self.dispatcher.hold(run)
        # Assigned or running on a worker that has not reconnected yet: wait for it, then retry.
        assert run.worker_id is not None
        worker = self.workers.get(run.worker_id)
        if worker is None:
            worker = self.workers[run.worker_id] = WorkerSlots(run.worker_id, None, away_since=now)
            self.effects.timer(now + self.worker_grace, self._grace_expired, run.worker_id)
        worker.running.hold(run.run_id, run.attempt, run.options.slot_cost)
        if run.deadline is not None:
            self._deadline_timer(run)

    # -- arrivals --------------------------------------------------------------------------------

    def enqueue(self, runs: list[Run]) -> None:
        """New runs, already committed."""
        now = self.clock()
        for run in runs:
            self.meters.count("triggered", run.task)
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
            self.effects.timer(deadline, self._schedule_timeouts, deadline)

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
        if self.lease is not None and not self.lease.valid():
            if not self.lease.released:
                self._hold_until = now + _LEASE_RECHECK  # look again once it may be renewed
                self.effects.timer(self._hold_until, self._hold_over, None)
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
                self.effects.timer(at, self._rate_wakeups, bucket)
        dispatcher.wakeups.clear()
        if dispatcher.batch_wakeups:
            at = min(dispatcher.batch_wakeups)
            dispatcher.batch_wakeups.clear()
            if self._batch_armed is None or at < self._batch_armed:
                self._batch_armed = at
                self.effects.timer(at, self._batch_due, None)

    def _batch_due(self, _: list[None]) -> None:
        """A batch task's oldest run has waited its max_wait: its batch goes now."""
        self._batch_armed = None
        self._schedule_dispatch()

    def _rate_wakeups(self, buckets: list[str]) -> None:
        now = self.clock()
        for bucket in dict.fromkeys(buckets):
            armed = self._rate_armed.get(bucket)
            if armed is not None and armed <= now + 0.001:
                del self._rate_armed[bucket]
                self.dispatcher.rate_freed(bucket)
        self._schedule_dispatch()

    def pauses_changed(self, pauses: Pauses) -> None:
        """Something in the tenant was paused or resumed (stored already)."""
        self.dispatcher.pause(pauses, self.queue)
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
            self.meters.count(_REFUSALS.get(refusal.error_type, "refused"), run.task)
            if self.runs.get(run.run_id) is run and not run.status.terminal:
                self._end(run, refusal.status, refusal.error_type, refusal.message, now)

    def _hold_over(self, _: list[None]) -> None:
        self._schedule_dispatch()

    def _assigned(self, run: Run, now: float) -> None:
        """The dispatcher placed the run on a worker: its attempt's times, row and deadline."""
        run.assigned_at = now
        run.started_at = None
        run.deadline = now + run.options.execution_timeout
        self.effects.save(run)
        self._deadline_timer(run)

    def _send_assignments(self, worker: WorkerSlots, runs: list[Run]) -> None:
        """Send assignments; payloads not in memory (and durable runs' logs) are read first. A
        run is durable if its options say so or its worker declares the task durable (a run
        triggered before any worker registered the task has the default options)."""
        durable = [run for run in runs if run.options.durable or run.task in worker.durable_tasks]
        # A batch goes in one message: read for all its runs if any is not cached.
        uncached = {run.batch_id for run in runs if run.batch_id and run.input_json is None}
        missing = [
            run
            for run in runs
            if run.input_json is None or run in durable or (uncached and run.batch_id in uncached)
        ]
        cached = [run for run in runs if run not in missing] if missing else runs
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
                self.effects.record(run, "requeued", now, detail={"reason": "input unavailable"})
        self._schedule_dispatch()

    def _send_assign(self, worker: WorkerSlots, runs: list[Assignment]) -> None:
        assert worker.session is not None
        batches: dict[uuid.UUID, list[Assignment]] = {}
        for assignment in runs:
            if assignment[0].batch_id is not None:
                batches.setdefault(assignment[0].batch_id, []).append(assignment)
        if not batches:
            worker.session.send_many(assign_json(*assignment) for assignment in runs)
            return
        worker.session.send_many(
            [
                *(assign_json(*a) for a in runs if a[0].batch_id is None),
                *(assign_batch_json(batch) for batch in batches.values()),
            ]
        )

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
                worker.running.hold(run_id, attempt, run.options.slot_cost)
                self.effects.record(run, "reattached", now)
                self._deadline_timer(run)
            else:
                # It holds the slots until it reports the end.
                worker.running.hold(run_id, attempt, run.options.slot_cost if run else 1)
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
        self.effects.timer(
            worker.away_since + self.worker_grace, self._grace_expired, session.worker_id
        )

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
        self.effects.logs += logs
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
            self.effects.ack(session, ref.run_id, ref.attempt)  # sent again
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
            self.effects.save(run)
            self.activity.started(now, now - run.queued_at)
            self.meters.started(run.task, now - run.queued_at)

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
        self.effects.ack(worker.session, message.run_id, message.attempt)

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
        self.effects.ack(worker.session, message.run_id, message.attempt)

    def _on_refresh(
        self, worker: WorkerSlots, message: protocol.RefreshTimeout, now: float
    ) -> None:
        run = self._current(worker, message)
        if run is None:
            assert worker.session is not None
            self._not_owner(worker.session, message)
            return
        run.deadline = now + message.seconds
        self.effects.record(run, "timeout_refreshed", now, detail={"seconds": message.seconds})
        self._deadline_timer(run)

    # -- durable runs ----------------------------------------------------------------------------

    def _on_record(self, worker: WorkerSlots, message: protocol.Record, now: float) -> None:
        assert worker.session is not None
        if self._current(worker, message) is None:
            self._not_owner(worker.session, message)
            return
        self.durable.record(worker.session, message, now)

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
                self.effects.ack(worker.session, message.run_id, message.attempt)  # sent again
            else:
                self._not_owner(worker.session, message)
            return
        del worker.running[message.run_id]
        run = self._current(worker, message)
        problem = bad_filter(message.wait)
        if run is not None and problem is not None:  # it could only wait for ever
            self._attempt_failed(run, now, error_json("InvalidWait", problem), retryable=False)
        elif run is not None:
            self.dispatcher.forget(run)
            run.status = RunStatus.PENDING
            # The event keeps the attempt's worker and times, which its row is about to lose.
            self.effects.record(
                run,
                "suspended",
                now,
                detail={
                    "position": message.position,
                    "call": message.call,
                    "assigned_at": run.assigned_at,
                    "started_at": run.started_at,
                },
            )
            run.worker_id = None
            run.assigned_at = run.started_at = run.deadline = None
            self._begin_wait(self.durable.suspended(message), now)
        self.effects.ack(worker.session, message.run_id, message.attempt)

    def _resume_wait(self, run: Run, stored: tuple[int, str, str] | None, now: float) -> None:
        """After a restart: a suspended run waits on for what its log says."""
        if stored is None:  # its wait was not written before the crash: replay it
            self._make_ready(run, now)
            return
        self._begin_wait(self.durable.stored(run.run_id, stored), now)

    def _begin_wait(self, wait: DurableWait, now: float) -> None:
        durable = self.durable
        durable.add(wait)
        for at in wait.timers():
            self.effects.timer(at, self._durable_due, wait.run_id)
        if wait.spec.children:
            self._spawn_then(
                durable.children(wait), self._children_ended, wait.run_id, wait.position
            )
        if wait.spec.events:
            # Events stored since the wait began are read first: one that came in time must
            # not lose to a timeout that passed while the engine was down.
            self._spawn_then(
                durable.past_events(wait),
                self._past_events_read,
                wait.run_id,
                wait.position,
            )
        else:
            durable.check(wait.run_id, now)

    def _resume(self, resumed: list[tuple[uuid.UUID, int]]) -> None:
        """Waits that ended, their results committed: the runs replay, with a log that has
        them (queued before the commit, a replay could read the log without its result)."""
        now = self.clock()
        for run_id, position in resumed:
            run = self.runs.get(run_id)
            if run is not None and run.status is RunStatus.PENDING:
                self._make_ready(run, now)
                self.effects.record(run, "resumed", now, detail={"position": position})
        self._schedule_dispatch()

    def _durable_due(self, run_ids: list[uuid.UUID]) -> None:
        now = self.clock()
        for run_id in dict.fromkeys(run_ids):
            self.durable.check(run_id, now)

    def durable_events(self, events: list[PushedEvent]) -> None:
        """Events just committed: they may end durable runs' waits."""
        self.durable.events(events, self.clock())

    def _past_events_read(
        self, run_id: uuid.UUID, position: int, events: list[PushedEvent]
    ) -> None:
        self.durable.past_events_read(run_id, position, events, self.clock())

    def _children_ended(
        self, run_id: uuid.UUID, position: int, outcomes: list[dict[str, Any]] | None
    ) -> None:
        self.durable.children_ended(run_id, position, outcomes, self.clock())

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
        if run.started_at is not None:
            self.meters.ended(run.task, now - run.started_at)
        self.meters.count("retried", run.task)
        run.finished_at = now
        self.effects.attempt_ended(run, final_status)
        self.dispatcher.forget(run)
        delay = retry_delay(run.options, run.attempt, retry_after)
        run.attempt += 1
        run.finished_at = None
        run.worker_id = None
        run.assigned_at = run.started_at = run.deadline = None
        run.status = RunStatus.QUEUED
        if delay > 0:
            run.retry_at = now + delay
            self.effects.record(run, "retry_scheduled", now, detail={"delay": delay})
            self.effects.timer(run.retry_at, self._retries_due, (run.run_id, run.attempt))
        else:
            self._make_ready(run, now)
            self.effects.record(run, "queued", now, detail={"retry": True})

    def _finish(self, run: Run, status: RunStatus, now: float) -> None:
        run.status = status
        self.dispatcher.forget(run)
        self.durable.remove(run.run_id)
        run.finished_at = now
        run.deadline = None
        self.effects.save(run)
        del self.runs[run.run_id]
        if run.input_json is not None:
            self.cached_bytes -= _cached_size(run)
        self.effects.run_finished(run, now)
        self.activity.finished(now, status is RunStatus.SUCCEEDED)
        self.meters.finish(run.task, status.value)
        if run.started_at is not None:
            self.meters.ended(run.task, now - run.started_at)
        self.finished[run.run_id] = (run.attempt, run.worker_id)
        if len(self.finished) > _RECENTLY_FINISHED:
            self.finished.popitem(last=False)

    def _deadline_timer(self, run: Run) -> None:
        """The execution timeout of the run's current attempt (at its current deadline)."""
        assert run.deadline is not None
        self.effects.timer(
            run.deadline, self._execution_timeouts, (run.run_id, run.attempt, run.deadline)
        )

    def after_message(self) -> None:
        """Assign what the message made assignable (see _schedule_dispatch), then hand on what
        it decided (see QueueEffects)."""
        for _ in range(3):  # a decision may make another possible (a run refused, say)
            if not self._dispatch_pending or not self._mailbox.empty():
                break
            self._dispatch()
        if self._dispatch_pending and not self._dispatch_told:
            self._dispatch_told = True
            self._post(self._dispatch_due)  # its own message: also while it is being stopped
        self.effects.flush()

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
            self.meters.count("schedule_timeout", run.task)
            self._finish(run, RunStatus.TIMED_OUT, now)
        self._expiry_armed = expiries[0][0] if expiries else None
        if self._expiry_armed is not None:
            self.effects.timer(self._expiry_armed, self._schedule_timeouts, self._expiry_armed)

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
            self.meters.count("execution_timeout", run.task)
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
                self.effects.record(run, "queued", now, detail={"retry": True})
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
        self.effects.attempt_ended(run, run.status)
        run.attempt += 1
        run.output_json = run.error_json = None
        run.worker_id = None
        run.assigned_at = run.started_at = run.finished_at = None
        self.runs[run.run_id] = run
        self.finished.pop(run.run_id, None)
        self._make_ready(run, now, arriving=True)
        self.effects.record(run, "replayed", now)
        self._schedule_dispatch()

    def waiting_reason(self, run_id: uuid.UUID) -> str | None:
        waiting = self.durable.describe(run_id)
        if waiting is not None:
            return waiting
        run = self.runs.get(run_id)
        if run is None:
            return None
        now = self.clock()
        if run.retry_at is not None and run.retry_at > now:
            return f"retry {run.attempt} starts in {run.retry_at - now:.1f}s (back-off)"
        return self.dispatcher.waiting_reason(run, now)

    def overview(self, busiest: int) -> dict[str, Any]:
        """The queue now and over the last hour, for the dashboard and the REST API: its runs
        by state, how long the oldest has waited, its workers' slots, its activity by the
        minute and the `busiest` concurrency keys. One pass over the unfinished runs."""
        now = self.clock()
        state = self._state()
        waits = self.activity.waits(now)
        return {
            "queue": self.queue,
            **state,
            "paused": self.dispatcher.queue_paused,
            "counted_since": self.activity.since,
            "minutes": [
                {
                    "at": minute.at,
                    "started": minute.started,
                    "succeeded": minute.succeeded,
                    "failed": minute.failed,
                }
                for minute in self.activity.last_hour(now)
            ],
            "waits": None if waits is None else dataclasses.asdict(waits),
            "busiest_keys": [
                {
                    "task": task,
                    "expression": level.expression,
                    "key": key,
                    "running": len(group.holders),
                    "max_runs": level.max_runs,
                    "waiting": len(group.waiting),
                }
                for (task, level, key), group in self.dispatcher.busiest_keys(busiest)
                if not group.idle
            ],
        }

    def sample(self) -> QueueSample:
        """A copy of the queue's meters, with its state now (for `/metrics`)."""
        sample = self.meters.sample(self.queue)
        state = self._state()
        oldest = state["oldest_queued_at"]
        sample.queued, sample.running = state["queued"], state["running"]
        sample.suspended, sample.workers = state["suspended"], state["workers"]
        sample.slots, sample.slots_used = state["slots"], state["slots_used"]
        sample.oldest_queued_age = 0.0 if oldest is None else max(0.0, self.clock() - oldest)
        return sample

    def _state(self) -> dict[str, Any]:
        """Runs by state, the oldest queued run's time and the workers' slots: one pass over
        the unfinished runs."""
        states = dict.fromkeys(RunStatus, 0)
        oldest: float | None = None
        for run in self.runs.values():
            states[run.status] += 1
            if run.status is RunStatus.QUEUED and (oldest is None or run.queued_at < oldest):
                oldest = run.queued_at
        connected = [worker for worker in self.workers.values() if worker.session is not None]
        return {
            "queued": states[RunStatus.QUEUED],
            "running": states[RunStatus.ASSIGNED] + states[RunStatus.RUNNING],
            "suspended": states[RunStatus.PENDING],
            "oldest_queued_at": oldest,
            "workers": len(connected),
            "slots": sum(worker.slots for worker in connected),
            "slots_used": sum(worker.running.used for worker in connected),
        }

    def slots_used(self) -> dict[uuid.UUID, int]:
        """The slots each connected worker of the queue has busy."""
        return {
            worker_id: worker.running.used
            for worker_id, worker in self.workers.items()
            if worker.session is not None
        }

    def stats(self) -> dict[str, int]:
        return {
            "active": len(self.runs),
            "ready": sum(1 for run in self.runs.values() if run.ready),
            "workers": sum(1 for w in self.workers.values() if w.session is not None),
            **self.dispatcher.stats(),
        }
