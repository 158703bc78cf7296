"""Expected refusals, raised anywhere in the engine and answered as HTTP errors.

Each carries an HTTP status, a stable machine-readable code and a message that names what is
wrong and where. An actor that raises one of these in answer to an `ask` keeps running: it is an
answer, not a crash.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status, a stable code and a human message."""

    status = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class Conflict(ApiError):
    status, code = 409, "conflict"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ApiError):
    status, code = 422, "invalid"


class Unavailable(ApiError):
    status, code = 503, "unavailable"


class TenantMoved(Unavailable):
    """This engine node no longer owns the tenant (its lease moved): nothing was done, and the
    call may be sent again (any node forwards it to the new owner)."""

    code = "tenant_moved"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"
