"""The client channel, `/api/v1/clients/connect`: the REST API over one websocket.

An application's SDK keeps one connection open and sends each call as a frame instead of an
HTTP request: an HTTP exchange costs the engine and the client about 300 µs of CPU between them
on the machine the benchmarks ran on, a frame each way about 100. Every endpoint that takes and
gives JSON and has a caller (not the public ones, streams, sockets or plugins' routes) is served
with exactly its HTTP semantics: the same handler, validation, roles, statuses and error bodies.

Frames are `taskyard_sdk.protocol.ClientCall` in and `ClientAnswer` out. Calls are answered as
they finish, so a long-poll holds up nothing behind it; at most MAX_IN_FLIGHT calls of one
channel run at once (the next frame is read when one finishes). The token is checked when the
channel opens and again at every call (a cached lookup), so a revoked token is refused from its
next call on. A call still running when its channel closes runs to its end, as an HTTP handler
does when its client goes away; its answer is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import WSMsgType, web
from multidict import MultiDict
from pydantic import ValidationError

from taskyard.actors.base import SideTasks
from taskyard.actors.frames import FrameWriter
from taskyard.domain.auth import Role
from taskyard.errors import BadRequest, MethodNotAllowed, NotFound, Unprocessable
from taskyard.http.errors import failure, next_request_id
from taskyard.http.forwarding import FORWARDER
from taskyard.http.keys import ENGINE
from taskyard.http.metrics import METERS, frame_counter
from taskyard.http.routing import (
    AUTHENTICATOR,
    NO_BODY,
    Call,
    Endpoint,
    RoutePaths,
    Router,
    authorize,
    invoke,
    result_encoder,
)
from taskyard_sdk import protocol

log = logging.getLogger(__name__)
router = Router(tags=("clients",))

MAX_IN_FLIGHT = 1000
CHANNELS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("client_channels")
ROUTES: web.AppKey[ChannelRoutes] = web.AppKey("channel_routes")


@dataclass(frozen=True, slots=True)
class _Route:
    endpoint: Endpoint
    encode: Callable[[Any], tuple[int, bytes | None]]


class ChannelRoutes:
    """The endpoints a channel serves, found by method and path as aiohttp's router would."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._exact: dict[tuple[str, str], _Route] = {}
        self._patterns: list[tuple[str, re.Pattern[str], _Route]] = []
        paths = RoutePaths(endpoint.path for endpoint in endpoints)
        for endpoint in endpoints:
            route = _Route(endpoint, result_encoder(endpoint))
            if "{" in endpoint.path:
                self._patterns.append((endpoint.method, paths.regex(endpoint.path), route))
            else:
                self._exact[(endpoint.method, endpoint.path)] = route

    def find(self, method: str, path: str) -> tuple[_Route, dict[str, str]]:
        route = self._exact.get((method, path))
        if route is not None:
            return route, {}
        allowed = {m for m, p in self._exact if p == path}
        for pattern_method, pattern, candidate in self._patterns:
            match = pattern.fullmatch(path)
            if match is not None:
                if pattern_method == method:
                    return candidate, match.groupdict()
                allowed.add(pattern_method)
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed on {path}; allowed: {', '.join(sorted(allowed))}"
            )
        raise NotFound(f"no endpoint at {path} served over the client channel")


def install(app: web.Application, endpoints: Sequence[Endpoint]) -> None:
    """Serve `endpoints` (those marked for channels) over the app's client channels."""
    app[ROUTES] = ChannelRoutes([endpoint for endpoint in endpoints if endpoint.channel])
    app[CHANNELS] = set()
    app.on_shutdown.append(_close_channels)


async def _close_channels(app: web.Application) -> None:
    channels: set[web.WebSocketResponse] = app[CHANNELS]
    await asyncio.gather(
        *(ws.close(code=1001, message=b"engine shutting down") for ws in list(channels)),
        return_exceptions=True,
    )


@router.get("/api/v1/clients/connect", roles=list(Role), channel=False)
async def connect(call: Call[None]) -> web.StreamResponse:
    """The client channel: the REST API over one websocket (see `taskyard_sdk.protocol`)."""
    request = call.request
    limit = request.app[ENGINE].settings.max_request_bytes
    ws = web.WebSocketResponse(max_msg_size=limit, heartbeat=None)
    await ws.prepare(request)
    channel = _Channel(request, ws, request.headers.get("Authorization"))
    channel.writer.send(protocol.ClientWelcome(max_message_bytes=limit))
    channel.writer.start()
    request.app[CHANNELS].add(ws)
    try:
        meters = request.app[METERS]
        async for message in ws:
            meters.frame("client", "in")
            if message.type is WSMsgType.TEXT:
                await channel.receive(message.data)
            elif message.type is WSMsgType.BINARY:
                channel.refuse(BadRequest("binary frames are not supported; send JSON text frames"))
            elif message.type is WSMsgType.ERROR:
                log.info("client channel error: %s", ws.exception())
                break
    finally:
        request.app[CHANNELS].discard(ws)
        await channel.writer.stop()
    return ws


class _Channel:
    def __init__(
        self, request: web.Request, ws: web.WebSocketResponse, authorization: str | None
    ) -> None:
        self.request = request
        self.routes = request.app[ROUTES]
        self.authenticate = request.app[AUTHENTICATOR]
        self.forwarder = request.app[FORWARDER]
        self.authorization = authorization
        self.writer = FrameWriter(ws, "client", frame_counter(request.app, "client"))
        self.slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self.running = SideTasks()

    async def receive(self, data: str) -> None:
        try:
            call = protocol.ClientCall.model_validate_json(data)
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            deep = _deep_call(data) if error["type"] == "json_invalid" else None
            if deep is None:
                where = ".".join(str(part) for part in error["loc"])
                detail = f"{where}: {error['msg']}" if where else error["msg"]
                self.refuse(BadRequest(f"frame is not a call: {detail}"))
                return
            call = deep
        await self.slots.acquire()
        task = self.running.spawn(self._serve(call, data))
        task.add_done_callback(lambda _: self.slots.release())

    async def _serve(self, call: protocol.ClientCall, text: str) -> None:
        try:
            route, params = self.routes.find(call.method, call.path)
            principal = authorize(route.endpoint, await self.authenticate(self.authorization))
            owner = await self.forwarder.owner_elsewhere(principal.tenant_id, forwarded=False)
            if owner is not None:
                body = None if call.body is None else orjson.dumps(call.body)
                status, answer = await self.forwarder.call(
                    owner, call.method, call.path, call.query or [], body, self.authorization
                )
                self.writer.send(_answer(call.id, status, answer or None))
                return
            try:
                result = await invoke(
                    route.endpoint,
                    self.request,
                    principal,
                    params,
                    MultiDict(call.query),
                    NO_BODY if call.body is None else call.body,
                    text,
                )
            except orjson.JSONEncodeError as exc:
                if call.body is None:
                    raise
                # pydantic's JSON parser keeps integers that orjson cannot write (over HTTP,
                # orjson reads them as floats): the body holds a number that cannot be stored
                raise Unprocessable(
                    f"body: holds a number that cannot be stored ({exc}); "
                    f"integers must fit in 64 bits"
                ) from None
            status, payload = route.encode(result)
        except Exception as exc:
            status, payload, _ = failure(exc, call.method, call.path, next_request_id())
        self.writer.send(_answer(call.id, status, payload))

    def refuse(self, error: Exception) -> None:
        """A frame that is not a call: answered without an id."""
        status, payload, _ = failure(error, "FRAME", "/api/v1/clients/connect", next_request_id())
        self.writer.send(_answer(None, status, payload))


def _deep_call(data: str) -> protocol.ClientCall | None:
    """A call whose JSON pydantic's parser gave up on: it stops at 200 levels, which a body
    the SDK sends can pass. Read with orjson (good for 1024), it is served as any call, and
    refused by its id as over HTTP (422, naming the depth limit)."""
    try:
        frame = orjson.loads(data)
        if not isinstance(frame, dict):
            return None
        body = frame.pop("body", None)
        return protocol.ClientCall.model_validate(frame).model_copy(update={"body": body})
    except (orjson.JSONDecodeError, ValidationError):
        return None


def _answer(call_id: int | None, status: int, body: bytes | None) -> bytes:
    """A `protocol.ClientAnswer`, encoded directly: the body is the JSON it already is."""
    return b'{"id":%s,"status":%d,"body":%s}' % (
        b"null" if call_id is None else str(call_id).encode(),
        status,
        body if body is not None else b"null",
    )
