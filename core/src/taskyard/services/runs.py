"""The services: every operation the HTTP layer and plugins call (runs, workflows, events, rate
limits, crons and schedules), and the directory of the tenant and queue actors they ask. They hold
no run state themselves; the actors do, and the services only ask them (a `tell` or an `ask`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from taskyard.actors.base import SideTasks
from taskyard.actors.queue import QueueActor, StepEnded
from taskyard.actors.rate_limits import SharedRateLimiter
from taskyard.actors.schedules import ScheduleActor
from taskyard.actors.streams import RunStreams
from taskyard.actors.tenant import TenantActor
from taskyard.actors.timers import Timers
from taskyard.actors.waiters import RunEnd, RunWaiters
from taskyard.actors.workers import WorkerRegistry, WorkerSession
from taskyard.config import EngineSettings
from taskyard.domain.cron import CronError
from taskyard.domain.cron import validate as validate_cron
from taskyard.domain.dag import WorkflowRun
from taskyard.domain.events import PushedEvent
from taskyard.domain.expressions import ExpressionError
from taskyard.domain.flow import check_options, flow_for, keys_for
from taskyard.domain.notices import RunChanged, RunEnded
from taskyard.domain.rate_limits import Usage
from taskyard.domain.runs import EMPTY_METADATA, WORKFLOW_QUEUE, Run, json_bytes
from taskyard.domain.workflows import CompiledWorkflow, compile_workflow, digest
from taskyard.errors import Conflict, NotFound, Unprocessable
from taskyard.ids import new_id
from taskyard.services.alerts import AlertRules
from taskyard.services.history import History
from taskyard.services.schedules import Scheduling
from taskyard.services.tokens import Tokens
from taskyard.services.views import TaskInfo, WorkerInfo
from taskyard.store.events import EventRepository
from taskyard.store.persister import Persister
from taskyard.store.rate_limits import RateLimitRepository
from taskyard.store.rows import new_run_row, pushed_event_row
from taskyard.store.runs import RunRepository
from taskyard.store.schedules import Schedule, ScheduleRepository
from taskyard.store.workflows import StoredWorkflow, WorkflowRepository
from taskyard_sdk.models import (
    DEFAULT_PRIORITY,
    EventRequest,
    EventView,
    RateDuration,
    RunKind,
    RunRef,
    RunStatus,
    RunView,
    TaskOptions,
    TriggerRequest,
    WorkflowDefinition,
    WorkflowTriggerRequest,
)
from taskyard_sdk.protocol import WORKFLOW_NOT_REGISTERED, TaskDefinition

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = TaskOptions()


class WorkflowStart(NamedTuple):
    workflow: CompiledWorkflow
    input: Any
    metadata: dict[str, str]
    priority: int | None = None
    idempotency_key: str | None = None
    parent_run_id: uuid.UUID | None = None


class Services:
    def __init__(
        self,
        *,
        persister: Persister,
        runs: RunRepository,
        workflows: WorkflowRepository,
        events: EventRepository,
        rate_limits: RateLimitRepository,
        schedules: ScheduleRepository,
        settings: EngineSettings,
        timers: Timers,
        tokens: Tokens,
        alert_rules: AlertRules,
        runs_ended: Callable[[uuid.UUID, list[RunEnded]], None] | None = None,
        observe_all: bool = False,
        runs_changed: Callable[[uuid.UUID, list[RunChanged]], None] | None = None,
    ) -> None:
        self.persister = persister
        self.runs = runs
        self.workflows = workflows
        self.events = events
        self.rate_limits = rate_limits
        self.runs_ended = runs_ended  # failures to the alerter, every end to observers
        self.observe_all = observe_all
        self.runs_changed = runs_changed
        self.limiters: dict[uuid.UUID, SharedRateLimiter] = {}
        self.schedule_repository = schedules
        self.timers = timers  # the engine's, shared (started and stopped by the engine)
        self.waiters = RunWaiters()
        self.streams = RunStreams()
        self.settings = settings
        self.registry = WorkerRegistry(
            queue_for=self.queue_for,
            register_tasks=self._register_tasks,
            heartbeat_interval=settings.heartbeat_interval,
            heartbeat_timeout=settings.heartbeat_timeout,
        )
        self.schedules = ScheduleActor(schedules, self.timers, self.fire_schedule)
        self.scheduling = Scheduling(schedules, self.schedules)
        self.history = History(runs, events, workflows)
        self.tokens = tokens
        self.alert_rules = alert_rules
        self.queues: dict[tuple[uuid.UUID, str], QueueActor] = {}
        self.tenants: dict[uuid.UUID, TenantActor] = {}
        self._starting = SideTasks()

    async def start(self) -> None:
        """Start the shared actors and rebuild every queue that has unfinished runs."""
        await self.registry.start()
        recovered = [
            self.queue_for(tenant_id, queue, recovering=True)
            for tenant_id, queue in await self.runs.active_queues()
        ]
        tenants = [
            self.tenant(tenant_id) for tenant_id in await self.workflows.tenants_with_active_runs()
        ]
        await asyncio.gather(*(actor.start() for actor in [*recovered, *tenants]))
        await self.schedules.start()  # after the queues: missed ticks fire into running actors
        if recovered:
            log.info(
                "recovered %d runs in %d queues",
                sum(len(actor.runs) for actor in recovered),
                len(recovered),
            )

    async def stop(self) -> None:
        await self.registry.stop()  # closes worker connections first: no new results arrive
        await self.schedules.stop()
        await self._starting.cancel()
        actors = [*self.queues.values(), *self.tenants.values()]
        await asyncio.gather(*(actor.stop() for actor in actors))

    # -- workers and tasks -----------------------------------------------------------------------

    async def _connected_workers(self, tenant_id: uuid.UUID, queue: str) -> list[WorkerSession]:
        sessions: list[WorkerSession] = await self.registry.ask(
            self.registry.of_queue, tenant_id, queue
        )
        return sessions

    async def disconnect_workers(self) -> None:
        """Close every worker's connection (at shutdown: they would hold it open)."""
        await self.registry.stop()

    async def workers(self, tenant_id: uuid.UUID) -> list[WorkerInfo]:
        """The tenant's workers connected now."""
        described = await self.registry.ask(self.registry.of_tenant, tenant_id)
        return [WorkerInfo.model_validate(worker) for worker in described]

    async def tasks(self, tenant_id: uuid.UUID) -> list[TaskInfo]:
        """Tasks registered by workers, with their options and the workers connected for them."""
        tenant = self.tenant(tenant_id)
        definitions = await tenant.ask(tenant.all_definitions)
        workers = await self.workers(tenant_id)
        return [
            TaskInfo(
                name=name,
                options=options,
                workers=sorted(w.name for w in workers if name in w.tasks),
            )
            for name, options in sorted(definitions.items())
        ]

    # -- the actor directory ---------------------------------------------------------------------

    def queue_for(
        self, tenant_id: uuid.UUID, queue: str, *, recovering: bool = False
    ) -> QueueActor:
        actor = self.queues.get((tenant_id, queue))
        if actor is None:
            actor = self.queues[(tenant_id, queue)] = QueueActor(
                tenant_id,
                queue,
                persister=self.persister,
                timers=self.timers,
                repository=self.runs,
                waiters=self.waiters,
                streams=self.streams,
                connected_workers=self._connected_workers,
                steps_ended=self._steps_ended,
                worker_grace=self.settings.heartbeat_timeout,
                limiter=self.limiter_for(tenant_id),
                events=self.events,
                runs_ended=self._runs_ended,
                observe_all=self.observe_all,
                runs_changed=self.runs_changed,
                recovery_hold=self.settings.recovery_hold if recovering else 0.0,
            )
            self._start_later(actor.start())
        return actor

    def limiter_for(self, tenant_id: uuid.UUID) -> SharedRateLimiter:
        """The tenant's rate limits, shared by its queue actors (actors/rate_limits.py)."""
        limiter = self.limiters.get(tenant_id)
        if limiter is None:
            limiter = self.limiters[tenant_id] = SharedRateLimiter(
                lambda: self.rate_limits.load(tenant_id)
            )
        return limiter

    def tenant(self, tenant_id: uuid.UUID) -> TenantActor:
        actor = self.tenants.get(tenant_id)
        if actor is None:
            actor = self.tenants[tenant_id] = TenantActor(
                tenant_id,
                persister=self.persister,
                runs=self.runs,
                workflows=self.workflows,
                events=self.events,
                timers=self.timers,
                waiters=self.waiters,
                enqueue=self._enqueue,
                cancel=self._cancel_later,
                runs_ended=self.runs_ended if self.observe_all else None,
            )
            self._start_later(actor.start())
        return actor

    def _runs_ended(self, tenant_id: uuid.UUID, ended: list[RunEnded]) -> None:
        """Runs of the queues that reached their final state (committed). A run that timed out
        can no longer use what it spawned: its unfinished children are cancelled with it. Then
        on to the alerter and observers."""
        for run in ended:
            if run.status == RunStatus.TIMED_OUT.value:
                self._start_later(self._cancel_children_of_timed_out(tenant_id, run.run_id))
        if self.runs_ended is not None:
            self.runs_ended(tenant_id, ended)

    async def _cancel_children_of_timed_out(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
        try:
            await self._cancel_children(tenant_id, run_id, f"run {run_id} timed out")
        except Exception:
            log.exception("could not cancel the children of run %s, which timed out", run_id)

    def _cancel_later(self, tenant_id: uuid.UUID, run_id: uuid.UUID, reason: str) -> None:
        """Cancel a run and everything under it, for an actor that cannot wait for that."""

        async def cancel() -> None:
            try:
                await self.cancel(tenant_id, run_id, reason)
            except (Conflict, NotFound):
                pass  # it ended meanwhile
            except Exception:
                log.exception("could not cancel run %s", run_id)

        self._start_later(cancel())

    def _start_later(self, starting: Coroutine[Any, Any, None]) -> None:
        """Messages wait in the mailbox until the actor has started."""
        self._starting.spawn(starting)

    def _register_tasks(self, tenant_id: uuid.UUID, definitions: list[TaskDefinition]) -> None:
        tenant = self.tenant(tenant_id)
        tenant.tell(tenant.register, definitions)

        async def sync_crons() -> None:
            try:
                for definition in definitions:
                    await self.sync_code_crons(
                        tenant_id, task=definition.name, expressions=definition.crons
                    )
            except Exception:
                log.exception("could not register the crons of a worker's tasks")

        self._start_later(sync_crons())

    async def sync_code_crons(
        self,
        tenant_id: uuid.UUID,
        *,
        task: str | None = None,
        workflow: str | None = None,
        expressions: list[str],
    ) -> None:
        """Crons declared in code (`on_crons`) follow the code: added, kept, or removed."""
        if await self.schedule_repository.sync_code_crons(
            tenant_id, task=task, workflow=workflow, expressions=expressions
        ):
            crons = [
                c
                for c in await self.schedule_repository.of_kind(tenant_id, "cron")
                if c.declared_in_code and c.task == task and c.workflow == workflow
            ]
            self.schedules.tell(self.schedules.code_crons_synced, tenant_id, task, workflow, crons)

    async def fire_schedule(self, schedule: Schedule, tick: float) -> uuid.UUID:
        """Start the run of a cron tick or a one-off schedule; committed when this returns.
        Its idempotency key names the tick, so firing it again returns the same run."""
        when = _utc(tick).isoformat()
        if schedule.kind == "cron":
            key = f"cron:{schedule.schedule_id}:{tick:.3f}"
            metadata = {**schedule.metadata, "cron": schedule.name or "", "tick": when}
        else:
            key = f"schedule:{schedule.schedule_id}"
            metadata = {**schedule.metadata, "schedule": str(schedule.schedule_id)}
        if schedule.task is not None:
            [ref] = await self.trigger(
                schedule.tenant_id,
                [
                    TriggerRequest(
                        task=schedule.task,
                        input=schedule.input,
                        metadata=metadata,
                        idempotency_key=key,
                    )
                ],
            )
        else:
            assert schedule.workflow is not None
            [ref] = await self.trigger_workflow(
                schedule.tenant_id,
                schedule.workflow,
                [
                    WorkflowTriggerRequest(
                        input=schedule.input, metadata=metadata, idempotency_key=key
                    )
                ],
            )
        return ref.run_id

    def _enqueue(self, tenant_id: uuid.UUID, runs: list[Run]) -> None:
        """Hand committed, queued runs to the actors of their queues."""
        by_queue: defaultdict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_queue[run.queue].append(run)
        for queue, queued in by_queue.items():
            actor = self.queue_for(tenant_id, queue)
            actor.tell(actor.enqueue, queued)

    def _steps_ended(self, tenant_id: uuid.UUID, ended: list[StepEnded]) -> None:
        tenant = self.tenant(tenant_id)
        tenant.tell(tenant.steps_ended, ended)

    # -- operations on runs ----------------------------------------------------------------------

    async def trigger(
        self,
        tenant_id: uuid.UUID,
        requests: list[TriggerRequest],
        options: TaskOptions | None = None,
    ) -> list[RunRef]:
        """Create runs; returns once they are committed (an acknowledged run is never lost).
        `options` are those of a batch, for its runs that carry none of their own."""
        await self.persister.capacity()
        if options is not None:
            self._check(options, "options")
        await self._check_parents(tenant_id, requests)
        unconfigured = (
            sorted({r.task for r in requests if r.options is None}) if options is None else []
        )
        registered: dict[str, TaskOptions] = {}
        if unconfigured:
            tenant = self.tenant(tenant_id)
            registered = await tenant.ask(tenant.options_for, unconfigured)
        now = time.time()
        runs, rows = [], []
        interned: dict[int, tuple[TaskOptions, str]] = {}  # by identity: hashing costs more
        for index, request in enumerate(requests):
            given = request.options or options or registered.get(request.task) or DEFAULT_OPTIONS
            found = interned.get(id(given))
            if found is None:
                if request.options is not None:
                    where = f"runs[{index}] " if len(requests) > 1 else ""
                    self._check(request.options, f"{where}(task {request.task!r})")
                found = interned[id(given)] = self.runs.options.intern(given)
            run_options, run_options_json = found
            priority = request.priority or run_options.priority
            input_json = json_bytes(request.input)
            try:
                flow = flow_for(run_options, request.input, request.metadata)
            except ExpressionError as exc:
                where = f"runs[{index}] " if len(requests) > 1 else ""
                raise Unprocessable(f"{where}(task {request.task!r}): {exc}") from None
            run = Run(
                tenant_id=tenant_id,
                run_id=new_id(),
                task=sys.intern(request.task),
                queue=run_options.queue,
                status=RunStatus.QUEUED,
                attempt=1,
                priority=priority,
                options=run_options,
                created_at=now,
                queued_at=now,
                metadata=request.metadata or EMPTY_METADATA,
                input_json=input_json,
                flow=flow,
            )
            runs.append(run)
            rows.append(
                new_run_row(
                    tenant_id=tenant_id,
                    run_id=run.run_id,
                    task=run.task,
                    queue=run.queue,
                    status="queued",
                    priority=priority,
                    options_json=run_options_json,
                    input_json=input_json,
                    metadata_json=orjson.dumps(request.metadata) if request.metadata else b"{}",
                    created_at=now,
                    idempotency_key=request.idempotency_key,
                    parent_run_id=request.parent_run_id,
                    flow_json=flow.to_json() if flow is not None else None,
                )
            )
        inserted = await self.persister.insert_triggered(rows)
        refs = [
            RunRef(
                run_id=outcome.run_id,
                task=run.task,
                status=RunStatus(outcome.status),
                created=outcome.created,
            )
            for run, outcome in zip(runs, inserted, strict=True)
        ]
        self._enqueue(
            tenant_id, [run for run, outcome in zip(runs, inserted, strict=True) if outcome.created]
        )
        return refs

    async def _check_parents(
        self, tenant_id: uuid.UUID, requests: Sequence[TriggerRequest | WorkflowTriggerRequest]
    ) -> None:
        """A parent must be a run of this tenant (a run is written before it is assigned, so
        any run that can spawn one is found). One lookup per batch, none without parents."""
        wanted = {r.parent_run_id for r in requests if r.parent_run_id is not None}
        if not wanted:
            return
        missing = wanted - await self.runs.existing(tenant_id, list(wanted))
        if missing:
            index, request = next(
                (i, r) for i, r in enumerate(requests) if r.parent_run_id in missing
            )
            where = f"runs[{index}]." if len(requests) > 1 else ""
            raise Unprocessable(
                f"body.{where}parent_run_id: no run {request.parent_run_id} in this tenant"
            )

    @staticmethod
    def _check(options: TaskOptions, where: str) -> None:
        """Options given with a trigger: their expressions must compile (422 naming them)."""
        try:
            check_options(options)
        except ExpressionError as exc:
            raise Unprocessable(f"{where}: {exc}") from None

    async def cancel(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID, reason: str = "cancelled on request"
    ) -> RunStatus:
        """Cancel a run, and with it the runs it spawned and (for a workflow run) its steps."""
        run = await self._load(tenant_id, run_id)
        if run.status.terminal:
            raise Conflict(f"run {run_id} is already {run.status.value}")
        # A run that ended in memory but is not written yet answers 409, as a written one does.
        await self._cancel_one(tenant_id, run, reason)
        await self._cancel_children(tenant_id, run.run_id)
        await self.persister.flush()  # acknowledged only once durable
        return RunStatus.CANCELLED

    async def _cancel_one(self, tenant_id: uuid.UUID, run: Run, reason: str) -> None:
        if run.queue == WORKFLOW_QUEUE:
            tenant = self.tenant(tenant_id)
            await tenant.ask(tenant.cancel_run, run.run_id, reason)
        elif run.status is RunStatus.PENDING and run.workflow_run_id is not None:
            tenant = self.tenant(tenant_id)  # a step waiting on its conditions
            await tenant.ask(tenant.cancel_step, run, reason)
        else:
            actor = self.queue_for(tenant_id, run.queue)
            await actor.ask(actor.cancel, run.run_id, reason)

    async def _cancel_children(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID, reason: str | None = None
    ) -> None:
        """The runs a cancelled run spawned (and a workflow run's steps), and theirs; `reason`
        is given to all of them (by default each is told its parent was cancelled)."""
        await self.persister.flush()  # so the query below sees the steps just cancelled
        for child_id in await self.runs.active_children(tenant_id, run_id):
            child = await self.runs.load_run(tenant_id, child_id)
            if child is not None and not child.status.terminal:
                with contextlib.suppress(Conflict):  # it ended meanwhile; its children still go
                    await self._cancel_one(
                        tenant_id, child, reason or f"run {run_id} was cancelled"
                    )
                await self._cancel_children(tenant_id, child_id, reason)

    async def replay(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
        run = await self._load(tenant_id, run_id)
        if run.queue == WORKFLOW_QUEUE or run.workflow_run_id is not None:
            raise Conflict(
                f"run {run_id} is a workflow run or one of its steps, which cannot be "
                f"replayed; trigger the workflow again"
            )
        if not run.status.terminal:
            raise Conflict(
                f"run {run_id} is {run.status.value}; only finished runs can be replayed"
            )
        actor = self.queue_for(tenant_id, run.queue)
        await actor.ask(actor.replay, run)
        await self.persister.flush()

    async def _load(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> Run:
        run = await self.runs.load_run(tenant_id, run_id)
        if run is None:
            raise NotFound(f"no run {run_id} in this tenant")
        return run

    async def waiting_reason(self, tenant_id: uuid.UUID, view: RunView) -> str | None:
        if view.status is RunStatus.PENDING and view.kind is not RunKind.WORKFLOW:
            actor = self.queues.get((tenant_id, view.queue))  # a durable run suspended there?
            durable: str | None = (
                await actor.ask(actor.waiting_reason, view.run_id, timeout=5)
                if actor is not None
                else None
            )
            return durable or "waiting for its wait_for conditions"
        if view.status is not RunStatus.QUEUED:
            return None
        if view.kind is RunKind.WORKFLOW:
            tenant = self.tenant(tenant_id)
            admission: str | None = await tenant.ask(
                tenant.admission_reason, view.run_id, timeout=5
            )
            return admission
        actor = self.queues.get((tenant_id, view.queue))
        if actor is None:
            return None
        reason: str | None = await actor.ask(actor.waiting_reason, view.run_id, timeout=5)
        return reason

    async def wait(
        self, tenant_id: uuid.UUID, run_ids: Iterable[uuid.UUID], timeout: float
    ) -> tuple[list[dict[str, Any]], list[uuid.UUID]]:
        """Wait until every run has finished or `timeout` passes. Returns the finished runs as
        documents shaped like RunView, and the ids still pending. The runs are watched before
        they are read, so an end committed in between is not missed; a run read unfinished is not
        read again: its owner's notice of its committed end says what changed."""
        wanted = list(dict.fromkeys(run_ids))
        futures = self.waiters.watch(tenant_id, wanted)
        try:
            found = await self.runs.run_documents(tenant_id, wanted)
            unknown = [str(run_id) for run_id in wanted if run_id not in found]
            if unknown:
                raise NotFound(
                    f"no run {', '.join(unknown[:5])} in this tenant"
                    + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
                )
            pending = [
                futures[run_id]
                for run_id, document in found.items()
                if not RunStatus(document["status"]).terminal
            ]
            if pending and timeout > 0:
                await asyncio.wait(pending, timeout=timeout)
                for future in pending:
                    if future.done():
                        _ended(found[future.result().run_id], future.result())
        finally:
            self.waiters.unwatch(tenant_id, futures)
        finished, still = [], []
        for run_id in wanted:
            document = found[run_id]
            if RunStatus(document["status"]).terminal:
                finished.append(document)
            else:
                still.append(run_id)
        return finished, still

    async def view(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunView:
        """A run's view, with its waiting reason; 404 when the tenant has no such run."""
        view = await self._read_view(tenant_id, run_id)
        view.waiting_reason = await self.waiting_reason(tenant_id, view)
        return view

    async def result(self, tenant_id: uuid.UUID, run_id: uuid.UUID, timeout: float) -> RunView:
        """The run's view once it has finished, or after `timeout` seconds as it is then."""
        finished = self.waiters.watch(tenant_id, [run_id])
        try:
            view = await self._read_view(tenant_id, run_id)
            if not view.status.terminal and timeout > 0:
                await asyncio.wait(finished.values(), timeout=timeout)
                if finished[run_id].done():
                    view = await self._read_view(tenant_id, run_id)
        finally:
            self.waiters.unwatch(tenant_id, finished)
        view.waiting_reason = await self.waiting_reason(tenant_id, view)
        return view

    async def _read_view(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunView:
        view = await self.runs.get_run(tenant_id, run_id)
        if view is None:
            raise NotFound(f"no run {run_id} in this tenant")
        return view

    # -- rate limits -----------------------------------------------------------------------------

    async def put_rate_limit(
        self, tenant_id: uuid.UUID, key: str, limit: int, duration: RateDuration
    ) -> None:
        """Set a limit (durable when this returns); runs waiting for it are decided again."""
        limiter = self.limiter_for(tenant_id)
        await limiter.ready()
        await self.rate_limits.put(tenant_id, key, limit, duration)
        limiter.configure(key, limit, duration)
        self._rate_limit_changed(tenant_id, key)

    async def delete_rate_limit(self, tenant_id: uuid.UUID, key: str) -> None:
        limiter = self.limiter_for(tenant_id)
        await limiter.ready()
        if not await self.rate_limits.delete(tenant_id, key):
            raise NotFound(f"no rate limit {key!r} in this tenant")
        limiter.remove(key)
        self._rate_limit_changed(tenant_id, key)

    async def rate_limit_usage(self, tenant_id: uuid.UUID) -> list[Usage]:
        limiter = self.limiter_for(tenant_id)
        await limiter.ready()
        return limiter.usage()

    def _rate_limit_changed(self, tenant_id: uuid.UUID, key: str) -> None:
        for (queue_tenant, _), actor in self.queues.items():
            if queue_tenant == tenant_id:
                actor.tell(actor.rate_limit_changed, key)

    # -- workflows -------------------------------------------------------------------------------

    async def register_workflow(
        self, tenant_id: uuid.UUID, definition: WorkflowDefinition
    ) -> StoredWorkflow:
        """Validate (422 naming the problem) and store; a changed definition is a new version."""
        compile_workflow(definition, 0)
        for expression in definition.on_crons:
            try:
                validate_cron(expression, "UTC")
            except CronError as exc:
                raise Unprocessable(f"workflow {definition.name!r}: on_crons: {exc}") from None
        stored = await self.workflows.register(tenant_id, definition, digest(definition))
        tenant = self.tenant(tenant_id)
        tenant.tell(tenant.workflow_registered, compile_workflow(definition, stored.version))
        await self.sync_code_crons(
            tenant_id, workflow=definition.name, expressions=definition.on_crons
        )
        return stored

    async def trigger_workflow(
        self, tenant_id: uuid.UUID, name: str, requests: list[WorkflowTriggerRequest]
    ) -> list[RunRef]:
        """Start runs of the latest version of a workflow; returns once they are committed."""
        await self.persister.capacity()
        tenant = self.tenant(tenant_id)
        workflow: CompiledWorkflow | None = await tenant.ask(tenant.latest_workflow, name)
        if workflow is None:
            raise NotFound(
                f"no workflow {name!r} is registered in this tenant; workers register "
                f"their workflows when they start",
                code=WORKFLOW_NOT_REGISTERED,
            )
        levels = workflow.definition.concurrency
        for index, request in enumerate(requests):
            try:
                keys_for(levels, request.input, request.metadata)
            except ExpressionError as exc:
                where = f"runs[{index}] " if len(requests) > 1 else ""
                raise Unprocessable(f"{where}(workflow {name!r}): {exc}") from None
        await self._check_parents(tenant_id, requests)
        started = [
            WorkflowStart(
                workflow,
                request.input,
                request.metadata,
                request.priority,
                request.idempotency_key,
                request.parent_run_id,
            )
            for request in requests
        ]
        return await self._start_workflows(tenant_id, started)

    async def _start_workflows(
        self, tenant_id: uuid.UUID, started: list[WorkflowStart]
    ) -> list[RunRef]:
        now = time.time()
        runs, rows = [], []
        for workflow, input, metadata, priority, idempotency_key, parent_run_id in started:
            input_json = json_bytes(input)
            # A workflow with concurrency keys waits, queued, until its tenant actor admits it.
            admitted = not workflow.definition.concurrency
            run = WorkflowRun(
                new_id(),
                workflow,
                input_json,
                metadata or EMPTY_METADATA,
                priority,
                now,
                admitted=admitted,
            )
            runs.append(run)
            status = RunStatus.RUNNING if admitted else RunStatus.QUEUED
            rows.append(
                new_run_row(
                    tenant_id=tenant_id,
                    run_id=run.run_id,
                    task=workflow.name,
                    queue=WORKFLOW_QUEUE,
                    status=status.value,
                    priority=priority or DEFAULT_PRIORITY,
                    options_json="{}",
                    input_json=input_json.decode(),
                    metadata_json=orjson.dumps(metadata).decode(),
                    created_at=now,
                    idempotency_key=idempotency_key,
                    kind="workflow",
                    workflow_version=workflow.version,
                    parent_run_id=parent_run_id,
                )
            )
        inserted = await self.persister.insert_triggered(rows) if rows else []
        tenant = self.tenant(tenant_id)
        tenant.tell(
            tenant.start_runs,
            [run for run, outcome in zip(runs, inserted, strict=True) if outcome.created],
        )
        return [
            RunRef(
                run_id=outcome.run_id,
                task=run.workflow.name,
                status=RunStatus(outcome.status),
                created=outcome.created,
            )
            for run, outcome in zip(runs, inserted, strict=True)
        ]

    # -- events ----------------------------------------------------------------------------------

    async def push_events(
        self, tenant_id: uuid.UUID, requests: list[EventRequest], replay_of: uuid.UUID | None = None
    ) -> list[EventView]:
        """Store events, start the workflows they trigger, wake the steps waiting for them.
        Returns once all of it is committed."""
        await self.persister.capacity()
        now = time.time()
        events = [
            PushedEvent(new_id(), request.key, request.payload, request.metadata, now)
            for request in requests
        ]
        tenant = self.tenant(tenant_id)
        routed: list[list[CompiledWorkflow]] = await tenant.ask(tenant.route, events)
        started = [
            WorkflowStart(workflow, event.payload, event.metadata)
            for event, workflows in zip(events, routed, strict=True)
            for workflow in workflows
        ]
        refs = await self._start_workflows(tenant_id, started)
        views, position = [], 0
        rows = []
        for event, workflows in zip(events, routed, strict=True):
            triggered = [ref.run_id for ref in refs[position : position + len(workflows)]]
            position += len(workflows)
            rows.append(
                pushed_event_row(
                    tenant_id=tenant_id,
                    event_id=event.event_id,
                    key=event.key,
                    payload=event.payload,
                    metadata=event.metadata,
                    created_at=now,
                    triggered=triggered,
                    replay_of=replay_of,
                )
            )
            views.append(
                EventView(
                    event_id=event.event_id,
                    key=event.key,
                    payload=event.payload,
                    metadata=event.metadata,
                    created_at=_utc(now),
                    triggered=triggered,
                    replay_of=replay_of,
                )
            )
        self.persister.pushed_events(rows)
        await self.persister.barrier()
        tenant.tell(tenant.events_committed, events)
        for (queue_tenant, _), queue in self.queues.items():  # durable runs' waits
            if queue_tenant == tenant_id:
                queue.tell(queue.durable_events, events)
        return views

    async def replay_event(self, tenant_id: uuid.UUID, event_id: uuid.UUID) -> EventView:
        stored = await self.history.event(tenant_id, event_id)
        again = EventRequest(key=stored.key, payload=stored.payload, metadata=stored.metadata)
        [view] = await self.push_events(tenant_id, [again], replay_of=event_id)
        return view


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _ended(document: dict[str, Any], end: RunEnd) -> None:
    """A run's document, read before it ended, brought up to its committed end."""
    document.update(
        status=end.status.value,
        attempt=end.attempt,
        finished_at=_utc(end.finished_at),
        started_at=_utc(end.started_at) if end.started_at is not None else None,
        output=orjson.Fragment(end.output_json) if end.output_json is not None else None,
        error=orjson.Fragment(end.error_json) if end.error_json is not None else None,
    )
