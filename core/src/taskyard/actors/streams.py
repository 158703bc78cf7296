"""Live subscribers of runs' streamed chunks (`ctx.stream(...)` in a task). Chunks are passed
through, not stored: a subscriber sees what is streamed while it is connected. Synchronous methods
only, all called on the engine's event loop, so the registry has a single owner."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

Key = tuple[uuid.UUID, uuid.UUID]
_SUBSCRIBER_BUFFER = 10_000  # a subscriber that falls this far behind loses the oldest chunks


class RunStreams:
    def __init__(self) -> None:
        self._subscribers: defaultdict[Key, set[asyncio.Queue[Any]]] = defaultdict(set)

    def subscribe(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> asyncio.Queue[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_SUBSCRIBER_BUFFER)
        self._subscribers[(tenant_id, run_id)].add(queue)
        return queue

    def unsubscribe(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID, queue: asyncio.Queue[Any]
    ) -> None:
        subscribers = self._subscribers.get((tenant_id, run_id))
        if subscribers is not None:
            subscribers.discard(queue)
            if not subscribers:
                del self._subscribers[(tenant_id, run_id)]

    def publish(self, tenant_id: uuid.UUID, run_id: uuid.UUID, data: Any) -> None:
        for queue in self._subscribers.get((tenant_id, run_id), ()):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(data)
