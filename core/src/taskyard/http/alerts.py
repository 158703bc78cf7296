"""Alert rules: which failures the tenant hears about, through which channel, how often."""

from __future__ import annotations

from typing import Any

from taskyard.domain.auth import Role
from taskyard.errors import NotFound, Unprocessable
from taskyard.http.keys import ENGINE
from taskyard.http.routing import Call, Router
from taskyard.store.alerts import AlertRule, AlertRuleRepository
from taskyard_sdk.models import AlertRuleList, AlertRuleRequest, AlertRuleView

router = Router(tags=("alerts",))
ANY_ROLE = list(Role)
MANAGERS = [Role.ADMIN, Role.CLIENT]  # not workers: rules say where alerts (and data) go


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


def _repository(call: Call[Any]) -> AlertRuleRepository:
    return AlertRuleRepository(call.request.app[ENGINE].pool)


@router.post(
    "/api/v1/alert-rules", roles=MANAGERS, body=AlertRuleRequest, response=AlertRuleView, status=201
)
async def create_alert_rule(call: Call[AlertRuleRequest]) -> AlertRuleView:
    """Alert `channel` (a loaded plugin's: email, slack, ...) at `target` when a run of the
    chosen workflows or tasks fails after its last retry (and, with `schedule_timeout` in
    `events`, when one waits past its schedule_timeout). At most one alert per workflow (or
    task) per `window` seconds; the failures folded in are counted in the next one."""
    engine = call.request.app[ENGINE]
    channel = engine.alert_channels.get(call.body.channel)
    if channel is None:
        loaded = ", ".join(sorted(engine.alert_channels)) or (
            "none (start the engine with --plugin email or --plugin slack)"
        )
        raise Unprocessable(
            f"body.channel: no alert channel {call.body.channel!r}; loaded channels: {loaded}"
        )
    try:
        channel.check_target(call.body.target)
    except ValueError as exc:
        raise Unprocessable(f"body.target: {exc}") from None
    rule = await _repository(call).create(call.principal.tenant_id, call.body)
    engine.alerter.tell(engine.alerter.rules_changed, call.principal.tenant_id)
    return _view(rule)


@router.get("/api/v1/alert-rules", roles=ANY_ROLE, response=AlertRuleList)
async def list_alert_rules(call: Call[None]) -> AlertRuleList:
    rules = await _repository(call).of_tenant(call.principal.tenant_id)
    return AlertRuleList(rules=[_view(rule) for rule in rules])


@router.delete("/api/v1/alert-rules/{rule_id}", roles=MANAGERS, status=204)
async def delete_alert_rule(call: Call[None]) -> None:
    rule_id = call.path_uuid("rule_id")
    if not await _repository(call).delete(call.principal.tenant_id, rule_id):
        raise NotFound(f"no alert rule {rule_id} in this tenant")
    engine = call.request.app[ENGINE]
    engine.alerter.tell(engine.alerter.rules_changed, call.principal.tenant_id)
