"""Crons and one-off schedules: create, list, read, delete; pause and resume crons; reschedule."""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime
from typing import Any

from taskyard.auth import Role
from taskyard.cron import CronError, next_tick
from taskyard.cron import validate as validate_cron
from taskyard.errors import Conflict, NotFound, Unprocessable
from taskyard.http.keys import ENGINE
from taskyard.http.routing import Call, Router
from taskyard.schedule_repository import Schedule
from taskyard_sdk.models import (
    CatchUp,
    CronList,
    CronRequest,
    CronView,
    RescheduleRequest,
    ScheduleList,
    ScheduleRequest,
    ScheduleView,
)

router = Router(tags=("scheduling",))
ANY_ROLE = list(Role)
PAST_GRACE = 1.0  # seconds: a one-off "now" that took a moment to arrive is still accepted


def _utc(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def _cron(schedule: Schedule) -> CronView:
    upcoming = None
    if not schedule.paused:
        assert schedule.expression is not None
        assert schedule.timezone is not None
        with contextlib.suppress(CronError):  # one that can no longer fire has no next time
            upcoming = next_tick(schedule.expression, schedule.timezone, time.time())
    return CronView(cron_id=schedule.schedule_id, name=schedule.name or "", task=schedule.task,
                    workflow=schedule.workflow, expression=schedule.expression or "",
                    timezone=schedule.timezone or "UTC", input=schedule.input,
                    metadata=schedule.metadata, catch_up=CatchUp(schedule.catch_up),
                    paused=schedule.paused, declared_in_code=schedule.declared_in_code,
                    next_fire_at=_utc(upcoming), last_tick=_utc(schedule.last_tick),
                    created_at=datetime.fromtimestamp(schedule.created_at, UTC))


def _once(schedule: Schedule) -> ScheduleView:
    assert schedule.at is not None
    return ScheduleView(schedule_id=schedule.schedule_id, task=schedule.task,
                        workflow=schedule.workflow, at=datetime.fromtimestamp(schedule.at, UTC),
                        input=schedule.input, metadata=schedule.metadata, run_id=schedule.run_id,
                        created_at=datetime.fromtimestamp(schedule.created_at, UTC))


def _future(at: datetime, where: str) -> datetime:
    """A one-off's time, made aware (UTC if naive) and refused if already past."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    if at.timestamp() < time.time() - PAST_GRACE:
        raise Unprocessable(f"{where}: {at.isoformat()} is in the past; trigger the run now "
                            f"instead, or pick a time to come")
    return at


# -- crons -----------------------------------------------------------------------------------------


@router.post("/api/v1/crons", roles=ANY_ROLE, body=CronRequest, response=CronView, status=201)
async def create_cron(call: Call[CronRequest]) -> CronView:
    """A cron that starts a run of a task or workflow at every tick of `expression` (5 fields,
    or 6 with seconds last) in `timezone`. Each tick starts exactly one run, across restarts;
    `catch_up` says which ticks missed while the engine was down still fire."""
    body = call.body
    try:
        validate_cron(body.expression, body.timezone)
    except CronError as exc:
        raise Unprocessable(str(exc)) from None
    engine = call.request.app[ENGINE]
    scheduler = engine.scheduler
    schedule = await scheduler.schedule_repository.create_cron(
        call.principal.tenant_id, name=body.name, task=body.task, workflow=body.workflow,
        expression=body.expression, timezone=body.timezone, input=body.input,
        metadata=body.metadata, catch_up=body.catch_up.value)
    scheduler.schedules.tell(scheduler.schedules.updated, [schedule])
    return _cron(schedule)


@router.get("/api/v1/crons", roles=ANY_ROLE, response=CronList)
async def list_crons(call: Call[None]) -> CronList:
    """Every cron of the tenant, with its next fire time."""
    repository = call.request.app[ENGINE].scheduler.schedule_repository
    return CronList(crons=[_cron(s) for s in await repository.of_kind(
        call.principal.tenant_id, "cron")])


@router.get("/api/v1/crons/{cron_id}", roles=ANY_ROLE, response=CronView)
async def get_cron(call: Call[None]) -> CronView:
    return _cron(await _load(call, "cron_id", "cron"))


@router.delete("/api/v1/crons/{cron_id}", roles=ANY_ROLE, status=204)
async def delete_cron(call: Call[None]) -> None:
    """Delete a cron (one declared in code comes back when its code registers again)."""
    await _delete(call, "cron_id", "cron")


@router.post("/api/v1/crons/{cron_id}/pause", roles=ANY_ROLE, response=CronView)
async def pause_cron(call: Call[None]) -> CronView:
    """No ticks fire while paused; resuming starts from the next tick to come."""
    return await _set_paused(call, True)


@router.post("/api/v1/crons/{cron_id}/resume", roles=ANY_ROLE, response=CronView)
async def resume_cron(call: Call[None]) -> CronView:
    return await _set_paused(call, False)


async def _set_paused(call: Call[None], paused: bool) -> CronView:
    scheduler = call.request.app[ENGINE].scheduler
    cron_id = call.path_uuid("cron_id")
    schedule = await scheduler.schedule_repository.set_paused(call.principal.tenant_id,
                                                              cron_id, paused)
    if schedule is None:
        raise NotFound(f"no cron {cron_id} in this tenant")
    scheduler.schedules.tell(scheduler.schedules.updated, [schedule])
    return _cron(schedule)


# -- one-off schedules -----------------------------------------------------------------------------


@router.post("/api/v1/schedules", roles=ANY_ROLE, body=ScheduleRequest, response=ScheduleView,
             status=201)
async def create_schedule(call: Call[ScheduleRequest]) -> ScheduleView:
    """Run a task or workflow once, at `at`. A time already past is refused (422); one that
    passes while the engine is down fires as soon as it is back, once."""
    body = call.body
    at = _future(body.at, "body.at")
    scheduler = call.request.app[ENGINE].scheduler
    schedule = await scheduler.schedule_repository.create_once(
        call.principal.tenant_id, task=body.task, workflow=body.workflow, at=at,
        input=body.input, metadata=body.metadata)
    scheduler.schedules.tell(scheduler.schedules.updated, [schedule])
    return _once(schedule)


@router.get("/api/v1/schedules", roles=ANY_ROLE, response=ScheduleList)
async def list_schedules(call: Call[None]) -> ScheduleList:
    repository = call.request.app[ENGINE].scheduler.schedule_repository
    return ScheduleList(schedules=[_once(s) for s in await repository.of_kind(
        call.principal.tenant_id, "once")])


@router.get("/api/v1/schedules/{schedule_id}", roles=ANY_ROLE, response=ScheduleView)
async def get_schedule(call: Call[None]) -> ScheduleView:
    return _once(await _load(call, "schedule_id", "once"))


@router.patch("/api/v1/schedules/{schedule_id}", roles=ANY_ROLE, body=RescheduleRequest,
              response=ScheduleView)
async def reschedule(call: Call[RescheduleRequest]) -> ScheduleView:
    """Move a one-off that has not fired yet (409 once it has)."""
    at = _future(call.body.at, "body.at")
    scheduler = call.request.app[ENGINE].scheduler
    schedule_id = call.path_uuid("schedule_id")
    schedule = await scheduler.schedule_repository.reschedule(call.principal.tenant_id,
                                                              schedule_id, at)
    if schedule is None:
        existing = await _load(call, "schedule_id", "once")
        raise Conflict(f"schedule {schedule_id} already fired (run {existing.run_id})")
    scheduler.schedules.tell(scheduler.schedules.updated, [schedule])
    return _once(schedule)


@router.delete("/api/v1/schedules/{schedule_id}", roles=ANY_ROLE, status=204)
async def delete_schedule(call: Call[None]) -> None:
    await _delete(call, "schedule_id", "once")


async def _load(call: Call[Any], key: str, kind: str) -> Schedule:
    repository = call.request.app[ENGINE].scheduler.schedule_repository
    schedule_id = call.path_uuid(key)
    schedule = await repository.get(call.principal.tenant_id, schedule_id, kind)
    if schedule is None:
        what = "cron" if kind == "cron" else "schedule"
        raise NotFound(f"no {what} {schedule_id} in this tenant")
    return schedule


async def _delete(call: Call[None], key: str, kind: str) -> None:
    scheduler = call.request.app[ENGINE].scheduler
    schedule_id = call.path_uuid(key)
    if not await scheduler.schedule_repository.delete(call.principal.tenant_id, schedule_id,
                                                      kind):
        what = "cron" if kind == "cron" else "schedule"
        raise NotFound(f"no {what} {schedule_id} in this tenant")
    scheduler.schedules.tell(scheduler.schedules.removed, [schedule_id])
