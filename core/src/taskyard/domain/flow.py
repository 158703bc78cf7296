"""What flow control needs to know of one run, worked out once, when the run is created: the key
of each concurrency level, the bucket and units of each rate limit, for a sticky workflow step
the worker it sticks to, and for a batch task's run the key of the batches it may join. Queue
actors decide with these; they never evaluate expressions.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from taskyard.domain.expressions import ExpressionError, check, evaluate, key_text
from taskyard_sdk.models import Concurrency, RateLimit, TaskOptions

FLOW_NAMES = frozenset({"input", "metadata"})  # what concurrency and rate-limit CEL may read


@dataclass(frozen=True, slots=True)
class Flow:
    keys: tuple[str, ...] = ()  # one per options.concurrency level
    units: tuple[tuple[str, int], ...] = ()  # (bucket, units), one per options.rate_limits
    sticky_worker: uuid.UUID | None = None
    error: str | None = None  # why they could not be worked out (the run fails when queued)
    batch_key: str | None = None  # a batch task's: only runs of one key share a batch

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "keys": self.keys,
                "units": self.units,
                "sticky_worker": self.sticky_worker,
                "error": self.error,
                "batch_key": self.batch_key,
            }
        ).decode()

    @classmethod
    def from_json(cls, text: str | bytes | None) -> Flow | None:
        if text is None:
            return None
        data = orjson.loads(text)
        sticky = data.get("sticky_worker")
        return cls(
            tuple(data.get("keys", ())),
            tuple((bucket, units) for bucket, units in data.get("units", ())),
            uuid.UUID(sticky) if sticky else None,
            data.get("error"),
            data.get("batch_key"),
        )


def check_options(options: TaskOptions) -> None:
    """Refuse options whose expressions do not compile or read what they cannot see; raises
    ExpressionError naming the option."""
    for index, level in enumerate(options.concurrency):
        _check(f"concurrency[{index}].expression", level.expression)
    for index, limit in enumerate(options.rate_limits):
        if limit.dynamic_key is not None:
            _check(f"rate_limits[{index}].dynamic_key", limit.dynamic_key)
        if isinstance(limit.units, str):
            _check(f"rate_limits[{index}].units", limit.units)
    if options.batch is not None and options.batch.key is not None:
        _check("batch.key", options.batch.key)


def _check(where: str, text: str) -> None:
    try:
        check(text, FLOW_NAMES)
    except ExpressionError as exc:
        raise ExpressionError(f"{where}: {exc}") from None


def flow_for(
    options: TaskOptions,
    input: Any,
    metadata: dict[str, str],
    sticky_worker: uuid.UUID | None = None,
) -> Flow | None:
    """The run's flow facts, or None for a run without concurrency, rate limits, a sticky
    worker or a batch key (most runs: they cost nothing). Raises ExpressionError naming the
    option."""
    batching = options.batch
    if batching is not None and batching.key is not None:
        key = key_text(_value("batch.key", batching.key, {"input": input, "metadata": metadata}))
        return Flow(batch_key=key)
    if not options.concurrency and not options.rate_limits and sticky_worker is None:
        return None
    variables = {"input": input, "metadata": metadata}
    units = tuple(
        _bucket_and_units(index, limit, variables)
        for index, limit in enumerate(options.rate_limits)
    )
    return Flow(keys_for(options.concurrency, input, metadata), units, sticky_worker)


def keys_for(
    levels: Sequence[Concurrency], input: Any, metadata: dict[str, str]
) -> tuple[str, ...]:
    """The key of each concurrency level. Raises ExpressionError naming the level."""
    variables = {"input": input, "metadata": metadata}
    return tuple(
        key_text(_value(f"concurrency[{index}].expression", level.expression, variables))
        for index, level in enumerate(levels)
    )


def _bucket_and_units(index: int, limit: RateLimit, variables: dict[str, Any]) -> tuple[str, int]:
    if limit.key is not None:
        bucket = limit.key
    else:
        assert limit.dynamic_key is not None
        bucket = key_text(_value(f"rate_limits[{index}].dynamic_key", limit.dynamic_key, variables))
    units = limit.units
    if isinstance(units, str):
        value = _value(f"rate_limits[{index}].units", units, variables)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value != int(value)
            or value < 0
        ):
            raise ExpressionError(
                f"rate_limits[{index}].units: {units!r} gave {value!r}, not a whole number of units"
            )
        units = int(value)
    return bucket, units


def _value(where: str, text: str, variables: dict[str, Any]) -> Any:
    try:
        return evaluate(text, variables)
    except ExpressionError as exc:
        raise ExpressionError(f"{where}: {exc}") from None
