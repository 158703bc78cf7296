"""API errors and the middleware that turns every failure into `{"error": {"code", "message"}}`.

No traceback ever reaches a client: unexpected exceptions are logged with a request id, and the
client gets a 500 that quotes the id so the log line can be found.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from taskyard.db import TRANSIENT_ERRORS
from taskyard.errors import ApiError

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# Request ids: this process's random prefix and a counter (a uuid4 per request costs a syscall).
_REQUEST_IDS = (f"{secrets.token_hex(6)}{n:010x}" for n in itertools.count(1))
MAX_REQUEST_BYTES = web.AppKey("max_request_bytes", int)


_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 422: "invalid",
    429: "too_many_requests", 503: "unavailable",
}


def error_response(status: int, code: str, message: str,
                   details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return web.Response(status=status, body=orjson.dumps({"error": error}),
                        content_type="application/json", headers=headers)


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


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = request.headers.get(REQUEST_ID_HEADER) or next(_REQUEST_IDS)
    headers = {REQUEST_ID_HEADER: request_id}
    try:
        response = await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details, headers)
    except TRANSIENT_ERRORS as exc:
        log.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
        headers["Retry-After"] = "1"
        return error_response(503, "unavailable",
                              "the database is unavailable right now; retry shortly",
                              headers=headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        error = error_response(exc.status, code, _http_exception_message(exc, request),
                               headers=headers)
        if isinstance(exc, web.HTTPMethodNotAllowed):
            error.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return error
    except Exception:
        log.exception("unhandled error in %s %s (request id %s)", request.method, request.path,
                      request_id)
        return error_response(500, "internal",
                              f"internal error; the engine log has details under request id "
                              f"{request_id}", headers=headers)
    if not response.prepared:
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
    return response
