"""The actor directory: every actor the services ask, found by its key and created on first use
(a queue actor per tenant and queue, a tenant actor per tenant), each tenant's rate limiter, and
the engine-wide worker registry and schedule actor. It wires the actors to one another; what they
need of the operations (to cancel runs, to sync a worker's crons, to fire a schedule) it is given.
It holds no run state: the actors do.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from taskyard.actors.base import SideTasks
from taskyard.actors.changes import ChangeFeed
from taskyard.actors.queue import QueueActor
from taskyard.actors.queue_effects import StepEnded
from taskyard.actors.rate_limits import SharedRateLimiter
from taskyard.actors.schedules import Fire, ScheduleActor
from taskyard.actors.streams import RunStreams
from taskyard.actors.tenant import TenantActor
from taskyard.actors.timers import Timers
from taskyard.actors.waiters import RunWaiters
from taskyard.actors.workers import WorkerRegistry, WorkerSession
from taskyard.config import EngineSettings
from taskyard.domain.leases import TenantLease
from taskyard.domain.notices import RunEnded
from taskyard.domain.pauses import Pauses
from taskyard.domain.runs import Run
from taskyard.errors import Conflict, NotFound, TenantMoved
from taskyard.store.events import EventRepository
from taskyard.store.pauses import PauseRepository
from taskyard.store.persister import Persister
from taskyard.store.rate_limits import RateLimitRepository
from taskyard.store.runs import RunRepository
from taskyard.store.schedules import ScheduleRepository
from taskyard.store.workflows import WorkflowRepository
from taskyard_sdk.logs import run_fields
from taskyard_sdk.models import RunStatus
from taskyard_sdk.protocol import TaskDefinition

log = logging.getLogger(__name__)

RunsEnded = Callable[[uuid.UUID, list[RunEnded]], None]
# (tenant, run, reason): a run and what it spawned; the children of a run alone
CancelRun = Callable[[uuid.UUID, uuid.UUID, str], Awaitable[RunStatus]]
CancelChildren = Callable[[uuid.UUID, uuid.UUID, str], Awaitable[None]]
# (tenant, task, crons): the crons a worker's task declares in code
SyncCrons = Callable[[uuid.UUID, str, list[str]], Awaitable[None]]


class ActorDirectory:
    def __init__(
        self,
        *,
        persister: Persister,
        runs: RunRepository,
        workflows: WorkflowRepository,
        events: EventRepository,
        rate_limits: RateLimitRepository,
        schedules: ScheduleRepository,
        pauses: PauseRepository,
        settings: EngineSettings,
        timers: Timers,
        cancel: CancelRun,
        cancel_children: CancelChildren,
        sync_crons: SyncCrons,
        fire_schedule: Fire,
        runs_ended: RunsEnded | None = None,
        observe_all: bool = False,
        changes: ChangeFeed | None = None,
    ) -> None:
        self.persister = persister
        self.runs = runs
        self.workflows = workflows
        self.events = events
        self.rate_limits = rate_limits
        self.pauses = pauses
        self.settings = settings
        self.timers = timers  # the engine's, shared (started and stopped by the engine)
        self.cancel = cancel
        self.cancel_children = cancel_children
        self.sync_crons = sync_crons
        self.runs_ended = runs_ended  # failures to the alerter, every end to observers
        self.observe_all = observe_all
        self.changes = changes or ChangeFeed()  # committed run states, to who watches
        self.waiters = RunWaiters()
        self.streams = RunStreams()
        self.registry = WorkerRegistry(
            queue_for=self.queue_for,
            register_tasks=self._register_tasks,
            heartbeat_interval=settings.heartbeat_interval,
            heartbeat_timeout=settings.heartbeat_timeout,
        )
        self.schedules = ScheduleActor(schedules, timers, fire_schedule)
        self.queues: dict[tuple[uuid.UUID, str], QueueActor] = {}
        self.tenants: dict[uuid.UUID, TenantActor] = {}
        self.limiters: dict[uuid.UUID, SharedRateLimiter] = {}
        self.leases: dict[uuid.UUID, TenantLease] = {}  # the tenants this node owns (adopt)
        self._starting = SideTasks()

    async def start(self) -> None:
        """Start the shared actors; each tenant's actors start when this node takes its lease
        (`adopt`)."""
        await self.registry.start()
        await self.schedules.start()

    async def stop(self) -> None:
        await self.registry.stop()  # closes worker connections first: no new results arrive
        await self.schedules.stop()
        await self._starting.cancel()
        actors = [*self.queues.values(), *self.tenants.values()]
        await asyncio.gather(*(actor.stop() for actor in actors))

    # -- tenants coming and going (see services/cluster.py) ------------------------------------

    async def adopt(self, tenant_id: uuid.UUID, lease: TenantLease, *, recovering: bool) -> None:
        """This node now owns the tenant: rebuild every queue of it that has unfinished runs,
        its workflow runs and its schedules, as after a restart. `recovering`: the last owner
        did not hand it back, so assignments it made may be unwritten (see recovery_hold)."""
        self.leases[tenant_id] = lease
        recovered = [
            self.queue_for(tenant_id, queue, recovering=recovering)
            for queue in await self.runs.active_queues(tenant_id)
        ]
        tenant = self.tenant(tenant_id)
        await asyncio.gather(*(actor.start() for actor in [*recovered, tenant]))
        await self.schedules.ask(self.schedules.adopt, tenant_id)
        if recovered:
            stats = await asyncio.gather(*(actor.ask(actor.stats) for actor in recovered))
            log.info(
                "tenant %s: recovered %d runs in %d queues",
                tenant_id,
                sum(counts["active"] for counts in stats),
                len(recovered),
            )

    async def release(self, tenant_id: uuid.UUID) -> None:
        """This node no longer owns the tenant: its workers are sent to the new owner, and its
        actors stopped. Messages already in their mailboxes are handled first; what those
        write goes out under the lease while it is still this node's, or is refused."""
        self.leases.pop(tenant_id, None)
        await self.registry.ask(self.registry.tenant_moved, tenant_id)
        await self.schedules.ask(self.schedules.release, tenant_id)
        actors: list[QueueActor | TenantActor] = []
        for key in [key for key in self.queues if key[0] == tenant_id]:
            actors.append(self.queues.pop(key))
        if (tenant := self.tenants.pop(tenant_id, None)) is not None:
            actors.append(tenant)
        await asyncio.gather(*(actor.stop() for actor in actors))
        self.limiters.pop(tenant_id, None)
        self.waiters.moved(tenant_id)

    # -- finding actors --------------------------------------------------------------------------

    def _lease(self, tenant_id: uuid.UUID) -> TenantLease:
        """The tenant's lease, which this node must hold to build its actors."""
        lease = self.leases.get(tenant_id)
        if lease is None or lease.released:
            raise TenantMoved(
                f"this engine node does not own tenant {tenant_id} (now or any more); try again"
            )
        return lease

    def queue_for(
        self, tenant_id: uuid.UUID, queue: str, *, recovering: bool = False
    ) -> QueueActor:
        actor = self.queues.get((tenant_id, queue))
        if actor is None:
            lease = self._lease(tenant_id)
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
                pauses=self.pauses_of,
                runs_ended=self._runs_ended,
                observe_all=self.observe_all,
                changes=self.changes,
                recovery_hold=self.settings.recovery_hold if recovering else 0.0,
                lease=lease,
            )
            self.start_later(actor.start())
        return actor

    def existing_queue(self, tenant_id: uuid.UUID, queue: str) -> QueueActor | None:
        """The queue's actor if it exists (a queue with no actor holds no runs in memory)."""
        return self.queues.get((tenant_id, queue))

    def queues_of(self, tenant_id: uuid.UUID) -> list[QueueActor]:
        return [actor for (tenant, _), actor in self.queues.items() if tenant == tenant_id]

    def tenant(self, tenant_id: uuid.UUID) -> TenantActor:
        actor = self.tenants.get(tenant_id)
        if actor is None:
            self._lease(tenant_id)
            actor = self.tenants[tenant_id] = TenantActor(
                tenant_id,
                persister=self.persister,
                runs=self.runs,
                workflows=self.workflows,
                events=self.events,
                timers=self.timers,
                waiters=self.waiters,
                enqueue=self.enqueue,
                cancel=self._cancel_later,
                runs_ended=self.runs_ended if self.observe_all else None,
                changes=self.changes,
            )
            self.start_later(actor.start())
        return actor

    def limiter_for(self, tenant_id: uuid.UUID) -> SharedRateLimiter:
        """The tenant's rate limits, shared by its queue actors (actors/rate_limits.py)."""
        limiter = self.limiters.get(tenant_id)
        if limiter is None:
            limiter = self.limiters[tenant_id] = SharedRateLimiter(
                lambda: self.rate_limits.load(tenant_id)
            )
        return limiter

    def enqueue(self, tenant_id: uuid.UUID, runs: list[Run]) -> None:
        """Hand committed, queued runs to the actors of their queues."""
        by_queue: defaultdict[str, list[Run]] = defaultdict(list)
        for run in runs:
            by_queue[run.queue].append(run)
        for queue, queued in by_queue.items():
            actor = self.queue_for(tenant_id, queue)
            actor.tell(actor.enqueue, queued)

    def start_later(self, starting: Coroutine[Any, Any, None]) -> None:
        """Work started beside the caller, cancelled at stop (an actor's start: messages wait
        in its mailbox until it has started)."""
        self._starting.spawn(starting)

    # -- what the actors ask of one another and of the operations --------------------------------

    async def _connected_workers(self, tenant_id: uuid.UUID, queue: str) -> list[WorkerSession]:
        sessions: list[WorkerSession] = await self.registry.ask(
            self.registry.of_queue, tenant_id, queue
        )
        return sessions

    async def pauses_of(self, tenant_id: uuid.UUID) -> Pauses:
        """What is paused in the tenant, as stored."""
        return Pauses.of((p.kind, p.name) for p in await self.pauses.of_tenant(tenant_id))

    def _steps_ended(self, tenant_id: uuid.UUID, ended: list[StepEnded]) -> None:
        tenant = self.tenant(tenant_id)
        tenant.tell(tenant.steps_ended, ended)

    def _runs_ended(self, tenant_id: uuid.UUID, ended: list[RunEnded]) -> None:
        """Runs of the queues that reached their final state (committed). A run that timed out
        can no longer use what it spawned: its unfinished children are cancelled with it. Then
        on to the alerter and observers."""
        for run in ended:
            if run.status == RunStatus.TIMED_OUT.value:
                self.start_later(self._cancel_children_of_timed_out(tenant_id, run.run_id))
        if self.runs_ended is not None:
            self.runs_ended(tenant_id, ended)

    async def _cancel_children_of_timed_out(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
        try:
            await self.cancel_children(tenant_id, run_id, f"run {run_id} timed out")
        except Exception:
            log.exception(
                "could not cancel the children of run %s, which timed out",
                run_id,
                extra=run_fields(run_id, tenant=tenant_id),
            )

    def _cancel_later(self, tenant_id: uuid.UUID, run_id: uuid.UUID, reason: str) -> None:
        """Cancel a run and everything under it, for an actor that cannot wait for that."""

        async def cancel() -> None:
            try:
                await self.cancel(tenant_id, run_id, reason)
            except (Conflict, NotFound):
                pass  # it ended meanwhile
            except Exception:
                log.exception(
                    "could not cancel run %s", run_id, extra=run_fields(run_id, tenant=tenant_id)
                )

        self.start_later(cancel())

    def _register_tasks(self, tenant_id: uuid.UUID, definitions: list[TaskDefinition]) -> None:
        tenant = self.tenant(tenant_id)
        tenant.tell(tenant.register, definitions)

        async def sync_crons() -> None:
            try:
                for definition in definitions:
                    await self.sync_crons(tenant_id, definition.name, definition.crons)
            except Exception:
                log.exception("could not register the crons of a worker's tasks")

        self.start_later(sync_crons())
