"""Durable runs that wait: what each one waits for, and when that holds.

A durable task that reaches a wait it has not finished before (a sleep, events, its children)
suspends: its attempt stops, its slot is free, and its queue actor keeps a `DurableWait` until the
wait holds or times out; then the wait's result goes into the run's log and the run is queued
again, to replay from the top with its log. Times are absolute, so a sleep begun before a crash
ends when it would have. Pure: the QueueActor owns these and arms the timers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from taskyard.domain.events import EventIndex, PushedEvent, matches
from taskyard_sdk.protocol import WaitSpec


@dataclass(eq=False)
class DurableWait:
    run_id: uuid.UUID
    position: int
    call: str
    spec: WaitSpec
    matched: dict[int, Any] = field(default_factory=dict)  # event leaf -> the event's payload
    children: list[dict[str, Any]] | None = None  # their outcomes, once all have ended

    def outcome(self, now: float) -> dict[str, Any] | None:
        """The wait's result once it holds or has timed out; None while it still waits."""
        spec = self.spec
        leaves: list[bool] = []
        if spec.until is not None:
            leaves.append(now >= spec.until)
        leaves += [index in self.matched for index in range(len(spec.events))]
        if spec.children:
            leaves.append(self.children is not None)
        held = not leaves or (any(leaves) if spec.mode == "any" else all(leaves))
        timed_out = not held and spec.deadline is not None and now >= spec.deadline
        if not held and not timed_out:
            return None
        return {
            "slept": spec.until is not None and now >= spec.until,
            "events": {str(index): payload for index, payload in self.matched.items()},
            "children": self.children,
            "timed_out": timed_out,
        }

    def timers(self) -> list[float]:
        return [at for at in (self.spec.until, self.spec.deadline) if at is not None]

    def describe(self) -> str:
        """What it waits for, as a run's waiting reason: `sleeping until 2026-12-02T10:00:00Z
        or event 'order:shipped' pushed since 09:58:01Z (gives up at ...)`."""
        spec = self.spec
        parts = []
        if spec.until is not None:
            parts.append(f"sleeping until {_when(spec.until)}")
        for index, event in enumerate(spec.events):
            if index not in self.matched:
                where = f" matching {event.filter}" if event.filter else ""
                parts.append(f"event {event.key!r}{where}")
        if spec.children and self.children is None:
            parts.append(
                f"{len(spec.children)} child run{'s' * (len(spec.children) > 1)} to finish"
            )
        joined = f" {'or' if spec.mode == 'any' else 'and'} ".join(parts) or "its wait to end"
        text = f"waiting for {joined}" if not joined.startswith("sleeping") else joined
        if spec.events:
            text += f" (events pushed since {_when(spec.since)} count)"
        if spec.deadline is not None:
            text += f"; gives up at {_when(spec.deadline)}"
        return f"durable {self.call}: {text}"

    def match(self, event: PushedEvent) -> bool:
        """Note the leaves this event satisfies (only events since the wait began count)."""
        if event.created_at < self.spec.since or (
            self.spec.deadline is not None and event.created_at > self.spec.deadline
        ):
            return False  # only events between the wait's start and its timeout count
        matched = False
        names = {"input": self.spec.input}
        for index, wanted in enumerate(self.spec.events):
            # An event this filter cannot read does not match.
            if index in self.matched or not matches(event, wanted.key, wanted.filter, names):
                continue
            self.matched[index] = event.payload
            matched = True
        return matched


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class DurableWaits:
    """The waits of one queue's suspended durable runs, indexed by the event keys they watch."""

    def __init__(self) -> None:
        self.waits: dict[uuid.UUID, DurableWait] = {}
        self._index: EventIndex[uuid.UUID] = EventIndex()

    def __len__(self) -> int:
        return len(self.waits)

    def add(self, wait: DurableWait) -> None:
        self.remove(wait.run_id)
        self.waits[wait.run_id] = wait
        for wanted in wait.spec.events:
            self._index.add(wanted.key, wait.run_id)

    def remove(self, run_id: uuid.UUID) -> DurableWait | None:
        wait = self.waits.pop(run_id, None)
        if wait is not None:
            for wanted in wait.spec.events:
                self._index.discard(wanted.key, run_id)
        return wait

    def patterns(self, run_id: uuid.UUID) -> list[str]:
        wait = self.waits.get(run_id)
        return sorted({w.key for w in wait.spec.events}) if wait else []

    def events(self, events: list[PushedEvent]) -> list[uuid.UUID]:
        """The runs whose waits these events advanced."""
        if not self._index:
            return []
        touched: dict[uuid.UUID, None] = {}
        for event in events:
            for run_id in self._index.matching(event.key):
                if self.waits[run_id].match(event):
                    touched[run_id] = None
        return list(touched)
