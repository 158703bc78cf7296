"""Declarative workflows end to end: a YAML workflow triggered by an event runs http:request
against a local server and email:send to a real SMTP server, in the engine's integration worker;
a bad file is reported with its line and does not replace the last good version."""

from __future__ import annotations

import asyncio
import email
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from taskyard.engine import Engine
from taskyard.plugins import hookimpl
from taskyard.testing import free_port
from taskyard_sdk import RunStatus, Taskyard
from tests.conftest import engine_settings
from tests.integration.test_alerts import Inbox

WORKFLOW = """\
name: welcome
triggers:
  events: ["user:create"]
jobs:
  greet:
    steps:
      - id: profile
        action: http:request
        with:
          url: "{crm}/users/{{{{ input.user_id }}}}"
        timeout: 10s
        retries: 2
      - id: mail
        action: email:send
        with:
          to: "{{{{ steps.profile.body.email }}}}"
          subject: "Welcome, {{{{ steps.profile.body.name }}}}!"
          body: "Your account {{{{ input.user_id }}}} is ready."
  audit:
    steps:
      - id: record
        action: http:request
        with:
          method: POST
          url: "{crm}/audit"
          json: {{user: "{{{{ input.user_id }}}}", event: signup}}
      - id: flaky
        action: http:request
        with: {{url: "{crm}/flaky"}}
        retries: 1
"""


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, controller.port
    controller.stop()


@pytest.fixture
async def crm() -> AsyncIterator[tuple[str, list[tuple[str, Any]]]]:
    """A local HTTP server standing in for a CRM: user profiles, and an audit log."""
    seen: list[tuple[str, Any]] = []

    async def user(request: web.Request) -> web.Response:
        seen.append(("GET", request.match_info["user_id"]))
        return web.json_response({"email": "ana@acme.test", "name": "Ana"})

    async def audit(request: web.Request) -> web.Response:
        seen.append(("POST", await request.json()))
        return web.json_response({"ok": True}, status=201)

    async def flaky(request: web.Request) -> web.Response:
        seen.append(("FLAKY", None))
        failing = sum(1 for kind, _ in seen if kind == "FLAKY") % 2 == 1
        return web.Response(status=503 if failing else 200, text="busy" if failing else "ok")

    app = web.Application()
    app.router.add_get("/users/{user_id}", user)
    app.router.add_post("/audit", audit)
    app.router.add_get("/flaky", flaky)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


@pytest.fixture
def workflows(data_dir: Path, crm: tuple[str, list[tuple[str, Any]]]) -> Path:
    folder = data_dir / "workflows"
    folder.mkdir(parents=True)
    (folder / "welcome.yaml").write_text(WORKFLOW.format(crm=crm[0]))
    return folder


async def _until(check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def test_a_yaml_workflow_runs_http_request_and_email_send(
    db_url: str,
    data_dir: Path,
    workflows: Path,
    smtp: tuple[Inbox, int],
    crm: tuple[str, list[tuple[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    inbox, port = smtp
    monkeypatch.setenv("TASKYARD_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("TASKYARD_SMTP_PORT", str(port))
    settings = engine_settings(db_url, data_dir, plugins=["http", "email"])
    async with Engine(settings) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        event = await ty.events.aio_push("user:create", {"user_id": 7})
        [run_id] = event.triggered
        run = (await ty.runs.aio_wait([run_id], timeout=30))[run_id]
        assert run.status is RunStatus.SUCCEEDED, run
        assert run.output["mail"] == {"sent_to": ["ana@acme.test"]}
        assert ("GET", "7") in crm[1]
        assert ("POST", {"user": 7, "event": "signup"}) in crm[1]
        # A non-2xx answer fails the attempt; the step's retries apply, as for any task.
        steps = (await ty.runs.aio_get(run_id)).steps
        flaky_step = next(step for step in steps if step.step == "flaky")
        flaky_view = await ty.runs.aio_get(flaky_step.run_id)
        assert [a.status for a in flaky_view.attempts] == [RunStatus.FAILED, RunStatus.SUCCEEDED]
        assert "answered 503: busy" in (
            flaky_view.attempts[0].error.message if flaky_view.attempts[0].error else ""
        )
        [message] = inbox.messages
        assert (message["To"], message["Subject"]) == ("ana@acme.test", "Welcome, Ana!")
        assert message.get_payload().strip() == "Your account 7 is ready."
        assert isinstance(message, email.message.Message)

        # A broken edit is reported with its line, and the last good version stays in use.
        (workflows / "welcome.yaml").write_text(
            WORKFLOW.format(crm=crm[0]).replace("action: email:send", "action: email send")
        )
        (workflows / "broken.yaml").write_text("name: broken\njobs: [oops\n")

        async def reported() -> bool:
            files = (await ty.transport.request("GET", "/api/v1/workflow-files"))["files"]
            return sum(1 for f in files if f["error"]) == 2

        await _until(reported)
        files = {
            Path(f["file"]).name: f
            for f in (await ty.transport.request("GET", "/api/v1/workflow-files"))["files"]
        }
        assert files["welcome.yaml"]["workflow"] == "welcome"  # the last good version
        assert (
            "welcome.yaml:14: jobs.greet.steps.1.action: String should match pattern"
            in files["welcome.yaml"]["error"]
        )
        assert "broken.yaml:3: not valid YAML" in files["broken.yaml"]["error"]
        latest = await ty.transport.request("GET", "/api/v1/workflows/welcome")
        assert latest["version"] == 1
        again = await ty.events.aio_push("user:create", {"user_id": 8})
        assert (await ty.runs.aio_wait(again.triggered, timeout=30))[
            again.triggered[0]
        ].status is RunStatus.SUCCEEDED

        # A good edit replaces it; deleting the file retires its triggers.
        (workflows / "broken.yaml").unlink()
        (workflows / "welcome.yaml").write_text(
            WORKFLOW.format(crm=crm[0]).replace("Welcome, ", "Hello, ")
        )

        async def edited() -> bool:
            files = (await ty.transport.request("GET", "/api/v1/workflow-files"))["files"]
            return [f["error"] for f in files] == [None]

        await _until(edited)
        third = await ty.events.aio_push("user:create", {"user_id": 9})
        await ty.runs.aio_wait(third.triggered, timeout=30)
        assert inbox.messages[-1]["Subject"] == "Hello, Ana!"
        (workflows / "welcome.yaml").unlink()

        async def retired() -> bool:
            latest = await ty.transport.request("GET", "/api/v1/workflows/welcome")
            return bool(latest["definition"]["on_events"] == [])

        await _until(retired)
        assert (await ty.events.aio_push("user:create", {"user_id": 10})).triggered == []
        await ty.aio_close()


def test_templates_render_whole_values_typed_and_several_as_text() -> None:
    from taskyard.integrations.declarative import render

    variables = {"input": {"a": 1, "b": "two", "tags": ["x"]}, "steps": {}}
    assert render(
        {
            "one": "{{ input.a }}",
            "two": "{{ input.a }} and {{ input.b }}",
            "list": "{{ input.tags }}",
            "text": "tags: {{ input.tags }}",
            "plain": 3,
        },
        variables,
    ) == {"one": 1, "two": "1 and two", "list": ["x"], "text": 'tags: ["x"]', "plain": 3}


class Picky:
    """An action whose check raises something unexpected."""

    name = "picky:act"

    def check(self, params: dict[str, Any]) -> None:
        raise KeyError("needs-a-key")

    async def run(self, params: dict[str, Any]) -> None:
        return None


class PickyPlugin:
    @hookimpl
    def taskyard_actions(self) -> list[Picky]:
        return [Picky()]


@pytest.fixture
def picky_file(data_dir: Path) -> Path:
    folder = data_dir / "workflows"
    folder.mkdir(parents=True)
    path = folder / "picky.yaml"
    path.write_text(
        "name: picky\njobs:\n  j:\n    steps:\n      - id: s\n"
        "        action: picky:act\n        with: {x: 1}\n"
    )
    return path


async def test_a_plugin_check_that_raises_is_reported_not_fatal(
    db_url: str, data_dir: Path, picky_file: Path
) -> None:
    async with Engine(engine_settings(db_url, data_dir), plugins=[PickyPlugin()]) as engine:
        ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
        files = (await ty.transport.request("GET", "/api/v1/workflow-files"))["files"]
        assert [Path(f["file"]).name for f in files] == ["picky.yaml"]
        assert "KeyError: 'needs-a-key'" in files[0]["error"]
        await ty.aio_close()


def test_hatchet_templates_read_the_input() -> None:
    from taskyard.integrations.declarative import load, render

    text = (
        "name: greet\njobs:\n  j:\n    steps:\n      - id: hi\n        action: billing:charge\n"
        "        with: {to: '{{ .user.firstName }}', text: 'hi {{ .user.firstName }}!'}\n"
    )
    declared = load(Path("greet.yaml"), text)
    [step] = declared.steps()
    assert render(step.with_, {"input": {"user": {"firstName": "Ada"}}, "steps": {}}) == {
        "to": "Ada",
        "text": "hi Ada!",
    }


def test_an_action_of_a_plugin_that_is_not_loaded_is_a_load_error_naming_the_line() -> None:
    from taskyard.integrations.declarative import DeclarativeError, load

    text = (
        "name: ping\njobs:\n  j:\n    steps:\n      - id: call\n"
        "        action: http:request\n        with: {url: 'https://example.test'}\n"
    )
    with pytest.raises(DeclarativeError) as refused:
        load(Path("ping.yaml"), text, actions={"email:send"}, unloaded_plugins={"http"})
    assert str(refused.value) == (
        "ping.yaml:6: step 'call': action 'http:request' comes from "
        "the http plugin, which is not loaded; start the engine with "
        "--plugin http"
    )
    # loaded, it is an action; a namespace no plugin has is a task a worker runs
    load(Path("ping.yaml"), text, actions={"http:request"}, unloaded_plugins=set())
    load(
        Path("ping.yaml"), text.replace("http:request", "billing:charge"), unloaded_plugins={"http"}
    )


async def test_an_engine_without_the_http_plugin_reports_the_file_that_needs_it(
    engine: Engine, data_dir: Path, http: aiohttp.ClientSession
) -> None:
    folder = data_dir / "workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ping.yaml").write_text(
        "name: ping\njobs:\n  j:\n    steps:\n      - id: call\n        action: http:request\n"
        "        with: {url: 'https://example.test'}\n"
    )
    headers = {"Authorization": f"Bearer {(data_dir / 'token').read_text().strip()}"}
    files: list[dict[str, Any]] = []

    async def reported() -> bool:
        nonlocal files
        async with http.get("/api/v1/workflow-files", headers=headers) as response:
            files = (await response.json())["files"]
        return bool(files) and files[0].get("error") is not None

    await _until(reported)
    assert (
        "ping.yaml:6: step 'call': action 'http:request' comes from the http plugin, which "
        "is not loaded; start the engine with --plugin http" in files[0]["error"]
    )


async def test_editing_one_file_leaves_the_steps_in_flight_of_another_alone(
    db_url: str, data_dir: Path
) -> None:
    """A change starts the new integration worker first and drains the old one: a slow
    http:request of another workflow finishes where it runs, and a new file is served at once."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"slow": True})

    async def fast(request: web.Request) -> web.Response:
        return web.json_response({"fast": True})

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    step = (
        "name: {name}\njobs:\n  j:\n    steps:\n      - id: call\n"
        "        action: http:request\n"
        "        with: {{url: 'http://127.0.0.1:{port}/{path}'}}\n"
    )
    folder = data_dir / "workflows"
    folder.mkdir(parents=True)
    (folder / "slow.yaml").write_text(step.format(name="slow", port=port, path="slow"))
    (folder / "other.yaml").write_text(step.format(name="other", port=port, path="fast"))
    try:
        async with Engine(engine_settings(db_url, data_dir, plugins=["http"])) as engine:
            ty = Taskyard(engine.url, (data_dir / "token").read_text().strip())
            in_flight = await ty.transport.request(
                "POST", "/api/v1/workflows/slow/runs", json_body={"input": {}}
            )
            await _until(lambda: _step_running(ty, in_flight["run_id"]))
            with (folder / "other.yaml").open("a") as edited:
                edited.write("# a comment\n")
            (folder / "new.yaml").write_text(step.format(name="new", port=port, path="fast"))

            async def new_served() -> bool:
                try:
                    run = await ty.transport.request(
                        "POST", "/api/v1/workflows/new/runs", json_body={"input": {}}
                    )
                except Exception:
                    return False
                [done] = (await ty.runs.aio_wait([run["run_id"]], timeout=10)).values()
                return done.status is RunStatus.SUCCEEDED

            try:
                await _until(new_served, timeout=10)  # not after the old worker's drain
            finally:
                release.set()
            [finished] = (await ty.runs.aio_wait([in_flight["run_id"]], timeout=30)).values()
            assert finished.status is RunStatus.SUCCEEDED, finished
            assert finished.output["call"]["body"] == {"slow": True}
            await ty.aio_close()
    finally:
        release.set()
        await runner.cleanup()


async def _step_running(ty: Taskyard, run_id: str) -> bool:
    view = await ty.runs.aio_get(run_id)
    return any(step.status is RunStatus.RUNNING for step in view.steps)
