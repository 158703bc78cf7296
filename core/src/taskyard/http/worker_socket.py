"""The worker websocket, `/api/v1/workers/connect`: handshake, then frames of protocol messages.

A bad frame (malformed JSON, an unknown or invalid message, a result for an attempt this worker
does not hold, an oversized frame) is answered with an `error` message naming the problem; the
connection and the engine carry on. A result the engine cannot store (a NUL character, nesting
deeper than MAX_JSON_DEPTH) fails its attempt at once, saying why, instead of being refused and
sent again until the run times out; NUL characters in log lines and error texts are replaced.

Unlike the REST handlers, this one tells the worker registry and the worker's queue actor
directly, not through the services: each frame of results is one `tell`, the hot path of every
run's end, and the session this handler owns is what those actors know the worker by.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import WSMsgType, web
from pydantic import ValidationError

from taskyard.actors.workers import WorkerSession
from taskyard.domain.auth import Role
from taskyard.domain.cron import CronError
from taskyard.domain.cron import validate as validate_cron
from taskyard.domain.expressions import ExpressionError
from taskyard.domain.flow import check_options
from taskyard.domain.limits import Limit, PayloadLimits
from taskyard.errors import TenantMoved
from taskyard.http.forwarding import FORWARDER
from taskyard.http.keys import ENGINE
from taskyard.http.metrics import METERS, frame_counter
from taskyard.http.routing import Call, Router
from taskyard_sdk import protocol
from taskyard_sdk.models import ErrorInfo

if TYPE_CHECKING:
    from taskyard.actors.queue import QueueActor
    from taskyard.actors.workers import WorkerRegistry

log = logging.getLogger(__name__)
router = Router(tags=("workers",))

HELLO_TIMEOUT = 10.0


@router.get("/api/v1/workers/connect", roles=[Role.WORKER, Role.ADMIN], channel=False)
async def connect(call: Call[None]) -> web.StreamResponse:
    """The worker websocket (see the protocol in `taskyard_sdk.protocol`)."""
    engine = call.request.app[ENGINE]
    limit = engine.settings.max_request_bytes
    limits = engine.services.limits
    ws = web.WebSocketResponse(max_msg_size=limit * 4, heartbeat=None)
    await ws.prepare(call.request)
    hello = await _handshake(ws, limit)
    if hello is None:
        return ws
    if not await _owned_here(call, ws):
        return ws
    services = engine.services
    meters = call.request.app[METERS]
    session = WorkerSession(
        ws,
        call.principal.tenant_id,
        call.principal.token_id,
        hello,
        sent=frame_counter(call.request.app, "worker"),
    )
    session.send(
        protocol.Welcome(
            worker_id=hello.worker_id,
            heartbeat_interval=engine.settings.heartbeat_interval,
            max_message_bytes=limit,
            max_output_bytes=limits.output.bytes,
            max_log_line_bytes=limits.log_line_bytes,
            tenant=call.principal.tenant_name,
        )
    )
    session.start()
    registry = services.registry
    await registry.ask(registry.connect, session, hello.in_flight)
    queue = services.queue_for(session.tenant_id, session.queue)
    try:
        async for message in ws:
            if session.revoked:
                break
            session.last_seen = time.monotonic()
            meters.frame("worker", "in")
            if message.type is WSMsgType.TEXT:
                _handle_frame(session, queue, registry, message.data, limit, limits)
            elif message.type is WSMsgType.BINARY:
                session.send(
                    protocol.Error(
                        code="bad_frame",
                        message=("binary frames are not supported; send JSON text frames"),
                    )
                )
            elif message.type is WSMsgType.ERROR:
                log.info("worker %s connection error: %s", session.name, ws.exception())
                break
    finally:
        if registry.running:
            registry.tell(registry.disconnect, session)
        await session.close()
    return ws


async def _owned_here(call: Call[None], ws: web.WebSocketResponse) -> bool:
    """Workers attach to the node that owns their tenant: elsewhere they are told where that
    is (`moved`), or, while no node owns it, to try again shortly."""
    forwarder = call.request.app[FORWARDER]
    try:
        owner = await forwarder.owner_elsewhere(call.principal.tenant_id, forwarded=False)
    except TenantMoved as exc:
        await ws.send_str(protocol.Moved().model_dump_json())
        await ws.close(code=protocol.CLOSE_MOVED, message=exc.message[:120].encode())
        return False
    if owner is None:
        return True
    await ws.send_str(protocol.Moved(url=owner).model_dump_json())
    await ws.close(code=protocol.CLOSE_MOVED, message=b"tenant owned by another node")
    return False


async def _handshake(ws: web.WebSocketResponse, limit: int) -> protocol.Hello | None:
    """The first message must be a valid `hello` in our protocol version."""

    async def refuse(code: str, message: str) -> None:
        await ws.send_str(protocol.Error(code=code, message=message).model_dump_json())
        await ws.close(code=protocol.CLOSE_PROTOCOL_ERROR, message=message[:120].encode())

    try:
        first = await ws.receive(timeout=HELLO_TIMEOUT)
    except TimeoutError:
        await refuse("no_hello", f"no hello message within {HELLO_TIMEOUT:g}s")
        return None
    if first.type is not WSMsgType.TEXT:
        if first.type not in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            await refuse("bad_frame", "the first frame must be a JSON hello message")
        return None
    try:
        data = orjson.loads(first.data)
        if not isinstance(data, dict) or data.get("type") != "hello":
            raise ValueError('the first message must be {"type": "hello", ...}')
        if data.get("protocol") != protocol.PROTOCOL_VERSION:
            await refuse(
                "protocol_version",
                f"protocol version {data.get('protocol')!r} is not supported; this "
                f"engine speaks version {protocol.PROTOCOL_VERSION}",
            )
            return None
        hello = protocol.Hello.model_validate(data)
        for definition in hello.tasks:
            try:
                check_options(definition.options)
                for expression in definition.crons:
                    validate_cron(expression, "UTC")
            except (ExpressionError, CronError) as exc:
                raise ValueError(f"task {definition.name!r}: {exc}") from None
        return hello
    except ValidationError as exc:
        await refuse("invalid_message", f"hello: {_first_error(exc)}")
    except ValueError as exc:
        await refuse("invalid_message", f"hello: {exc}")
    return None


def _handle_frame(
    session: WorkerSession,
    queue: QueueActor,
    registry: WorkerRegistry,
    data: str,
    limit: int,
    limits: PayloadLimits,
) -> None:
    if len(data) > limit:
        session.send(
            protocol.Error(
                code="too_large",
                message=(f"frame of {len(data)} bytes exceeds the limit of {limit} bytes"),
            )
        )
        return
    messages = _parse_frame(data)
    if messages is None:
        messages = _parse_each(session, data)
    routed = []
    for message in messages:
        if message is None or isinstance(message, protocol.Heartbeat):
            continue
        payload = _PAYLOADS.get(type(message))
        if payload is not None:
            problem = _payload_problem(*payload, message, limits)
            if problem is not None:
                message = _unstorable(
                    session,
                    {"type": message.type, "run_id": message.run_id, "attempt": message.attempt},
                    *problem,
                )
                if message is None:
                    continue
        if isinstance(message, protocol.Log):
            message.message = limits.cut_line(message.message)
            routed.append(message)
        elif isinstance(message, protocol.Drain):
            registry.tell(registry.draining, session)
        elif isinstance(message, protocol.Hello):
            session.send(
                protocol.Error(
                    code="invalid_message", message="hello: this connection is already established"
                )
            )
        else:
            routed.append(message)
    if routed:
        queue.tell(queue.worker_messages, session, routed)


def _parse_frame(data: str) -> list[Any] | None:
    """The frame's messages in one validating pass; None if anything in it is off (then
    `_parse_each` finds and reports each problem)."""
    if "\\u0000" in data:
        return None
    try:
        return protocol.decode_worker_frame(data)
    except ValidationError:
        return None


_PAYLOADS: dict[type, tuple[str, Any, Any]] = {  # the user data a message carries, its limit
    protocol.Completed: ("output", lambda m: m.output, lambda limits: limits.output),
    protocol.Stream: ("data", lambda m: m.data, lambda limits: limits.output),
    protocol.Record: ("entry.result", lambda m: m.entry.result, lambda limits: limits.output),
    protocol.Suspend: ("wait.input", lambda m: m.wait.input, lambda limits: limits.input),
}
_UNSTORABLE, _TOO_LARGE = "UnstorableResult", "PayloadTooLarge"  # what the attempt fails with
_FAILS_ITS_ATTEMPT = frozenset({"completed", "record", "suspend"})  # results of the attempt
_CLEANED = frozenset({"log", "failed"})  # text only: NUL characters are replaced


def _payload_problem(
    field: str, value_of: Any, limit_of: Any, message: Any, limits: PayloadLimits
) -> tuple[str, str] | None:
    """Why a message's user data cannot be stored, naming where, with the error type the
    attempt fails with; None when it can."""
    value = value_of(message)
    limit: Limit = limit_of(limits)
    if isinstance(value, str):  # checked for NUL already: only its size is left
        if limit.may_exceed(value) and (size := len(orjson.dumps(value))) > limit.bytes:
            return _TOO_LARGE, limit.problem(field, size)
        return None
    if not isinstance(value, dict | list | int):
        return None  # floats and the rest always encode, and are small
    where = protocol.deeper_than(value)
    if where is not None:
        return _UNSTORABLE, _nesting(f"{field}{'' if where[0] == '[' else '.'}{where}")
    try:
        encoded = orjson.dumps(value)  # integers beyond 64 bits fail, for one
    except orjson.JSONEncodeError as exc:
        return _UNSTORABLE, f"{field}: {exc}"
    if len(encoded) > limit.bytes:
        return _TOO_LARGE, limit.problem(field, len(encoded))
    return None


def _nesting(where: str) -> str:
    return (
        f"{where}: nested more than {protocol.MAX_JSON_DEPTH} levels deep; the limit is "
        f"{protocol.MAX_JSON_DEPTH}"
    )


def _unstorable(session: WorkerSession, item: dict[str, Any], error_type: str, problem: str) -> Any:
    """A message carrying what Postgres cannot store: a result fails its attempt (the queue
    acknowledges the failure, so the worker stops sending it); anything else is refused."""
    kind = item.get("type")
    ref = _ref_of(item)
    session.send(
        protocol.Error(code="invalid_payload", message=f"{kind!r} message: {problem}", ref=ref)
    )
    if kind in _FAILS_ITS_ATTEMPT and ref is not None:
        return protocol.Failed(
            run_id=ref.run_id,
            attempt=ref.attempt,
            retryable=False,
            error=ErrorInfo(
                type=error_type,
                message=f"the engine cannot store this attempt's {kind} message: {problem}",
            ),
        )
    return None


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _parse_each(session: WorkerSession, data: str) -> list[Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        session.send(protocol.Error(code="malformed", message=f"frame is not valid JSON: {exc}"))
        return []
    items = parsed if isinstance(parsed, list) else [parsed]
    check_nul = "\\u0000" in data
    return [_parse(session, item, check_nul) for item in items]


def _parse(session: WorkerSession, item: Any, check_nul: bool) -> Any:
    if not isinstance(item, dict):
        session.send(
            protocol.Error(code="invalid_message", message="each message must be a JSON object")
        )
        return None
    where = protocol.deeper_than(item, protocol.MAX_JSON_DEPTH + 3)  # + the message's levels
    if where is not None:
        return _unstorable(session, item, _UNSTORABLE, _nesting(where))
    try:
        if check_nul:
            if item.get("type") in _CLEANED:
                item = _without_nul(item)
            elif (where := protocol.nul_at(item)) is not None:
                return _unstorable(session, item, _UNSTORABLE, f"{where}: {protocol.NUL_REFUSAL}")
        message = protocol.worker_message.validate_python(item)
    except ValidationError as exc:
        kind = item.get("type")
        session.send(
            protocol.Error(
                code="invalid_message",
                ref=_ref_of(item),
                message=f"{kind!r} message: {_first_error(exc)}",
            )
        )
        return None
    return message


def _ref_of(item: dict[str, Any]) -> protocol.AttemptRef | None:
    try:
        return protocol.AttemptRef(run_id=item["run_id"], attempt=item["attempt"])
    except (KeyError, ValidationError, TypeError):
        return None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False, include_input=False)[0]
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else str(error["msg"])
