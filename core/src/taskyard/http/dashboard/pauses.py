"""Pause and resume buttons of the queues, workers and tasks pages: one form action for all."""

from __future__ import annotations

from aiohttp import web

from taskyard.domain.auth import Principal
from taskyard.http.dashboard.page import ROOT, page
from taskyard.http.keys import ENGINE
from taskyard_sdk.models import PauseKind

_BACK = {  # the page a button sits on, to go back to
    PauseKind.QUEUE: "queues",
    PauseKind.TASK: "tasks",
    PauseKind.WORKFLOW: "tasks",
    PauseKind.WORKER: "workers",
}


def add_routes(routes: web.UrlDispatcher) -> None:
    kinds = "|".join(kind.value for kind in PauseKind)
    routes.add_post(
        f"{ROOT}/{{kind:{kinds}}}/{{name}}/{{action:pause|resume}}", page(_act, changes=True)
    )


async def _act(request: web.Request, principal: Principal) -> web.StreamResponse:
    kind = PauseKind(request.match_info["kind"])  # the route admits only these
    name = request.match_info["name"]
    pausing = request.app[ENGINE].services.pausing
    if request.match_info["action"] == "pause":
        await pausing.pause(principal.tenant_id, kind, name, None)
    else:
        await pausing.resume(principal.tenant_id, kind, name)
    raise web.HTTPSeeOther(f"{ROOT}/{_BACK[kind]}")
