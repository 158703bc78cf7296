"""Writing JSON messages to a websocket: anyone queues, one task writes, and what was queued
meanwhile goes in one frame (a JSON array), sent as the UTF-8 JSON it already is."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiohttp import WSMsgType, web
from pydantic import BaseModel

from taskyard.actors.base import Mailbox
from taskyard_sdk.protocol import MAX_FRAME_MESSAGES, encode_frame


class FrameWriter:
    """Owned by a connection's handler, which starts and stops it; `send` never waits."""

    def __init__(self, ws: web.WebSocketResponse, name: str) -> None:
        self.ws = ws
        self.name = name
        self._outbox: Mailbox[BaseModel | bytes] = Mailbox()
        self._task: asyncio.Task[None] | None = None

    def send(self, message: BaseModel | bytes) -> None:
        """Queue a message (a model, or one already encoded as JSON)."""
        self._outbox.put(message)

    def send_many(self, messages: Iterable[BaseModel | bytes]) -> None:
        self._outbox.put_many(messages)

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name=f"writer:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _write(self) -> None:
        outbox = self._outbox
        while True:
            batch = [await outbox.get()]
            while not outbox.empty() and len(batch) < MAX_FRAME_MESSAGES:
                batch.append(outbox.get_nowait())
            try:
                await self.ws.send_frame(encode_frame(batch), WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return  # the connection's handler notices the close and cleans up
