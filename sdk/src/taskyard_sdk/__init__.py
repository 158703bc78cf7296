"""Taskyard SDK: define tasks, run workers, trigger work. The whole public API is here.

Worker-only deployments install this package alone; it never imports the engine.
"""

from taskyard_sdk._client import Runs, Taskyard
from taskyard_sdk._conditions import And, Event, Or, Sleep
from taskyard_sdk._context import BatchContext, Context
from taskyard_sdk._durable import DurableContext, NonDeterminismError, WaitResult, WaitTimeout
from taskyard_sdk._durations import parse_duration
from taskyard_sdk._errors import (
    ApiError,
    AuthenticationError,
    Conflict,
    ConnectionLost,
    EngineUnreachable,
    InvalidInput,
    InvalidRequest,
    NonRetryableError,
    NotFound,
    PermissionDenied,
    ResultTimeout,
    RetryAfter,
    TaskFailed,
    TaskyardError,
    Unavailable,
)
from taskyard_sdk._events import Events
from taskyard_sdk._pauses import Pauses
from taskyard_sdk._rate_limits import RateLimits
from taskyard_sdk._resources import Depends
from taskyard_sdk._runnable import RunHandle
from taskyard_sdk._schedules import Crons, Schedulable, Schedules
from taskyard_sdk._task import Task, TaskSettings
from taskyard_sdk._worker import Worker, WorkerStopped
from taskyard_sdk._workflow import Workflow, WorkflowTask
from taskyard_sdk.models import (
    Batching,
    CatchUp,
    Concurrency,
    ConcurrencyStrategy,
    CronView,
    ErrorInfo,
    EventPage,
    EventRequest,
    EventView,
    Label,
    LogLine,
    LogPage,
    PauseKind,
    PauseView,
    QueueOrder,
    RateDuration,
    RateLimit,
    RateLimitView,
    RunKind,
    RunPage,
    RunStatus,
    RunView,
    ScheduleView,
    Sticky,
    TaskOptions,
    WorkflowInfo,
)

__version__ = "0.1.0"

__all__ = [
    "And",
    "ApiError",
    "AuthenticationError",
    "BatchContext",
    "Batching",
    "CatchUp",
    "Concurrency",
    "ConcurrencyStrategy",
    "Conflict",
    "ConnectionLost",
    "Context",
    "CronView",
    "Crons",
    "Depends",
    "DurableContext",
    "EngineUnreachable",
    "ErrorInfo",
    "Event",
    "EventPage",
    "EventRequest",
    "EventView",
    "Events",
    "InvalidInput",
    "InvalidRequest",
    "Label",
    "LogLine",
    "LogPage",
    "NonDeterminismError",
    "NonRetryableError",
    "NotFound",
    "Or",
    "PauseKind",
    "PauseView",
    "Pauses",
    "PermissionDenied",
    "QueueOrder",
    "RateDuration",
    "RateLimit",
    "RateLimitView",
    "RateLimits",
    "ResultTimeout",
    "RetryAfter",
    "RunHandle",
    "RunKind",
    "RunPage",
    "RunStatus",
    "RunView",
    "Runs",
    "Schedulable",
    "ScheduleView",
    "Schedules",
    "Sleep",
    "Sticky",
    "Task",
    "TaskFailed",
    "TaskOptions",
    "TaskSettings",
    "Taskyard",
    "TaskyardError",
    "Unavailable",
    "WaitResult",
    "WaitTimeout",
    "Worker",
    "WorkerStopped",
    "Workflow",
    "WorkflowInfo",
    "WorkflowTask",
    "__version__",
    "parse_duration",
]
