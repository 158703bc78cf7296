"""Pushed events as routing and waits see them, and the one index from key patterns to the things
that wait for them (a workflow's waiting steps, a queue's durable waits)."""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from taskyard.domain.workflows import key_matches

W = TypeVar("W", bound=Hashable)


@dataclass(frozen=True, slots=True)
class PushedEvent:
    """An event as routing and waiting steps see it."""

    event_id: uuid.UUID
    key: str
    payload: Any
    metadata: dict[str, str]
    created_at: float


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
