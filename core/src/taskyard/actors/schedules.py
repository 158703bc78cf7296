"""The ScheduleActor: one per engine. It owns the crons and one-off schedules that may still fire
of the tenants this node owns, arms a timer for each one's next tick, and fires it by triggering
a run.

Exactly once per tick: the run a tick starts carries an idempotency key made of the schedule and
the tick, so firing a tick twice (a retry, or a restart before `last_tick` was written) returns
the run the first fire made. At start, the ticks missed while the engine was down are fired by the
cron's catch-up policy: the latest one (default), or all of them (at most 100). A cron updated
through the API (created, resumed) starts from now: paused time is skipped, not caught up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from taskyard.actors.base import Actor
from taskyard.domain.cron import MAX_CATCH_UP, CronError, next_tick, ticks_between
from taskyard.errors import ApiError

if TYPE_CHECKING:
    from taskyard.actors.timers import Timers
    from taskyard.store.schedules import Schedule, ScheduleRepository

log = logging.getLogger(__name__)

Fire = Callable[["Schedule", float], Awaitable[uuid.UUID]]  # (schedule, tick) -> the run


class ScheduleActor(Actor):
    def __init__(
        self,
        repository: ScheduleRepository,
        timers: Timers,
        fire: Fire,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("schedules")
        self.repository = repository
        self.timers = timers
        self.fire = fire
        self.clock = clock
        self.tenants: set[uuid.UUID] = set()  # whose schedules this node fires (see adopt)
        self._reset()

    def _reset(self) -> None:
        self.schedules: dict[uuid.UUID, Schedule] = {}
        self.armed: dict[uuid.UUID, float] = {}  # schedule -> the tick its timer is for

    async def on_start(self) -> None:
        self._reset()
        if self.tenants:
            self._load(await self.repository.active(list(self.tenants)))

    def _load(self, schedules: list[Schedule]) -> None:
        now = self.clock()
        for schedule in schedules:
            self._take_safely(schedule, now, catching_up=True)

    async def adopt(self, tenant_id: uuid.UUID) -> None:
        """This node now owns the tenant: arm its schedules, firing the ticks missed while
        nobody owned it by their catch-up policy (a tick fired twice finds its run)."""
        self.tenants.add(tenant_id)
        self._load(await self.repository.active([tenant_id]))

    def release(self, tenant_id: uuid.UUID) -> None:
        self.tenants.discard(tenant_id)
        self.removed(
            [key for key, schedule in self.schedules.items() if schedule.tenant_id == tenant_id]
        )

    async def on_failure(self, error: BaseException) -> None:
        self._reset()

    # -- messages --------------------------------------------------------------------------------

    def updated(self, schedules: list[Schedule]) -> None:
        """Schedules created or changed through the API (or by code registration)."""
        now = self.clock()
        for schedule in schedules:
            self.schedules.pop(schedule.schedule_id, None)
            self.armed.pop(schedule.schedule_id, None)
            if schedule.paused or (schedule.kind == "once" and schedule.run_id is not None):
                continue
            self._take_safely(schedule, now, catching_up=False)

    def removed(self, schedule_ids: list[uuid.UUID]) -> None:
        for schedule_id in schedule_ids:
            self.schedules.pop(schedule_id, None)
            self.armed.pop(schedule_id, None)

    def code_crons_synced(
        self, tenant_id: uuid.UUID, task: str | None, workflow: str | None, crons: list[Schedule]
    ) -> None:
        """The crons a task or workflow declares in code, as stored now: those it no longer
        declares are dropped, the others (re)armed."""
        known = {cron.schedule_id for cron in crons}
        self.removed(
            [
                schedule_id
                for schedule_id, cron in self.schedules.items()
                if cron.tenant_id == tenant_id
                and cron.declared_in_code
                and cron.task == task
                and cron.workflow == workflow
                and schedule_id not in known
            ]
        )
        self.updated(crons)

    def next_fire(self, schedule_id: uuid.UUID) -> float | None:
        return self.armed.get(schedule_id)

    # -- ticks -----------------------------------------------------------------------------------

    def _take_safely(self, schedule: Schedule, now: float, *, catching_up: bool) -> None:
        """One schedule that cannot be armed (a cron that can no longer fire, a time zone
        gone from the system) is logged and left out; the others go on."""
        try:
            self._take(schedule, now, catching_up=catching_up)
        except CronError as exc:
            self.schedules.pop(schedule.schedule_id, None)
            log.error(
                "%s %s of %s is left out: %s",
                schedule.kind,
                schedule.schedule_id,
                schedule.target,
                exc,
            )

    def _take(self, schedule: Schedule, now: float, *, catching_up: bool) -> None:
        self.schedules[schedule.schedule_id] = schedule
        if schedule.kind == "once":
            assert schedule.at is not None
            self._arm(schedule.schedule_id, schedule.at)  # one whose time passed fires now
            return
        assert schedule.expression is not None
        assert schedule.timezone is not None
        since = schedule.last_tick or schedule.created_at
        if catching_up:
            limit = MAX_CATCH_UP if schedule.catch_up == "all" else 1
            missed = ticks_between(schedule.expression, schedule.timezone, since, now, limit)
            for tick in missed:
                self._fire(schedule, tick)
            since = missed[-1] if missed else since
        self._arm(
            schedule.schedule_id, next_tick(schedule.expression, schedule.timezone, max(since, now))
        )

    def _arm(self, schedule_id: uuid.UUID, at: float) -> None:
        self.armed[schedule_id] = at
        self.timers.schedule(at, self, self._due, (schedule_id, at))

    def _due(self, items: list[tuple[uuid.UUID, float]]) -> None:
        for schedule_id, tick in items:
            if self.armed.get(schedule_id) != tick:
                continue  # removed, paused or re-armed since
            schedule = self.schedules[schedule_id]
            self._fire(schedule, tick)
            if schedule.kind == "once":
                del self.armed[schedule_id]
                del self.schedules[schedule_id]
            else:
                assert schedule.expression is not None
                assert schedule.timezone is not None
                try:
                    self._arm(schedule_id, next_tick(schedule.expression, schedule.timezone, tick))
                except CronError as exc:
                    del self.schedules[schedule_id]
                    del self.armed[schedule_id]
                    log.error("cron %s of %s fires no more: %s", schedule_id, schedule.target, exc)

    def _fire(self, schedule: Schedule, tick: float, attempt: int = 1) -> None:
        self.side_tasks.spawn(
            self._fire_now(schedule, tick, attempt), name=f"fire:{schedule.schedule_id}"
        )

    async def _fire_now(self, schedule: Schedule, tick: float, attempt: int) -> None:
        """Outside the mailbox: trigger the run (committed when this returns), then note the
        tick. A failure to reach the database is tried again; a refusal is logged."""
        try:
            run_id = await self.fire(schedule, tick)
            await self.repository.fired(schedule.tenant_id, schedule.schedule_id, tick, run_id)
        except ApiError as refusal:
            log.error(
                "%s of %s could not start a run at tick %.3f: %s",
                schedule.kind,
                schedule.target,
                tick,
                refusal.message,
            )
        except Exception as exc:
            delay = min(30.0, 0.5 * 2**attempt)
            log.warning(
                "%s of %s: firing tick %.3f failed (%s); trying again in %.1fs",
                schedule.kind,
                schedule.target,
                tick,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            self._post(self._fire, schedule, tick, attempt + 1)
