"""Pushed events as routing and waits see them, the one test of whether an event is the one
something waits for (`matches`), and the one index from key patterns to the things that wait for
them (a workflow's waiting steps, a queue's durable waits)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from taskyard.domain.expressions import ExpressionError, holds
from taskyard.domain.workflows import key_matches

W = TypeVar("W", bound=Hashable)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PushedEvent:
    """An event as routing and waiting steps see it."""

    event_id: uuid.UUID
    key: str
    payload: Any
    metadata: dict[str, str]
    created_at: float


def matches(
    event: PushedEvent,
    pattern: str,
    filter: str | None,
    names: dict[str, Any],
    subject: str | None = None,
) -> bool:
    """Whether the event's key matches `pattern` and the CEL `filter`, if any, holds for its
    `payload` and `metadata` beside `names` (what else the filter may read). A filter that cannot
    be evaluated on this event does not match; with a `subject` (what the filter belongs to) the
    reason is logged."""
    if not key_matches(pattern, event.key):
        return False
    if filter is None:
        return True
    try:
        return holds(filter, {"payload": event.payload, "metadata": event.metadata, **names})
    except ExpressionError as exc:
        if subject is not None:
            log.warning("event %s does not match %s: %s", event.event_id, subject, exc)
        return False


class EventIndex(Generic[W]):
    """Waiters by the key pattern they watch: exact keys, or prefixes written `user:*`. Finding
    the waiters of an event costs one lookup plus one test per prefix pattern (exact patterns,
    however many, are never scanned)."""

    def __init__(self) -> None:
        self._exact: dict[str, set[W]] = {}
        self._prefixes: dict[str, set[W]] = {}  # by the pattern, its '*' included

    def __bool__(self) -> bool:
        return bool(self._exact or self._prefixes)

    def __len__(self) -> int:
        """How many (pattern, waiter) pairs the index holds."""
        return sum(len(w) for w in self._exact.values()) + sum(
            len(w) for w in self._prefixes.values()
        )

    def _table(self, pattern: str) -> dict[str, set[W]]:
        return self._prefixes if pattern.endswith("*") else self._exact

    def add(self, pattern: str, waiter: W) -> None:
        self._table(pattern).setdefault(pattern, set()).add(waiter)

    def discard(self, pattern: str, waiter: W) -> None:
        table = self._table(pattern)
        waiters = table.get(pattern)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del table[pattern]

    def matching(self, key: str) -> Iterator[W]:
        """The waiters of every pattern this key matches (a snapshot: safe to change the index
        while iterating)."""
        found = [w for p, w in self._prefixes.items() if key_matches(p, key)]
        exact = self._exact.get(key)
        if exact is not None:
            found.append(exact)
        for waiters in found:
            yield from list(waiters)
