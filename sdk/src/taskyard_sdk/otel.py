"""OpenTelemetry for the SDK (`pip install taskyard-sdk[otel]`): a span for each trigger, a span
for each attempt a worker runs (your own spans inside a task nest under it), and the W3C trace
context carried in the run, so one trace goes from the caller through the engine to the worker
and on to the runs a task triggers.

The trace context rides in the run's metadata under `traceparent`: it crosses every path a run
takes (REST, the client channel, the outbox, workflow steps, children, replays, restarts) with no
engine change, and it is what the engine's `otel` plugin reads to add the run's own span and its
queue wait. Ids are agreed without a message: a run's span id is derived from its run id
(`run_span_id`), and a run triggered outside any trace takes its run id as its trace id. The
worker's attempt span is a child of the run's span; the run's span is a child of the trigger's.

Without opentelemetry-api installed (or with no tracer provider set up), all of it is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

try:
    from opentelemetry import trace
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
except ImportError:  # the extra is not installed
    trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"  # the metadata key, as W3C names the header
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def run_span_id(run_id: uuid.UUID) -> int:
    """The span id of a run's span: the same in the engine, which makes it, and in the worker,
    whose attempt spans are its children."""
    return int.from_bytes(hashlib.sha256(run_id.bytes).digest()[:8], "big") or 1


def trace_id_of(metadata: dict[str, str], root: uuid.UUID) -> int:
    """The trace a run belongs to: its caller's, or, when it had none, the one its `root` (the
    run itself, or a step's workflow run) starts."""
    parsed = parse_traceparent(metadata.get(TRACEPARENT))
    return parsed[0] if parsed else root.int


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C traceparent; None if absent or malformed."""
    match = _TRACEPARENT.match(value or "")
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(match.group(3), 16)


def traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def with_trace(metadata: dict[str, str] | None) -> dict[str, str] | None:
    """The metadata with the current span's trace context, when there is a span to carry (a
    `traceparent` the caller set is kept)."""
    if trace is None or (metadata and TRACEPARENT in metadata):
        return metadata
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return metadata
    carried = traceparent(context.trace_id, context.span_id, context.trace_flags.sampled)
    return {**(metadata or {}), TRACEPARENT: carried}


@contextlib.contextmanager
def trigger_span(task: str, count: int) -> Iterator[None]:
    """A span around a trigger, current while the runs' metadata is made (so they carry it);
    nothing, not even a no-op span, until the process has set up a tracer provider."""
    if not _tracing():
        yield
        return
    tracer = trace.get_tracer("taskyard")
    name = f"taskyard.trigger {task}"
    with tracer.start_as_current_span(
        name, kind=SpanKind.PRODUCER, attributes={"taskyard.task": task, "taskyard.runs": count}
    ):
        yield


@contextlib.contextmanager
def attempt_span(
    task: str,
    run_id: uuid.UUID,
    attempt: int,
    metadata: dict[str, str],
    root: uuid.UUID,
) -> Iterator[Any]:
    """The span of one attempt on the worker, child of the run's span, current while the task
    runs: the task's own spans nest under it. Yields the span (None without OpenTelemetry or
    a tracer provider)."""
    if not _tracing():
        yield None
        return
    parsed = parse_traceparent(metadata.get(TRACEPARENT))
    sampled = TraceFlags(parsed[2] if parsed else TraceFlags.SAMPLED)
    run_span = SpanContext(
        trace_id=trace_id_of(metadata, root),
        span_id=run_span_id(run_id),
        is_remote=True,
        trace_flags=sampled,
    )
    parent = trace.set_span_in_context(NonRecordingSpan(run_span))
    tracer = trace.get_tracer("taskyard")
    with tracer.start_as_current_span(
        f"taskyard.attempt {task}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "taskyard.task": task,
            "taskyard.run_id": str(run_id),
            "taskyard.attempt": attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def _tracing() -> bool:
    """Whether spans go anywhere: OpenTelemetry is installed and a tracer provider is set up."""
    return trace is not None and not isinstance(
        trace.get_tracer_provider(), trace.ProxyTracerProvider
    )


def attempt_failed(span: Any, error_type: str, message: str) -> None:
    if span is not None and trace is not None:
        span.set_status(Status(StatusCode.ERROR, f"{error_type}: {message}"))
