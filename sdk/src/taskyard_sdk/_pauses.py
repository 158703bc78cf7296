"""`ty.pauses`: pause and resume a queue, a task, a workflow or a worker during an incident or
a deploy, and list what is paused."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
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


class Pauses:
    """Paused means nothing new of it is assigned: running attempts finish, triggers are still
    accepted and wait (their waiting reason says "paused: ..."). Pauses survive restarts of
    the engine. Name exactly one of `queue`, `task`, `workflow` (all its steps) or `worker`
    (a connected one); a Task, Workflow or Worker object stands for its name or id."""

    def __init__(self, client: Taskyard) -> None:
        self._client = client

    async def aio_pause(
        self,
        *,
        queue: str | None = None,
        task: Task[Any, Any] | str | None = None,
        workflow: Workflow[Any] | str | None = None,
        worker: Worker | UUID | str | None = None,
        reason: str | None = None,
    ) -> PauseView:
        path = _path(queue, task, workflow, worker)
        params = [("reason", reason)] if reason is not None else None
        data = await self._client.transport.request("POST", f"{path}/pause", params=params)
        return PauseView.model_validate(data)

    async def aio_resume(
        self,
        *,
        queue: str | None = None,
        task: Task[Any, Any] | str | None = None,
        workflow: Workflow[Any] | str | None = None,
        worker: Worker | UUID | str | None = None,
    ) -> PauseView:
        path = _path(queue, task, workflow, worker)
        data = await self._client.transport.request("POST", f"{path}/resume")
        return PauseView.model_validate(data)

    async def aio_list(self) -> list[PauseView]:
        data = await self._client.transport.request("GET", "/api/v1/pauses")
        return PauseList.model_validate(data).paused

    def pause(
        self,
        *,
        queue: str | None = None,
        task: Task[Any, Any] | str | None = None,
        workflow: Workflow[Any] | str | None = None,
        worker: Worker | UUID | str | None = None,
        reason: str | None = None,
    ) -> PauseView:
        return run_sync(
            self.aio_pause(queue=queue, task=task, workflow=workflow, worker=worker, reason=reason)
        )

    def resume(
        self,
        *,
        queue: str | None = None,
        task: Task[Any, Any] | str | None = None,
        workflow: Workflow[Any] | str | None = None,
        worker: Worker | UUID | str | None = None,
    ) -> PauseView:
        return run_sync(self.aio_resume(queue=queue, task=task, workflow=workflow, worker=worker))

    def list(self) -> list[PauseView]:
        return run_sync(self.aio_list())


def _path(queue: object, task: object, workflow: object, worker: object) -> str:
    given = {
        kind: value
        for kind, value in (
            (PauseKind.QUEUE, queue),
            (PauseKind.TASK, task),
            (PauseKind.WORKFLOW, workflow),
            (PauseKind.WORKER, worker),
        )
        if value is not None
    }
    if len(given) != 1:
        raise TypeError("name exactly one of queue=, task=, workflow= or worker=")
    [(kind, value)] = given.items()
    if kind is PauseKind.WORKER:
        name = str(getattr(value, "worker_id", value))
    else:
        name = str(getattr(value, "name", value))
    return f"/api/v1/{_PATHS[kind]}/{quote(name, safe='')}"
