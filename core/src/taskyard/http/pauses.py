"""Pause and resume a queue, a task, a workflow or a worker; list what is paused."""

from __future__ import annotations

from pydantic import BaseModel, Field

from taskyard.domain.auth import READERS, WRITERS
from taskyard.http.keys import ENGINE
from taskyard.http.routing import Call, Router
from taskyard_sdk.models import NAME_PATTERN, PauseKind, PauseList, PauseView

router = Router(tags=("pauses",))
NAME = {"name": NAME_PATTERN}  # the router refuses other names (422)
_PATHS = {
    PauseKind.QUEUE: "/api/v1/queues/{name}",
    PauseKind.TASK: "/api/v1/tasks/{name}",
    PauseKind.WORKFLOW: "/api/v1/workflows/{name}",
    PauseKind.WORKER: "/api/v1/workers/{worker_id}",
}


class PauseQuery(BaseModel):
    reason: str | None = Field(
        default=None, max_length=200, description="Why, for whoever looks later."
    )


def _target(call: Call[None], kind: PauseKind) -> str:
    if kind is PauseKind.WORKER:
        return str(call.path_uuid("worker_id"))
    return call.path["name"]


def _routes(kind: PauseKind) -> None:
    path = _PATHS[kind]
    params = None if kind is PauseKind.WORKER else NAME
    what = "worker" if kind is PauseKind.WORKER else kind.value

    async def pause(call: Call[None]) -> PauseView:
        engine = call.request.app[ENGINE]
        return await engine.services.pausing.pause(
            call.principal.tenant_id, kind, _target(call, kind), call.query.reason
        )

    async def resume(call: Call[None]) -> PauseView:
        engine = call.request.app[ENGINE]
        return await engine.services.pausing.resume(
            call.principal.tenant_id, kind, _target(call, kind)
        )

    pause.__doc__ = (
        f"Pause the {what}: nothing new of it is assigned; running attempts finish; triggers "
        f'are still accepted and wait, with the waiting reason "paused: ...". Survives '
        f"restarts. Pausing again keeps the first time (and takes a new reason)."
    )
    resume.__doc__ = f"Resume the {what}: what waited for it may start at once."
    router.post(
        f"{path}/pause", roles=WRITERS, query=PauseQuery, response=PauseView, params=params
    )(pause)
    router.post(f"{path}/resume", roles=WRITERS, response=PauseView, params=params)(resume)


for _kind in PauseKind:
    _routes(_kind)


@router.get("/api/v1/pauses", roles=READERS, response=PauseList)
async def list_pauses(call: Call[None]) -> PauseList:
    """Everything paused in the tenant, with when and why."""
    engine = call.request.app[ENGINE]
    return PauseList(paused=await engine.services.pausing.paused(call.principal.tenant_id))
