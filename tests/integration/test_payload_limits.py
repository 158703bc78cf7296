"""Payload limits against a real engine with small ones: inputs, event payloads and schedule
inputs over their limit are refused with a 413 naming the limit and where the payload was, and
nothing of the call is stored; an output over its limit fails its attempt (from the SDK, or from
a worker that sends it anyway) without breaking the connection; a long log line is kept cut."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskyard.engine import Engine
from taskyard_sdk import Context, InvalidRequest, TaskFailed, Taskyard
from tests.conftest import TenantTokens, engine_settings
from tests.integration.test_worker_protocol import _finished, hello, receive_type
from tests.support import scalar, wait_until

INPUT, OUTPUT, EVENT, LOG_LINE = 2_000, 3_000, 4_000, 500


@pytest.fixture
async def engine(db_url: str, data_dir: Path) -> AsyncIterator[Engine]:
    settings = engine_settings(
        db_url,
        data_dir,
        max_input_bytes=INPUT,
        max_output_bytes=OUTPUT,
        max_event_bytes=EVENT,
        max_log_line_bytes=LOG_LINE,
    )
    async with Engine(settings) as running:
        yield running


def text_of(size: int) -> str:
    """A string that is `size` bytes as JSON (its quotes included)."""
    return "x" * (size - 2)


async def post(
    http: aiohttp.ClientSession, tenant: TenantTokens, path: str, body: Any
) -> tuple[int, Any]:
    async with http.post(path, json=body, headers=tenant.headers()) as response:
        return response.status, await response.json()


def assert_refused(answer: tuple[int, Any], where: str, size: int, limit: int, setting: str):
    status, body = answer
    assert status == 413, body
    assert body["error"]["code"] == "payload_too_large"
    message = body["error"]["message"]
    assert message.startswith(f"{where} is {size:,} bytes of JSON"), message
    assert f"up to {limit:,} bytes ({setting})" in message


async def test_inputs_over_the_limit_are_refused_naming_it_and_nothing_is_stored(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens, db_url: str
) -> None:
    at_limit = text_of(INPUT)
    status, body = await post(http, tenant, "/api/v1/runs", {"task": "t", "input": at_limit})
    assert status == 201, body
    over = text_of(INPUT + 1)
    assert_refused(
        await post(http, tenant, "/api/v1/runs", {"task": "t", "input": over}),
        "body.input",
        INPUT + 1,
        INPUT,
        "max_input_bytes",
    )
    batch = {"runs": [{"task": "t", "input": 1}, {"task": "t", "input": {"rows": [over]}}]}
    assert_refused(
        await post(http, tenant, "/api/v1/runs/batch", batch),
        "body.runs[1].input",
        INPUT + 12,  # {"rows":[...]}
        INPUT,
        "max_input_bytes",
    )
    # The whole batch is refused: only the run at the limit was stored.
    runs = "SELECT count(*) FROM runs WHERE tenant_id = $1"
    assert await scalar(db_url, runs, tenant.tenant_id) == 1

    status, body = await post(
        http, tenant, "/api/v1/workflows", {"name": "flow", "steps": [{"name": "a"}]}
    )
    assert status in (200, 201), body
    status, body = await post(http, tenant, "/api/v1/workflows/flow/runs", {"input": over})
    assert status == 413, body
    assert "the input of workflow 'flow'" in body["error"]["message"]
    assert "(max_input_bytes)" in body["error"]["message"]

    cron = {"name": "big", "task": "t", "expression": "0 * * * *", "input": over}
    assert_refused(
        await post(http, tenant, "/api/v1/crons", cron),
        "body.input",
        INPUT + 1,
        INPUT,
        "max_input_bytes",
    )
    once = {"task": "t", "at": "2999-01-01T00:00:00Z", "input": over}
    assert (await post(http, tenant, "/api/v1/schedules", once))[0] == 413
    assert (
        await scalar(
            db_url, "SELECT count(*) FROM schedules WHERE tenant_id = $1", tenant.tenant_id
        )
        == 0
    )
    assert await scalar(db_url, runs, tenant.tenant_id) == 1


async def test_event_payloads_over_the_limit_are_refused(
    http: aiohttp.ClientSession, tenant: TenantTokens, db_url: str
) -> None:
    status, body = await post(
        http, tenant, "/api/v1/events", {"key": "k", "payload": text_of(EVENT)}
    )
    assert status == 201, body
    assert_refused(
        await post(http, tenant, "/api/v1/events", {"key": "k", "payload": text_of(EVENT + 5)}),
        "body.payload",
        EVENT + 5,
        EVENT,
        "max_event_bytes",
    )
    batch = {"events": [{"key": "k"}, {"key": "k"}, {"key": "k", "payload": [text_of(EVENT)]}]}
    assert_refused(
        await post(http, tenant, "/api/v1/events/batch", batch),
        "body.events[2].payload",
        EVENT + 2,
        EVENT,
        "max_event_bytes",
    )
    events = "SELECT count(*) FROM events WHERE tenant_id = $1"
    assert await scalar(db_url, events, tenant.tenant_id) == 1


async def test_an_output_over_the_limit_fails_its_attempt_from_the_sdk(ty: Taskyard) -> None:
    @ty.task(name="report", retries=3)
    async def report(size: int) -> str:
        return text_of(size)

    async with ty.worker("limits", tasks=[report]):
        with pytest.raises(TaskFailed) as failed:
            await report.aio_run(OUTPUT + 1)
        assert failed.value.error.type == "OutputTooLarge"
        assert f"returned {OUTPUT + 1:,} bytes of JSON" in failed.value.error.message
        assert f"up to {OUTPUT:,} bytes (max_output_bytes)" in failed.value.error.message
        handle = await report.aio_run_no_wait(OUTPUT + 1)
        with pytest.raises(TaskFailed):
            await handle.aio_result()
        assert (await handle.aio_get()).attempt == 1  # not retried: it would be as large again
        # The same worker, on the same connection, goes on.
        assert await report.aio_run(OUTPUT) == text_of(OUTPUT)

    @ty.task(name="store")
    async def store(text: str) -> None: ...

    with pytest.raises(InvalidRequest) as refused:
        await store.aio_run_no_wait(text_of(INPUT + 1))
    assert refused.value.status == 413
    assert "max_input_bytes" in refused.value.message


async def test_an_output_over_the_limit_sent_anyway_fails_its_attempt_in_the_engine(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with http.ws_connect("/api/v1/workers/connect", headers=tenant.headers("worker")) as ws:
        await ws.send_json(hello())
        welcome = await receive_type(ws, "welcome")
        assert (welcome["max_output_bytes"], welcome["max_log_line_bytes"]) == (OUTPUT, LOG_LINE)
        _, body = await post(http, tenant, "/api/v1/runs", {"task": "echo"})
        run_id = body["run_id"]
        await receive_type(ws, "assign")
        output = {"rows": [text_of(OUTPUT)]}
        await ws.send_json(
            [
                {"type": "log", "run_id": run_id, "attempt": 1, "message": "é" * LOG_LINE},
                {"type": "completed", "run_id": run_id, "attempt": 1, "output": output},
            ]
        )
        error = await receive_type(ws, "error")
        assert error["code"] == "invalid_payload"
        assert (await receive_type(ws, "ack"))["results"] == [{"run_id": run_id, "attempt": 1}]
        view = await _finished(http, tenant, run_id)
        assert view["status"] == "failed"
        assert view["error"]["type"] == "PayloadTooLarge"
        assert f"output is {OUTPUT + 11:,} bytes of JSON" in view["error"]["message"]
        # The connection lives: the next run completes on it.
        _, body = await post(http, tenant, "/api/v1/runs", {"task": "echo"})
        await receive_type(ws, "assign")
        await ws.send_json(
            {"type": "completed", "run_id": body["run_id"], "attempt": 1, "output": "fits"}
        )
        assert (await _finished(http, tenant, body["run_id"]))["status"] == "succeeded"

    lines: list[dict[str, Any]] = []

    async def logged() -> bool:
        async with http.get(f"/api/v1/runs/{run_id}/logs", headers=tenant.headers()) as response:
            lines[:] = (await response.json())["lines"]
        return bool(lines)

    await wait_until(logged, 5, "the log line")
    [line] = lines
    head, note = line["message"].split(" … ")
    assert note == f"[cut to {LOG_LINE} bytes from {2 * LOG_LINE:,} (max_log_line_bytes)]"
    assert head == "é" * ((LOG_LINE - len(note.encode()) - 5) // 2)  # " … " is 5 bytes
    assert len(line["message"].encode()) in (LOG_LINE - 1, LOG_LINE)  # cut on a character


async def test_the_sdk_cuts_long_log_lines_before_sending(
    ty: Taskyard, engine: Engine, db_url: str
) -> None:
    @ty.task(name="chatty")
    async def chatty(n: int, ctx: Context) -> int:
        ctx.log("y" * n)
        return n

    async with ty.worker("limits", tasks=[chatty]):
        handle = await chatty.aio_run_no_wait(10 * LOG_LINE)
        assert await handle.aio_result() == 10 * LOG_LINE
    logs = "SELECT count(*) FROM run_logs WHERE run_id = $1"
    await wait_until(lambda: scalar(db_url, logs, handle.run_id), 5, "the log line")
    stored = await engine.pool.fetchval(
        "SELECT message FROM run_logs WHERE run_id = $1", handle.run_id
    )
    assert stored.endswith(
        f" … [cut to {LOG_LINE} bytes from {10 * LOG_LINE:,} (max_log_line_bytes)]"
    )
    assert len(stored.encode()) == LOG_LINE
