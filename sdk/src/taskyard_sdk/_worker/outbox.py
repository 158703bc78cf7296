"""What a worker sends to the engine, and what it keeps until the engine has it: results until
they are acknowledged as committed, durable entries until they are confirmed, other messages
(logs, stream chunks) while disconnected. One writer puts what was queued meanwhile in one frame.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import deque

import aiohttp
from pydantic import BaseModel

from taskyard_sdk import protocol
from taskyard_sdk._errors import TaskyardError

log = logging.getLogger("taskyard.worker")

AttemptKey = tuple[uuid.UUID, int]
Result = protocol.Completed | protocol.Failed | protocol.Suspend
RecordKey = tuple[uuid.UUID, int, int]  # (run, attempt, position)

_PENDING_LIMIT = 10_000  # logs and other non-result messages kept while disconnected
# Kept elsewhere while disconnected (results, records) or worth nothing later (a heartbeat).
_NOT_PENDING = (
    protocol.Completed
    | protocol.Failed
    | protocol.Heartbeat
    | protocol.Started
    | protocol.Drain
    | protocol.Suspend
    | protocol.Record
)


class Outbox:
    def __init__(self) -> None:
        self.results: dict[AttemptKey, Result] = {}
        # Durable entries sent and not yet confirmed committed: re-sent after a reconnect.
        self._records: dict[RecordKey, tuple[protocol.Record, asyncio.Future[None]]] = {}
        self._pending: deque[BaseModel] = deque(maxlen=_PENDING_LIMIT)
        self._queue: asyncio.Queue[BaseModel] | None = None  # made by open(), in the loop
        self._attached = False  # a connection is there to write the queue

    def open(self) -> None:
        """Start queueing for the worker's run (a new loop each time it starts)."""
        self._queue = asyncio.Queue()

    def attach(self) -> None:
        self._attached = True

    def detach(self) -> None:
        self._attached = False

    def send(self, message: BaseModel) -> None:
        if not self._attached or self._queue is None:
            if not isinstance(message, _NOT_PENDING):
                self._pending.append(message)
            return
        self._queue.put_nowait(message)

    def result(self, key: AttemptKey, result: Result) -> None:
        """An attempt's outcome: sent, and kept until acknowledged."""
        self.results[key] = result
        self.send(result)

    async def record(self, record: protocol.Record) -> None:
        """Send a durable entry; returns once the engine has committed it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._records[(record.run_id, record.attempt, record.entry.position)] = (record, done)
        self.send(record)
        await done

    def acked(self, message: protocol.Ack) -> None:
        for ref in message.results:
            self.results.pop((ref.run_id, ref.attempt), None)

    def recorded(self, message: protocol.Recorded) -> None:
        pending = self._records.pop((message.run_id, message.attempt, message.position), None)
        if pending is not None and not pending[1].done():
            pending[1].set_result(None)

    def refused(self, error: protocol.Error) -> None:
        """The engine will never accept what this error refers to: keeping it would re-send
        it for ever, and a durable entry's waiter hears why."""
        if error.ref is None:
            return
        attempt = (error.ref.run_id, error.ref.attempt)
        self.results.pop(attempt, None)
        for key in [k for k in self._records if (k[0], k[1]) == attempt]:
            _, done = self._records.pop(key)
            if not done.done():
                done.set_exception(
                    TaskyardError(f"the engine refused a durable entry: {error.message}")
                )

    def resend(self) -> None:
        """A new connection: what the engine may not have is sent again."""
        for result in self.results.values():
            self.send(result)
        for record, _ in self._records.values():
            self.send(record)
        while self._pending:
            self.send(self._pending.popleft())

    async def write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """What was queued meanwhile goes in one frame (up to MAX_FRAME_MESSAGES)."""
        queue = self._queue
        assert queue is not None
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < protocol.MAX_FRAME_MESSAGES:
                batch.append(queue.get_nowait())
            try:
                await ws.send_frame(protocol.encode_frame(batch), aiohttp.WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return
