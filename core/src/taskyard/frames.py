"""Writing JSON messages to a websocket: anyone queues, one task writes, and what was queued
meanwhile goes in one frame (a JSON array), sent as the UTF-8 JSON it already is."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from aiohttp import WSMsgType, web
from pydantic import BaseModel

MAX_FRAME_MESSAGES = 1000


class FrameWriter:
    """Owned by a connection's handler, which starts and stops it; `send` never waits."""

    def __init__(self, ws: web.WebSocketResponse, name: str) -> None:
        self.ws = ws
        self.name = name
        self._outbox: deque[BaseModel | bytes] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def send(self, message: BaseModel | bytes) -> None:
        """Queue a message (a model, or one already encoded as JSON)."""
        self._outbox.append(message)
        self._wake()

    def send_many(self, messages: Iterable[BaseModel | bytes]) -> None:
        self._outbox.extend(messages)
        self._wake()

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name=f"writer:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake(self) -> None:
        wakeup, self._wakeup = self._wakeup, None
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _write(self) -> None:
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        while True:
            while not outbox:
                self._wakeup = loop.create_future()
                await self._wakeup
            if len(outbox) == 1:
                data = _json(outbox.popleft())
            else:
                count = min(len(outbox), MAX_FRAME_MESSAGES)
                data = b"[" + b",".join(_json(outbox.popleft()) for _ in range(count)) + b"]"
            try:
                await self.ws.send_frame(data, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return  # the connection's handler notices the close and cleans up


def _json(message: BaseModel | bytes) -> bytes:
    if isinstance(message, bytes):
        return message
    return message.__pydantic_serializer__.to_json(message)
