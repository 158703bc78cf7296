"""Trigger sources: the webhooks plugin (a signed request becomes an event that triggers a
workflow; a request with a bad or missing signature is refused and stores nothing), and plugins'
own sources (events pushed; a failing source is isolated)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskyard.engine import Engine
from taskyard.plugins import hookimpl
from taskyard_sdk import Taskyard
from taskyard_webhooks import signature_of
from tests.conftest import engine_settings

SECRET = b"s3cret-from-github"


@pytest.fixture
def webhooks_file(data_dir: Path) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "webhooks.yaml"
    path.write_text("github:\n  event: github:push\n  secret: s3cret-from-github\n")
    return path


@pytest.fixture
async def engine_with_webhooks(
    db_url: str, data_dir: Path, webhooks_file: Path
) -> AsyncIterator[Engine]:
    async with Engine(engine_settings(db_url, data_dir, plugins=["webhooks"])) as engine:
        yield engine


async def test_a_signed_webhook_triggers_a_workflow_and_a_bad_one_stores_nothing(
    engine_with_webhooks: Engine, data_dir: Path, webhooks_file: Path
) -> None:
    engine = engine_with_webhooks
    ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
    wf = ty.workflow("on-push", on_events=["github:push"])

    @wf.task()
    async def build(push: dict[str, Any]) -> str:
        return f"built {push['ref']}"

    body = json.dumps({"ref": "refs/heads/main"}).encode()
    async with ty.worker("ci", workflows=[wf]), aiohttp.ClientSession() as http:

        async def post(name: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
            async with http.post(
                f"{engine.url}/api/v1/webhooks/{name}", data=data, headers=headers
            ) as response:
                return response.status, await response.json()

        status, refused = await post(
            "github", body, {"X-Taskyard-Signature": signature_of(b"wrong", body)}
        )
        assert status == 401
        assert "the signature does not match the body" in refused["error"]["message"]
        status, missing = await post("github", body, {})
        assert status == 401
        assert "needs an X-Taskyard-Signature header" in missing["error"]["message"]
        assert (await ty.events.aio_list()).events == []  # nothing was stored

        status, garbled = await post("github", body, {"X-Taskyard-Signature": "sha256=é"})
        assert status == 401, garbled
        status, unknown = await post("gitlab", body, {})
        assert (status, unknown["error"]["code"]) == (404, "not_found")
        status, _ = await post(
            "github", b"not json", {"X-Taskyard-Signature": signature_of(SECRET, b"not json")}
        )
        assert status == 400

        # A broken edit of the webhooks file leaves the last good declarations in use.
        await asyncio.to_thread(webhooks_file.write_text, "github: [not, a, mapping\n")
        status, delivered = await post(
            "github", body, {"X-Hub-Signature-256": signature_of(SECRET, body)}
        )
        assert status == 202, delivered
        [run_id] = delivered["triggered"]
        views = await ty.runs.aio_wait([run_id], timeout=20)
        assert next(iter(views.values())).output == {"build": "built refs/heads/main"}
    [event] = (await ty.events.aio_list()).events
    assert (event.key, event.metadata) == ("github:push", {"webhook": "github"})
    await ty.aio_close()


class Ticker:
    """A trigger source: pushes a few events, then stops."""

    name = "ticker"

    async def run(self, host: Any) -> None:
        for n in range(3):
            await host.push_event("default", "ticker:tick", {"n": n})


class Broken:
    """A trigger source that fails at once, every time it is started."""

    name = "broken"
    started = 0

    async def run(self, host: Any) -> None:
        Broken.started += 1
        raise ConnectionError("the broker is down")


class Sources:
    @hookimpl
    def taskyard_trigger_sources(self) -> list[Any]:
        return [Ticker(), Broken()]


async def test_trigger_sources_push_events_and_a_failing_one_is_isolated(
    db_url: str, data_dir: Path
) -> None:
    async with Engine(engine_settings(db_url, data_dir), plugins=[Sources()]) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        for _ in range(100):
            events = (await ty.events.aio_list(key=["ticker:tick"])).events
            if len(events) == 3:
                break
            await asyncio.sleep(0.05)
        assert sorted(e.payload["n"] for e in events) == [0, 1, 2]
        assert engine.source_failures["broken"] >= 1
        async with ty.transport.session().get(f"{engine.url}/healthz") as response:
            assert response.status == 200  # still serving
        await ty.aio_close()
