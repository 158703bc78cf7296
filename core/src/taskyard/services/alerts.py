"""Alert rules: which failures a tenant hears about, through which channel, how often. Stored in
Postgres, then told to the alerter, which reloads the tenant's rules."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from taskyard.actors.alerter import Alerter
from taskyard.domain.notices import AlertChannel
from taskyard.errors import NotFound, Unprocessable
from taskyard.store.alerts import AlertRule, AlertRuleRepository
from taskyard_sdk.models import AlertRuleRequest, AlertRuleView


class AlertRules:
    def __init__(
        self,
        repository: AlertRuleRepository,
        alerter: Alerter,
        channels: Callable[[], dict[str, AlertChannel]],
    ) -> None:
        self.repository = repository
        self.alerter = alerter
        self.channels = channels  # the loaded plugins' channels, by name

    async def create(self, tenant_id: uuid.UUID, request: AlertRuleRequest) -> AlertRuleView:
        self._check(request)
        rule = await self.repository.create(tenant_id, request)
        self.alerter.tell(self.alerter.rules_changed, tenant_id)
        return _view(rule)

    async def replace(
        self, tenant_id: uuid.UUID, rule_id: uuid.UUID, request: AlertRuleRequest
    ) -> AlertRuleView:
        """Edit a rule: it says `request` from now on (the alerter reads the rules again)."""
        self._check(request)
        rule = await self.repository.replace(tenant_id, rule_id, request)
        if rule is None:
            raise NotFound(f"no alert rule {rule_id} in this tenant")
        self.alerter.tell(self.alerter.rules_changed, tenant_id)
        return _view(rule)

    def channel_names(self) -> list[str]:
        return sorted(self.channels())

    def _check(self, request: AlertRuleRequest) -> None:
        """A loaded channel, and a target it can send to."""
        channels = self.channels()
        channel = channels.get(request.channel)
        if channel is None:
            loaded = ", ".join(sorted(channels)) or (
                "none (start the engine with --plugin email or --plugin slack)"
            )
            raise Unprocessable(
                f"body.channel: no alert channel {request.channel!r}; loaded channels: {loaded}"
            )
        try:
            channel.check_target(request.target)
        except ValueError as exc:
            raise Unprocessable(f"body.target: {exc}") from None

    async def list(self, tenant_id: uuid.UUID) -> list[AlertRuleView]:
        return [_view(rule) for rule in await self.repository.of_tenant(tenant_id)]

    async def delete(self, tenant_id: uuid.UUID, rule_id: uuid.UUID) -> None:
        if not await self.repository.delete(tenant_id, rule_id):
            raise NotFound(f"no alert rule {rule_id} in this tenant")
        self.alerter.tell(self.alerter.rules_changed, tenant_id)


def _view(rule: AlertRule) -> AlertRuleView:
    return AlertRuleView(
        rule_id=rule.rule_id,
        channel=rule.channel,
        target=rule.target,
        workflows=rule.workflows,
        tasks=rule.tasks,
        events=rule.events,
        window=rule.window,
        created_at=rule.created_at,
    )
