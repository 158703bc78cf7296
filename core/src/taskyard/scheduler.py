"""The scheduler: the directory of tenant and queue actors, and the operations the API offers on
runs (trigger, cancel, replay, wait). It holds no run state itself; the actors do.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine, Iterable
from typing import Any

import orjson

from taskyard.errors import Conflict, NotFound
from taskyard.ids import new_id
from taskyard.persister import Persister
from taskyard.queue import QueueActor
from taskyard.repository import RunRepository
from taskyard.runs import EMPTY_METADATA, Run, json_bytes
from taskyard.streams import RunStreams
from taskyard.tenants import TenantActor
from taskyard.timers import Timers
from taskyard.waiters import RunWaiters
from taskyard.workers import WorkerRegistry
from taskyard_sdk.models import RunRef, RunStatus, RunView, TaskOptions, TriggerRequest
from taskyard_sdk.protocol import TaskDefinition

log = logging.getLogger(__name__)

DEFAULT_OPTIONS = TaskOptions()


class Scheduler:
    def __init__(self, *, persister: Persister, runs: RunRepository, heartbeat_interval: float,
                 heartbeat_timeout: float, recovery_hold: float = 0.0) -> None:
        self.persister = persister
        self.runs = runs
        self.timers = Timers()
        self.waiters = RunWaiters()
        self.streams = RunStreams()
        self.heartbeat_timeout = heartbeat_timeout
        self.recovery_hold = recovery_hold
        self.registry = WorkerRegistry(queue_for=self.queue_for,
                                       register_tasks=self._register_tasks,
                                       heartbeat_interval=heartbeat_interval,
                                       heartbeat_timeout=heartbeat_timeout)
        self.queues: dict[tuple[uuid.UUID, str], QueueActor] = {}
        self.tenants: dict[uuid.UUID, TenantActor] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self._options: dict[TaskOptions, tuple[TaskOptions, str]] = {}

    async def start(self) -> None:
        """Start the shared actors and rebuild every queue that has unfinished runs."""
        await self.timers.start()
        await self.registry.start()
        recovered = [self.queue_for(tenant_id, queue, recovering=True)
                     for tenant_id, queue in await self.runs.active_queues()]
        await asyncio.gather(*(actor.start() for actor in recovered))
        if recovered:
            log.info("recovered %d runs in %d queues",
                     sum(len(actor.runs) for actor in recovered), len(recovered))

    async def stop(self) -> None:
        await self.registry.stop()  # closes worker connections first: no new results arrive
        for task in self._starting:
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        actors = [*self.queues.values(), *self.tenants.values()]
        await asyncio.gather(*(actor.stop() for actor in actors))
        await self.timers.stop()

    # -- the actor directory ---------------------------------------------------------------------

    def queue_for(self, tenant_id: uuid.UUID, queue: str, *,
                  recovering: bool = False) -> QueueActor:
        actor = self.queues.get((tenant_id, queue))
        if actor is None:
            actor = self.queues[(tenant_id, queue)] = QueueActor(
                tenant_id, queue, persister=self.persister, timers=self.timers,
                repository=self.runs, waiters=self.waiters, streams=self.streams,
                connected_workers=self.registry.connected, worker_grace=self.heartbeat_timeout,
                recovery_hold=self.recovery_hold if recovering else 0.0)
            self._start_later(actor.start())
        return actor

    def tenant(self, tenant_id: uuid.UUID) -> TenantActor:
        actor = self.tenants.get(tenant_id)
        if actor is None:
            actor = self.tenants[tenant_id] = TenantActor(
                tenant_id, persister=self.persister, repository=self.runs)
            self._start_later(actor.start())
        return actor

    def _start_later(self, starting: Coroutine[Any, Any, None]) -> None:
        """Messages wait in the mailbox until the actor has started."""
        task = asyncio.create_task(starting)
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def _register_tasks(self, tenant_id: uuid.UUID, definitions: list[TaskDefinition]) -> None:
        tenant = self.tenant(tenant_id)
        tenant.tell(tenant.register, definitions)

    # -- operations on runs ----------------------------------------------------------------------

    async def trigger(self, tenant_id: uuid.UUID,
                      requests: list[TriggerRequest]) -> list[RunRef]:
        """Create runs; returns once they are committed (an acknowledged run is never lost)."""
        await self.persister.capacity()
        unconfigured = sorted({r.task for r in requests if r.options is None})
        registered: dict[str, TaskOptions] = {}
        if unconfigured:
            tenant = self.tenant(tenant_id)
            registered = await tenant.ask(tenant.options_for, unconfigured)
        now = time.time()
        runs, rows = [], []
        for request in requests:
            options, options_json = self._intern(
                request.options or registered.get(request.task) or DEFAULT_OPTIONS)
            priority = request.priority or options.priority
            input_json = json_bytes(request.input)
            run = Run(tenant_id=tenant_id, run_id=new_id(), task=sys.intern(request.task),
                      queue=options.queue, status=RunStatus.QUEUED, attempt=1, priority=priority,
                      options=options, created_at=now, queued_at=now,
                      metadata=request.metadata or EMPTY_METADATA, input_json=input_json)
            runs.append(run)
            rows.append((tenant_id, run.run_id, run.task, run.queue, "queued", 1, priority,
                         options_json, input_json.decode(),
                         orjson.dumps(request.metadata).decode(), request.idempotency_key,
                         now, now))
        inserted = await self.persister.insert_runs(rows)
        by_queue: defaultdict[str, list[Run]] = defaultdict(list)
        refs = []
        for run, outcome in zip(runs, inserted, strict=True):
            if outcome.created:
                by_queue[run.queue].append(run)
            refs.append(RunRef(run_id=outcome.run_id, task=run.task,
                               status=RunStatus(outcome.status), created=outcome.created))
        for queue, queued in by_queue.items():
            actor = self.queue_for(tenant_id, queue)
            actor.tell(actor.enqueue, queued)
        return refs

    def _intern(self, options: TaskOptions) -> tuple[TaskOptions, str]:
        """One shared instance (and its JSON) per distinct options: a million queued runs hold
        references, not copies."""
        interned = self._options.get(options)
        if interned is None:
            if len(self._options) > 10_000:
                self._options.clear()
            interned = self._options[options] = (options, options.model_dump_json())
        return interned

    async def cancel(self, tenant_id: uuid.UUID, run_id: uuid.UUID,
                     reason: str = "cancelled on request") -> RunStatus:
        run = await self._load(tenant_id, run_id)
        if run.status.terminal:
            raise Conflict(f"run {run_id} is already {run.status.value}")
        actor = self.queue_for(tenant_id, run.queue)
        status: RunStatus = await actor.ask(actor.cancel, run_id, reason)
        await self.persister.flush()  # acknowledged only once durable
        return status

    async def replay(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
        run = await self._load(tenant_id, run_id)
        if not run.status.terminal:
            raise Conflict(f"run {run_id} is {run.status.value}; only finished runs can be "
                           f"replayed")
        actor = self.queue_for(tenant_id, run.queue)
        await actor.ask(actor.replay, run)
        await self.persister.flush()

    async def _load(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> Run:
        run = await self.runs.load_run(tenant_id, run_id)
        if run is None:
            raise NotFound(f"no run {run_id} in this tenant")
        return run

    async def waiting_reason(self, tenant_id: uuid.UUID, view: RunView) -> str | None:
        if view.status is not RunStatus.QUEUED:
            return None
        actor = self.queues.get((tenant_id, view.queue))
        if actor is None:
            return None
        reason: str | None = await actor.ask(actor.waiting_reason, view.task, timeout=5)
        return reason

    async def wait(self, tenant_id: uuid.UUID, run_ids: Iterable[uuid.UUID],
                   timeout: float) -> tuple[list[dict[str, Any]], list[uuid.UUID]]:
        """Wait until every run has finished or `timeout` passes. Returns the finished runs as
        documents shaped like RunView, and the ids still pending."""
        wanted = list(dict.fromkeys(run_ids))
        futures = self.waiters.watch(tenant_id, wanted)
        try:
            statuses = await self.runs.run_statuses(tenant_id, wanted)
            unknown = [str(run_id) for run_id in wanted if run_id not in statuses]
            if unknown:
                raise NotFound(f"no run {', '.join(unknown[:5])} in this tenant"
                               + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""))
            pending = [futures[run_id] for run_id, status in statuses.items()
                       if not status.terminal]
            if pending and timeout > 0:
                await asyncio.wait(pending, timeout=timeout)
                if any(future.done() for future in pending):
                    statuses = await self.runs.run_statuses(tenant_id, wanted)
        finally:
            self.waiters.unwatch(tenant_id, futures)
        done = [run_id for run_id in wanted if statuses[run_id].terminal]
        documents = await self.runs.run_documents(tenant_id, done) if done else {}
        finished = [documents[run_id] for run_id in done]
        return finished, [run_id for run_id in wanted if not statuses[run_id].terminal]
