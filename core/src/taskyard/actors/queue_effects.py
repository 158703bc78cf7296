"""What one message of a queue actor decided, handed on in one go when the message is done: run
states, their events and logs, and durable log entries to the persister; timers; and what must
wait for those writes to commit (acks and recorded notices to workers, finish notices to
long-polls, ended runs to alerts, resumed waits back to the actor).

The actor owns one `QueueEffects` and fills it while it decides; `flush` empties it. Gathering a
message's writes makes them one persister call and one commit barrier, however many runs the
message touched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from taskyard.actors.frames import ack_json
from taskyard.actors.waiters import RunEnd
from taskyard.domain.notices import RunChanged, RunEnded
from taskyard.store.rows import run_event_row, run_state_row
from taskyard_sdk import protocol
from taskyard_sdk.models import RunStatus

if TYPE_CHECKING:
    from taskyard.actors.base import Actor
    from taskyard.actors.changes import ChangeFeed
    from taskyard.actors.rate_limits import SharedRateLimiter
    from taskyard.actors.timers import Entry, Timers
    from taskyard.actors.waiters import RunWaiters
    from taskyard.domain.dispatch import Connection
    from taskyard.domain.runs import Run
    from taskyard.store.persister import Persister
    from taskyard.store.rows import Row

StepEnded = tuple[uuid.UUID, str, RunStatus, bytes | None, bytes | None, uuid.UUID | None]
"""(workflow_run_id, step, status, output, error, worker) of a workflow step's run that ended."""
StepsEnded = Callable[[uuid.UUID, list[StepEnded]], None]
Resumed = list[tuple[uuid.UUID, int]]  # (run, position) of durable waits that ended


def run_ended(run: Run) -> RunEnded:
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
        metadata=run.metadata,
        created_at=run.created_at,
        queued_at=run.queued_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


class QueueEffects:
    """One queue actor's pending effects. `owner` is only the target of the timers it arms."""

    def __init__(
        self,
        owner: Actor,
        tenant_id: uuid.UUID,
        *,
        persister: Persister,
        timers: Timers,
        waiters: RunWaiters,
        limiter: SharedRateLimiter,
        steps_ended: StepsEnded,
        resumed: Callable[[Resumed], None],
        runs_ended: Callable[[uuid.UUID, list[RunEnded]], None] | None,
        observe_all: bool,
        changes: ChangeFeed,
    ) -> None:
        self.owner = owner
        self.tenant_id = tenant_id
        self.persister = persister
        self.timers = timers
        self.waiters = waiters
        self.limiter = limiter
        self.steps_ended = steps_ended
        self.resumed = resumed
        self.runs_ended = runs_ended  # failed runs for alerts; every ended run for observers
        self.observe_all = observe_all
        self.changes = changes  # committed states, to observers and dashboards
        self.clear()

    def clear(self) -> None:
        """Forget what was not handed on (the actor failed midway and rebuilds from Postgres)."""
        self.states: dict[uuid.UUID, Run] = {}  # runs whose state changed
        self.events: list[Row] = []
        self.logs: list[Row] = []
        self.arming: list[Entry] = []
        self.acks: dict[Connection, list[tuple[uuid.UUID, int]]] = {}  # (run, attempt)
        self.recorded: dict[Connection, list[protocol.Recorded]] = {}
        self.finished: list[RunEnd] = []
        self.steps: list[StepEnded] = []
        self.durable_rows: list[Row] = []
        self.resuming: Resumed = []
        self.ended: list[RunEnded] = []
        self.changed: dict[uuid.UUID, RunChanged] = {}

    # The run's row holds the timeline of its current attempt (created, assigned, started,
    # finished, outcome): the usual transitions cost no event rows. Events are written for what
    # the row cannot hold: an attempt's outcome before the run moves on to another attempt, and
    # the rarer happenings (retry scheduled, timeout refreshed, reattached, replayed).

    def save(self, run: Run) -> None:
        """Persist the run's current state (the latest state in a batch wins)."""
        self.states[run.run_id] = run  # its row is taken when the message is done
        if self.changes.wanted(self.tenant_id):
            self.changed[run.run_id] = RunChanged(
                self.tenant_id, run.run_id, run.task, run.status.value, run.attempt, run.worker_id
            )

    def record(
        self, run: Run, event: str, now: float, detail: dict[str, Any] | None = None
    ) -> None:
        """Persist the run's current state and one event of its history."""
        self.save(run)
        self.events.append(
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

    def attempt_ended(self, run: Run, outcome: RunStatus) -> None:
        """Keep the timeline of an attempt the run is about to leave behind."""
        assert run.finished_at is not None
        error = orjson.loads(run.error_json) if run.error_json else None
        self.events.append(
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

    def run_finished(self, run: Run, now: float) -> None:
        """A run reached its final state: who hears of it once it is written."""
        status = run.status
        if run.workflow_run_id is not None:
            assert run.step is not None
            self.steps.append(
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
            self.ended.append(run_ended(run))
        self.finished.append(
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

    def timer(self, at: float, handler: Callable[[list[Any]], Any], item: Any) -> None:
        self.arming.append((at, self.owner, handler, item))

    def ack(self, session: Connection, run_id: uuid.UUID, attempt: int) -> None:
        """Acknowledge a worker's result once what it led to is committed."""
        self.acks.setdefault(session, []).append((run_id, attempt))

    def flush(self) -> None:
        """Hand everything on; acks and finish notices wait for all of it to commit."""
        persister = self.persister
        if self.states or self.events or self.logs:
            # States nobody waits for (assignments, starts, retries) may be held a moment:
            # under load most are replaced by the run's end before they are written.
            awaited = bool(
                self.acks
                or self.finished
                or self.recorded
                or self.resuming
                or self.durable_rows
                or self.changes.wanted(self.tenant_id)
            )
            persister.write(
                [run_state_row(run) for run in self.states.values()],
                self.events,
                self.logs,
                may_wait=not awaited,
            )
            self.states, self.events, self.logs = {}, [], []
        if self.durable_rows:
            persister.durable(self.durable_rows)
            self.durable_rows = []
        if self.resuming:
            resuming, self.resuming = self.resuming, []
            resumed = self.resumed
            persister.barrier(self.tenant_id).add_done_callback(
                lambda done: (
                    None if done.cancelled() or done.exception() is not None else resumed(resuming)
                )
            )
        if self.limiter.dirty:  # written behind, with (or after) the assignments that took them
            persister.rate_usage(self.tenant_id, self.limiter.take_dirty())
        if self.arming:
            self.timers.schedule_many(self.arming)
            self.arming = []
        if self.steps:  # after the write above: what follows from it is written later
            self.steps_ended(self.tenant_id, self.steps)
            self.steps = []
        if self.changed:
            changed, self.changed = list(self.changed.values()), {}
            report, tenant = self.changes.committed, self.tenant_id

            def written(done: asyncio.Future[None]) -> None:
                if not done.cancelled() and done.exception() is None:
                    report(tenant, changed)

            persister.barrier(self.tenant_id).add_done_callback(written)
        if not self.acks and not self.finished and not self.recorded:
            return
        acks, self.acks = self.acks, {}
        recorded, self.recorded = self.recorded, {}
        finished, self.finished = self.finished, []
        ended, self.ended = self.ended, []
        tenant_id = self.tenant_id
        runs_ended = self.runs_ended
        waiters = self.waiters

        def committed(barrier: asyncio.Future[None]) -> None:
            if barrier.cancelled() or barrier.exception() is not None:
                return  # not written: no acks, so workers re-send
            for session, refs in acks.items():
                session.send(ack_json(refs))
            for session, notices in recorded.items():
                session.send_many(notices)
            if finished:
                waiters.finished(tenant_id, finished)
            if ended and runs_ended is not None:
                runs_ended(tenant_id, ended)

        persister.barrier(self.tenant_id).add_done_callback(committed)
