"""`Services`: the service layer as the HTTP layer, the engine and plugins reach it. The actor
directory, and the operations one part per noun: `services.runs.trigger(...)`,
`services.workflows.register(...)`, `services.events.push(...)`, `services.rate_limits.put(...)`,
`services.workers.tasks(...)`, reads in `services.history`, and schedules, tokens and alert rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from taskyard.actors.changes import ChangeFeed
from taskyard.actors.timers import Timers
from taskyard.config import EngineSettings
from taskyard.domain.notices import RunEnded
from taskyard.services.alerts import AlertRules
from taskyard.services.bulk import Bulk
from taskyard.services.directory import ActorDirectory
from taskyard.services.events import Events
from taskyard.services.history import History
from taskyard.services.pausing import Pausing
from taskyard.services.queues import Queues
from taskyard.services.rate_limits import RateLimits
from taskyard.services.runs import Runs
from taskyard.services.schedules import Scheduling, fire
from taskyard.services.tokens import Tokens
from taskyard.services.workers import Workers
from taskyard.services.workflows import Workflows
from taskyard.store.events import EventRepository
from taskyard.store.pauses import PauseRepository
from taskyard.store.persister import Persister
from taskyard.store.rate_limits import RateLimitRepository
from taskyard.store.runs import RunRepository
from taskyard.store.schedules import ScheduleRepository
from taskyard.store.workflows import WorkflowRepository


class Services:
    def __init__(
        self,
        *,
        persister: Persister,
        run_repository: RunRepository,
        workflow_repository: WorkflowRepository,
        event_repository: EventRepository,
        rate_limit_repository: RateLimitRepository,
        schedule_repository: ScheduleRepository,
        pause_repository: PauseRepository,
        settings: EngineSettings,
        timers: Timers,
        tokens: Tokens,
        alert_rules: AlertRules,
        runs_ended: Callable[[uuid.UUID, list[RunEnded]], None] | None = None,
        observe_all: bool = False,
        changes: ChangeFeed | None = None,
    ) -> None:
        # The actors call back into operations that need the actors to be built first: what
        # they are given is bound late, through this object.
        self.actors = ActorDirectory(
            persister=persister,
            runs=run_repository,
            workflows=workflow_repository,
            events=event_repository,
            rate_limits=rate_limit_repository,
            schedules=schedule_repository,
            pauses=pause_repository,
            settings=settings,
            timers=timers,
            cancel=lambda tenant_id, run_id, reason: self.runs.cancel(tenant_id, run_id, reason),
            cancel_children=lambda tenant_id, run_id, reason: self.runs.cancel_children(
                tenant_id, run_id, reason
            ),
            sync_crons=lambda tenant_id, task, crons: self.scheduling.sync_code_crons(
                tenant_id, task=task, expressions=crons
            ),
            fire_schedule=lambda schedule, tick: fire(schedule, tick, self.runs, self.workflows),
            runs_ended=runs_ended,
            observe_all=observe_all,
            changes=changes,
        )
        self.history = History(run_repository, event_repository, workflow_repository)
        self.limits = limits = settings.payload_limits()  # the worker websocket's too
        self.runs = Runs(self.actors, persister, run_repository, limits.input)
        self.scheduling = Scheduling(schedule_repository, self.actors.schedules, limits.input)
        self.workflows = Workflows(
            self.actors, persister, workflow_repository, self.runs, self.scheduling, limits.input
        )
        self.bulk = Bulk(self.runs, self.history)
        self.events = Events(self.actors, persister, self.workflows, self.history, limits.event)
        self.rate_limits = RateLimits(self.actors, rate_limit_repository)
        self.workers = Workers(self.actors)
        self.queues = Queues(self.actors)
        self.pausing = Pausing(self.actors, pause_repository)
        self.tokens = tokens
        self.alert_rules = alert_rules
        # What the worker websocket and the run stream use of the actors.
        self.registry = self.actors.registry
        self.queue_for = self.actors.queue_for
        self.waiters = self.actors.waiters
        self.streams = self.actors.streams

    async def start(self) -> None:
        await self.actors.start()

    async def stop(self) -> None:
        await self.actors.stop()
