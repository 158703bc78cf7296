"""API errors and the middleware that turns every failure into `{"error": {"code", "message"}}`.

No traceback ever reaches a client: unexpected exceptions are logged with a request id, and the
client gets a 500 that quotes the id so the log line can be found.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from taskyard.errors import ApiError
from taskyard.http.metrics import count_request
from taskyard.store.db import TRANSIENT_ERRORS
from taskyard_sdk.protocol import ErrorEnvelope

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# Request ids: this process's random prefix and a counter (a uuid4 per request costs a syscall).
_REQUEST_ID_PREFIX = secrets.token_hex(6)
_REQUEST_IDS = (f"{_REQUEST_ID_PREFIX}{n:010x}" for n in itertools.count(1))
MAX_REQUEST_BYTES = web.AppKey("max_request_bytes", int)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    503: "unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=ErrorEnvelope.of(code, message, details),
        content_type="application/json",
        headers=headers,
    )


def _http_exception_message(exc: web.HTTPException, request: web.Request) -> str:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[MAX_REQUEST_BYTES]
        return f"request body is larger than the limit of {limit} bytes"
    if isinstance(exc, web.HTTPNotFound):
        return f"no endpoint at {request.path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return f"{request.method} is not allowed on {request.path}; allowed: {allowed}"
    return exc.reason


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def failure(
    exc: Exception, method: str, path: str, request_id: str
) -> tuple[int, bytes, dict[str, str]]:
    """What a failed call answers: status, error envelope and extra headers, for an expected
    failure or an unexpected one (logged under the request id)."""
    if isinstance(exc, ApiError):
        return exc.status, ErrorEnvelope.of(exc.code, exc.message, exc.details), {}
    if isinstance(exc, TRANSIENT_ERRORS):
        log.warning("database unavailable during %s %s: %s", method, path, exc)
        return (
            503,
            ErrorEnvelope.of("unavailable", "the database is unavailable right now; retry shortly"),
            {"Retry-After": "1"},
        )
    log.error("unhandled error in %s %s (request id %s)", method, path, request_id, exc_info=exc)
    return (
        500,
        ErrorEnvelope.of(
            "internal", f"internal error; the engine log has details under request id {request_id}"
        ),
        {},
    )


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse (a NUL in a header, a broken request line) as an
    error with a traceback, after answering it 400: the client's fault, which any client can
    repeat to fill the log. Such records become one warning line naming the problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = " ".join(str(exc.message).split())
            record.msg, record.args = "malformed request refused (400): %s", (reason,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_malformed_requests() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())


def next_request_id() -> str:
    return next(_REQUEST_IDS)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request's answer: an error as JSON with its request id, and the request counted
    for /metrics (one middleware: each layer of them costs every request a few µs)."""
    began = time.perf_counter()
    try:
        response = await _answer(request, handler)
    except web.HTTPException as exc:  # a redirect
        count_request(request, exc.status, began, timed=True)
        raise
    count_request(request, response.status, began, timed=type(response) is web.Response)
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get(REQUEST_ID_HEADER) or next(_REQUEST_IDS)
    headers = {REQUEST_ID_HEADER: request_id}
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        error = error_response(
            exc.status, code, _http_exception_message(exc, request), headers=headers
        )
        if isinstance(exc, web.HTTPMethodNotAllowed):
            error.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return error
    except Exception as exc:
        status, body, extra = failure(exc, request.method, request.path, request_id)
        return web.Response(
            status=status, body=body, content_type="application/json", headers={**headers, **extra}
        )
    if not response.prepared:
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
    return response
