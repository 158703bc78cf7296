"""The Alerter: failures of runs (after their last retry), matched against each tenant's alert
rules, windowed, and delivered through the alert channels plugins provide.

A window is per rule and subject (a workflow, or a task outside workflows): the first failure is
alerted at once and opens the window; failures inside it are folded; when it ends, one summary
alert says how many were folded (and that summary opens the next window). Alerts are
notifications, not records: a window's folded count lives in memory, and an engine restart
forgets it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskyard.actors.base import Actor
from taskyard.domain.notices import Alert, AlertChannel, RunEnded

if TYPE_CHECKING:
    from taskyard.actors.timers import Timers
    from taskyard.store.alerts import AlertRule, AlertRuleRepository

log = logging.getLogger(__name__)

WindowKey = tuple[uuid.UUID, str]  # (rule, subject)
DELIVERY_ATTEMPTS = 3


@dataclass(eq=False)
class Window:
    rule: AlertRule  # as it was when the window opened (rules may change meanwhile)
    until: float
    folded: int = 0
    last: RunEnded | None = None


class Alerter(Actor):
    def __init__(
        self,
        rules: AlertRuleRepository,
        timers: Timers,
        channels: Callable[[], dict[str, AlertChannel]],
        tenant_name: Callable[[uuid.UUID], Awaitable[str]],
        run_url: Callable[[uuid.UUID], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("alerter")
        self.repository = rules
        self.timers = timers
        self.channels = channels
        self.tenant_name = tenant_name
        self.run_url = run_url
        self.clock = clock
        self.rules: dict[uuid.UUID, list[AlertRule]] = {}
        self.names: dict[uuid.UUID, str] = {}
        self.windows: dict[WindowKey, Window] = {}
        self.delivered: Counter[str] = Counter()  # by channel
        self.failed_deliveries: Counter[str] = Counter()

    async def on_stop(self) -> None:
        await self.side_tasks.wait(timeout=5)  # deliveries under way get a moment to finish

    # -- messages --------------------------------------------------------------------------------

    def rules_changed(self, tenant_id: uuid.UUID) -> None:
        self.rules.pop(tenant_id, None)

    def runs_ended(self, tenant_id: uuid.UUID, runs: list[RunEnded]) -> None:
        failures = [run for run in runs if _event(run) is not None]
        if not failures:
            return
        if tenant_id not in self.rules:
            self.side_tasks.spawn(self._load(tenant_id, failures))
            return
        now = self.clock()
        for run in failures:
            self._consider(tenant_id, run, now)

    async def _load(self, tenant_id: uuid.UUID, failures: list[RunEnded]) -> None:
        try:
            rules = await self.repository.of_tenant(tenant_id)
            name = await self.tenant_name(tenant_id)
        except Exception:
            log.exception(
                "could not read the alert rules of tenant %s: %d failures not alerted",
                tenant_id,
                len(failures),
            )
            return
        self._post(self._loaded, tenant_id, rules, name, failures)

    def _loaded(
        self, tenant_id: uuid.UUID, rules: list[AlertRule], name: str, failures: list[RunEnded]
    ) -> None:
        self.rules.setdefault(tenant_id, rules)
        self.names[tenant_id] = name
        now = self.clock()
        for run in failures:
            self._consider(tenant_id, run, now)

    def _consider(self, tenant_id: uuid.UUID, run: RunEnded, now: float) -> None:
        event = _event(run)
        for rule in self.rules.get(tenant_id, []):
            if event not in rule.events or not _matches(rule, run):
                continue
            key = (rule.rule_id, _subject(run))
            window = self.windows.get(key)
            if window is not None and now < window.until:
                window.folded += 1
                window.last = run
                continue
            self.windows[key] = Window(rule, until=now + rule.window)
            self.timers.schedule(now + rule.window, self, self._windows_over, key)
            self._send(tenant_id, rule, run, folded=window.folded if window else 0, summary=False)

    def _windows_over(self, keys: list[WindowKey]) -> None:
        now = self.clock()
        for key in keys:
            window = self.windows.get(key)
            if window is None or now < window.until - 0.001:
                continue
            if window.folded == 0 or window.last is None:
                del self.windows[key]
                continue
            rule = window.rule
            self.windows[key] = Window(rule, until=now + rule.window)
            self.timers.schedule(now + rule.window, self, self._windows_over, key)
            self._send(rule.tenant_id, rule, window.last, folded=window.folded, summary=True)

    # -- delivery --------------------------------------------------------------------------------

    def _send(
        self, tenant_id: uuid.UUID, rule: AlertRule, run: RunEnded, *, folded: int, summary: bool
    ) -> None:
        alert = Alert(
            tenant_name=self.names.get(tenant_id, str(tenant_id)),
            rule_id=rule.rule_id,
            subject=_subject(run),
            workflow=run.workflow,
            task=_task_name(run),
            run_id=run.workflow_run_id or run.run_id,
            attempt=run.attempt,
            status=run.status,
            error_type=run.error_type,
            error_message=run.error_message,
            url=self.run_url(run.workflow_run_id or run.run_id),
            folded=folded,
            summary=summary,
        )
        channel = self.channels().get(rule.channel)
        if channel is None:
            log.error(
                "alert rule %s names channel %r, which no loaded plugin provides",
                rule.rule_id,
                rule.channel,
            )
            return
        self.side_tasks.spawn(self._deliver(channel, alert, rule.target))

    async def _deliver(
        self, channel: AlertChannel, alert: Alert, target: dict[str, object]
    ) -> None:
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            try:
                await channel.send(alert, dict(target))
            except Exception:
                log.exception(
                    "alert channel %r failed to deliver (attempt %d of %d)",
                    channel.name,
                    attempt,
                    DELIVERY_ATTEMPTS,
                )
                if attempt < DELIVERY_ATTEMPTS:
                    await asyncio.sleep(0.5 * 2**attempt)
                continue
            self.delivered[channel.name] += 1
            return
        self.failed_deliveries[channel.name] += 1


def _event(run: RunEnded) -> str | None:
    """Which alert event a run's end is, if any (a failed workflow run is alerted through the
    step that failed)."""
    if run.kind != "task":
        return None
    if run.status == "timed_out" and run.error_type == "ScheduleTimeout":
        return "schedule_timeout"
    if run.status in ("failed", "timed_out"):
        return "failed"
    return None


def _matches(rule: AlertRule, run: RunEnded) -> bool:
    if rule.workflows is not None and run.workflow not in rule.workflows:
        return False
    return rule.tasks is None or _task_name(run) in rule.tasks


def _task_name(run: RunEnded) -> str:
    """A step's name without its workflow's prefix; a task's name as it is."""
    if run.workflow is not None and run.task.startswith(f"{run.workflow}:"):
        return run.task[len(run.workflow) + 1 :]
    return run.task


def _subject(run: RunEnded) -> str:
    return f"workflow {run.workflow!r}" if run.workflow else f"task {run.task!r}"
