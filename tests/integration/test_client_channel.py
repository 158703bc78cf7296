"""The client channel: the REST API over one websocket, with its HTTP semantics, and the SDK
using it (and HTTP where it must)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic_core import from_json

from taskyard.domain.auth import Role
from taskyard.engine import Engine
from taskyard.http.client_socket import CHANNELS
from taskyard_sdk import ConnectionLost, InvalidRequest, Taskyard
from taskyard_sdk.protocol import MAX_JSON_DEPTH
from tests.conftest import TenantTokens, engine_settings


def nested(depth: int) -> list[Any]:
    """A list nested `depth` levels deep (a bare list is one level)."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


TOO_DEEP = f"nested more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH}"


class RawChannel:
    """A channel driven by hand: frames out, answers matched by id by one reader."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def call(self, frame: dict[str, Any] | str, timeout: float = 5) -> dict[str, Any]:
        call_id = frame.get("id") if isinstance(frame, dict) else None
        answer = self.waiting[call_id] = asyncio.get_running_loop().create_future()
        if isinstance(frame, dict):
            await self.ws.send_json(frame)
        else:
            await self.ws.send_str(frame)
        return await asyncio.wait_for(answer, timeout)

    async def _read(self) -> None:
        async for message in self.ws:
            data = from_json(message.data)
            for answer in data if isinstance(data, list) else [data]:
                self.waiting.pop(answer["id"]).set_result(answer)

    async def close(self) -> None:
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


async def open_channel(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> RawChannel:
    ws = await http.ws_connect(f"{url}/api/v1/clients/connect", headers=headers)
    return RawChannel(ws, from_json((await ws.receive()).data))


@pytest.fixture
async def channel(engine: Engine, tenant: TenantTokens) -> AsyncIterator[RawChannel]:
    async with aiohttp.ClientSession() as http:
        raw = await open_channel(http, engine.url, tenant.headers("client"))
        yield raw
        await raw.close()
        await raw.ws.close()


async def rest(
    engine: Engine, tenant: TenantTokens, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method, engine.url + path, json=body, headers=tenant.headers("client")
        ) as response,
    ):
        return response.status, await response.json()


async def test_a_call_answers_as_its_rest_endpoint(
    engine: Engine, tenant: TenantTokens, channel: RawChannel
) -> None:
    assert channel.welcome["type"] == "welcome"
    assert channel.welcome["max_message_bytes"] == engine.settings.max_request_bytes
    trigger = {"task": "resize", "input": {"url": "a.png"}, "idempotency_key": "k1"}
    created = await channel.call(
        {"id": 1, "method": "POST", "path": "/api/v1/runs", "body": trigger}
    )
    assert created["status"] == 201
    run_id = created["body"]["run_id"]
    again = await channel.call({"id": 2, "method": "POST", "path": "/api/v1/runs", "body": trigger})
    status, over_http = await rest(engine, tenant, "POST", "/api/v1/runs", trigger)
    assert (
        (again["status"], again["body"])
        == (status, over_http)
        == (200, {**created["body"], "created": False, "idempotent_replay": True})
    )
    read = await channel.call({"id": 3, "method": "GET", "path": f"/api/v1/runs/{run_id}"})
    status, view = await rest(engine, tenant, "GET", f"/api/v1/runs/{run_id}")
    assert (read["status"], read["body"]) == (status, view)
    listed = await channel.call(
        {
            "id": 4,
            "method": "GET",
            "path": "/api/v1/runs",
            "query": [["task", "resize"], ["limit", "5"]],
        }
    )
    assert [run["run_id"] for run in listed["body"]["runs"]] == [run_id]


@pytest.mark.parametrize(
    ("frame", "status", "message"),
    [
        (
            {"id": 1, "method": "POST", "path": "/api/v1/runs", "body": {"task": "bad name!"}},
            422,
            "body.task",
        ),
        ({"id": 1, "method": "POST", "path": "/api/v1/runs"}, 400, "request body is empty"),
        (
            {
                "id": 1,
                "method": "POST",
                "path": "/api/v1/runs",
                "body": {"task": "t", "input": "a\u0000b"},
            },
            422,
            "NUL character",
        ),
        ({"id": 1, "method": "GET", "path": f"/api/v1/runs/{uuid.uuid4()}"}, 404, "no run"),
        ({"id": 1, "method": "GET", "path": "/api/v1/runs/not-a-uuid"}, 422, "path.run_id"),
        ({"id": 1, "method": "DELETE", "path": "/api/v1/runs"}, 405, "allowed: GET"),
        ({"id": 1, "method": "GET", "path": "/api/v1/nowhere"}, 404, "no endpoint"),
        (
            {"id": 1, "method": "GET", "path": "/api/v1/tokens"},
            403,
            "needs a token with role admin",
        ),
        ({"id": 1, "method": "GET", "path": "/api/v1/runs/x/stream"}, 404, "no endpoint"),
        ({"id": 1, "method": "GET", "path": "/api/v1/runs/batch"}, 405, "allowed: POST"),
        # deeper than the limit, and (230) than pydantic's JSON parser reads: refused by id
        *(
            (
                {
                    "id": 1,
                    "method": "POST",
                    "path": "/api/v1/runs",
                    "body": {"task": "t", "input": nested(depth)},
                },
                422,
                f"body.input[0][0]…[0][0]: {TOO_DEEP}",
            )
            for depth in (MAX_JSON_DEPTH, 230)
        ),
        (
            {
                "id": 1,
                "method": "POST",
                "path": "/api/v1/runs",
                "body": {"task": "t", "input": {"n": 10**30}},
            },
            422,
            "body: holds a number that cannot be stored",
        ),
        ({"method": "GET", "path": "/api/v1/runs"}, 400, "frame is not a call: id"),
        ("not json", 400, "frame is not a call"),
    ],
)
async def test_bad_calls_get_the_rest_error(
    channel: RawChannel, frame: dict[str, Any] | str, status: int, message: str
) -> None:
    answer = await channel.call(frame)
    assert answer["status"] == status
    assert message in answer["body"]["error"]["message"]
    healthy = await channel.call({"id": 9, "method": "GET", "path": "/api/v1/whoami"})
    assert healthy["status"] == 200, "the channel carries on"


async def test_a_long_poll_holds_up_nothing(channel: RawChannel) -> None:
    created = await channel.call(
        {"id": 1, "method": "POST", "path": "/api/v1/runs", "body": {"task": "slow"}}
    )
    run_id = created["body"]["run_id"]
    waiting = asyncio.ensure_future(
        channel.call(
            {
                "id": 2,
                "method": "POST",
                "path": "/api/v1/runs/wait",
                "body": {"run_ids": [run_id], "timeout": 1.0},
            }
        )
    )
    started = time.monotonic()
    whoami = await channel.call({"id": 3, "method": "GET", "path": "/api/v1/whoami"})
    assert whoami["status"] == 200
    assert time.monotonic() - started < 0.5
    assert (await waiting)["body"]["pending"] == [run_id]


async def test_a_revoked_token_is_refused_from_its_next_call(
    engine: Engine, tenant: TenantTokens
) -> None:
    token, secret = await engine.repository.create_token(tenant.tenant_id, Role.CLIENT)
    async with aiohttp.ClientSession() as http:
        raw = await open_channel(http, engine.url, {"Authorization": f"Bearer {secret}"})
        try:
            assert (await raw.call({"id": 1, "method": "GET", "path": "/api/v1/whoami"}))[
                "status"
            ] == 200
            await engine.services.tokens.revoke(tenant.tenant_id, token.token_id)
            refused = await raw.call({"id": 2, "method": "GET", "path": "/api/v1/whoami"})
            assert refused["status"] == 401
        finally:
            await raw.close()
            await raw.ws.close()


async def test_the_sdk_calls_over_the_channel(engine: Engine, ty: Taskyard) -> None:
    assert engine.client_channels == 0
    await ty.runs.aio_list()
    assert engine.client_channels == 1, "one channel for this event loop"
    for _ in range(3):
        await ty.runs.aio_list()
    assert engine.client_channels == 1, "and it is kept"
    over_http = Taskyard(url=engine.url, token=ty.config.token, channel=False)
    await over_http.runs.aio_list()
    await over_http.aio_close()
    assert engine.client_channels == 1


async def test_a_call_too_large_for_a_frame_goes_over_http(db_url: str, tmp_path: Path) -> None:
    async with Engine(engine_settings(db_url, tmp_path, max_request_bytes=64 * 1024)) as small:
        ty = Taskyard(url=small.url, token=(tmp_path / "token").read_text().strip())
        try:

            @ty.task(name="wide")
            async def wide(text: str) -> int:
                return len(text)

            with pytest.raises(InvalidRequest, match="larger than the limit of 65536 bytes"):
                await wide.aio_run_no_wait("x" * 100_000)  # HTTP's own answer: 413
            assert (await wide.aio_run_no_wait("x" * 100)).run_id  # small ones: the channel
        finally:
            await ty.aio_close()


async def test_a_call_in_flight_when_the_channel_closes(engine: Engine, ty: Taskyard) -> None:
    """A read is sent again on a new channel; a call that may have changed something raises
    ConnectionLost instead (it may or may not have been applied)."""
    run_id = (await ty.transport.request("POST", "/api/v1/runs", json_body={"task": "x"}))["run_id"]

    async def close_channels_soon() -> None:
        await asyncio.sleep(0.3)
        assert engine._runner is not None
        for ws in list(engine._runner.app[CHANNELS]):  # as if the network dropped
            await ws.close()

    wait = {"run_ids": [run_id], "timeout": 1.0}
    closing = asyncio.ensure_future(close_channels_soon())
    answer = await ty.transport.request(
        "POST", "/api/v1/runs/wait", json_body=wait, idempotent=True
    )
    assert answer["pending"] == [run_id], "sent again, answered"
    await closing
    closing = asyncio.ensure_future(close_channels_soon())
    with pytest.raises(ConnectionLost, match="may or may not have been applied"):
        await ty.transport.request("POST", "/api/v1/runs/wait", json_body=wait, idempotent=False)
    await closing
