"""How a task runs: its options, concurrency, rate limits, labels and stickiness."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)

from taskyard_sdk._durations import parse_duration
from taskyard_sdk.models._base import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MAX_SECONDS,
    MIN_PRIORITY,
    NAME_PATTERN,
    RATE_KEY_PATTERN,
    LabelValue,
    _Frozen,
    _Strict,
)


class ConcurrencyStrategy(StrEnum):
    """What happens when a concurrency key already has `max_runs` runs."""

    GROUP_ROUND_ROBIN = "group_round_robin"
    """New runs wait; keys take turns, so a busy key cannot starve the others."""
    CANCEL_IN_PROGRESS = "cancel_in_progress"
    """A new run cancels the oldest run of its key (running or waiting) to make room."""
    CANCEL_NEWEST = "cancel_newest"
    """The new run is cancelled when its key already has `max_runs` runs (running or waiting)."""
    CANCEL_QUEUED_EXCEPT_NEWEST = "cancel_queued_except_newest"
    """Debounce: a new run cancels the runs of its key still waiting; running ones go on."""


class Concurrency(_Frozen):
    """At most `max_runs` runs of the task run at once for each value of `expression` (CEL over
    `input` and `metadata`, e.g. "input.user_id"); a constant ("'all'") is a global limit."""

    expression: str = Field(min_length=1, max_length=1000)
    max_runs: int = Field(default=1, ge=1, le=100_000)
    strategy: ConcurrencyStrategy = ConcurrencyStrategy.GROUP_ROUND_ROBIN


class Batching(_Frozen):
    """A batch task's gathering: the engine hands up to `max_size` queued runs of the same
    `key` (CEL over `input` and `metadata`; none: one batch for all) to one attempt, once that
    many are queued or the oldest has waited `max_wait` seconds."""

    max_size: int = Field(default=100, ge=1, le=10_000)
    max_wait: float = Field(default=1.0, ge=0, le=3600)
    key: str | None = Field(default=None, min_length=1, max_length=1000)

    @field_validator("max_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value


class RateDuration(StrEnum):
    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def seconds(self) -> float:
        return _RATE_SECONDS[self]


_RATE_SECONDS = {
    RateDuration.SECOND: 1.0,
    RateDuration.MINUTE: 60.0,
    RateDuration.HOUR: 3600.0,
    RateDuration.DAY: 86_400.0,
}


class RateLimit(_Frozen):
    """Each run of the task takes `units` from a rate limit when it starts; a run waits in the
    queue while its limit has too few units left in the current window.

    Either `key`, a limit set with `ty.rate_limits.put(key, limit=..., duration=...)`, or
    `dynamic_key`, CEL over `input` and `metadata` whose value names the bucket (one per user,
    say), with its own `limit` and `duration`. `units` is a count or CEL ("input.tokens").
    """

    key: str | None = Field(default=None, pattern=RATE_KEY_PATTERN)
    dynamic_key: str | None = Field(default=None, min_length=1, max_length=1000)
    units: int | str = Field(default=1, description="A count >= 1, or CEL giving one.")
    limit: int | None = Field(default=None, ge=1, le=1_000_000_000)
    duration: RateDuration | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> RateLimit:
        if (self.key is None) == (self.dynamic_key is None):
            raise ValueError(
                "give either key (a limit set with rate_limits.put) or dynamic_key "
                "(CEL naming a bucket per value), not both or neither"
            )
        if self.dynamic_key is not None and (self.limit is None or self.duration is None):
            raise ValueError(f"dynamic_key {self.dynamic_key!r} needs limit and duration")
        if self.key is not None and (self.limit is not None or self.duration is not None):
            raise ValueError(
                f"key {self.key!r} takes its limit from rate_limits.put; limit and "
                f"duration are for dynamic_key"
            )
        if isinstance(self.units, int) and not isinstance(self.units, bool) and self.units < 1:
            raise ValueError(f"units must be at least 1, not {self.units}")
        if isinstance(self.units, str) and not 1 <= len(self.units) <= 1000:
            raise ValueError("units as CEL must be 1 to 1000 characters")
        return self


class Label(_Frozen):
    """A label a task wants on its worker: `required` ones filter workers, the others rank them
    by `weight`. `comparator` compares the worker's value (left) with `value` (right)."""

    value: LabelValue
    required: bool = False
    comparator: Literal["=", "!=", ">", ">=", "<", "<="] = "="
    weight: int = Field(default=100, ge=0, le=1_000_000)

    def __init__(self, value: LabelValue | None = None, /, **fields: Any) -> None:
        if value is not None:
            fields["value"] = value
        super().__init__(**fields)


def _labels_in(value: Any) -> Any:
    """`{"gpu": Label("a100", required=True), "zone": "eu"}` -> sorted (name, Label) pairs."""
    if isinstance(value, dict):
        return tuple(
            sorted(
                (name, label if isinstance(label, Label | dict) else {"value": label})
                for name, label in value.items()
            )
        )
    return value


DesiredLabels = Annotated[
    tuple[tuple[str, Label], ...],
    # what is sent: a Label ({value, required, comparator, weight}) or a bare value per name
    BeforeValidator(_labels_in, json_schema_input_type=dict[str, Label | LabelValue]),
    PlainSerializer(dict, return_type=dict[str, Label]),
]


class Sticky(StrEnum):
    """For workflow steps: run on the worker that ran the workflow run's first step."""

    SOFT = "soft"
    """Prefer that worker; another takes the step when it has no free slot."""
    HARD = "hard"
    """Only that worker; the step waits for it (until its schedule_timeout)."""


class RateLimitRequest(_Strict):
    limit: int = Field(ge=1, le=1_000_000_000, description="Units per duration.")
    duration: RateDuration = RateDuration.MINUTE


class RateLimitView(BaseModel):
    key: str
    limit: int
    duration: RateDuration
    configured: bool = Field(description="Set with the API (else a dynamic key's bucket).")
    used: int = Field(description="Units taken in the current window.")
    available: int = Field(description="Units a run could take now.")


class RateLimitList(BaseModel):
    rate_limits: list[RateLimitView]


class QueueOrder(StrEnum):
    FIFO = "fifo"
    LIFO = "lifo"


class TaskOptions(_Strict):
    """How the engine runs a task. Durations are in seconds (the SDK accepts "30s", "5m", ...).
    Immutable and hashable, so identical options are shared by every run that has them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retries: int = Field(default=0, ge=0, le=1000, description="Retries after the first attempt.")
    backoff_factor: float | None = Field(
        default=None,
        ge=1.0,
        le=100.0,
        description="Retry n waits min(backoff_factor ** n, backoff_max_seconds); None retries "
        "at once.",
    )
    backoff_max_seconds: float = Field(default=3600.0, gt=0, le=MAX_SECONDS)
    execution_timeout: float = Field(
        default=60.0, gt=0, le=MAX_SECONDS, description="Longest an attempt may run."
    )
    schedule_timeout: float = Field(
        default=300.0,
        gt=0,
        le=MAX_SECONDS,
        description="Longest a run may wait in the queue to start.",
    )
    priority: int = Field(default=DEFAULT_PRIORITY, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    queue: str = Field(default="default", pattern=NAME_PATTERN)
    order: QueueOrder = Field(
        default=QueueOrder.FIFO, description="Within a priority: oldest first, or newest first."
    )
    concurrency: tuple[Concurrency, ...] = Field(default=(), max_length=4)
    rate_limits: tuple[RateLimit, ...] = Field(default=(), max_length=4)
    desired_worker_labels: DesiredLabels = ()
    sticky: Sticky | None = None
    slot_cost: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Worker slots an attempt takes (a task needing two GPUs of a worker with "
        "four, say): it starts only on a worker with that many free.",
    )
    durable: bool = Field(
        default=False,
        description="A durable task (`ty.durable_task`): its log survives retries and crashes.",
    )
    batch: Batching | None = Field(
        default=None,
        description="A batch task (`ty.batch_task`): its runs are handed to attempts in batches.",
    )

    @field_validator("execution_timeout", "schedule_timeout", "backoff_max_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return parse_duration(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _batch_alone(self) -> TaskOptions:
        """A batch's runs start together in one attempt: per-run flow control cannot apply."""
        if self.batch is not None:
            clashing = [
                name
                for name, used in (
                    ("durable", self.durable),
                    ("concurrency", bool(self.concurrency)),
                    ("rate_limits", bool(self.rate_limits)),
                    ("sticky", self.sticky is not None),
                )
                if used
            ]
            if clashing:
                raise ValueError(
                    f"a batch task cannot also have {', '.join(clashing)}: its runs start "
                    f"together, in one attempt"
                )
        return self
