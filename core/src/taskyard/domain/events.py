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
    the waiters of an event costs one lookup plus one test per prefix pattern."""

    def __init__(self) -> None:
        self._by_pattern: dict[str, set[W]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_pattern)

    def __len__(self) -> int:
        """How many (pattern, waiter) pairs the index holds."""
        return sum(len(waiters) for waiters in self._by_pattern.values())

    def add(self, pattern: str, waiter: W) -> None:
        self._by_pattern.setdefault(pattern, set()).add(waiter)

    def discard(self, pattern: str, waiter: W) -> None:
        waiters = self._by_pattern.get(pattern)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del self._by_pattern[pattern]

    def matching(self, key: str) -> Iterator[W]:
        """The waiters of every pattern this key matches (a snapshot: safe to change the index
        while iterating)."""
        patterns = [p for p in self._by_pattern if p.endswith("*") and key_matches(p, key)]
        if key in self._by_pattern:
            patterns.append(key)
        for pattern in patterns:
            yield from list(self._by_pattern.get(pattern, ()))
