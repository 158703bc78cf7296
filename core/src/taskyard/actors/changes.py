"""Committed run changes, to whoever listens: plugins that observe every change, and dashboards
watching one tenant. The queue actors ask `wanted` before they describe a change, so that a
tenant nobody watches costs nothing beyond a dictionary lookup."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Iterator

from taskyard.domain.notices import RunChanged

Observer = Callable[[uuid.UUID, list[RunChanged]], None]


class ChangeFeed:
    def __init__(self, observer: Observer | None = None) -> None:
        self.observer = observer  # every tenant's changes (the plugins' hook)
        self._watchers: dict[uuid.UUID, set[asyncio.Event]] = {}

    def wanted(self, tenant_id: uuid.UUID) -> bool:
        return self.observer is not None or tenant_id in self._watchers

    def committed(self, tenant_id: uuid.UUID, changes: list[RunChanged]) -> None:
        if self.observer is not None:
            self.observer(tenant_id, changes)
        self.touched(tenant_id)

    def touched(self, tenant_id: uuid.UUID) -> None:
        """Something of the tenant's runs that observers are not told of (a workflow run's
        end) has committed: the live pages look again."""
        for event in self._watchers.get(tenant_id, ()):
            event.set()

    @contextlib.contextmanager
    def watch(self, tenant_id: uuid.UUID) -> Iterator[asyncio.Event]:
        """An event set whenever a change of the tenant's runs has committed (the watcher
        clears it when it has looked)."""
        event = asyncio.Event()
        self._watchers.setdefault(tenant_id, set()).add(event)
        try:
            yield event
        finally:
            watchers = self._watchers[tenant_id]
            watchers.discard(event)
            if not watchers:
                del self._watchers[tenant_id]
