"""The crons and schedules page: next fire and last runs; pause, resume, trigger now, delete."""

from __future__ import annotations

from aiohttp import web

from taskyard.domain.auth import Principal
from taskyard.errors import NotFound
from taskyard.http.dashboard.page import ROOT, page, path_id, render
from taskyard.http.keys import ENGINE


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/schedules", page(_schedules))
    routes.add_post(f"{ROOT}/crons/{{cron_id}}/{{action}}", page(_cron_action, changes=True))
    routes.add_post(f"{ROOT}/schedules/{{schedule_id}}/delete", page(_drop_once, changes=True))


async def _schedules(request: web.Request, principal: Principal) -> web.StreamResponse:
    scheduling = request.app[ENGINE].services.scheduling
    crons = await scheduling.crons(principal.tenant_id)
    once = await scheduling.one_offs(principal.tenant_id)
    return render(request, "schedules.html", crons=crons, once=once)


async def _cron_action(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Pause, resume, trigger now (then show the run) or delete a cron."""
    cron_id = path_id(request, "cron_id")
    action = request.match_info["action"]
    services = request.app[ENGINE].services
    if action in ("pause", "resume"):
        await services.scheduling.set_paused(principal.tenant_id, cron_id, action == "pause")
    elif action == "trigger":
        run_id = await services.scheduling.fire_now(
            principal.tenant_id, cron_id, services.runs, services.workflows
        )
        raise web.HTTPSeeOther(f"{ROOT}/runs/{run_id}")
    elif action == "delete":
        await services.scheduling.delete(principal.tenant_id, cron_id, "cron")
    else:
        raise NotFound(f"a cron has no action {action!r}")
    raise web.HTTPSeeOther(f"{ROOT}/schedules")


async def _drop_once(request: web.Request, principal: Principal) -> web.StreamResponse:
    schedule_id = path_id(request, "schedule_id")
    await request.app[ENGINE].services.scheduling.delete(principal.tenant_id, schedule_id, "once")
    raise web.HTTPSeeOther(f"{ROOT}/schedules")
