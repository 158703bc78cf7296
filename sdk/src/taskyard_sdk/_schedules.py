"""Crons and one-off schedules: `wf.create_cron(...)`, `task.schedule(at=...)`, and `ty.crons`,
`ty.schedules` to list, read and change them."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from taskyard_sdk._transport import run_sync
from taskyard_sdk.models import (
    CatchUp,
    CronList,
    CronView,
    FiredNow,
    ScheduleList,
    ScheduleView,
)

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard


class Schedulable:
    """What tasks and workflows share: starting runs on a cron, or once at a given time."""

    client: Taskyard

    def _schedule_target(self) -> dict[str, str]:
        raise NotImplementedError

    def encode_input(self, value: Any) -> Any:
        raise NotImplementedError

    async def aio_create_cron(
        self,
        name: str,
        expression: str,
        *,
        input: Any = None,
        timezone: str = "UTC",
        metadata: dict[str, str] | None = None,
        catch_up: CatchUp | str = CatchUp.LATEST,
    ) -> CronView:
        """Start a run at every tick of `expression` ("0 9 * * *"; a sixth field is seconds)
        in `timezone`. Exactly one run per tick, across engine restarts; `catch_up` says which
        ticks missed while the engine was down still fire ("latest", or "all")."""
        body = {
            **self._schedule_target(),
            "name": name,
            "expression": expression,
            "timezone": timezone,
            "input": self.encode_input(input),
            "metadata": metadata or {},
            "catch_up": CatchUp(catch_up).value,
        }
        data = await self.client.transport.request("POST", "/api/v1/crons", json_body=body)
        return CronView.model_validate(data)

    def create_cron(
        self,
        name: str,
        expression: str,
        *,
        input: Any = None,
        timezone: str = "UTC",
        metadata: dict[str, str] | None = None,
        catch_up: CatchUp | str = CatchUp.LATEST,
    ) -> CronView:
        return run_sync(
            self.aio_create_cron(
                name,
                expression,
                input=input,
                timezone=timezone,
                metadata=metadata,
                catch_up=catch_up,
            )
        )

    async def aio_schedule(
        self, at: datetime, *, input: Any = None, metadata: dict[str, str] | None = None
    ) -> ScheduleView:
        """Start one run at `at` (a naive datetime is UTC). A time already past is refused."""
        body = {
            **self._schedule_target(),
            "at": at.isoformat(),
            "input": self.encode_input(input),
            "metadata": metadata or {},
        }
        data = await self.client.transport.request("POST", "/api/v1/schedules", json_body=body)
        return ScheduleView.model_validate(data)

    def schedule(
        self, at: datetime, *, input: Any = None, metadata: dict[str, str] | None = None
    ) -> ScheduleView:
        return run_sync(self.aio_schedule(at, input=input, metadata=metadata))


class Crons:
    """`ty.crons`: list, read, pause, resume and delete crons; `aio_` variants of each."""

    def __init__(self, client: Taskyard) -> None:
        self._client = client

    async def aio_list(self) -> list[CronView]:
        data = await self._client.transport.request("GET", "/api/v1/crons")
        return CronList.model_validate(data).crons

    async def aio_get(self, cron_id: UUID | str) -> CronView:
        data = await self._client.transport.request("GET", f"/api/v1/crons/{cron_id}")
        return CronView.model_validate(data)

    async def aio_pause(self, cron_id: UUID | str) -> CronView:
        data = await self._client.transport.request("POST", f"/api/v1/crons/{cron_id}/pause")
        return CronView.model_validate(data)

    async def aio_trigger(self, cron_id: UUID | str) -> UUID:
        """Start a run of the cron now, outside its calendar; returns its run id."""
        data = await self._client.transport.request("POST", f"/api/v1/crons/{cron_id}/trigger")
        return FiredNow.model_validate(data).run_id

    async def aio_resume(self, cron_id: UUID | str) -> CronView:
        data = await self._client.transport.request("POST", f"/api/v1/crons/{cron_id}/resume")
        return CronView.model_validate(data)

    async def aio_delete(self, cron_id: UUID | str) -> None:
        await self._client.transport.request("DELETE", f"/api/v1/crons/{cron_id}")

    def list(self) -> list[CronView]:
        return run_sync(self.aio_list())

    def get(self, cron_id: UUID | str) -> CronView:
        return run_sync(self.aio_get(cron_id))

    def pause(self, cron_id: UUID | str) -> CronView:
        return run_sync(self.aio_pause(cron_id))

    def trigger(self, cron_id: UUID | str) -> UUID:
        return run_sync(self.aio_trigger(cron_id))

    def resume(self, cron_id: UUID | str) -> CronView:
        return run_sync(self.aio_resume(cron_id))

    def delete(self, cron_id: UUID | str) -> None:
        run_sync(self.aio_delete(cron_id))


class Schedules:
    """`ty.schedules`: list, read, reschedule and delete one-off schedules."""

    def __init__(self, client: Taskyard) -> None:
        self._client = client

    async def aio_list(self) -> list[ScheduleView]:
        data = await self._client.transport.request("GET", "/api/v1/schedules")
        return ScheduleList.model_validate(data).schedules

    async def aio_get(self, schedule_id: UUID | str) -> ScheduleView:
        data = await self._client.transport.request("GET", f"/api/v1/schedules/{schedule_id}")
        return ScheduleView.model_validate(data)

    async def aio_reschedule(self, schedule_id: UUID | str, at: datetime) -> ScheduleView:
        data = await self._client.transport.request(
            "PATCH", f"/api/v1/schedules/{schedule_id}", json_body={"at": at.isoformat()}
        )
        return ScheduleView.model_validate(data)

    async def aio_delete(self, schedule_id: UUID | str) -> None:
        await self._client.transport.request("DELETE", f"/api/v1/schedules/{schedule_id}")

    def list(self) -> list[ScheduleView]:
        return run_sync(self.aio_list())

    def get(self, schedule_id: UUID | str) -> ScheduleView:
        return run_sync(self.aio_get(schedule_id))

    def reschedule(self, schedule_id: UUID | str, at: datetime) -> ScheduleView:
        return run_sync(self.aio_reschedule(schedule_id, at))

    def delete(self, schedule_id: UUID | str) -> None:
        run_sync(self.aio_delete(schedule_id))
