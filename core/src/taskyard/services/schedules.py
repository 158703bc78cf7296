"""Crons and one-off schedules: created, listed, read, paused, moved and deleted in Postgres, then
told to the schedule actor, which arms their timers; crons declared in code synced with it; and
what a schedule starts when it fires."""

from __future__ import annotations

import contextlib
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import orjson

from taskyard.actors.schedules import ScheduleActor
from taskyard.domain.cron import CronError, next_tick
from taskyard.domain.cron import validate as validate_cron
from taskyard.domain.limits import Limit
from taskyard.errors import Conflict, NotFound, Unprocessable
from taskyard.store.schedules import Schedule, ScheduleRepository
from taskyard_sdk.models import (
    CatchUp,
    CronRequest,
    CronView,
    ScheduleRequest,
    ScheduleView,
    TriggerRequest,
    WorkflowTriggerRequest,
)

if TYPE_CHECKING:
    from taskyard.services.runs import Runs
    from taskyard.services.workflows import Workflows

PAST_GRACE = 1.0  # seconds: a one-off "now" that took a moment to arrive is still accepted

Kind = Literal["cron", "once"]


class Scheduling:
    def __init__(
        self, repository: ScheduleRepository, actor: ScheduleActor, input_limit: Limit
    ) -> None:
        self.repository = repository
        self.actor = actor
        self.input_limit = input_limit  # checked when a schedule is made, not at every tick

    def _check_input(self, value: object) -> None:
        size = len(orjson.dumps(value))
        if size > self.input_limit.bytes:
            raise self.input_limit.refusal("body.input", size)

    # -- crons -----------------------------------------------------------------------------------

    async def create_cron(self, tenant_id: uuid.UUID, body: CronRequest) -> CronView:
        try:
            validate_cron(body.expression, body.timezone)
        except CronError as exc:
            raise Unprocessable(str(exc)) from None
        self._check_input(body.input)
        schedule = await self.repository.create_cron(
            tenant_id,
            name=body.name,
            task=body.task,
            workflow=body.workflow,
            expression=body.expression,
            timezone=body.timezone,
            input=body.input,
            metadata=body.metadata,
            catch_up=body.catch_up.value,
        )
        self.actor.tell(self.actor.updated, [schedule])
        return cron_view(schedule)

    async def crons(self, tenant_id: uuid.UUID) -> list[CronView]:
        return [cron_view(s) for s in await self.repository.of_kind(tenant_id, "cron")]

    async def cron(self, tenant_id: uuid.UUID, cron_id: uuid.UUID) -> CronView:
        return cron_view(await self._load(tenant_id, cron_id, "cron"))

    async def set_paused(self, tenant_id: uuid.UUID, cron_id: uuid.UUID, paused: bool) -> CronView:
        schedule = await self.repository.set_paused(tenant_id, cron_id, paused)
        if schedule is None:
            raise NotFound(f"no cron {cron_id} in this tenant")
        self.actor.tell(self.actor.updated, [schedule])
        return cron_view(schedule)

    # -- one-off schedules -----------------------------------------------------------------------

    async def fire_now(
        self, tenant_id: uuid.UUID, cron_id: uuid.UUID, runs: Runs, workflows: Workflows
    ) -> uuid.UUID:
        """Start a run of the cron now, outside its calendar (paused or not): its own tick,
        so it never takes the place of one the calendar fires."""
        cron = await self._load(tenant_id, cron_id, "cron")
        return await fire(cron, time.time(), runs, workflows)

    async def create_once(self, tenant_id: uuid.UUID, body: ScheduleRequest) -> ScheduleView:
        at = _future(body.at, "body.at")
        self._check_input(body.input)
        schedule = await self.repository.create_once(
            tenant_id,
            task=body.task,
            workflow=body.workflow,
            at=at,
            input=body.input,
            metadata=body.metadata,
        )
        self.actor.tell(self.actor.updated, [schedule])
        return once_view(schedule)

    async def one_offs(self, tenant_id: uuid.UUID) -> list[ScheduleView]:
        return [once_view(s) for s in await self.repository.of_kind(tenant_id, "once")]

    async def one_off(self, tenant_id: uuid.UUID, schedule_id: uuid.UUID) -> ScheduleView:
        return once_view(await self._load(tenant_id, schedule_id, "once"))

    async def reschedule(
        self, tenant_id: uuid.UUID, schedule_id: uuid.UUID, at: datetime
    ) -> ScheduleView:
        """Move a one-off that has not fired yet (409 once it has)."""
        schedule = await self.repository.reschedule(tenant_id, schedule_id, _future(at, "body.at"))
        if schedule is None:
            existing = await self._load(tenant_id, schedule_id, "once")
            raise Conflict(f"schedule {schedule_id} already fired (run {existing.run_id})")
        self.actor.tell(self.actor.updated, [schedule])
        return once_view(schedule)

    # -- both ------------------------------------------------------------------------------------

    async def delete(self, tenant_id: uuid.UUID, schedule_id: uuid.UUID, kind: Kind) -> None:
        if not await self.repository.delete(tenant_id, schedule_id, kind):
            raise NotFound(f"no {_noun(kind)} {schedule_id} in this tenant")
        self.actor.tell(self.actor.removed, [schedule_id])

    # -- crons declared in code ------------------------------------------------------------------

    async def sync_code_crons(
        self,
        tenant_id: uuid.UUID,
        *,
        task: str | None = None,
        workflow: str | None = None,
        expressions: list[str],
    ) -> None:
        """Crons declared in code (`on_crons`) follow the code: added, kept, or removed."""
        if await self.repository.sync_code_crons(
            tenant_id, task=task, workflow=workflow, expressions=expressions
        ):
            crons = [
                c
                for c in await self.repository.of_kind(tenant_id, "cron")
                if c.declared_in_code and c.task == task and c.workflow == workflow
            ]
            self.actor.tell(self.actor.code_crons_synced, tenant_id, task, workflow, crons)

    async def _load(self, tenant_id: uuid.UUID, schedule_id: uuid.UUID, kind: Kind) -> Schedule:
        schedule = await self.repository.get(tenant_id, schedule_id, kind)
        if schedule is None:
            raise NotFound(f"no {_noun(kind)} {schedule_id} in this tenant")
        return schedule


async def fire(schedule: Schedule, tick: float, runs: Runs, workflows: Workflows) -> uuid.UUID:
    """Start the run of a cron tick or a one-off schedule; committed when this returns.
    Its idempotency key names the tick, so firing it again returns the same run."""
    when = datetime.fromtimestamp(tick, UTC).isoformat()
    if schedule.kind == "cron":
        key = f"cron:{schedule.schedule_id}:{tick:.3f}"
        metadata = {**schedule.metadata, "cron": schedule.name or "", "tick": when}
    else:
        key = f"schedule:{schedule.schedule_id}"
        metadata = {**schedule.metadata, "schedule": str(schedule.schedule_id)}
    if schedule.task is not None:
        [ref] = await runs.trigger(
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
        [ref] = await workflows.trigger(
            schedule.tenant_id,
            schedule.workflow,
            [WorkflowTriggerRequest(input=schedule.input, metadata=metadata, idempotency_key=key)],
        )
    return ref.run_id


def _noun(kind: Kind) -> str:
    return "cron" if kind == "cron" else "schedule"


def _utc(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def cron_view(schedule: Schedule) -> CronView:
    upcoming = None
    if not schedule.paused:
        assert schedule.expression is not None
        assert schedule.timezone is not None
        with contextlib.suppress(CronError):  # one that can no longer fire has no next time
            upcoming = next_tick(schedule.expression, schedule.timezone, time.time())
    return CronView(
        cron_id=schedule.schedule_id,
        name=schedule.name or "",
        task=schedule.task,
        workflow=schedule.workflow,
        expression=schedule.expression or "",
        timezone=schedule.timezone or "UTC",
        input=schedule.input,
        metadata=schedule.metadata,
        catch_up=CatchUp(schedule.catch_up),
        paused=schedule.paused,
        declared_in_code=schedule.declared_in_code,
        next_fire_at=_utc(upcoming),
        last_tick=_utc(schedule.last_tick),
        created_at=datetime.fromtimestamp(schedule.created_at, UTC),
    )


def once_view(schedule: Schedule) -> ScheduleView:
    assert schedule.at is not None
    return ScheduleView(
        schedule_id=schedule.schedule_id,
        task=schedule.task,
        workflow=schedule.workflow,
        at=datetime.fromtimestamp(schedule.at, UTC),
        input=schedule.input,
        metadata=schedule.metadata,
        run_id=schedule.run_id,
        created_at=datetime.fromtimestamp(schedule.created_at, UTC),
    )


def _future(at: datetime, where: str) -> datetime:
    """A one-off's time, made aware (UTC if naive) and refused if already past."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if at.timestamp() < time.time() - PAST_GRACE:
        raise Unprocessable(
            f"{where}: {at.isoformat()} is in the past; trigger the run now "
            f"instead, or pick a time to come"
        )
    return at
