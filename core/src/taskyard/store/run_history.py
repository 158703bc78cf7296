"""A run's history rebuilt from what is stored. Events are stored only for what the run's row
cannot hold (see QueueActor._save): the row holds the current attempt's timeline, and an earlier
attempt's end carries the timeline its row no longer holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from taskyard_sdk.models import Attempt, ErrorInfo, RunEvent, RunStatus

_TERMINAL_EVENTS = {"succeeded", "failed", "timed_out", "cancelled"}
_LEFT_BEHIND = {*_TERMINAL_EVENTS, "suspended"}  # events that keep the timeline of their attempt


def history(run: Mapping[str, Any], stored: Iterable[Mapping[str, Any]]) -> list[RunEvent]:
    """A run's events: those stored (rows, or their JSON with `at` in epoch seconds) and the
    current attempt's timeline from its row."""
    events = [RunEvent(at=run["created_at"], attempt=1, type="queued")]
    for row in stored:
        detail = row["detail"]
        if row["type"] in _LEFT_BEHIND and detail is not None and "assigned_at" in detail:
            # An earlier attempt's outcome (or a durable attempt's suspension), with the
            # timeline its row no longer holds.
            for kind in ("assigned", "started"):
                if detail[f"{kind}_at"] is not None:
                    events.append(
                        RunEvent(
                            at=_utc(detail[f"{kind}_at"]),
                            attempt=row["attempt"],
                            type=kind,
                            worker_id=row["worker_id"],
                        )
                    )
            if row["type"] == "suspended":
                detail = {k: v for k, v in detail.items() if k not in ("assigned_at", "started_at")}
            else:
                detail = detail["error"]
        events.append(
            RunEvent(
                at=row["at"],
                attempt=row["attempt"],
                type=row["type"],
                worker_id=row["worker_id"],
                detail=detail,
            )
        )
    attempt, worker = run["attempt"], run["worker_id"]
    if run["assigned_at"] is not None:
        events.append(
            RunEvent(at=run["assigned_at"], attempt=attempt, type="assigned", worker_id=worker)
        )
    if run["started_at"] is not None:
        events.append(
            RunEvent(at=run["started_at"], attempt=attempt, type="started", worker_id=worker)
        )
    if run["status"] in _TERMINAL_EVENTS and run["finished_at"] is not None:
        events.append(
            RunEvent(
                at=run["finished_at"],
                attempt=attempt,
                type=run["status"],
                worker_id=worker,
                detail=run["error"],
            )
        )
    events.sort(key=lambda event: event.at)  # stable: same-time events keep their order
    return events


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def attempts(events: list[RunEvent]) -> list[Attempt]:
    """Each attempt's timeline, from the run's events."""
    attempts: dict[int, Attempt] = {}
    for event in events:
        if event.type in ("queued", "replayed", "retry_scheduled", "requeued", "timeout_refreshed"):
            continue
        attempt = attempts.setdefault(
            event.attempt, Attempt(attempt=event.attempt, status=RunStatus.QUEUED)
        )
        if event.type in ("assigned", "reattached"):
            attempt.status = RunStatus.ASSIGNED
            attempt.worker_id = event.worker_id
            attempt.assigned_at = event.at
            if event.type == "reattached":
                attempt.status, attempt.started_at = RunStatus.RUNNING, event.at
        elif event.type == "started":
            attempt.status = RunStatus.RUNNING
            attempt.started_at = event.at
        elif event.type == "suspended":  # a durable run's attempt, waiting off its worker
            attempt.status = RunStatus.PENDING
        elif event.type == "resumed":
            attempt.status = RunStatus.QUEUED
        elif event.type in _TERMINAL_EVENTS:
            attempt.status = RunStatus(event.type)
            attempt.finished_at = event.at
            if event.detail and event.type != "succeeded":
                attempt.error = ErrorInfo.model_validate(event.detail)
    return [attempts[number] for number in sorted(attempts)]
