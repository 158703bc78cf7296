"""What the engine tells plugins, made by the actors: a run that ended, a run that changed, an
alert and the channel protocol that delivers it. Plugins import these from `taskyard.plugins`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class RunEnded:
    """A run that reached its final state (after its last retry): a task's run, a workflow's
    step, or a whole workflow run."""

    tenant_id: uuid.UUID
    run_id: uuid.UUID
    kind: str  # "task" (a task's run or a workflow's step) or "workflow" (a whole run)
    task: str  # the task; for a step "<workflow>:<step>"; for a workflow run its name
    workflow: str | None  # the workflow of a step or of a workflow run
    workflow_run_id: uuid.UUID | None
    status: str  # succeeded, failed, timed_out, cancelled, skipped
    attempt: int
    error_type: str | None
    error_message: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    # Seconds since the epoch: made, queued for its last attempt, that attempt's start, the end.
    created_at: float | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True, slots=True)
class RunChanged:
    """A task's run (or a workflow's step) in a new state, as written: queued, assigned, running,
    pending, or a final one. A run that changes twice within one write batch is seen in its
    latest state."""

    tenant_id: uuid.UUID
    run_id: uuid.UUID
    task: str
    status: str
    attempt: int
    worker_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class Alert:
    """What an alert channel delivers: a run that failed for good, or a summary of the failures
    an alert window folded in."""

    tenant_name: str
    rule_id: uuid.UUID
    subject: str  # "workflow 'post-signup'" or "task 'resize'"
    workflow: str | None
    task: str
    run_id: uuid.UUID
    attempt: int
    status: str
    error_type: str | None
    error_message: str | None
    url: str  # the run in the dashboard
    folded: int  # failures of this subject not alerted since the previous alert
    summary: bool = False  # a window's end: only the folded count is news

    @property
    def title(self) -> str:
        if self.summary:
            return f"[taskyard] {self.folded} more failures of {self.subject}"
        return f"[taskyard] {self.subject} {self.status.replace('_', ' ')}"

    @property
    def text(self) -> str:
        lines = [
            f"{self.subject} {self.status.replace('_', ' ')} in tenant {self.tenant_name}.",
            f"Task: {self.task}, attempt {self.attempt}",
            f"Error: {self.error_type or 'unknown'}: {self.error_message or ''}".rstrip(),
            f"Run: {self.url}",
        ]
        if self.summary:
            lines.insert(0, f"{self.folded} more failures in the alert window; the last one:")
        elif self.folded:
            lines.append(f"{self.folded} earlier failures were folded into this alert.")
        return "\n".join(lines)


class AlertChannel(Protocol):
    """Where alerts go: `name` is what alert rules name (`"email"`, `"slack"`). `send` delivers
    one alert to a rule's `target` (e.g. `{"to": ["ops@acme.test"]}`) and raises if it could
    not; `check_target` refuses a target the channel cannot use (raise ValueError)."""

    name: str

    async def send(self, alert: Alert, target: dict[str, Any]) -> None: ...

    def check_target(self, target: dict[str, Any]) -> None: ...
