"""The worker websocket spoken by hand: every bad frame gets an error frame, the connection and
the engine keep serving."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskyard.engine import Engine
from taskyard_sdk import TaskFailed, Taskyard, protocol
from tests.conftest import TenantTokens


def hello(**overrides: Any) -> dict[str, Any]:
    message = {
        "type": "hello",
        "protocol": protocol.PROTOCOL_VERSION,
        "worker_id": str(uuid.uuid4()),
        "name": "hand",
        "slots": 2,
        "tasks": [{"name": "echo"}],
    }
    message.update(overrides)
    return message


async def receive(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.TEXT, message
    data = json.loads(message.data)
    return data if isinstance(data, list) else [data]


async def receive_type(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    for _ in range(20):
        for message in await receive(ws):
            if message["type"] == kind:
                return message
    raise AssertionError(f"no {kind} message")


@pytest.fixture
async def worker_ws(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with http.ws_connect("/api/v1/workers/connect", headers=tenant.headers("worker")) as ws:
        await ws.send_json(hello())
        welcome = await receive_type(ws, "welcome")
        assert welcome["max_message_bytes"] == engine.settings.max_request_bytes
        yield ws


async def test_client_tokens_may_not_connect_workers(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/api/v1/workers/connect", headers=tenant.headers("client"))
    assert refused.value.status == 403
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect("/api/v1/workers/connect")
    assert refused.value.status == 401


@pytest.mark.parametrize(
    ("first", "code", "text"),
    [
        ("not json", "invalid_message", "hello:"),
        (json.dumps({"type": "heartbeat"}), "invalid_message", "first message must be"),
        (
            json.dumps(hello(protocol=99)),
            "protocol_version",
            "protocol version 99 is not supported",
        ),
        (json.dumps(hello(slots=0)), "invalid_message", "hello: slots"),
        (json.dumps(hello(tasks=[])), "invalid_message", "hello: tasks"),
    ],
)
async def test_a_bad_hello_is_refused_with_a_reason(
    http: aiohttp.ClientSession, tenant: TenantTokens, first: str, code: str, text: str
) -> None:
    async with http.ws_connect("/api/v1/workers/connect", headers=tenant.headers("worker")) as ws:
        await ws.send_str(first)
        [error] = await receive(ws)
        assert error["type"] == "error"
        assert error["code"] == code
        assert text in error["message"]
        closed = await ws.receive(timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


@pytest.mark.parametrize(
    ("frame", "code", "text"),
    [
        ("{not json", "malformed", "frame is not valid JSON"),
        ("42", "invalid_message", "each message must be a JSON object"),
        (json.dumps({"type": "teleport"}), "invalid_message", "'teleport' message"),
        (
            json.dumps({"type": "completed", "run_id": "x", "attempt": 1}),
            "invalid_message",
            "run_id",
        ),
        (
            json.dumps(
                {
                    "type": "completed",
                    "run_id": str(uuid.uuid4()),
                    "attempt": 1,
                    "output": "a\u0000b",
                }
            ),
            "invalid_payload",
            "NUL character",
        ),
        (
            json.dumps({"type": "completed", "run_id": str(uuid.uuid4()), "attempt": 1}),
            "not_owner",
            "is not assigned to this worker",
        ),
        (
            json.dumps({"type": "log", "run_id": str(uuid.uuid4()), "attempt": 1, "message": "hi"}),
            "not_owner",
            "is not assigned to this worker",
        ),
        (json.dumps(hello()), "invalid_message", "already established"),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "unknown-type",
        "bad-run-id",
        "nul-in-output",
        "result-of-another",
        "log-of-another",
        "second-hello",
    ],
)
async def test_bad_frames_get_an_error_frame_and_the_connection_lives(
    worker_ws: aiohttp.ClientWebSocketResponse, frame: str, code: str, text: str
) -> None:
    await worker_ws.send_str(frame)
    error = await receive_type(worker_ws, "error")
    assert error["code"] == code
    assert text in error["message"]
    await worker_ws.send_json({"type": "heartbeat"})
    await worker_ws.send_str("{still bad")
    assert (await receive_type(worker_ws, "error"))["code"] == "malformed"


async def test_oversized_and_binary_frames_are_refused(
    engine: Engine, worker_ws: aiohttp.ClientWebSocketResponse
) -> None:
    limit = engine.settings.max_request_bytes
    await worker_ws.send_str(json.dumps({"type": "log", "message": "x" * (limit + 10)}))
    error = await receive_type(worker_ws, "error")
    assert error["code"] == "too_large"
    assert f"limit of {limit} bytes" in error["message"]
    await worker_ws.send_bytes(b"\x00\x01")
    error = await receive_type(worker_ws, "error")
    assert error["code"] == "bad_frame"


async def test_a_worker_spoken_by_hand_runs_a_task(
    engine: Engine,
    http: aiohttp.ClientSession,
    tenant: TenantTokens,
    worker_ws: aiohttp.ClientWebSocketResponse,
) -> None:
    async with http.post(
        "/api/v1/runs", json={"task": "echo", "input": {"x": 1}}, headers=tenant.headers()
    ) as response:
        run_id = (await response.json())["run_id"]
    assign = await receive_type(worker_ws, "assign")
    assert (assign["run_id"], assign["attempt"], assign["input"]) == (run_id, 1, {"x": 1})
    # one frame, several messages
    await worker_ws.send_json(
        [
            {"type": "started", "run_id": run_id, "attempt": 1},
            {"type": "log", "run_id": run_id, "attempt": 1, "message": "working"},
            {"type": "completed", "run_id": run_id, "attempt": 1, "output": {"echo": 1}},
        ]
    )
    ack = await receive_type(worker_ws, "ack")
    assert ack["results"] == [{"run_id": run_id, "attempt": 1}]
    # a result sent again (its ack was lost) is acknowledged again, not applied twice
    await worker_ws.send_json(
        {"type": "completed", "run_id": run_id, "attempt": 1, "output": {"echo": "again"}}
    )
    assert (await receive_type(worker_ws, "ack"))["results"][0]["run_id"] == run_id
    async with http.get(f"/api/v1/runs/{run_id}", headers=tenant.headers()) as response:
        view = await response.json()
    assert (view["status"], view["output"]) == ("succeeded", {"echo": 1})

    # results for someone else's attempt: refused, the run is untouched
    async with http.post(
        "/api/v1/runs", json={"task": "other-task"}, headers=tenant.headers()
    ) as response:
        other = (await response.json())["run_id"]
    await worker_ws.send_json(
        {"type": "failed", "run_id": other, "attempt": 1, "error": {"type": "X", "message": "y"}}
    )
    assert (await receive_type(worker_ws, "error"))["code"] == "not_owner"
    async with http.get(f"/api/v1/runs/{other}", headers=tenant.headers()) as response:
        assert (await response.json())["status"] == "queued"


async def test_a_silent_worker_is_declared_lost_and_its_run_retried(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with http.post(
        "/api/v1/runs", headers=tenant.headers(), json={"task": "echo", "options": {"retries": 1}}
    ) as response:
        run_id = (await response.json())["run_id"]
    async with http.ws_connect("/api/v1/workers/connect", headers=tenant.headers("worker")) as ws:
        await ws.send_json(hello())
        await receive_type(ws, "assign")
        # ... and now say nothing at all: no heartbeat, no result.
        closed = await ws.receive(timeout=engine.settings.heartbeat_timeout * 5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4001
    for _ in range(100):  # the retry is written behind: give it a moment to land
        async with http.get(f"/api/v1/runs/{run_id}", headers=tenant.headers()) as response:
            view = await response.json()
        if view["attempt"] == 2:
            break
        await asyncio.sleep(0.02)
    assert view["status"] == "queued"
    assert view["attempt"] == 2
    assert view["attempts"][0]["error"]["type"] == "WorkerLost"
    assert "sent no heartbeat" in view["attempts"][0]["error"]["message"]


def test_the_fast_assign_encoding_is_a_valid_assign_message() -> None:
    import time as clock

    from taskyard.actors.frames import assign_json
    from taskyard.domain.runs import Run
    from taskyard_sdk.models import RunStatus, StepContext, TaskOptions

    run = Run(
        tenant_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        task='say "hi"',
        queue="default",
        status=RunStatus.ASSIGNED,
        attempt=3,
        priority=2,
        options=TaskOptions(execution_timeout=12.5),
        created_at=clock.time(),
        queued_at=clock.time(),
        metadata={"k": "v\n"},
    )
    context = StepContext(workflow_run_id=uuid.uuid4(), step="b", parents={"a": [1]}, skipped=["c"])
    for payload, step in ((b'{"a":[1,2,{"b":null}]}', None), (None, context)):
        encoded = assign_json(run, payload, step.model_dump_json().encode() if step else None)
        decoded = protocol.engine_message.validate_json(encoded)
        assert decoded == protocol.Assign(
            run_id=run.run_id,
            attempt=3,
            task='say "hi"',
            input=json.loads(payload) if payload else None,
            metadata={"k": "v\n"},
            execution_timeout=12.5,
            context=step,
        )


async def test_a_worker_id_is_never_taken_over_from_another_tenant(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens, data_dir: Path
) -> None:
    """The registry is keyed by tenant and worker id: another tenant's hello with the same id
    is a different worker, and the first connection stays up and keeps its runs."""
    worker_id = str(uuid.uuid4())
    other = {"Authorization": f"Bearer {(data_dir / 'token').read_text().strip()}"}
    async with http.ws_connect(
        "/api/v1/workers/connect", headers=tenant.headers("worker")
    ) as first:
        await first.send_json(hello(worker_id=worker_id))
        await receive_type(first, "welcome")
        async with http.ws_connect("/api/v1/workers/connect", headers=other) as intruder:
            await intruder.send_json(hello(worker_id=worker_id))
            await receive_type(intruder, "welcome")
            async with http.post(
                "/api/v1/runs",
                json={"task": "echo", "input": {"x": 1}},
                headers=tenant.headers("client"),
            ) as response:
                run_id = (await response.json())["run_id"]
            assign = await receive_type(first, "assign")
            assert assign["run_id"] == run_id
        assert not first.closed
        keys = set(engine.services.registry.sessions)
        assert (tenant.tenant_id, uuid.UUID(worker_id)) in keys


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return {"a": value}


async def _finished(
    http: aiohttp.ClientSession, tenant: TenantTokens, run_id: str
) -> dict[str, Any]:
    for _ in range(200):
        async with http.get(f"/api/v1/runs/{run_id}", headers=tenant.headers()) as response:
            view: dict[str, Any] = await response.json()
        if view["status"] in ("succeeded", "failed"):
            return view
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} did not finish: {view['status']}")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (nested(120), "output.a.a.a…a.a: nested more than 100 levels deep; the limit is 100"),
        (nested(300), "nested more than 100 levels deep"),  # beyond orjson's own 254
        ({"text": "a\u0000b"}, "output.text: contains a NUL character"),
        ({"n": 2**70}, "output: Integer exceeds 64-bit range"),
    ],
)
async def test_a_result_the_engine_cannot_store_fails_its_attempt_at_once(
    engine: Engine,
    http: aiohttp.ClientSession,
    tenant: TenantTokens,
    worker_ws: aiohttp.ClientWebSocketResponse,
    output: Any,
    expected: str,
) -> None:
    """It used to crash the queue actor (depth), or be refused and sent again until the run
    timed out (NUL). Now the attempt fails saying why, the worker is acknowledged (so it stops
    sending), and the queue keeps serving."""
    async with http.post(
        "/api/v1/runs", json={"task": "echo"}, headers=tenant.headers()
    ) as response:
        run_id = (await response.json())["run_id"]
    await receive_type(worker_ws, "assign")
    frame = json.dumps({"type": "completed", "run_id": run_id, "attempt": 1, "output": output})
    await worker_ws.send_str(frame)
    error = await receive_type(worker_ws, "error")
    assert error["code"] == "invalid_payload"
    assert expected in error["message"]
    assert (await receive_type(worker_ws, "ack"))["results"] == [{"run_id": run_id, "attempt": 1}]
    view = await _finished(http, tenant, run_id)
    assert view["status"] == "failed"
    assert view["error"]["type"] == "UnstorableResult"
    assert expected in view["error"]["message"]
    # the queue actor is alive: the next run completes
    async with http.post(
        "/api/v1/runs", json={"task": "echo"}, headers=tenant.headers()
    ) as response:
        next_id = (await response.json())["run_id"]
    await receive_type(worker_ws, "assign")
    await worker_ws.send_json(
        {"type": "completed", "run_id": next_id, "attempt": 1, "output": nested(100)}
    )
    assert (await _finished(http, tenant, next_id))["status"] == "succeeded"


async def test_nul_characters_in_logs_and_errors_are_replaced(
    http: aiohttp.ClientSession, tenant: TenantTokens, worker_ws: aiohttp.ClientWebSocketResponse
) -> None:
    async with http.post(
        "/api/v1/runs", json={"task": "echo"}, headers=tenant.headers()
    ) as response:
        run_id = (await response.json())["run_id"]
    await receive_type(worker_ws, "assign")
    await worker_ws.send_str(
        json.dumps(
            [
                {"type": "log", "run_id": run_id, "attempt": 1, "message": "half\u0000way"},
                {
                    "type": "failed",
                    "run_id": run_id,
                    "attempt": 1,
                    "retryable": False,
                    "error": {
                        "type": "Boom",
                        "message": "bad \u0000 byte",
                        "traceback": "t\u0000b",
                    },
                },
            ]
        )
    )
    await receive_type(worker_ws, "ack")
    view = await _finished(http, tenant, run_id)
    assert view["error"]["message"] == "bad \ufffd byte"
    assert view["error"]["traceback"] == "t\ufffdb"
    for _ in range(100):
        async with http.get(f"/api/v1/runs/{run_id}/logs", headers=tenant.headers()) as response:
            logs = await response.json()
        if logs:
            break
        await asyncio.sleep(0.02)
    assert "half\ufffdway" in json.dumps(logs, ensure_ascii=False)


async def test_the_sdk_reports_output_it_cannot_send_and_cleans_error_texts(ty: Taskyard) -> None:
    @ty.task(name="returns-nul")
    async def returns_nul(n: int) -> dict[str, Any]:
        return {"text": "a\u0000b"} if n == 0 else nested(150)

    @ty.task(name="raises-nul")
    async def raises_nul(n: int) -> int:
        raise ValueError(f"bad \u0000 value {n}")

    async with ty.worker("unstorable", tasks=[returns_nul, raises_nul]):
        for n, expected in (
            (0, "output.text contains a NUL character"),
            (1, "nests more than 100 levels deep"),
        ):
            with pytest.raises(TaskFailed) as failed:
                await returns_nul.aio_run(n)
            assert failed.value.error.type == "OutputNotStorable"
            assert expected in failed.value.error.message
        with pytest.raises(TaskFailed) as failed:
            await raises_nul.aio_run(7)
        assert failed.value.error.message == "bad \ufffd value 7"


async def test_logs_for_a_run_claimed_at_hello_but_unknown_are_not_stored(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    stranger = str(uuid.uuid4())
    async with http.ws_connect("/api/v1/workers/connect", headers=tenant.headers("worker")) as ws:
        await ws.send_json(hello(in_flight=[{"run_id": stranger, "attempt": 1}]))
        await receive_type(ws, "welcome")
        cancel = await receive_type(ws, "cancel")
        assert cancel["run_id"] == stranger
        await ws.send_json({"type": "log", "run_id": stranger, "attempt": 1, "message": "x"})
        await ws.send_json({"type": "heartbeat"})
        await asyncio.sleep(0.3)
    await engine.persister.flush()
    assert (
        await engine.pool.fetchval(
            "SELECT count(*) FROM run_logs WHERE run_id = $1", uuid.UUID(stranger)
        )
        == 0
    )
