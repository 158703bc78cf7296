"""The TenantActor: one per tenant. It owns the tenant's registries (task definitions as workers
registered them, workflow versions), event routing, and the progression of every unfinished
workflow run of the tenant (the rules are in `taskyard.domain.dag`).

A workflow step's row is created when the step is decided; once that row has committed, a queued
step is handed to its QueueActor (which owns it until it ends and reports back through
`steps_ended`) and a pending step starts listening for its events and sleeps. After a crash the
actor rebuilds every unfinished workflow run from Postgres and decides again: a step that has a row
is never decided twice, and the unique (workflow run, step) index makes that hold even for a
decision replayed by a racing restart.

The registries and event routing are a `TenantRegistry` (`tenant_registry.py`), step rows and runs
are built by `StepRuns` (`workflow_steps.py`). Over 400 lines on purpose: what remains is one
progression, a workflow run's admission, steps decided, waited on and ended, each applied by the
same few methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from taskyard.actors.base import Actor
from taskyard.actors.changes import ChangeFeed
from taskyard.actors.tenant_registry import TenantRegistry
from taskyard.actors.waiters import RunEnd, RunWaiters
from taskyard.actors.workflow_steps import StepRuns
from taskyard.domain.dag import Create, Decision, Finish, Release, StepState, WorkflowRun
from taskyard.domain.dispatch import Dispatcher
from taskyard.domain.events import EventIndex, PushedEvent, matches
from taskyard.domain.expressions import ExpressionError
from taskyard.domain.flow import Flow, keys_for
from taskyard.domain.notices import RunEnded
from taskyard.domain.runs import WORKFLOW_QUEUE, Run, error_json
from taskyard.domain.workflows import CompiledWorkflow, compile_workflow
from taskyard.errors import Conflict, Unprocessable
from taskyard.store.batch import Inserted
from taskyard.store.rows import owned_state_row
from taskyard_sdk.logs import run_fields
from taskyard_sdk.models import DEFAULT_PRIORITY, Concurrency, RunStatus, TaskOptions
from taskyard_sdk.protocol import TaskDefinition

if TYPE_CHECKING:
    from taskyard.actors.queue_effects import StepEnded
    from taskyard.actors.timers import Timers
    from taskyard.store.events import EventRepository
    from taskyard.store.persister import Persister
    from taskyard.store.rows import Row
    from taskyard.store.runs import RunRepository
    from taskyard.store.workflows import ActiveWorkflowRun, WorkflowRepository

log = logging.getLogger(__name__)

Enqueue = Callable[[uuid.UUID, list[Run]], None]
Cancel = Callable[[uuid.UUID, uuid.UUID, str], None]  # (tenant, run, reason): with its children
Listener = tuple[uuid.UUID, str]  # (workflow run, step)


class TenantActor(Actor):
    def __init__(
        self,
        tenant_id: uuid.UUID,
        *,
        persister: Persister,
        runs: RunRepository,
        workflows: WorkflowRepository,
        events: EventRepository,
        timers: Timers,
        waiters: RunWaiters,
        enqueue: Enqueue,
        cancel: Cancel,
        runs_ended: Callable[[uuid.UUID, list[RunEnded]], None] | None = None,
        changes: ChangeFeed | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(f"tenant:{tenant_id}")
        self.tenant_id = tenant_id
        self.persister = persister
        self.run_repository = runs
        self.workflow_repository = workflows
        self.event_repository = events
        self.timers = timers
        self.waiters = waiters
        self.enqueue = enqueue
        self.cancel_later = cancel
        self.runs_ended = runs_ended  # lifecycle observers: whole workflow runs that ended
        self.changes = changes or ChangeFeed()  # live pages, told when a workflow run ends
        self.clock = clock
        self.steps = StepRuns(tenant_id)
        self._reset()

    def _reset(self) -> None:
        self.registry = TenantRegistry()
        self.runs: dict[uuid.UUID, WorkflowRun] = {}
        self.listeners: EventIndex[Listener] = EventIndex()  # waiting steps, by key pattern
        # Admission of workflow runs by their workflow's concurrency keys: each waiting or
        # admitted run is a stand-in Run (task = the workflow's name) in a dispatcher of its own.
        self.admission_runs: dict[uuid.UUID, Run] = {}
        self.admission = Dispatcher(self.admission_runs, {}, None)
        self._admission_options: dict[tuple[Concurrency, ...], TaskOptions] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self.persister.flush()  # what this actor decided before a crash is in Postgres
        self._reset()
        self.registry = TenantRegistry(await self.run_repository.load_definitions(self.tenant_id))
        for stored in await self.workflow_repository.all_versions(self.tenant_id):
            try:
                self.registry.add_version(compile_workflow(stored.definition, stored.version))
            except Unprocessable as exc:  # accepted by an older build: keep the rest going
                log.error(
                    "workflow %r version %d no longer compiles: %s",
                    stored.name,
                    stored.version,
                    exc.message,
                )
        for active in await self.workflow_repository.active_runs(self.tenant_id):
            run = self._rebuild(active)
            if run is not None:
                self.runs[run.run_id] = run
        for run in list(self.runs.values()):
            if run.workflow.definition.concurrency:
                self._await_admission(run, arriving=False)
            for name, state in run.steps.items():
                if state.status is RunStatus.PENDING:
                    self._begin_waiting(run, name, state)
            self._advance(run)
        self._admit()
        if self.runs:
            log.info("tenant %s: resumed %d workflow runs", self.tenant_id, len(self.runs))

    async def on_failure(self, error: BaseException) -> None:
        self._reset()

    def _rebuild(self, active: ActiveWorkflowRun) -> WorkflowRun | None:
        workflow = self.registry.versions.get((active.name, active.version))
        if workflow is None:
            log.error(
                "workflow run %s: version %d of workflow %r is missing; it cannot go on",
                active.run_id,
                active.version,
                active.name,
            )
            return None
        steps = {
            name: StepState(
                stored.run_id,
                stored.status,
                stored.output_json,
                stored.error_json,
                stored.wait_started_at,
            )
            for name, stored in active.steps.items()
        }
        sticky = next(
            (stored.worker_id for stored in active.steps.values() if stored.worker_id is not None),
            None,
        )  # ordered by assignment
        return WorkflowRun(
            active.run_id,
            workflow,
            active.input_json,
            active.metadata,
            active.priority,
            active.created_at,
            steps,
            sticky_worker=sticky,
            admitted=active.admitted,
        )

    # -- registries ------------------------------------------------------------------------------

    def register(self, definitions: list[TaskDefinition]) -> None:
        changed = self.registry.register(definitions)
        if changed:
            self.persister.definitions({(self.tenant_id, n): o for n, o in changed.items()})

    def options_for(self, tasks: list[str]) -> dict[str, TaskOptions]:
        known = self.registry.definitions
        return {task: known[task] for task in tasks if task in known}

    def all_definitions(self) -> dict[str, TaskOptions]:
        """Every registered task's options (the in-memory registry: it already holds
        registrations whose rows are still in the write-behind buffer)."""
        return dict(self.registry.definitions)

    def input_schemas(self) -> dict[str, dict[str, Any]]:
        return dict(self.registry.input_schemas)

    def workflow_registered(self, workflow: CompiledWorkflow) -> None:
        self.registry.add_version(workflow)

    def latest_workflow(self, name: str) -> CompiledWorkflow | None:
        return self.registry.latest.get(name)

    # -- events ----------------------------------------------------------------------------------

    def route(self, events: list[PushedEvent]) -> list[list[CompiledWorkflow]]:
        return self.registry.route(events)

    def events_committed(self, events: list[PushedEvent]) -> None:
        """Stored events wake the steps waiting for them."""
        touched: dict[uuid.UUID, WorkflowRun] = {}
        for event in events:
            for run_id, step in self.listeners.matching(event.key):
                if self._match(run_id, step, [event]):
                    touched[run_id] = self.runs[run_id]
        for run in touched.values():
            self._advance(run)

    def _match(self, run_id: uuid.UUID, name: str, events: list[PushedEvent]) -> bool:
        """Note which of a waiting step's event conditions these events satisfy."""
        run = self.runs.get(run_id)
        state = run.steps.get(name) if run is not None else None
        if run is None or state is None or not state.waiting:
            return False
        step = run.workflow.step(name)
        assert step is not None
        matched = False
        names, subject = {"input": run.input}, f"step {name!r} of run {run_id}"
        for event in events:
            if event.created_at < run.created_at:
                continue  # only events since the workflow run started count
            for leaf, condition in step.events:
                if leaf in state.matched or not matches(
                    event, condition.key, condition.filter, names, subject
                ):
                    continue
                state.matched.add(leaf)
                matched = True
        return matched

    # -- workflow runs ---------------------------------------------------------------------------

    def start_runs(self, runs: list[WorkflowRun]) -> None:
        """New workflow runs, their rows committed."""
        for run in runs:
            if run.run_id not in self.runs:  # also loaded by a concurrent recovery
                self.runs[run.run_id] = run
                if run.workflow.definition.concurrency:
                    self._await_admission(run, arriving=True)
                self._advance(run)
        self._admit()

    # -- admission: workflow-level concurrency ---------------------------------------------------

    def _await_admission(self, run: WorkflowRun, *, arriving: bool) -> None:
        """Enter a run of a workflow with concurrency keys: an admitted one holds its keys, a
        new or queued one waits for them (its workflow's strategy may cancel runs)."""
        levels = tuple(run.workflow.definition.concurrency)
        try:
            flow = Flow(keys_for(levels, run.input, run.metadata))
        except ExpressionError as exc:
            flow = Flow(error=f"workflow {run.workflow.name!r}: {exc}")
        options = self._admission_options.get(levels)
        if options is None:
            options = self._admission_options[levels] = TaskOptions(concurrency=levels)
        stand_in = Run(
            tenant_id=self.tenant_id,
            run_id=run.run_id,
            task=run.workflow.name,
            queue=WORKFLOW_QUEUE,
            status=RunStatus.QUEUED,
            attempt=1,
            priority=run.priority or DEFAULT_PRIORITY,
            options=options,
            created_at=run.created_at,
            queued_at=run.created_at,
            flow=flow,
        )
        self.admission_runs[run.run_id] = stand_in
        if run.admitted:
            self.admission.hold(stand_in)
            return
        for refusal in self.admission.add(stand_in, arriving=arriving):
            refused = self.runs.get(refusal.run.run_id)
            if refused is None:
                continue
            if refused.admitted:  # its steps run in queues: cancel it with them
                self.cancel_later(self.tenant_id, refused.run_id, refusal.message)
            else:
                refused.finished = True
                self._finish(
                    refused,
                    Finish(refusal.status, None, error_json(refusal.error_type, refusal.message)),
                    self.clock(),
                    [],
                )

    def _admit(self) -> None:
        """Start the waiting runs whose keys have room."""
        while (stand_in := self.admission.pick_any(self.clock())) is not None:
            run = self.runs.get(stand_in.run_id)
            if run is None or run.admitted:
                continue
            run.admitted = True
            now = self.clock()
            self.persister.write(
                [
                    owned_state_row(
                        self.tenant_id,
                        run.run_id,
                        RunStatus.RUNNING,
                        run.created_at,
                        now,
                        started_at=now,
                    )
                ],
                [],
                [],
            )
            self._advance(run)

    def admission_reason(self, run_id: uuid.UUID) -> str | None:
        stand_in = self.admission_runs.get(run_id)
        if stand_in is None or not stand_in.ready:
            return None
        return self.admission.blocking_key(stand_in)

    def steps_ended(self, ended: list[StepEnded]) -> None:
        touched: dict[uuid.UUID, WorkflowRun] = {}
        for run_id, step, status, output, error, worker_id in ended:
            run = self.runs.get(run_id)
            if run is not None and run.sticky_worker is None:
                run.sticky_worker = worker_id
            if run is not None and run.step_ended(step, status, output, error):
                self._stop_listening(run, step)
                touched[run_id] = run
        for run in touched.values():
            self._advance(run)

    def cancel_run(self, run_id: uuid.UUID, reason: str) -> None:
        """Cancel a workflow run. Its pending steps are cancelled here; the services cancel
        the steps that queues hold (they are the run's active children)."""
        run = self.runs.get(run_id)
        if run is None:
            raise Conflict(f"workflow run {run_id} has already ended")
        pending = {name for name, state in run.steps.items() if state.status is RunStatus.PENDING}
        unfinished, finish = run.cancel(reason)
        now = self.clock()
        states = [
            owned_state_row(
                self.tenant_id,
                state.run_id,
                RunStatus.CANCELLED,
                state.wait_started_at or now,
                now,
                error=_cancelled(reason),
            )
            for name, state in unfinished
            if name in pending
        ]
        self._finish(run, finish, now, states)

    def cancel_step(self, step_run: Run, reason: str) -> None:
        """Cancel a step that waits on its conditions (its row is this actor's)."""
        assert step_run.workflow_run_id is not None
        assert step_run.step is not None
        run = self.runs.get(step_run.workflow_run_id)
        if run is None or not run.step_ended(
            step_run.step, RunStatus.CANCELLED, None, _cancelled(reason)
        ):
            raise Conflict(f"run {step_run.run_id} is no longer waiting")
        self._stop_listening(run, step_run.step)
        now = self.clock()
        self.persister.write(
            [
                owned_state_row(
                    self.tenant_id,
                    step_run.run_id,
                    RunStatus.CANCELLED,
                    step_run.queued_at,
                    now,
                    error=_cancelled(reason),
                )
            ],
            [],
            [],
        )
        self._advance(run)

    def _advance(self, run: WorkflowRun) -> None:
        now = self.clock()
        self._apply(run, run.advance(now), now)

    def _apply(self, run: WorkflowRun, decisions: list[Decision], now: float) -> None:
        creates: list[Create] = []
        states: list[Row] = []
        released: list[Run] = []
        finish: Finish | None = None
        for decision in decisions:
            if isinstance(decision, Create):
                creates.append(decision)
            elif isinstance(decision, Release):
                self._stop_listening(run, decision.step.name)
                states.append(
                    owned_state_row(
                        self.tenant_id, decision.state.run_id, RunStatus.QUEUED, now, now
                    )
                )
                released.append(
                    self.steps.run(
                        run, decision.step, decision.state.run_id, decision.state.context_json, now
                    )
                )
                decision.state.context_json = None
            else:
                finish = decision
        if creates:
            rows = [self.steps.row(run, create, now) for create in creates]
            inserted = self.persister.insert_runs(rows)
            inserted.add_done_callback(
                lambda done: self._post(self._created, run.run_id, creates, done)
            )
        # The run's own end is written after the step rows decided with it (a later or the same
        # batch): a crash in between leaves the run unfinished, to be decided again, never a
        # finished run with steps missing.
        if finish is not None:
            self._finish(run, finish, now, states)
        elif states:
            self.persister.write(states, [], [])
        if released:
            self.enqueue(self.tenant_id, released)

    def _created(
        self, run_id: uuid.UUID, creates: list[Create], done: asyncio.Future[list[Inserted]]
    ) -> None:
        """Step rows committed: hand queued steps to their queues, let pending ones listen."""
        if done.cancelled() or done.exception() is not None:
            log.error(
                "workflow run %s: could not create %d step rows (%s); they are decided "
                "again when the engine restarts",
                run_id,
                len(creates),
                None if done.cancelled() else done.exception(),
            )
            return
        now = self.clock()
        run = self.runs.get(run_id)
        if run is None:  # cancelled meanwhile: its queued steps must not run
            self.persister.write(
                [
                    owned_state_row(
                        self.tenant_id,
                        create.state.run_id,
                        RunStatus.CANCELLED,
                        now,
                        now,
                        error=_cancelled("its workflow run was cancelled"),
                    )
                    for create, outcome in zip(creates, done.result(), strict=True)
                    if outcome.created and not create.state.status.terminal
                ],
                [],
                [],
            )
            return
        queued = []
        for create, outcome in zip(creates, done.result(), strict=True):
            state = create.state
            if not outcome.created:
                log.warning(
                    "workflow run %s: step %r already had a row",
                    run_id,
                    create.step.name,
                    extra=run_fields(run_id, task=create.step.name, tenant=self.tenant_id),
                )
                continue
            if state.status is RunStatus.QUEUED:
                queued.append(
                    self.steps.run(run, create.step, state.run_id, create.context_json, now)
                )
            elif state.status is RunStatus.PENDING:
                self._begin_waiting(run, create.step.name, state)
        if queued:
            self.enqueue(self.tenant_id, queued)
        if not run.finished:
            self._advance(run)

    def _finish(self, run: WorkflowRun, finish: Finish, now: float, states: list[Row]) -> None:
        for name in list(run.steps):
            self._stop_listening(run, name)
        del self.runs[run.run_id]
        stand_in = self.admission_runs.pop(run.run_id, None)
        if stand_in is not None:  # its keys go to the runs waiting for them
            self.admission.forget(stand_in)
            self._admit()
        states.append(
            owned_state_row(
                self.tenant_id,
                run.run_id,
                finish.status,
                run.created_at,
                now,
                started_at=run.created_at,
                output=finish.output_json,
                error=finish.error_json,
            )
        )
        self.persister.write(states, [], [])
        tenant_id, run_id = self.tenant_id, run.run_id
        end = RunEnd(
            run_id, finish.status, 1, run.created_at, now, finish.output_json, finish.error_json
        )
        runs_ended = self.runs_ended
        ended = None
        if runs_ended is not None:
            error = orjson.loads(finish.error_json) if finish.error_json else {}
            ended = RunEnded(
                tenant_id=tenant_id,
                run_id=run_id,
                kind="workflow",
                task=run.workflow.name,
                workflow=run.workflow.name,
                workflow_run_id=run_id,
                status=finish.status.value,
                attempt=1,
                error_type=error.get("type"),
                error_message=error.get("message"),
                metadata=run.metadata,
                created_at=run.created_at,
                queued_at=run.created_at,
                started_at=run.created_at,
                finished_at=now,
            )

        def committed(barrier: asyncio.Future[None]) -> None:
            if not barrier.cancelled() and barrier.exception() is None:
                self.waiters.finished(tenant_id, [end])
                if runs_ended is not None and ended is not None:
                    runs_ended(tenant_id, [ended])
                self.changes.touched(tenant_id)

        self.persister.barrier(self.tenant_id).add_done_callback(committed)

    # -- waiting steps ---------------------------------------------------------------------------

    def _begin_waiting(self, run: WorkflowRun, name: str, state: StepState) -> None:
        step = run.workflow.step(name)
        assert step is not None
        assert state.wait_started_at is not None
        state.waiting = True
        if step.sleeps:
            self.timers.schedule_many(
                [
                    (state.wait_started_at + seconds, self, self._sleeps_over, (run.run_id, name))
                    for _, seconds in step.sleeps
                ]
            )
        patterns = sorted({condition.key for _, condition in step.events})
        for pattern in patterns:
            self.listeners.add(pattern, (run.run_id, name))
        if patterns:
            # Events pushed since the run started count, even those before the step waited.
            self._side_task(self._past_events(run.run_id, name, patterns, run.created_at))

    async def _past_events(
        self, run_id: uuid.UUID, name: str, patterns: list[str], since: float
    ) -> None:
        try:
            events = await self.event_repository.since(self.tenant_id, patterns, since)
        except Exception:
            log.exception(
                "could not read past events for step %r of run %s; it waits for new ones",
                name,
                run_id,
            )
            return
        if events:
            self._post(self._past_events_read, run_id, name, events)

    def _past_events_read(self, run_id: uuid.UUID, name: str, events: list[PushedEvent]) -> None:
        if self._match(run_id, name, events):
            self._advance(self.runs[run_id])

    def _sleeps_over(self, items: list[Listener]) -> None:
        for run_id in dict.fromkeys(run_id for run_id, _ in items):
            run = self.runs.get(run_id)
            if run is not None:
                self._advance(run)

    def _stop_listening(self, run: WorkflowRun, name: str) -> None:
        step = run.workflow.step(name)
        if step is None:
            return
        for _, condition in step.events:
            self.listeners.discard(condition.key, (run.run_id, name))

    def _side_task(self, work: Any) -> None:
        self.side_tasks.spawn(work, name=f"{self.name}:read")

    def stats(self) -> dict[str, int]:
        return {"workflow_runs": len(self.runs), "waiting_steps": len(self.listeners)}


def _cancelled(message: str) -> bytes:
    return orjson.dumps({"type": "Cancelled", "message": message, "traceback": None})
