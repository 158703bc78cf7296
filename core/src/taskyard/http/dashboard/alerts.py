"""The alert rules page: the tenant's rules, and forms to create, edit and delete them (for the
roles that manage rules over REST: admin and client)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping
from pydantic import ValidationError

from taskyard.domain.auth import Principal
from taskyard.errors import Forbidden, NotFound, Unprocessable
from taskyard.http.alerts import MANAGERS
from taskyard.http.dashboard.page import ROOT, page, path_id, render
from taskyard.http.keys import ENGINE
from taskyard_sdk.models import AlertRuleRequest, AlertRuleView


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/alerts", page(_rules))
    routes.add_post(f"{ROOT}/alerts", page(_create, changes=True))
    routes.add_get(f"{ROOT}/alerts/{{rule_id}}", page(_rule))
    routes.add_post(f"{ROOT}/alerts/{{rule_id}}", page(_replace, changes=True))
    routes.add_post(f"{ROOT}/alerts/{{rule_id}}/delete", page(_delete, changes=True))


async def _rules(request: web.Request, principal: Principal) -> web.StreamResponse:
    return await _rules_page(request, principal)


async def _rules_page(
    request: web.Request,
    principal: Principal,
    *,
    form: dict[str, Any] | None = None,
    problem: str | None = None,
) -> web.Response:
    """The rules and the new rule's form; with the form sent and what was wrong, a 422."""
    rules = request.app[ENGINE].services.alert_rules
    return render(
        request,
        "alerts.html",
        status=200 if problem is None else 422,
        rules=await rules.list(principal.tenant_id),
        channels=rules.channel_names(),
        manages=principal.role in MANAGERS,
        form=form or _filled(None),
        problem=problem,
    )


async def _rule(request: web.Request, principal: Principal) -> web.StreamResponse:
    rule = await _find(request, principal)
    return _rule_page(request, principal, rule, _filled(rule), None)


def _rule_page(
    request: web.Request,
    principal: Principal,
    rule: AlertRuleView,
    form: dict[str, Any],
    problem: str | None,
) -> web.Response:
    return render(
        request,
        "alert.html",
        status=200 if problem is None else 422,
        rule=rule,
        channels=request.app[ENGINE].services.alert_rules.channel_names(),
        manages=principal.role in MANAGERS,
        form=form,
        problem=problem,
    )


async def _create(request: web.Request, principal: Principal) -> web.StreamResponse:
    _manager(principal)
    form = await request.post()
    try:
        await request.app[ENGINE].services.alert_rules.create(principal.tenant_id, _request(form))
    except Unprocessable as exc:
        return await _rules_page(request, principal, form=_sent(form), problem=_plain(exc))
    raise web.HTTPSeeOther(f"{ROOT}/alerts")


async def _replace(request: web.Request, principal: Principal) -> web.StreamResponse:
    _manager(principal)
    rule = await _find(request, principal)
    form = await request.post()
    try:
        await request.app[ENGINE].services.alert_rules.replace(
            principal.tenant_id, rule.rule_id, _request(form)
        )
    except Unprocessable as exc:
        return _rule_page(request, principal, rule, _sent(form), _plain(exc))
    raise web.HTTPSeeOther(f"{ROOT}/alerts")


async def _delete(request: web.Request, principal: Principal) -> web.StreamResponse:
    _manager(principal)
    rule_id = path_id(request, "rule_id")
    await request.app[ENGINE].services.alert_rules.delete(principal.tenant_id, rule_id)
    raise web.HTTPSeeOther(f"{ROOT}/alerts")


def _manager(principal: Principal) -> None:
    if principal.role not in MANAGERS:
        raise Forbidden(
            f"alert rules are managed with an admin or client token, not a {principal.role}"
        )


async def _find(request: web.Request, principal: Principal) -> AlertRuleView:
    rule_id = path_id(request, "rule_id")
    rules = await request.app[ENGINE].services.alert_rules.list(principal.tenant_id)
    found = next((rule for rule in rules if rule.rule_id == rule_id), None)
    if found is None:
        raise NotFound(f"no alert rule {rule_id} in this tenant")
    return found


def _filled(rule: AlertRuleView | None) -> dict[str, Any]:
    """The form's fields for a rule (the defaults for a new one)."""
    if rule is None:
        return {
            "channel": "",
            "target": "{}",
            "workflows": "",
            "tasks": "",
            "window": "5m",
            "events": ["failed"],
        }
    return {
        "channel": rule.channel,
        "target": orjson.dumps(rule.target).decode(),
        "workflows": ", ".join(rule.workflows or []),
        "tasks": ", ".join(rule.tasks or []),
        "window": f"{rule.window:g}s",
        "events": list(rule.events),
    }


def _sent(form: MultiMapping[Any]) -> dict[str, Any]:
    """A refused form's fields, to show it again as it was sent."""
    fields: dict[str, Any] = {name: str(form.get(name, "")) for name in _filled(None)}
    fields["events"] = [str(event) for event in form.getall("events", [])]
    return fields


def _request(form: MultiMapping[Any]) -> AlertRuleRequest:
    """The rule a form says: its target is JSON, its lists are separated by commas."""
    try:
        target = orjson.loads(str(form.get("target", "")).strip() or "{}")
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"target: not JSON: {exc}") from None
    try:
        return AlertRuleRequest.model_validate(
            {
                "channel": str(form.get("channel", "")),
                "target": target,
                "workflows": _names(str(form.get("workflows", ""))),
                "tasks": _names(str(form.get("tasks", ""))),
                "events": [str(event) for event in form.getall("events", [])],
                "window": str(form.get("window", "")).strip() or "5m",
            }
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the rule"
        raise Unprocessable(f"{where}: {first['msg']}") from None


def _names(text: str) -> list[str] | None:
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


def _plain(exc: Unprocessable) -> str:
    """The service's refusal, which names REST's body fields, as the form names them."""
    return str(exc).removeprefix("body.")
