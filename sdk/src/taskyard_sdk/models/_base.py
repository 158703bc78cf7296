"""Names, limits and the bases every model builds on."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

MIN_PRIORITY, DEFAULT_PRIORITY, MAX_PRIORITY = 1, 2, 4
NAME_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"
STEP_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"  # no ':', which joins workflow and step in task names
EVENT_KEY_PATTERN = r"^[A-Za-z0-9_.:/\-]{1,200}$"
EVENT_MATCH_PATTERN = r"^[A-Za-z0-9_.:/\-]{0,200}\*?$"  # an exact key, or a prefix ending in *
RATE_KEY_PATTERN = r"^[A-Za-z0-9_.:/@\-]{1,200}$"
# The longest any duration may be (100 years): the engine stores the times durations lead to,
# and one ages away is a time PostgreSQL refuses, failing the write that holds it.
MAX_SECONDS = 100 * 365 * 86_400

LabelValue = str | int | float | bool


class RunStatus(StrEnum):
    PENDING = "pending"  # a workflow step waiting for its wait_for conditions
    QUEUED = "queued"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    SKIPPED = "skipped"  # a workflow step that skip_if (or its skipped parents) skipped

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
        RunStatus.TIMED_OUT,
        RunStatus.SKIPPED,
    }
)


class RunKind(StrEnum):
    TASK = "task"
    WORKFLOW = "workflow"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- flow control and routing ----------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
