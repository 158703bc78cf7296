"""Failure alerts end to end: a real SMTP server (aiosmtpd) and a local HTTP server that speaks
Slack's chat.postMessage receive them; windows fold repeated failures; bad rules are refused; a
plugin whose hooks raise does not stop the work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from taskyard.engine import Engine
from taskyard.plugins import Alert, RunChanged, RunEnded, hookimpl
from taskyard.testing import free_port
from taskyard_sdk import TaskFailed, Taskyard
from taskyard_slack import SlackChannel
from tests.conftest import engine_settings
from tests.support import Inbox


@dataclass
class SlackServer:
    """A local server speaking Slack's Web API (chat.postMessage), recording what it got."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    async def post_message(self, request: web.Request) -> web.Response:
        body = (
            await request.json()
            if request.content_type == "application/json"
            else dict(await request.post())
        )
        self.posts.append(body)
        self.tokens.append(request.headers.get("Authorization", ""))
        return web.json_response({"ok": True, "channel": body.get("channel"), "ts": "1.0"})


@pytest.fixture
def inbox() -> Iterator[tuple[Inbox, int]]:
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield handler, controller.port
    controller.stop()


@pytest.fixture
async def slack() -> AsyncIterator[tuple[SlackServer, str]]:
    server = SlackServer()
    app = web.Application()
    app.router.add_post("/api/chat.postMessage", server.post_message)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server, f"http://127.0.0.1:{port}/api/"
    await runner.cleanup()


@pytest.fixture
async def alerting(
    db_url: str,
    data_dir: Path,
    inbox: Any,
    slack: tuple[SlackServer, str],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Engine, Taskyard]]:
    _, smtp_port = inbox
    _, slack_url = slack
    monkeypatch.setenv("TASKYARD_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TASKYARD_SMTP_PORT", str(smtp_port))
    monkeypatch.setenv("TASKYARD_SMTP_FROM", "taskyard@acme.test")
    monkeypatch.setenv("TASKYARD_SLACK_TOKEN", "xoxb-test")
    monkeypatch.setenv("TASKYARD_SLACK_API_URL", slack_url)
    settings = engine_settings(
        db_url, data_dir, plugins=["email", "slack"], public_url="https://taskyard.acme.test"
    )
    async with Engine(settings) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        yield engine, ty
        await ty.aio_close()


async def _rule(ty: Taskyard, body: dict[str, Any]) -> dict[str, Any]:
    return dict(await ty.transport.request("POST", "/api/v1/alert-rules", json_body=body))


async def _until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_a_failing_task_is_alerted_by_email_and_in_slack(
    alerting: tuple[Engine, Taskyard], inbox: Any, slack: tuple[SlackServer, str]
) -> None:
    _, ty = alerting
    mail, _ = inbox
    server, _ = slack
    await _rule(ty, {"channel": "email", "target": {"to": ["ops@acme.test"]}})
    await _rule(
        ty,
        {
            "channel": "slack",
            "target": {"channel": "#ops"},
            "events": ["failed", "schedule_timeout"],
        },
    )
    wf = ty.workflow("nightly-export")

    @wf.task(retries=1)
    async def upload(n: int) -> int:
        raise ConnectionError("the bucket refused the upload")

    @ty.task(schedule_timeout="0.3s")
    async def orphan(n: int) -> int:  # no worker ever runs it
        return n

    async with ty.worker("exporter", workflows=[wf]):
        with pytest.raises(TaskFailed):
            await wf.aio_run(1, timeout=20)
    await _until(lambda: len(mail.messages) >= 1 and len(server.posts) >= 1)
    [message] = mail.messages
    assert message["Subject"] == "[taskyard] workflow 'nightly-export' failed"
    assert message["To"] == "ops@acme.test"
    body = message.get_payload()
    assert "Task: upload, attempt 2" in body
    assert "Error: ConnectionError: the bucket refused the upload" in body
    assert "Run: https://taskyard.acme.test/dashboard/runs/" in body
    post = server.posts[0]
    assert post["channel"] == "#ops"
    assert "workflow 'nightly-export' failed" in post["text"]
    assert server.tokens[0] == "Bearer xoxb-test"

    handle = await orphan.aio_run_no_wait(1)
    with pytest.raises(TaskFailed):
        await handle.aio_result(timeout=10)
    await _until(lambda: len(server.posts) >= 2)
    assert "task 'orphan' timed out" in server.posts[1]["text"]
    assert "ScheduleTimeout" in server.posts[1]["text"]
    assert len(mail.messages) == 1  # the email rule did not ask for schedule timeouts


async def test_failures_inside_the_window_give_one_alert_then_a_folded_count(
    alerting: tuple[Engine, Taskyard], inbox: Any
) -> None:
    _, ty = alerting
    mail, _ = inbox
    await _rule(
        ty,
        {
            "channel": "email",
            "target": {"to": ["ops@acme.test"]},
            "window": "2s",
            "tasks": ["charge"],
        },
    )

    @ty.task()
    async def charge(n: int) -> int:
        raise ValueError(f"card {n} declined")

    @ty.task()
    async def unrelated(n: int) -> int:
        raise ValueError("not covered by the rule")

    async with ty.worker("payments", tasks=[charge, unrelated], slots=20):
        results = await charge.aio_run_many(list(range(20)), timeout=20, return_exceptions=True)
        assert all(isinstance(r, TaskFailed) for r in results)
        await unrelated.aio_run_many([1], timeout=10, return_exceptions=True)
    await _until(lambda: len(mail.messages) >= 1)
    # A rule added meanwhile does not lose the open window's count.
    await _rule(
        ty,
        {
            "channel": "email",
            "target": {"to": ["audit@acme.test"]},
            "tasks": ["nothing-fails-here"],
        },
    )
    await asyncio.sleep(0.5)
    assert len(mail.messages) == 1  # one alert inside the window
    await _until(lambda: len(mail.messages) >= 2, timeout=10)
    await asyncio.sleep(0.5)
    first, summary = mail.messages
    assert first["Subject"] == "[taskyard] task 'charge' failed"
    assert summary["Subject"] == "[taskyard] 19 more failures of task 'charge'"
    assert "19 more failures in the alert window; the last one:" in summary.get_payload()
    assert len(mail.messages) == 2


async def test_bad_alert_rules_are_refused(alerting: tuple[Engine, Taskyard]) -> None:
    engine, ty = alerting
    headers = {"Authorization": f"Bearer {ty.config.token}"}
    async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as client:
        cases = [
            ({"channel": "pager"}, "no alert channel 'pager'; loaded channels: email, slack"),
            (
                {"channel": "email", "target": {"to": "not-a-list"}},
                'body.target: the email channel needs {"to": ["someone@example.com", ...]}',
            ),
            ({"channel": "slack"}, 'the slack channel needs {"channel": "#channel-name"}'),
            (
                {"channel": "email", "target": {"to": ["a@b.c"]}, "events": ["exploded"]},
                "body.events[0]",
            ),
        ]
        for body, message in cases:
            async with client.post("/api/v1/alert-rules", json=body) as response:
                error = (await response.json())["error"]
            assert response.status == 422, body
            assert message in error["message"], error["message"]
        worker_token = (
            await ty.transport.request(
                "POST", "/api/v1/tokens", json_body={"role": "worker", "name": "w"}
            )
        )["token"]
        async with client.post(
            "/api/v1/alert-rules",
            json={"channel": "email", "target": {"to": ["a@b.c"]}},
            headers={"Authorization": f"Bearer {worker_token}"},
        ) as response:
            assert response.status == 403  # workers do not say where alerts go
        rule = await _rule(ty, {"channel": "email", "target": {"to": ["a@b.c"]}})
        async with client.get("/api/v1/alert-rules") as response:
            assert [r["rule_id"] for r in (await response.json())["rules"]] == [rule["rule_id"]]
        async with client.delete(f"/api/v1/alert-rules/{rule['rule_id']}") as response:
            assert response.status == 204
        async with client.delete(f"/api/v1/alert-rules/{rule['rule_id']}") as response:
            assert response.status == 404


async def test_an_edited_rule_alerts_as_it_now_says(
    alerting: tuple[Engine, Taskyard], inbox: Any
) -> None:
    engine, ty = alerting
    mail, _ = inbox
    rule = await _rule(ty, {"channel": "email", "target": {"to": ["old@acme.test"]}})
    path = f"/api/v1/alert-rules/{rule['rule_id']}"
    headers = {"Authorization": f"Bearer {ty.config.token}"}
    async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as client:
        async with client.put(path, json={"channel": "pager"}) as response:
            assert response.status == 422  # checked as a new rule is
            assert "no alert channel 'pager'" in (await response.json())["error"]["message"]
        edited = {"channel": "email", "target": {"to": ["new@acme.test"]}, "tasks": ["flaky"]}
        async with client.put(path, json=edited) as response:
            assert response.status == 200
            assert (await response.json())["target"] == {"to": ["new@acme.test"]}
        async with client.get("/api/v1/alert-rules") as response:
            [kept] = (await response.json())["rules"]
        assert (kept["rule_id"], kept["tasks"], kept["window"]) == (rule["rule_id"], ["flaky"], 300)
        nobody = "/api/v1/alert-rules/01890000-0000-7000-8000-000000000000"
        async with client.put(nobody, json=edited) as response:
            assert response.status == 404

    @ty.task(name="steady", retries=0)
    async def steady(n: int) -> int:
        raise ValueError("not covered by the edited rule")

    @ty.task(name="flaky", retries=0)
    async def flaky(n: int) -> int:
        raise ValueError("covered")

    async with ty.worker("flaky", tasks=[steady, flaky]):
        with pytest.raises(TaskFailed):
            await steady.aio_run(1, timeout=20)
        with pytest.raises(TaskFailed):
            await flaky.aio_run(1, timeout=20)
    await _until(lambda: len(mail.messages) >= 1)
    await asyncio.sleep(0.3)  # an alert for steady, if one were sent, arrives by now
    [message] = mail.messages
    assert message["To"] == "new@acme.test"
    assert message["Subject"] == "[taskyard] task 'flaky' failed"


class Exploding:
    """A plugin whose every hook raises."""

    name = "explodes"

    @hookimpl
    def taskyard_alert_channels(self) -> list[Exploding]:
        return [self]

    def check_target(self, target: dict[str, Any]) -> None:
        return None

    async def send(self, alert: Alert, target: dict[str, Any]) -> None:
        raise RuntimeError("the pager service is down")

    @hookimpl
    async def taskyard_runs_ended(self, runs: list[RunEnded]) -> None:
        raise RuntimeError("the metrics exporter crashed")


async def test_a_plugin_that_raises_does_not_stop_the_work(db_url: str, data_dir: Path) -> None:
    exploding = Exploding()
    async with Engine(engine_settings(db_url, data_dir), plugins=[exploding]) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        await _rule(ty, {"channel": "explodes"})

        @ty.task()
        async def sometimes(n: int) -> int:
            if n % 2:
                raise ValueError("odd")
            return n

        async with ty.worker("w", tasks=[sometimes], slots=10):
            results = await sometimes.aio_run_many(
                list(range(10)), timeout=20, return_exceptions=True
            )
            assert [r for r in results if not isinstance(r, TaskFailed)] == [0, 2, 4, 6, 8]
            assert await sometimes.aio_run(10, timeout=10) == 10  # still serving
        await _until(lambda: engine.alerter.failed_deliveries["explodes"] >= 1, timeout=15)
        await _until(lambda: sum(engine.plugins.errors.values()) >= 1)
        await ty.aio_close()


class Observer:
    """A lifecycle observer: records every change and every end it is told of."""

    def __init__(self) -> None:
        self.changes: list[RunChanged] = []
        self.ended: list[RunEnded] = []

    @hookimpl
    def taskyard_runs_changed(self, changes: list[RunChanged]) -> None:
        self.changes.extend(changes)

    @hookimpl
    async def taskyard_runs_ended(self, runs: list[RunEnded]) -> None:
        self.ended.extend(runs)


async def test_lifecycle_observers_see_state_changes_and_ends(db_url: str, data_dir: Path) -> None:
    observer = Observer()
    async with Engine(engine_settings(db_url, data_dir), plugins=[observer]) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        wf = ty.workflow("observed")

        @wf.task()
        async def step(n: int) -> int:
            return n

        async with ty.worker("w", workflows=[wf]):
            handle = await wf.aio_run_no_wait(1)
            await handle.aio_result(timeout=10)
        await _until(lambda: any(e.kind == "workflow" for e in observer.ended))
        await ty.aio_close()
    [step_run] = [c.run_id for c in observer.changes if c.task == "observed:step"][:1]
    statuses = [c.status for c in observer.changes if c.run_id == step_run]
    assert statuses[-1] == "succeeded"
    assert "running" in statuses or "assigned" in statuses
    kinds = {(e.kind, e.task, e.status) for e in observer.ended}
    assert kinds == {("task", "observed:step", "succeeded"), ("workflow", "observed", "succeeded")}


async def test_the_slack_action_posts_and_a_webhook_url_works_too(
    alerting: tuple[Engine, Taskyard],
    slack: tuple[SlackServer, str],
    data_dir: Path,
    workflows_dir_for_slack: Path,
) -> None:
    _, ty = alerting
    server, _ = slack
    event = None
    for _ in range(60):  # the engine picks the file up within a second
        files = (await ty.transport.request("GET", "/api/v1/workflow-files"))["files"]
        if files and files[0]["workflow"] == "announce":
            event = await ty.events.aio_push("release:out", {"version": "1.2"})
            break
        await asyncio.sleep(0.1)
    assert event is not None
    [run_id] = event.triggered
    view = (await ty.runs.aio_wait([run_id], timeout=20))[run_id]
    assert view.output == {"post": {"posted": True}}
    assert {"channel": "#releases", "text": "Version 1.2 is out"}.items() <= server.posts[
        -1
    ].items()

    hooked: list[dict[str, Any]] = []

    async def incoming(request: web.Request) -> web.Response:
        hooked.append(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", incoming)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        channel = SlackChannel(webhook_url=f"http://127.0.0.1:{port}/hook")
        channel.check_target({})
        await channel.post("deploy finished", channel=None)
    finally:
        await runner.cleanup()
    assert hooked[0]["text"] == "deploy finished"


@pytest.fixture
def workflows_dir_for_slack(data_dir: Path) -> Path:
    folder = data_dir / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "announce.yaml").write_text(
        'name: announce\ntriggers: {events: ["release:out"]}\njobs:\n  tell:\n    steps:\n'
        "      - id: post\n        action: slack:post-message\n"
        '        with: {channel: "#releases", text: "Version {{ input.version }} is out"}\n'
    )
    return folder


async def test_with_no_channel_loaded_the_refusal_says_how_to_load_one(
    engine: Engine, http: aiohttp.ClientSession, data_dir: Path
) -> None:
    headers = {"Authorization": f"Bearer {(data_dir / 'token').read_text().strip()}"}
    async with http.post(
        "/api/v1/alert-rules", json={"channel": "email", "target": {}}, headers=headers
    ) as response:
        error = (await response.json())["error"]
    assert response.status == 422
    assert error["message"] == (
        "body.channel: no alert channel 'email'; loaded channels: none "
        "(start the engine with --plugin email or --plugin slack)"
    )
