"""Taskyard plugin `otel`: the engine's side of a run's trace, exported over OTLP.

    taskyard engine --plugin otel

For each run that ends, the engine's own spans: the run (`taskyard.run <task>`, from its
trigger to its end; for a workflow run, `taskyard.workflow <name>`, the parent of its steps' runs)
and its last attempt's wait in the queue (`taskyard.queue_wait <task>`). They join the trace the
SDK carried in the run (`taskyard_sdk.otel`): the run's span is a child of the caller's trigger
span, and the worker's attempt spans are children of the run's span, whose id both sides derive
from the run id. A run triggered outside any trace starts its own.

Spans are made when the run has ended (its times are known then), from the end the engine
reports to plugins, so nothing is held open across restarts. Exported in batches by the
OpenTelemetry SDK to the OTLP/HTTP endpoint the standard variables name
(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS),
as service OTEL_SERVICE_NAME (default `taskyard-engine`).
"""

from __future__ import annotations

import os
import random

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from taskyard.plugins import PluginHost, RunEnded, hookimpl
from taskyard_sdk.otel import TRACEPARENT, parse_traceparent, run_span_id, trace_id_of

_SCOPE = InstrumentationScope("taskyard.engine")


class Tracing:
    """Turns runs' ends into spans and hands them to a batch exporter (started with the
    engine, flushed when it stops)."""

    def __init__(self) -> None:
        self.resource = Resource.create(
            {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", "taskyard-engine")}
        )
        self.processor: BatchSpanProcessor | None = None

    def start(self) -> None:
        self.processor = BatchSpanProcessor(OTLPSpanExporter())

    def stop(self) -> None:
        if self.processor is not None:
            self.processor.shutdown()  # type: ignore[no-untyped-call]  # exports what is left
            self.processor = None

    def ended(self, runs: list[RunEnded]) -> None:
        if self.processor is None:
            return
        for run in runs:
            for span in self.spans(run):
                self.processor.on_end(span)

    def spans(self, run: RunEnded) -> list[ReadableSpan]:
        if run.created_at is None or run.finished_at is None:
            return []
        step = run.kind == "task" and run.workflow_run_id is not None
        root = run.workflow_run_id if step and run.workflow_run_id else run.run_id
        trace_id = trace_id_of(run.metadata, root)
        flags = TraceFlags(TraceFlags.SAMPLED)
        parent = None
        if step and run.workflow_run_id is not None:
            parent = _context(trace_id, run_span_id(run.workflow_run_id), flags)
        elif (caller := parse_traceparent(run.metadata.get(TRACEPARENT))) is not None:
            parent = _context(trace_id, caller[1], flags)
        context = _context(trace_id, run_span_id(run.run_id), flags)
        attributes: dict[str, str | int] = {
            "taskyard.task": run.task,
            "taskyard.run_id": str(run.run_id),
            "taskyard.status": run.status,
            "taskyard.attempts": run.attempt,
        }
        if run.workflow:
            attributes["taskyard.workflow"] = run.workflow
        failed = run.status != "succeeded" and run.status != "skipped"
        status = (
            Status(StatusCode.ERROR, f"{run.error_type}: {run.error_message}")
            if failed
            else Status(StatusCode.OK)
        )
        kind = "workflow" if run.kind == "workflow" else "run"
        spans = [
            ReadableSpan(
                f"taskyard.{kind} {run.task}",
                context=context,
                parent=parent,
                resource=self.resource,
                attributes=attributes,
                kind=SpanKind.SERVER,
                status=status,
                start_time=_nanoseconds(run.created_at),
                end_time=_nanoseconds(run.finished_at),
                instrumentation_scope=_SCOPE,
            )
        ]
        if run.kind == "task" and run.started_at is not None and run.queued_at is not None:
            spans.append(
                ReadableSpan(
                    f"taskyard.queue_wait {run.task}",
                    context=_context(trace_id, random.getrandbits(64) or 1, flags),
                    parent=context,
                    resource=self.resource,
                    attributes={
                        "taskyard.run_id": str(run.run_id),
                        "taskyard.attempt": run.attempt,
                    },
                    kind=SpanKind.INTERNAL,
                    start_time=_nanoseconds(run.queued_at),
                    end_time=_nanoseconds(run.started_at),
                    instrumentation_scope=_SCOPE,
                )
            )
        return spans


def _context(trace_id: int, span_id: int, flags: TraceFlags) -> SpanContext:
    return SpanContext(trace_id=trace_id, span_id=span_id, is_remote=False, trace_flags=flags)


def _nanoseconds(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


_tracing = Tracing()


@hookimpl
def taskyard_startup(host: PluginHost) -> None:
    _tracing.start()


@hookimpl
def taskyard_shutdown(host: PluginHost) -> None:
    _tracing.stop()


@hookimpl
def taskyard_runs_ended(runs: list[RunEnded]) -> None:
    _tracing.ended(runs)
