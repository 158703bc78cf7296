"""Alert rules: which failures the tenant hears about, through which channel, how often."""

from __future__ import annotations

from typing import Any

from taskyard.domain.auth import READERS, Role
from taskyard.http.keys import ENGINE
from taskyard.http.routing import Call, Router
from taskyard.services.alerts import AlertRules
from taskyard_sdk.models import AlertRuleList, AlertRuleRequest, AlertRuleView

router = Router(tags=("alerts",))
MANAGERS = [Role.ADMIN, Role.CLIENT]  # not workers: rules say where alerts (and data) go


def _rules(call: Call[Any]) -> AlertRules:
    return call.request.app[ENGINE].services.alert_rules


@router.post(
    "/api/v1/alert-rules", roles=MANAGERS, body=AlertRuleRequest, response=AlertRuleView, status=201
)
async def create_alert_rule(call: Call[AlertRuleRequest]) -> AlertRuleView:
    """Alert `channel` (a loaded plugin's: email, slack, ...) at `target` when a run of the
    chosen workflows or tasks fails after its last retry (and, with `schedule_timeout` in
    `events`, when one waits past its schedule_timeout). At most one alert per workflow (or
    task) per `window` seconds; the failures folded in are counted in the next one."""
    return await _rules(call).create(call.principal.tenant_id, call.body)


@router.get("/api/v1/alert-rules", roles=READERS, response=AlertRuleList)
async def list_alert_rules(call: Call[None]) -> AlertRuleList:
    return AlertRuleList(rules=await _rules(call).list(call.principal.tenant_id))


@router.put(
    "/api/v1/alert-rules/{rule_id}", roles=MANAGERS, body=AlertRuleRequest, response=AlertRuleView
)
async def replace_alert_rule(call: Call[AlertRuleRequest]) -> AlertRuleView:
    """Edit a rule: the whole rule, as when it was created."""
    return await _rules(call).replace(
        call.principal.tenant_id, call.path_uuid("rule_id"), call.body
    )


@router.delete("/api/v1/alert-rules/{rule_id}", roles=MANAGERS, status=204)
async def delete_alert_rule(call: Call[None]) -> None:
    await _rules(call).delete(call.principal.tenant_id, call.path_uuid("rule_id"))
