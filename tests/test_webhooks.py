"""The webhooks plugin: a signed request becomes an event that triggers a workflow; a request
with a bad or missing signature is refused and stores nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskyard.engine import Engine
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
async def engine_with_webhooks(db_url: str, data_dir: Path,
                               webhooks_file: Path) -> AsyncIterator[Engine]:
    async with Engine(engine_settings(db_url, data_dir, plugins=["webhooks"])) as engine:
        yield engine


async def test_a_signed_webhook_triggers_a_workflow_and_a_bad_one_stores_nothing(
        engine_with_webhooks: Engine, data_dir: Path) -> None:
    engine = engine_with_webhooks
    ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
    wf = ty.workflow("on-push", on_events=["github:push"])

    @wf.task()
    async def build(push: dict[str, Any]) -> str:
        return f"built {push['ref']}"

    body = json.dumps({"ref": "refs/heads/main"}).encode()
    async with ty.worker("ci", workflows=[wf]), aiohttp.ClientSession() as http:
        async def post(name: str, data: bytes, headers: dict[str, str]) -> tuple[int, Any]:
            async with http.post(f"{engine.url}/api/v1/webhooks/{name}", data=data,
                                 headers=headers) as response:
                return response.status, await response.json()

        status, refused = await post("github", body,
                                     {"X-Taskyard-Signature": signature_of(b"wrong", body)})
        assert status == 401
        assert "the signature does not match the body" in refused["error"]["message"]
        status, missing = await post("github", body, {})
        assert status == 401
        assert "needs an X-Taskyard-Signature header" in missing["error"]["message"]
        assert (await ty.events.aio_list()).events == []  # nothing was stored

        status, unknown = await post("gitlab", body, {})
        assert (status, unknown["error"]["code"]) == (404, "not_found")
        status, _ = await post("github", b"not json",
                               {"X-Taskyard-Signature": signature_of(SECRET, b"not json")})
        assert status == 400

        status, delivered = await post("github", body,
                                       {"X-Hub-Signature-256": signature_of(SECRET, body)})
        assert status == 202, delivered
        [run_id] = delivered["triggered"]
        views = await ty.runs.aio_wait([run_id], timeout=20)
        assert next(iter(views.values())).output == {"build": "built refs/heads/main"}
    [event] = (await ty.events.aio_list()).events
    assert (event.key, event.metadata) == ("github:push", {"webhook": "github"})
    await ty.aio_close()
