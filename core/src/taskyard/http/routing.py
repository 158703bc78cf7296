"""Declarative endpoints: one decorator gives a handler its path, auth, body/query validation,
response serialisation and its OpenAPI entry.

    @router.post("/api/v1/tokens", roles=[Role.ADMIN], body=TokenCreate, response=TokenCreated)
    async def create_token(call: Call[TokenCreate]) -> TokenCreated: ...

`roles` defaults to admin only (deny by default); `roles=None` makes an endpoint public. A path
parameter named `*_id` is a UUID (read it with `call.path_uuid`); `params` gives the pattern any
other one must match. Bodies are JSON: sent with no Content-Type, or a JSON one.

Over 400 lines on purpose: an endpoint's parsing, auth and validation errors are one pipeline, and
the client channel calls the same pipeline without HTTP.
"""

from __future__ import annotations

import re
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel, TypeAdapter, ValidationError

from taskyard.domain.auth import Principal, Role
from taskyard.errors import BadRequest, Forbidden, Unprocessable, UnsupportedMediaType
from taskyard.http.forwarding import FORWARDED, FORWARDER
from taskyard_sdk.protocol import MAX_JSON_DEPTH, NUL_REFUSAL, nul_at, too_deep

BodyT = TypeVar("BodyT")
Authenticator = Callable[[str | None], Awaitable[Principal]]
AUTHENTICATOR: web.AppKey[Authenticator] = web.AppKey("authenticator")

_ADMIN_ONLY = frozenset({Role.ADMIN})
PG_INTEGER_MAX = 2**31 - 1  # the largest `integer` (and `bigint`) PostgreSQL stores
PG_BIGINT_MAX = 2**63 - 1


@dataclass(slots=True)
class Call(Generic[BodyT]):
    """One validated request, as a handler sees it: over HTTP, or over a client channel (then
    `request` is the channel's own, and `params` are the call's path parameters)."""

    request: web.Request
    body: BodyT
    query: Any
    _principal: Principal | None
    params: Mapping[str, str]

    @property
    def principal(self) -> Principal:
        if self._principal is None:
            raise RuntimeError("a public endpoint has no principal")
        return self._principal

    @property
    def path(self) -> dict[str, str]:
        return dict(self.params)

    def path_uuid(self, name: str) -> uuid.UUID:
        """A path parameter that must be a UUID; 422 naming it otherwise."""
        raw = self.params[name]
        try:
            return uuid.UUID(raw)
        except ValueError:
            raise Unprocessable(f"path.{name}: {raw!r} is not a valid id (a UUID)") from None


Handler = Callable[[Call[Any]], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Document:
    """Data already shaped like the endpoint's response model (e.g. rows read from our own
    tables), sent as JSON without building models: for responses of thousands of runs."""

    data: Any


@dataclass(frozen=True, slots=True)
class WithStatus:
    """A result answered with another status than the endpoint's usual one (e.g. 200 for a
    run an idempotency key found, where a new one is 201)."""

    status: int
    result: Any


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    roles: frozenset[Role] | None
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: Any
    status: int
    summary: str
    description: str | None
    tags: tuple[str, ...]
    channel: bool  # also served over client channels (JSON in, JSON out, an authenticated caller)
    params: tuple[tuple[str, re.Pattern[str]], ...] = ()  # path parameters' patterns
    other_statuses: Mapping[int, str] = field(default_factory=dict)  # WithStatus answers


@dataclass
class Router:
    """A collection of endpoints, mounted on the aiohttp application by the engine."""

    tags: tuple[str, ...] = ()
    endpoints: list[Endpoint] = field(default_factory=list)
    channel: bool = True  # False: none of these endpoints are served over client channels

    def route(
        self,
        method: str,
        path: str,
        *,
        roles: Iterable[Role] | None = _ADMIN_ONLY,
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: Any = None,
        status: int = 200,
        summary: str = "",
        description: str | None = None,
        channel: bool = True,
        params: Mapping[str, str] | None = None,
        other_statuses: Mapping[int, str] | None = None,
    ) -> Callable[[Handler], Handler]:
        """`channel=False` for handlers that need the HTTP request itself (a stream, a raw
        body); endpoints without roles are never served over a channel. `params`: the regular
        expression each named path parameter must match (422 otherwise). `other_statuses`: the
        statuses the handler also answers with (`WithStatus`), each with what it means."""

        def register(handler: Handler) -> Handler:
            self.endpoints.append(
                Endpoint(
                    method=method,
                    path=path,
                    handler=handler,
                    roles=None if roles is None else frozenset(roles),
                    body=body,
                    query=query,
                    response=response,
                    status=status,
                    summary=summary or (handler.__doc__ or "").strip().split("\n")[0],
                    description=description,
                    tags=self.tags,
                    channel=channel and self.channel and roles is not None,
                    params=tuple(
                        (name, re.compile(pattern)) for name, pattern in (params or {}).items()
                    ),
                    other_statuses=dict(other_statuses or {}),
                )
            )
            return handler

        return register

    def get(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **options)

    def post(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **options)

    def put(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **options)

    def patch(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **options)

    def delete(self, path: str, **options: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **options)


class RoutePaths:
    """How paths are matched: a `{param}` segment does not take the name of a fixed segment
    beside it, so `/api/v1/runs/{run_id}` leaves `/api/v1/runs/batch` to the endpoints there.
    A wrong method on `/api/v1/runs/batch` is then a 405 allowing POST alone, not a GET that
    answers 422 about a run id "batch"."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._fixed: dict[str, set[str]] = {}  # by the path before a segment: its fixed names
        for path in paths:
            parts = path.split("/")
            for index, part in enumerate(parts):
                if not part.startswith("{"):
                    self._fixed.setdefault("/".join(parts[:index]), set()).add(part)

    def _segments(self, path: str) -> list[str | tuple[str, str]]:
        """The path's fixed segments, and (name, regex) for its parameters."""
        parts = path.split("/")
        segments: list[str | tuple[str, str]] = []
        for index, part in enumerate(parts):
            if part.startswith("{"):
                fixed = self._fixed.get("/".join(parts[:index]))
                names = "|".join(re.escape(name) for name in sorted(fixed or ()))
                segments.append((part[1:-1], rf"(?!(?:{names})(?:/|$))[^/]+" if names else "[^/]+"))
            else:
                segments.append(part)
        return segments

    def for_aiohttp(self, path: str) -> str:
        return "/".join(
            part if isinstance(part, str) else f"{{{part[0]}:{part[1]}}}"
            for part in self._segments(path)
        )

    def regex(self, path: str) -> re.Pattern[str]:
        return re.compile(
            "/".join(
                re.escape(part) if isinstance(part, str) else f"(?P<{part[0]}>{part[1]})"
                for part in self._segments(path)
            )
        )


def mount(app: web.Application, endpoints: Sequence[Endpoint]) -> None:
    authenticate = app[AUTHENTICATOR]
    paths = RoutePaths(endpoint.path for endpoint in endpoints)
    for endpoint in endpoints:
        app.router.add_route(
            endpoint.method,
            paths.for_aiohttp(endpoint.path),
            _aiohttp_handler(endpoint, authenticate),
        )


def _aiohttp_handler(
    endpoint: Endpoint, authenticate: Authenticator
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    encode = result_encoder(endpoint)

    async def handle(request: web.Request) -> web.StreamResponse:
        principal = None
        if endpoint.roles is not None:
            principal = authorize(
                endpoint, await authenticate(request.headers.get("Authorization"))
            )
            # Websockets are not relayed: a worker is sent to the owner, a channel forwards
            # each of its calls.
            if request.headers.get("Upgrade", "").lower() != "websocket":
                forwarder = request.app[FORWARDER]
                owner = await forwarder.owner_elsewhere(
                    principal.tenant_id, forwarded=FORWARDED in request.headers
                )
                if owner is not None:
                    return await forwarder.relay(request, owner)
        body, text = await _json_body(request) if endpoint.body is not None else (NO_BODY, b"")
        result = await invoke(
            endpoint, request, principal, request.match_info, request.query, body, text
        )
        if isinstance(result, web.StreamResponse):
            return result
        status, payload = encode(result)
        if payload is None:
            return web.Response(status=status)
        return web.Response(status=status, body=payload, content_type="application/json")

    return handle


def authorize(endpoint: Endpoint, principal: Principal) -> Principal:
    """The caller, if its role may call the endpoint; 403 naming the roles needed otherwise."""
    roles = endpoint.roles or frozenset()
    if principal.role not in roles:
        needed = " or ".join(sorted(roles))
        raise Forbidden(
            f"{endpoint.method} {endpoint.path} needs a token with role "
            f"{needed}; this token has role {principal.role}"
        )
    return principal


def result_encoder(endpoint: Endpoint) -> Callable[[Any], tuple[int, bytes | None]]:
    """How a handler's result becomes a status and a JSON body (None: no body)."""
    adapter = TypeAdapter(endpoint.response) if endpoint.response is not None else None

    def encode(result: Any) -> tuple[int, bytes | None]:
        if isinstance(result, WithStatus):
            return result.status, encode(result.result)[1]
        if isinstance(result, Document):
            return endpoint.status, orjson.dumps(
                result.data, option=orjson.OPT_UTC_Z, default=str
            )  # asyncpg's own UUID type
        if result is None and endpoint.status == 204:
            return 204, None
        return endpoint.status, (
            adapter.dump_json(result) if adapter is not None else orjson.dumps(result)
        )

    return encode


NO_BODY: Any = object()  # a call that came without a body


async def invoke(
    endpoint: Endpoint,
    request: web.Request,
    principal: Principal | None,
    params: Mapping[str, str],
    query: MultiMapping[str],
    body: Any,
    text: str | bytes,
) -> Any:
    """Validate a call's path, query and JSON body as the endpoint wants them, and run its
    handler: the one way in for an HTTP request and for a client channel's call. `text`: the
    JSON the body was parsed from (or a text that holds it, such as a channel's frame). 400 for
    a missing body, 422 naming a bad field."""
    if params:
        check_path(endpoint, params)
    values = validate(endpoint.query, query_values(query, endpoint.query), "query")
    model = None
    if endpoint.body is not None:
        if body is NO_BODY:
            raise BadRequest("request body is empty; expected a JSON document")
        check_json(body, text, "body")
        model = validate(endpoint.body, body, "body")
    return await endpoint.handler(Call(request, model, values, principal, params))


async def _json_body(request: web.Request) -> tuple[Any, bytes]:
    """The request's JSON body (NO_BODY when empty) and its text; 415 for a Content-Type that
    is not JSON, 400 for JSON that does not parse."""
    if not request.body_exists:  # whatever its Content-Type: 400 for the missing body
        return NO_BODY, b""
    given = request.headers.get("Content-Type")
    # None is read as JSON, all these endpoints take; another type means another kind of body
    if given is not None and given != "application/json":
        kind = request.content_type  # lower case, without parameters
        if kind != "application/json" and not kind.endswith("+json"):
            raise UnsupportedMediaType(
                f"request body has Content-Type {kind}; send JSON, with "
                f"Content-Type: application/json"
            )
    raw = await request.read()
    if not raw:
        return NO_BODY, raw
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def check_json(value: Any, text: str | bytes, where: str) -> None:
    """What a JSON document must be to be stored and sent back: at most MAX_JSON_DEPTH levels
    deep, and free of NUL characters, which PostgreSQL cannot store. Both are first looked for
    in the text (bracket counts, an escape), so an ordinary document costs a few scans of it."""
    nested = too_deep(text, value)
    if nested is not None:
        at = where + nested if nested.startswith("[") else f"{where}.{nested}"
        raise Unprocessable(
            f"{at}: nested more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH}"
        )
    nul = b"\\u0000" in text if isinstance(text, bytes) else "\\u0000" in text
    if nul:  # after the depth check: this walk recurses
        reject_nul_characters(value, where)


def check_path(endpoint: Endpoint, params: Mapping[str, str]) -> None:
    """Path parameters as the endpoint wants them: no NUL character (PostgreSQL cannot take one
    in a query's text either), and each one with a pattern matching it; 422 otherwise."""
    for name, value in params.items():
        reject_nul_characters(value, f"path.{name}")
    for name, pattern in endpoint.params:
        value = params[name]
        if not pattern.fullmatch(value):
            raise Unprocessable(f"path.{name}: {value!r} does not match {pattern.pattern}")


def reject_nul_characters(value: Any, where: str) -> None:
    """PostgreSQL cannot store U+0000 in text or jsonb: refuse it at the edge, naming the field."""
    found = nul_at(value, where)
    if found is not None:
        raise Unprocessable(f"{found}: {NUL_REFUSAL}")


def validate(model: type[BaseModel] | None, data: Any, where: str) -> Any:
    """Data as the model, or 422 naming the first bad field (`where` prefixes its path)."""
    if model is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = [
            {"loc": _location(where, error["loc"]), "message": error["msg"]}
            for error in exc.errors(include_url=False, include_input=False)
        ]
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise Unprocessable(f"{first['loc']}: {first['message']}{more}", details=details) from None


def _location(where: str, loc: tuple[int | str, ...]) -> str:
    text = where
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def query_values(query: MultiMapping[str], model: type[BaseModel] | None) -> dict[str, Any]:
    """Query parameters as the model's fields want them (repeated ones as lists); 422 for a
    NUL character, which no query to PostgreSQL can carry."""
    if model is None:
        return {}
    list_fields = _list_fields(model)
    values = {key: query.getall(key) if key in list_fields else query[key] for key in query}
    reject_nul_characters(values, "query")
    return values


@cache
def _list_fields(model: type[BaseModel]) -> frozenset[str]:
    names = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        candidates = typing.get_args(annotation) if typing.get_origin(annotation) else ()
        if typing.get_origin(annotation) is list or any(
            typing.get_origin(arg) is list for arg in candidates
        ):
            names.add(info.alias or name)
    return frozenset(names)


# The OpenAPI schema of `metadata` query parameters: what metadata_filter reads.
METADATA_PAIRS: dict[str, Any] = {"items": {"type": "string", "pattern": "^[^:]+:"}}


def metadata_filter(pairs: list[str]) -> dict[str, str]:
    """`key:value` query parameters (repeatable) as the metadata they must contain."""
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition(":")
        if not sep or not key:
            raise Unprocessable(f"query.metadata: {pair!r} must be written key:value")
        metadata[key] = value
    return metadata


def page_cursor(cursor: str | None) -> uuid.UUID | None:
    """The `next_cursor` of a previous page: the last id it held."""
    if cursor is None:
        return None
    try:
        return uuid.UUID(cursor)
    except ValueError:
        raise Unprocessable(
            f"query.cursor: {cursor!r} is not a cursor from a previous page"
        ) from None
