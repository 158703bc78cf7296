"""What is paused in a tenant, as the queue actors apply it: nothing new of a paused queue,
task, workflow (its steps) or worker is assigned; running attempts finish; triggers are still
accepted and wait, their waiting reason saying what is paused."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from taskyard_sdk.models import PauseKind


@dataclass(frozen=True, slots=True)
class Pauses:
    queues: frozenset[str] = frozenset()
    tasks: frozenset[str] = frozenset()
    workflows: frozenset[str] = frozenset()
    workers: frozenset[uuid.UUID] = frozenset()

    @classmethod
    def of(cls, paused: Iterable[tuple[PauseKind, str]]) -> Pauses:
        named: dict[PauseKind, set[str]] = {kind: set() for kind in PauseKind}
        for kind, name in paused:
            named[kind].add(name)
        return cls(
            frozenset(named[PauseKind.QUEUE]),
            frozenset(named[PauseKind.TASK]),
            frozenset(named[PauseKind.WORKFLOW]),
            frozenset(uuid.UUID(name) for name in named[PauseKind.WORKER]),
        )

    def of_task(self, task: str) -> str | None:
        """Why runs of `task` are not assigned, if the task or its workflow is paused."""
        if task in self.tasks:
            return f"paused: task {task!r} is paused"
        workflow, colon, _ = task.partition(":")  # a step's task: "workflow:step"
        if colon and workflow in self.workflows:
            return f"paused: workflow {workflow!r} is paused"
        return None
