"""The channel: REST calls to the engine as frames over one websocket, `/api/v1/clients/connect`
(see `taskyard_sdk.protocol`). A frame each way costs both sides about a third of an HTTP
exchange; the calls and their answers (statuses, bodies, errors) are the REST API's own.

One channel per event loop, opened by the first call and again after it closes. Calls run
concurrently; answers are matched to calls by id.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import aiohttp
from pydantic_core import from_json, to_json

from taskyard_sdk import protocol
from taskyard_sdk._errors import EngineUnreachable

PATH = "/api/v1/clients/connect"


class ChannelRefused(Exception):
    """The engine did not open a channel: this call goes over HTTP, which answers with the
    reason (a bad token, say); `for_good` when it serves no channels at all."""

    def __init__(self, message: str, *, for_good: bool) -> None:
        super().__init__(message)
        self.for_good = for_good


class ChannelLost(Exception):
    """The channel closed while the call was in flight."""


class CallTooLarge(Exception):
    """The call is larger than the engine takes in a frame: send it over HTTP."""


class Channel:
    def __init__(
        self, ws: aiohttp.ClientWebSocketResponse, welcome: protocol.ClientWelcome
    ) -> None:
        self._ws = ws
        self.max_message_bytes = welcome.max_message_bytes
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._reader = asyncio.create_task(self._read(), name="taskyard-channel")

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, url: str, headers: dict[str, str]
    ) -> Channel:
        try:
            async with asyncio.timeout(protocol.HANDSHAKE_TIMEOUT):
                ws = await session.ws_connect(
                    url + PATH, headers=headers, heartbeat=protocol.PING_EVERY, max_msg_size=0
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise ChannelRefused(
                f"{url} refused a channel ({exc.status})", for_good=exc.status == 404
            ) from exc
        except (aiohttp.ClientConnectorError, TimeoutError) as exc:
            raise EngineUnreachable(
                f"cannot reach the Taskyard engine at {url}: {exc or 'no answer'}. Is it "
                f"running? Start one with `taskyard engine`, or set TASKYARD_URL."
            ) from exc
        try:
            first = await ws.receive(timeout=15)
            welcome = protocol.ClientWelcome.model_validate_json(first.data)
        except (TimeoutError, ValueError, TypeError) as exc:
            await ws.close()
            raise ChannelLost(f"the engine did not welcome the channel: {exc}") from exc
        return cls(ws, welcome)

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def call(
        self, method: str, path: str, body: bytes | None, params: Sequence[tuple[str, str]] | None
    ) -> tuple[int, Any]:
        """The call's REST status and decoded body."""
        call_id = next(self._ids)
        frame = b'{"id":%d,"method":"%s","path":%s' % (call_id, method.encode(), to_json(path))
        if body is not None:
            frame += b',"body":' + body
        if params:
            frame += b',"query":' + to_json(list(params))
        frame += b"}"
        if len(frame) > self.max_message_bytes:
            raise CallTooLarge(f"{len(frame)} bytes")
        if self.closed:
            raise ChannelLost("the channel is closed")
        answer: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = answer
        try:
            await self._ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
            return await answer
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelLost(str(exc)) from exc
        finally:
            self._pending.pop(call_id, None)

    async def close(self) -> None:
        await self._ws.close()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = from_json(message.data)
                for answer in data if isinstance(data, list) else [data]:
                    waiter = self._pending.get(answer.get("id"))
                    if waiter is not None and not waiter.done():
                        waiter.set_result((answer["status"], answer.get("body")))
        finally:
            lost = ChannelLost(f"the channel closed ({self._ws.close_code})")
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(lost)
