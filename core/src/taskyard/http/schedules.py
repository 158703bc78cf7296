"""Crons and one-off schedules: create, list, read, delete; pause and resume crons; reschedule."""

from __future__ import annotations

from typing import Any

from taskyard.domain.auth import READERS, WRITERS
from taskyard.http.keys import ENGINE
from taskyard.http.routing import Call, Router
from taskyard.services.schedules import Scheduling
from taskyard_sdk.models import (
    CronList,
    CronRequest,
    CronView,
    FiredNow,
    RescheduleRequest,
    ScheduleList,
    ScheduleRequest,
    ScheduleView,
)

router = Router(tags=("scheduling",))


def _scheduling(call: Call[Any]) -> Scheduling:
    return call.request.app[ENGINE].services.scheduling


# -- crons -----------------------------------------------------------------------------------------


@router.post("/api/v1/crons", roles=WRITERS, body=CronRequest, response=CronView, status=201)
async def create_cron(call: Call[CronRequest]) -> CronView:
    """A cron that starts a run of a task or workflow at every tick of `expression` (5 fields,
    or 6 with seconds last) in `timezone`. Each tick starts exactly one run, across restarts;
    `catch_up` says which ticks missed while the engine was down still fire."""
    return await _scheduling(call).create_cron(call.principal.tenant_id, call.body)


@router.get("/api/v1/crons", roles=READERS, response=CronList)
async def list_crons(call: Call[None]) -> CronList:
    """Every cron of the tenant, with its next fire time."""
    return CronList(crons=await _scheduling(call).crons(call.principal.tenant_id))


@router.get("/api/v1/crons/{cron_id}", roles=READERS, response=CronView)
async def get_cron(call: Call[None]) -> CronView:
    return await _scheduling(call).cron(call.principal.tenant_id, call.path_uuid("cron_id"))


@router.delete("/api/v1/crons/{cron_id}", roles=WRITERS, status=204)
async def delete_cron(call: Call[None]) -> None:
    """Delete a cron (one declared in code comes back when its code registers again)."""
    await _scheduling(call).delete(call.principal.tenant_id, call.path_uuid("cron_id"), "cron")


@router.post("/api/v1/crons/{cron_id}/pause", roles=WRITERS, response=CronView)
async def pause_cron(call: Call[None]) -> CronView:
    """No ticks fire while paused; resuming starts from the next tick to come."""
    return await _scheduling(call).set_paused(
        call.principal.tenant_id, call.path_uuid("cron_id"), True
    )


@router.post("/api/v1/crons/{cron_id}/trigger", roles=WRITERS, response=FiredNow, status=201)
async def trigger_cron(call: Call[None]) -> FiredNow:
    """Start a run of the cron now, outside its calendar (paused or not)."""
    services = call.request.app[ENGINE].services
    run_id = await services.scheduling.fire_now(
        call.principal.tenant_id, call.path_uuid("cron_id"), services.runs, services.workflows
    )
    return FiredNow(run_id=run_id)


@router.post("/api/v1/crons/{cron_id}/resume", roles=WRITERS, response=CronView)
async def resume_cron(call: Call[None]) -> CronView:
    return await _scheduling(call).set_paused(
        call.principal.tenant_id, call.path_uuid("cron_id"), False
    )


# -- one-off schedules -----------------------------------------------------------------------------


@router.post(
    "/api/v1/schedules", roles=WRITERS, body=ScheduleRequest, response=ScheduleView, status=201
)
async def create_schedule(call: Call[ScheduleRequest]) -> ScheduleView:
    """Run a task or workflow once, at `at`. A time already past is refused (422); one that
    passes while the engine is down fires as soon as it is back, once."""
    return await _scheduling(call).create_once(call.principal.tenant_id, call.body)


@router.get("/api/v1/schedules", roles=READERS, response=ScheduleList)
async def list_schedules(call: Call[None]) -> ScheduleList:
    return ScheduleList(schedules=await _scheduling(call).one_offs(call.principal.tenant_id))


@router.get("/api/v1/schedules/{schedule_id}", roles=READERS, response=ScheduleView)
async def get_schedule(call: Call[None]) -> ScheduleView:
    return await _scheduling(call).one_off(call.principal.tenant_id, call.path_uuid("schedule_id"))


@router.patch(
    "/api/v1/schedules/{schedule_id}", roles=WRITERS, body=RescheduleRequest, response=ScheduleView
)
async def reschedule(call: Call[RescheduleRequest]) -> ScheduleView:
    """Move a one-off that has not fired yet (409 once it has)."""
    return await _scheduling(call).reschedule(
        call.principal.tenant_id, call.path_uuid("schedule_id"), call.body.at
    )


@router.delete("/api/v1/schedules/{schedule_id}", roles=WRITERS, status=204)
async def delete_schedule(call: Call[None]) -> None:
    await _scheduling(call).delete(call.principal.tenant_id, call.path_uuid("schedule_id"), "once")
