"""One trace across three processes: a caller's span and its trigger, the engine's run and queue
wait (the `otel` plugin), the worker's attempt with the task's own span inside it, all exported
over OTLP/HTTP to a receiver this test runs."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from taskyard.testing import EngineProcess, clean_env, free_port
from tests.support import wait_until

SETUP = """
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from taskyard_sdk import Taskyard

provider = TracerProvider(resource=Resource.create())  # service.name from OTEL_SERVICE_NAME
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("shop")
ty = Taskyard()


@ty.task(name="receipt")
async def receipt(amount: int) -> str:
    return f"receipt for {amount}"


@ty.task(name="charge")
async def charge(amount: int) -> int:
    with tracer.start_as_current_span("charging card"):
        await receipt.aio_run(amount, timeout=30)  # a child run, in the same trace
        return amount
"""
WORKER = (
    SETUP
    + """
ty.worker("shop", tasks=[charge, receipt]).start()
provider.shutdown()
"""
)
CALLER = (
    SETUP
    + """
with tracer.start_as_current_span("checkout"):
    handle = charge.run_no_wait(42)
assert handle.result(timeout=60) == 42
print(handle.run_id)
ty.close()
provider.shutdown()
"""
)


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent: str
    name: str
    service: str


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Span]]]:
    """An OTLP/HTTP trace receiver (protobuf), keeping every span it is sent."""
    spans: list[Span] = []

    async def traces(request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest.FromString(await request.read())
        for resource in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        Span(
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            span.name,
                            attributes.get("service.name", ""),
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", spans
    await runner.cleanup()


async def test_one_trace_holds_the_trigger_the_queue_wait_and_the_attempt(
    db_url: str, tmp_path: Path, receiver: tuple[str, list[Span]]
) -> None:
    endpoint, spans = receiver
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    data_dir = tmp_path / "engine"
    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(data_dir), "--plugin", "otel"],
        clean_env(**otel),
        tmp_path / "engine.log",
    )
    await asyncio.to_thread(engine.start)
    worker = None
    try:
        env = clean_env(
            TASKYARD_URL=engine.url,
            TASKYARD_TOKEN=(data_dir / "token").read_text().strip(),
            **otel,
        )
        (tmp_path / "worker.py").write_text(WORKER)
        (tmp_path / "caller.py").write_text(CALLER)
        worker = await asyncio.create_subprocess_exec(
            sys.executable, str(tmp_path / "worker.py"),
            env={**env, "OTEL_SERVICE_NAME": "shop-worker"},
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        caller = await asyncio.create_subprocess_exec(
            sys.executable, str(tmp_path / "caller.py"),
            env={**env, "OTEL_SERVICE_NAME": "checkout-api"},
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(caller.communicate(), 90)
        assert caller.returncode == 0
        run_id = out.decode().strip()

        async def whole() -> bool:
            names = {span.name for span in spans}
            wanted = {"taskyard.run charge", "taskyard.attempt charge", "checkout"}
            return wanted | {"taskyard.run receipt", "taskyard.attempt receipt"} <= names

        await wait_until(whole, 30, "the caller's, the engine's and the worker's spans")
    finally:
        if worker is not None and worker.returncode is None:
            worker.terminate()
            await worker.wait()
        await asyncio.to_thread(engine.terminate)

    [checkout] = [span for span in spans if span.name == "checkout"]
    trace = {span.name: span for span in spans if span.trace_id == checkout.trace_id}
    trigger = trace["taskyard.trigger charge"]
    run = trace["taskyard.run charge"]
    wait = trace["taskyard.queue_wait charge"]
    attempt = trace["taskyard.attempt charge"]
    mine = trace["charging card"]
    assert trigger.parent == checkout.span_id
    assert run.parent == trigger.span_id
    assert wait.parent == run.span_id
    assert attempt.parent == run.span_id
    assert mine.parent == attempt.span_id
    assert (checkout.service, trigger.service) == ("checkout-api", "checkout-api")
    assert (run.service, wait.service) == ("taskyard-engine", "taskyard-engine")
    assert (attempt.service, mine.service) == ("shop-worker", "shop-worker")
    # The child run, triggered inside the task's span: its trigger is a child of that span.
    child_trigger = trace["taskyard.trigger receipt"]
    child_run = trace["taskyard.run receipt"]
    assert child_trigger.parent == mine.span_id
    assert child_run.parent == child_trigger.span_id
    assert trace["taskyard.attempt receipt"].parent == child_run.span_id
    assert run_id  # the caller saw its run finish
