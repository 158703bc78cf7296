"""`ty.pauses`: pause and resume a queue, a task, a workflow or a worker during an incident or
a deploy, and list what is paused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict, Unpack
from urllib.parse import quote
from uuid import UUID

from taskyard_sdk._transport import run_sync
from taskyard_sdk.models import PauseKind, PauseList, PauseView

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard
    from taskyard_sdk._task import Task
    from taskyard_sdk._worker import Worker
    from taskyard_sdk._workflow import Workflow

_PATHS = {
    PauseKind.QUEUE: "queues",
    PauseKind.TASK: "tasks",
    PauseKind.WORKFLOW: "workflows",
    PauseKind.WORKER: "workers",
}


class PauseTarget(TypedDict, total=False):
    """What to pause or resume: exactly one of them."""

    queue: str
    task: Task[Any, Any] | str
    workflow: Workflow[Any] | str  # all its steps
    worker: Worker | UUID | str  # a connected one


class Pauses:
    """Paused means nothing new of it is assigned: running attempts finish, triggers are still
    accepted and wait (their waiting reason says "paused: ..."). Pauses survive restarts of
    the engine. Name exactly one of `queue`, `task`, `workflow` (all its steps) or `worker`
    (a connected one); a Task, Workflow or Worker object stands for its name or id."""

    def __init__(self, client: Taskyard) -> None:
        self._client = client

    async def aio_pause(
        self, *, reason: str | None = None, **target: Unpack[PauseTarget]
    ) -> PauseView:
        params = [("reason", reason)] if reason is not None else None
        path = f"{_path(target)}/pause"
        data = await self._client.transport.request("POST", path, params=params)
        return PauseView.model_validate(data)

    async def aio_resume(self, **target: Unpack[PauseTarget]) -> PauseView:
        data = await self._client.transport.request("POST", f"{_path(target)}/resume")
        return PauseView.model_validate(data)

    async def aio_list(self) -> list[PauseView]:
        data = await self._client.transport.request("GET", "/api/v1/pauses")
        return PauseList.model_validate(data).paused

    def pause(self, *, reason: str | None = None, **target: Unpack[PauseTarget]) -> PauseView:
        return run_sync(self.aio_pause(reason=reason, **target))

    def resume(self, **target: Unpack[PauseTarget]) -> PauseView:
        return run_sync(self.aio_resume(**target))

    def list(self) -> list[PauseView]:
        return run_sync(self.aio_list())


def _path(target: PauseTarget) -> str:
    unknown = set(target) - {kind.value for kind in PauseKind}
    if unknown:
        raise TypeError(f"pause targets are queue=, task=, workflow= or worker=, not {unknown}")
    given = {PauseKind(kind): value for kind, value in target.items() if value is not None}
    if len(given) != 1:
        raise TypeError("name exactly one of queue=, task=, workflow= or worker=")
    [(kind, value)] = given.items()
    if kind is PauseKind.WORKER:
        name = str(getattr(value, "worker_id", value))
    else:
        name = str(getattr(value, "name", value))
    return f"/api/v1/{_PATHS[kind]}/{quote(name, safe='')}"
