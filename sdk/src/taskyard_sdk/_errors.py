"""What can go wrong, as exceptions that say what happened and what to do.

    TaskyardError
    ├── EngineUnreachable        the engine did not answer (not running, wrong URL)
    ├── ConnectionLost           the connection closed while a call that changes something was
    │                            in flight: it may or may not have been applied
    ├── ApiError                 the engine refused a request; `.status` and `.code` say how
    │   ├── AuthenticationError  401: missing, wrong or revoked token
    │   ├── PermissionDenied     403: the token's role may not do this
    │   ├── NotFound             404
    │   ├── Conflict             409: e.g. cancelling a finished run
    │   ├── InvalidRequest       400/413/422: the request was malformed or invalid
    │   └── Unavailable          503: the engine's database is unavailable (retried first)
    ├── InvalidInput             the input failed the task's model (raised before sending)
    ├── TaskFailed               the run ended failed, timed out or cancelled; `.error` has the
    │                            remote exception's type, message and traceback
    └── ResultTimeout            waiting for a result took longer than the caller allowed

Raised inside a task, to steer retries:

    NonRetryableError            fail now, skip the remaining retries
    RetryAfter(seconds)          retry after this delay instead of the back-off schedule
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from taskyard_sdk.models import ErrorInfo, RunStatus
from taskyard_sdk.protocol import ErrorEnvelope


class TaskyardError(Exception):
    """Base class of every error the SDK raises."""


class EngineUnreachable(TaskyardError, ConnectionError):
    pass


class ConnectionLost(TaskyardError, ConnectionError):
    pass


class ApiError(TaskyardError):
    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []


class AuthenticationError(ApiError):
    pass


class PermissionDenied(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class InvalidRequest(ApiError):
    pass


class Unavailable(ApiError):
    pass


class InvalidInput(TaskyardError, ValueError):
    pass


class ResultTimeout(TaskyardError, TimeoutError):
    pass


class TaskFailed(TaskyardError):
    """A run ended without succeeding."""

    def __init__(self, run_id: UUID, task: str, status: RunStatus, error: ErrorInfo | None) -> None:
        self.run_id = run_id
        self.task = task
        self.status = status
        self.error = error
        what = f"{error.type}: {error.message}" if error else status.value
        super().__init__(f"run {run_id} of task {task!r} {status.value}: {what}")


class NonRetryableError(Exception):
    """Raise in a task to fail the run at once, without the remaining retries."""


class RetryAfter(Exception):
    """Raise in a task to be retried after `seconds` (counts as an attempt)."""

    def __init__(self, seconds: float, message: str = "") -> None:
        super().__init__(message or f"retry after {seconds:g}s")
        self.seconds = seconds


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    503: Unavailable,
}


def api_error(status: int, body: Any) -> ApiError:
    error = ErrorEnvelope.read(body)
    if error is not None:
        code, message, details = error.code, error.message, error.details
    else:
        said = str(body)[:500] if body else "an empty answer"
        code, message, details = "error", said, None
    if status == 401:
        message += (
            "; pass token= to Taskyard(...) or set TASKYARD_TOKEN (a local engine writes "
            "one to .taskyard/token)"
        )
    return _BY_STATUS.get(status, ApiError)(status, code, message, details)
