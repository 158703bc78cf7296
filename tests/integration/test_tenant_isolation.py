"""Tenant isolation as a matrix. Tenant B, with its own admin token, calls every REST endpoint
(read from the engine's OpenAPI document, so a new endpoint must join the matrix or be named
tenant-less) over HTTP and over the client channel, and sends every worker message, naming
tenant A's ids and names. B must learn nothing of A, not even that an id exists: each answer
about an object of A's is the answer about an object nobody has. A, reading everything again,
finds it unchanged. And work stays in its tenant: A's workers get A's runs only, and events,
durable waits, rate limits, concurrency keys, idempotency keys and alert rules act within
their own tenant, whatever names the other one uses."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from taskyard.domain.auth import Role
from taskyard.engine import Engine
from taskyard.plugins import Alert, hookimpl
from taskyard_sdk import (
    Concurrency,
    Context,
    DurableContext,
    NonRetryableError,
    RateLimit,
    RunStatus,
    TaskFailed,
    Taskyard,
    protocol,
)
from tests.conftest import TenantTokens, engine_settings, new_tenant

A_NAME, B_NAME = "tenant-a", "tenant-b"
Query = Sequence[tuple[str, str]]
Answer = tuple[int, Any]


class AlertRecorder:
    """An alert channel plugin that keeps what it is asked to deliver."""

    name = "recorder"

    def __init__(self) -> None:
        self.alerts: list[tuple[dict[str, Any], Alert]] = []

    @hookimpl
    def taskyard_alert_channels(self) -> list[AlertRecorder]:
        return [self]

    def check_target(self, target: dict[str, Any]) -> None:
        return None

    async def send(self, alert: Alert, target: dict[str, Any]) -> None:
        self.alerts.append((target, alert))


@pytest.fixture
def recorder() -> AlertRecorder:
    return AlertRecorder()


@pytest.fixture
async def engine(db_url: str, data_dir: Path, recorder: AlertRecorder) -> AsyncIterator[Engine]:
    """An engine with the plugins that add endpoints (webhooks) or alert channels, and a
    declarative workflow file of tenant A's that does not load (A's /workflow-files then has
    something to leak). Hand-spoken worker sockets send no heartbeats: the timeout is long."""
    files = data_dir / "workflows" / A_NAME
    files.mkdir(parents=True)
    (files / "draft.yaml").write_text("name: a-draft\njobs: [unclosed\n")
    settings = engine_settings(db_url, data_dir, plugins=["webhooks"], heartbeat_timeout=30.0)
    async with Engine(settings, plugins=[recorder]) as running:
        yield running


@pytest.fixture
async def a(engine: Engine) -> TenantTokens:
    return await new_tenant(engine, A_NAME)


@pytest.fixture
async def b(engine: Engine) -> TenantTokens:
    return await new_tenant(engine, B_NAME)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


# -- calling the API over HTTP or over a client channel ----------------------------------------


class Caller(Protocol):
    async def __call__(
        self, method: str, path: str, body: Any = None, query: Query = ()
    ) -> Answer: ...


@dataclass
class OverHttp:
    http: aiohttp.ClientSession
    token: str

    async def __call__(self, method: str, path: str, body: Any = None, query: Query = ()) -> Answer:
        async with self.http.request(
            method,
            path,
            json=body,
            params=list(query),
            headers={"Authorization": f"Bearer {self.token}"},
        ) as response:
            raw = await response.read()
            return response.status, json.loads(raw) if raw else None


class OverChannel:
    """Calls as frames on a client channel (`/api/v1/clients/connect`), one at a time."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def __call__(self, method: str, path: str, body: Any = None, query: Query = ()) -> Answer:
        call_id = next(self.ids)
        await self.ws.send_json(
            {
                "id": call_id,
                "method": method,
                "path": path,
                "body": body,
                "query": [list(pair) for pair in query],
            }
        )
        while True:
            message = await self.ws.receive(timeout=10)
            assert message.type is aiohttp.WSMsgType.TEXT, message
            data = json.loads(message.data)
            for answer in data if isinstance(data, list) else [data]:
                if answer.get("id") == call_id:
                    return answer["status"], answer["body"]


async def ok(
    caller: Caller, method: str, path: str, body: Any = None, query: Query = (), status: int = 200
) -> Any:
    answer = await caller(method, path, body, query)
    assert answer[0] == status, (method, path, answer)
    return answer[1]


# -- tenant A's objects, made for real ----------------------------------------------------------


@dataclass
class World:
    """Tenant A's objects: what B names in its calls, and A reads again afterwards."""

    runs: dict[str, str]  # finished, queued, a workflow run and its step
    idempotency_key: str
    task: str
    workflow: str
    event_id: str
    event_key: str
    rate_keys: list[str]  # a named limit and a dynamic key's bucket
    cron_id: str
    schedule_id: str
    rule_id: str
    token_ids: list[str]
    secrets: list[str]
    worker_id: str

    def reads(self) -> list[str]:
        """Everything A reads back to see that nothing changed."""
        paths = [
            "/api/v1/whoami",
            "/api/v1/tokens",
            "/api/v1/runs",
            "/api/v1/workers",
            "/api/v1/tasks",
            "/api/v1/workflows",
            f"/api/v1/workflows/{self.workflow}",
            "/api/v1/workflow-files",
            "/api/v1/events",
            f"/api/v1/events/{self.event_id}",
            "/api/v1/rate-limits",
            "/api/v1/crons",
            f"/api/v1/crons/{self.cron_id}",
            "/api/v1/schedules",
            f"/api/v1/schedules/{self.schedule_id}",
            "/api/v1/alert-rules",
            "/api/v1/pauses",
            "/api/v1/queues",
        ]
        paths += [f"/api/v1/rate-limits/{key}" for key in self.rate_keys]
        for run_id in self.runs.values():
            paths += [
                f"/api/v1/runs/{run_id}",
                f"/api/v1/runs/{run_id}/events",
                f"/api/v1/runs/{run_id}/logs",
            ]
        return paths


async def build_world(a_http: Caller, worker_id: uuid.UUID, tokens: TenantTokens) -> World:
    """A's objects, with A's worker (started by the caller) connected and registered."""
    await ok(a_http, "PUT", "/api/v1/rate-limits/a-limit", {"limit": 5, "duration": "day"})
    await ok(a_http, "POST", "/api/v1/queues/a-held/pause", query=[("reason", "a's incident")])
    finished = await ok(
        a_http,
        "POST",
        "/api/v1/runs",
        {
            "task": "a-task",
            "input": {"who": "ann"},
            "metadata": {"owner": "a"},
            "idempotency_key": "a-order-1",
        },
        status=201,
    )
    queued = await ok(a_http, "POST", "/api/v1/runs", {"task": "a-idle"}, status=201)
    event = await ok(
        a_http,
        "POST",
        "/api/v1/events",
        {"key": "a:signal", "payload": {"secret": "a's payload"}},
        status=201,
    )
    [flow_run] = event["triggered"]
    waited = await ok(
        a_http,
        "POST",
        "/api/v1/runs/wait",
        {"run_ids": [finished["run_id"], flow_run], "timeout": 20},
    )
    assert {run["status"] for run in waited["runs"]} == {"succeeded"}, waited
    [step] = (await ok(a_http, "GET", f"/api/v1/runs/{flow_run}"))["steps"]

    async def logged() -> bool:
        logs = await ok(a_http, "GET", f"/api/v1/runs/{finished['run_id']}/logs")
        return bool(logs["lines"])

    await _until(logged)  # written behind: A's snapshot must not change under B's probes
    cron = await ok(
        a_http,
        "POST",
        "/api/v1/crons",
        {
            "name": "a-nightly",
            "task": "a-task",
            "expression": "0 0 1 1 *",
            "input": {"who": "cron"},
        },
        status=201,
    )
    schedule = await ok(
        a_http,
        "POST",
        "/api/v1/schedules",
        {
            "task": "a-task",
            "at": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "input": {"who": "later"},
        },
        status=201,
    )
    rule = await ok(
        a_http,
        "POST",
        "/api/v1/alert-rules",
        {"channel": "recorder", "target": {"to": "a"}, "tasks": ["a-task"]},
        status=201,
    )
    extra = await ok(
        a_http, "POST", "/api/v1/tokens", {"role": "client", "name": "a-ci"}, status=201
    )
    token_ids = [token["token_id"] for token in await ok(a_http, "GET", "/api/v1/tokens")]
    return World(
        runs={
            "finished": finished["run_id"],
            "queued": queued["run_id"],
            "workflow": flow_run,
            "step": step["run_id"],
        },
        idempotency_key="a-order-1",
        task="a-task",
        workflow="a-flow",
        event_id=event["event_id"],
        event_key="a:signal",
        rate_keys=["a-limit", "a-bucket:ann"],
        cron_id=cron["cron_id"],
        schedule_id=schedule["schedule_id"],
        rule_id=rule["rule_id"],
        token_ids=token_ids,
        secrets=[tokens.admin, tokens.client, tokens.worker, extra["token"]],
        worker_id=str(worker_id),
    )


def a_worker(ty: Taskyard) -> Any:
    """A's SDK worker: a task (rate-limited, logging) and an event-triggered workflow."""
    flow = ty.workflow("a-flow", on_events=["a:signal"])

    @flow.task(name="a-step")
    async def a_step(payload: dict[str, str]) -> str:
        return "stepped"

    @ty.task(
        name="a-task",
        rate_limits=[
            RateLimit(key="a-limit"),
            RateLimit(dynamic_key="'a-bucket:' + input.who", limit=10, duration="day"),
        ],
    )
    async def a_task(job: dict[str, str], ctx: Context) -> dict[str, str]:
        ctx.log("a's secret log line")
        return {"secret": "a's output"}

    return ty.worker("a-worker", tasks=[a_task], workflows=[flow])


async def snapshot(http: aiohttp.ClientSession, world: World) -> dict[str, Any]:
    """What A reads of its objects, with each of its tokens still working."""
    seen = {}
    for secret in world.secrets:
        me = await ok(OverHttp(http, secret), "GET", "/api/v1/whoami")
        assert me["tenant_name"] == A_NAME
        seen[f"whoami {me['token_id']}"] = me
    a_http = OverHttp(http, world.secrets[0])
    seen.update({path: await ok(a_http, "GET", path) for path in world.reads()})
    for worker in seen["/api/v1/workers"]:
        del worker["last_heard_at"]  # heartbeats move it on; what B may not change stays
    return seen


# -- the matrix ------------------------------------------------------------------------------------


def _decoy(value: str) -> str:
    """An id or name of the same kind that nobody has."""
    try:
        uuid.UUID(value)
    except ValueError:
        return f"nobody-{uuid.uuid4().hex[:8]}"
    return str(uuid.uuid4())


@dataclass
class Probing:
    b: Caller  # tenant B's admin token, over the transport under test
    b_http: Caller  # the same token over HTTP, for endpoints served over HTTP only
    http: aiohttp.ClientSession
    b_tenant: TenantTokens
    world: World
    b_runs: list[str] = field(default_factory=list)  # runs B triggered

    async def unknown(
        self,
        method: str,
        template: str,
        values: dict[str, str],
        *,
        body: Callable[[dict[str, str]], Any] | None = None,
        query: Query = (),
        status: int = 404,
        over: Caller | None = None,
    ) -> None:
        """B's call naming A's objects (`values`) is answered `status`, exactly as the same
        call naming objects nobody has (but for the names)."""
        caller = over or self.b
        decoys = {name: _decoy(value) for name, value in values.items()}
        real = await caller(
            method, template.format(**values), body(values) if body else None, query
        )
        fake = await caller(
            method, template.format(**decoys), body(decoys) if body else None, query
        )
        assert real[0] == status, (method, template, real)
        text = json.dumps(list(fake))
        for name, decoy in decoys.items():
            text = text.replace(decoy, values[name])
        assert json.loads(text) == list(real), (method, template, real, fake)

    async def each_run(self, method: str, template: str, **options: Any) -> None:
        for run_id in self.world.runs.values():
            await self.unknown(method, template, {"run_id": run_id}, **options)

    async def empty(self, path: str, expected: Any, queries: Sequence[Query] = ((),)) -> None:
        for query in queries:
            assert await ok(self.b, "GET", path, query=query) == expected, (path, query)


Probe = Callable[[Probing], Awaitable[None]]
MATRIX: dict[tuple[str, str], Probe] = {}  # run in this order: lists first, creations last


def probe(method: str, path: str) -> Callable[[Probe], Probe]:
    def register(function: Probe) -> Probe:
        assert (method, path) not in MATRIX
        MATRIX[(method, path)] = function
        return function

    return register


TENANT_LESS = {  # they take no token, so there is no tenant to cross
    ("GET", "/healthz"): "liveness and the database's reachability",
    ("GET", "/api/v1/openapi.json"): "the API's description, the same for everyone",
    ("POST", "/api/v1/webhooks/{name}"): "signed by a secret; its tenant is named in the "
    "server's webhooks file, not by the caller",
}
SOCKETS = {  # tenant B's side of these is driven by the tests named
    ("GET", "/api/v1/workers/connect"): "test_worker_messages_about_another_tenants_run_"
    "are_answered_as_for_no_run",
    ("GET", "/api/v1/clients/connect"): "test_tenant_b_sees_and_changes_nothing_of_"
    "tenant_a[channel]",
}


@probe("GET", "/api/v1/whoami")
async def _whoami(p: Probing) -> None:
    me = await ok(p.b, "GET", "/api/v1/whoami")
    assert (me["tenant_id"], me["tenant_name"]) == (str(p.b_tenant.tenant_id), B_NAME)


@probe("GET", "/api/v1/tokens")
async def _list_tokens(p: Probing) -> None:
    tokens = await ok(p.b, "GET", "/api/v1/tokens")
    assert sorted(token["role"] for token in tokens) == sorted(Role)
    assert not {token["token_id"] for token in tokens} & set(p.world.token_ids)


@probe("DELETE", "/api/v1/tokens/{token_id}")
async def _revoke_token(p: Probing) -> None:
    for token_id in p.world.token_ids:
        await p.unknown("DELETE", "/api/v1/tokens/{token_id}", {"token_id": token_id})


@probe("GET", "/api/v1/runs")
async def _list_runs(p: Probing) -> None:
    world = p.world
    await p.empty(
        "/api/v1/runs",
        {"runs": [], "next_cursor": None},
        [
            (),
            [("task", world.task)],
            [("task", world.workflow)],
            [("metadata", "owner:a")],
            [("status", "succeeded")],
            [("status", "queued")],
            [("cursor", max(world.runs.values()))],
        ],
    )


@probe("POST", "/api/v1/runs/wait")
async def _wait_runs(p: Probing) -> None:
    runs = p.world.runs
    await p.unknown(
        "POST",
        "/api/v1/runs/wait",
        runs,
        body=lambda ids: {"run_ids": [ids[name] for name in runs], "timeout": 1},
    )
    for run_id in runs.values():
        await p.unknown(
            "POST",
            "/api/v1/runs/wait",
            {"run_id": run_id},
            body=lambda ids: {"run_ids": [ids["run_id"]], "timeout": 1},
        )


@probe("GET", "/api/v1/runs/{run_id}")
async def _get_run(p: Probing) -> None:
    await p.each_run("GET", "/api/v1/runs/{run_id}")


@probe("GET", "/api/v1/runs/{run_id}/result")
async def _run_result(p: Probing) -> None:
    await p.each_run("GET", "/api/v1/runs/{run_id}/result", query=[("timeout", "1")])


@probe("GET", "/api/v1/runs/{run_id}/stream")
async def _stream_run(p: Probing) -> None:
    await p.each_run("GET", "/api/v1/runs/{run_id}/stream", over=p.b_http)


@probe("GET", "/api/v1/runs/{run_id}/events")
async def _run_events(p: Probing) -> None:
    await p.each_run("GET", "/api/v1/runs/{run_id}/events")


@probe("GET", "/api/v1/runs/{run_id}/durable-log")
async def _durable_log(p: Probing) -> None:
    await p.each_run("GET", "/api/v1/runs/{run_id}/durable-log")


@probe("GET", "/api/v1/runs/{run_id}/logs")
async def _run_logs(p: Probing) -> None:
    await p.each_run("GET", "/api/v1/runs/{run_id}/logs")


@probe("POST", "/api/v1/runs/{run_id}/cancel")
async def _cancel_run(p: Probing) -> None:
    await p.each_run("POST", "/api/v1/runs/{run_id}/cancel")


@probe("POST", "/api/v1/runs/{run_id}/replay")
async def _replay_run(p: Probing) -> None:
    await p.each_run("POST", "/api/v1/runs/{run_id}/replay")


async def _bulk(p: Probing, path: str) -> None:
    """B's bulk call names A's runs as it would name nobody's, and B's filter for A's task
    finds nothing (B has no runs yet: its triggers are probed later)."""
    runs = p.world.runs
    await p.unknown(
        "POST", path, runs, body=lambda ids: {"run_ids": [ids[n] for n in runs]}, status=200
    )
    for matching in ({"task": [p.world.task]}, {}):
        answer = await ok(p.b, "POST", path, {"filter": matching})
        assert (answer["matched"], answer["changed"]) == (0, 0), (matching, answer)


@probe("POST", "/api/v1/runs/cancel")
async def _cancel_runs(p: Probing) -> None:
    await _bulk(p, "/api/v1/runs/cancel")


@probe("POST", "/api/v1/runs/replay")
async def _replay_runs(p: Probing) -> None:
    await _bulk(p, "/api/v1/runs/replay")


@probe("GET", "/api/v1/workers")
async def _list_workers(p: Probing) -> None:
    await p.empty("/api/v1/workers", [])


@probe("GET", "/api/v1/queues")
async def _list_queues(p: Probing) -> None:
    await p.empty("/api/v1/queues", [])


@probe("GET", "/api/v1/tasks")
async def _list_tasks(p: Probing) -> None:
    await p.empty("/api/v1/tasks", [])


@probe("GET", "/api/v1/workflows")
async def _list_workflows(p: Probing) -> None:
    await p.empty("/api/v1/workflows", {"workflows": []})


@probe("GET", "/api/v1/workflows/{name}")
async def _get_workflow(p: Probing) -> None:
    for query in ((), [("version", "1")]):
        await p.unknown("GET", "/api/v1/workflows/{name}", {"name": p.world.workflow}, query=query)


@probe("POST", "/api/v1/workflows/{name}/runs")
async def _trigger_workflow(p: Probing) -> None:
    await p.unknown(
        "POST",
        "/api/v1/workflows/{name}/runs",
        {"name": p.world.workflow},
        body=lambda _: {"input": {"from": "b"}},
    )


@probe("POST", "/api/v1/workflows/{name}/runs/batch")
async def _trigger_workflow_batch(p: Probing) -> None:
    await p.unknown(
        "POST",
        "/api/v1/workflows/{name}/runs/batch",
        {"name": p.world.workflow},
        body=lambda _: {"runs": [{"input": 1}, {"input": 2}]},
    )


@probe("GET", "/api/v1/workflow-files")
async def _workflow_files(p: Probing) -> None:
    await p.empty("/api/v1/workflow-files", {"files": []})


@probe("GET", "/api/v1/events")
async def _list_events(p: Probing) -> None:
    await p.empty(
        "/api/v1/events",
        {"events": [], "next_cursor": None},
        [
            (),
            [("key", p.world.event_key)],
            [("prefix", "a:")],
            [("metadata", "owner:a")],
            [("cursor", p.world.event_id)],
        ],
    )


@probe("GET", "/api/v1/events/{event_id}")
async def _get_event(p: Probing) -> None:
    await p.unknown("GET", "/api/v1/events/{event_id}", {"event_id": p.world.event_id})


@probe("POST", "/api/v1/events/{event_id}/replay")
async def _replay_event(p: Probing) -> None:
    await p.unknown("POST", "/api/v1/events/{event_id}/replay", {"event_id": p.world.event_id})


@probe("GET", "/api/v1/rate-limits")
async def _list_rate_limits(p: Probing) -> None:
    await p.empty("/api/v1/rate-limits", {"rate_limits": []})


@probe("GET", "/api/v1/rate-limits/{key}")
async def _get_rate_limit(p: Probing) -> None:
    for key in p.world.rate_keys:
        await p.unknown("GET", "/api/v1/rate-limits/{key}", {"key": key})


@probe("DELETE", "/api/v1/rate-limits/{key}")
async def _delete_rate_limit(p: Probing) -> None:
    for key in p.world.rate_keys:
        await p.unknown("DELETE", "/api/v1/rate-limits/{key}", {"key": key})


@probe("GET", "/api/v1/pauses")
async def _list_pauses(p: Probing) -> None:
    await p.empty("/api/v1/pauses", {"paused": []})


def _pause_probe(kind: str, path: str) -> None:
    """B pausing (and resuming) what has the name of A's queue, task or workflow pauses B's
    own, which A's reads afterwards show: A's stay as they were."""

    async def probe_pause(p: Probing) -> None:
        name = {"queue": "a-held", "task": p.world.task, "workflow": p.world.workflow}[kind]
        for action in ("pause", "resume"):
            view = await ok(p.b, "POST", path.format(name=name) + f"/{action}")
            assert (view["kind"], view["name"], view["paused"]) == (kind, name, action == "pause")

    probe("POST", path + "/pause")(probe_pause)
    probe("POST", path + "/resume")(probe_pause)


for _kind, _path in (
    ("queue", "/api/v1/queues/{name}"),
    ("task", "/api/v1/tasks/{name}"),
    ("workflow", "/api/v1/workflows/{name}"),
):
    _pause_probe(_kind, _path)


@probe("POST", "/api/v1/workers/{worker_id}/pause")
async def _pause_worker(p: Probing) -> None:
    path = "/api/v1/workers/{worker_id}/pause"
    await p.unknown("POST", path, {"worker_id": p.world.worker_id})


@probe("POST", "/api/v1/workers/{worker_id}/resume")
async def _resume_worker(p: Probing) -> None:
    path = "/api/v1/workers/{worker_id}/resume"
    await p.unknown("POST", path, {"worker_id": p.world.worker_id}, status=200)


@probe("GET", "/api/v1/crons")
async def _list_crons(p: Probing) -> None:
    await p.empty("/api/v1/crons", {"crons": []})


@probe("GET", "/api/v1/crons/{cron_id}")
async def _get_cron(p: Probing) -> None:
    await p.unknown("GET", "/api/v1/crons/{cron_id}", {"cron_id": p.world.cron_id})


@probe("POST", "/api/v1/crons/{cron_id}/pause")
async def _pause_cron(p: Probing) -> None:
    await p.unknown("POST", "/api/v1/crons/{cron_id}/pause", {"cron_id": p.world.cron_id})


@probe("POST", "/api/v1/crons/{cron_id}/trigger")
async def _trigger_cron(p: Probing) -> None:
    await p.unknown("POST", "/api/v1/crons/{cron_id}/trigger", {"cron_id": p.world.cron_id})


@probe("POST", "/api/v1/crons/{cron_id}/resume")
async def _resume_cron(p: Probing) -> None:
    await p.unknown("POST", "/api/v1/crons/{cron_id}/resume", {"cron_id": p.world.cron_id})


@probe("DELETE", "/api/v1/crons/{cron_id}")
async def _delete_cron(p: Probing) -> None:
    await p.unknown("DELETE", "/api/v1/crons/{cron_id}", {"cron_id": p.world.cron_id})


@probe("GET", "/api/v1/schedules")
async def _list_schedules(p: Probing) -> None:
    await p.empty("/api/v1/schedules", {"schedules": []})


@probe("GET", "/api/v1/schedules/{schedule_id}")
async def _get_schedule(p: Probing) -> None:
    await p.unknown("GET", "/api/v1/schedules/{schedule_id}", {"schedule_id": p.world.schedule_id})


@probe("PATCH", "/api/v1/schedules/{schedule_id}")
async def _reschedule(p: Probing) -> None:
    at = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    await p.unknown(
        "PATCH",
        "/api/v1/schedules/{schedule_id}",
        {"schedule_id": p.world.schedule_id},
        body=lambda _: {"at": at},
    )


@probe("DELETE", "/api/v1/schedules/{schedule_id}")
async def _delete_schedule(p: Probing) -> None:
    await p.unknown(
        "DELETE", "/api/v1/schedules/{schedule_id}", {"schedule_id": p.world.schedule_id}
    )


@probe("GET", "/api/v1/alert-rules")
async def _list_alert_rules(p: Probing) -> None:
    await p.empty("/api/v1/alert-rules", {"rules": []})


@probe("PUT", "/api/v1/alert-rules/{rule_id}")
async def _replace_alert_rule(p: Probing) -> None:
    await p.unknown(
        "PUT",
        "/api/v1/alert-rules/{rule_id}",
        {"rule_id": p.world.rule_id},
        body=lambda _: {"channel": "recorder", "target": {"to": "b"}},
    )


@probe("DELETE", "/api/v1/alert-rules/{rule_id}")
async def _delete_alert_rule(p: Probing) -> None:
    await p.unknown("DELETE", "/api/v1/alert-rules/{rule_id}", {"rule_id": p.world.rule_id})


# Creations: B makes its own objects under A's names; they are B's, and A's stay as they were.


@probe("POST", "/api/v1/tokens")
async def _create_token(p: Probing) -> None:
    created = await ok(
        p.b, "POST", "/api/v1/tokens", {"role": "client", "name": "a-ci"}, status=201
    )
    assert created["token_id"] not in p.world.token_ids
    me = await ok(OverHttp(p.http, created["token"]), "GET", "/api/v1/whoami")
    assert me["tenant_name"] == B_NAME


async def _b_owns(p: Probing, refs: list[dict[str, Any]]) -> None:
    for ref in refs:
        assert ref["run_id"] not in p.world.runs.values()
        assert (await ok(p.b, "GET", f"/api/v1/runs/{ref['run_id']}"))["input"] == {"who": "b"}
        p.b_runs.append(ref["run_id"])


@probe("POST", "/api/v1/runs")
async def _trigger(p: Probing) -> None:
    world = p.world
    ref = await ok(
        p.b,
        "POST",
        "/api/v1/runs",
        {"task": world.task, "input": {"who": "b"}, "idempotency_key": world.idempotency_key},
        status=201,
    )
    assert ref["created"] is True  # a run of B's own: A's run with this key is not B's
    await _b_owns(p, [ref])
    await p.unknown(
        "POST",
        "/api/v1/runs",
        {"run_id": world.runs["finished"]},
        status=422,
        body=lambda ids: {"task": world.task, "parent_run_id": ids["run_id"]},
    )


@probe("POST", "/api/v1/runs/batch")
async def _trigger_batch(p: Probing) -> None:
    world = p.world
    answer = await ok(
        p.b,
        "POST",
        "/api/v1/runs/batch",
        {
            "runs": [
                {
                    "task": world.task,
                    "input": {"who": "b"},
                    "idempotency_key": world.idempotency_key,
                },
                {"task": world.task, "input": {"who": "b"}, "idempotency_key": "a-order-2"},
            ]
        },
        status=201,
    )
    await _b_owns(p, answer["runs"])
    await p.unknown(
        "POST",
        "/api/v1/runs/batch",
        {"run_id": world.runs["finished"]},
        status=422,
        body=lambda ids: {
            "runs": [{"task": world.task}, {"task": world.task, "parent_run_id": ids["run_id"]}]
        },
    )


@probe("POST", "/api/v1/workflows")
async def _register_workflow(p: Probing) -> None:
    world = p.world
    definition = {
        "name": world.workflow,
        "on_events": [world.event_key],
        "steps": [{"name": "b-step"}],
    }
    info = await ok(p.b, "POST", "/api/v1/workflows", definition, status=201)
    assert (info["version"], info["created"]) == (1, True)
    mine = await ok(p.b, "GET", f"/api/v1/workflows/{world.workflow}")
    assert [step["name"] for step in mine["definition"]["steps"]] == ["b-step"]


async def _triggered_b_only(p: Probing, events: list[dict[str, Any]]) -> None:
    """B's events trigger B's own workflow of the same name (registered above), never A's."""
    for event in events:
        assert event["event_id"] != p.world.event_id
        [run_id] = event["triggered"]
        view = await ok(p.b, "GET", f"/api/v1/runs/{run_id}")
        assert view["task"] == p.world.workflow
        assert run_id not in p.world.runs.values()


@probe("POST", "/api/v1/events")
async def _push_event(p: Probing) -> None:
    event = await ok(
        p.b,
        "POST",
        "/api/v1/events",
        {"key": p.world.event_key, "payload": {"from": "b"}},
        status=201,
    )
    await _triggered_b_only(p, [event])


@probe("POST", "/api/v1/events/batch")
async def _push_events(p: Probing) -> None:
    answer = await ok(
        p.b,
        "POST",
        "/api/v1/events/batch",
        {"events": [{"key": p.world.event_key, "payload": {"from": "b"}}] * 2},
        status=201,
    )
    await _triggered_b_only(p, answer["events"])


@probe("PUT", "/api/v1/rate-limits/{key}")
async def _put_rate_limit(p: Probing) -> None:
    for key in p.world.rate_keys:
        view = await ok(
            p.b, "PUT", f"/api/v1/rate-limits/{key}", {"limit": 1, "duration": "minute"}
        )
        assert view == {
            "key": key,
            "limit": 1,
            "duration": "minute",
            "configured": True,
            "used": 0,
            "available": 1,
        }


@probe("POST", "/api/v1/crons")
async def _create_cron(p: Probing) -> None:
    cron = await ok(
        p.b,
        "POST",
        "/api/v1/crons",
        {"name": "a-nightly", "task": p.world.task, "expression": "0 0 1 1 *"},
        status=201,
    )
    assert cron["cron_id"] != p.world.cron_id
    assert [c["cron_id"] for c in (await ok(p.b, "GET", "/api/v1/crons"))["crons"]] == [
        cron["cron_id"]
    ]


@probe("POST", "/api/v1/schedules")
async def _create_schedule(p: Probing) -> None:
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    schedule = await ok(
        p.b, "POST", "/api/v1/schedules", {"task": p.world.task, "at": at}, status=201
    )
    assert schedule["schedule_id"] != p.world.schedule_id


@probe("POST", "/api/v1/alert-rules")
async def _create_alert_rule(p: Probing) -> None:
    rule = await ok(
        p.b,
        "POST",
        "/api/v1/alert-rules",
        {"channel": "recorder", "target": {"to": "b"}},
        status=201,
    )
    assert rule["rule_id"] != p.world.rule_id
    assert [r["rule_id"] for r in (await ok(p.b, "GET", "/api/v1/alert-rules"))["rules"]] == [
        rule["rule_id"]
    ]


# -- the tests -------------------------------------------------------------------------------------


async def test_every_endpoint_is_in_the_matrix_or_named_tenant_less(
    http: aiohttp.ClientSession,
) -> None:
    async with http.get("/api/v1/openapi.json") as response:
        document = await response.json()
    served = {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }
    named = {**MATRIX, **TENANT_LESS, **SOCKETS}
    uncovered = sorted(set(served) - set(named))
    assert not uncovered, (
        f"endpoints with no tenant-isolation probe: {uncovered}; add a "
        f"@probe to tests/integration/test_tenant_isolation.py, or name the endpoint in "
        f"TENANT_LESS if it takes no token"
    )
    assert not sorted(set(named) - set(served)), "the matrix names endpoints no longer served"
    for endpoint in TENANT_LESS:
        assert "security" not in served[endpoint], f"{endpoint} takes a token: probe it"
    for endpoint in {**MATRIX, **SOCKETS}:
        assert "security" in served[endpoint], endpoint
    for test in SOCKETS.values():
        assert callable(globals().get(test.partition("[")[0])), f"no test {test}"


@pytest.mark.parametrize("transport", ["http", "channel"])
async def test_tenant_b_sees_and_changes_nothing_of_tenant_a(
    engine: Engine, http: aiohttp.ClientSession, a: TenantTokens, b: TenantTokens, transport: str
) -> None:
    a_http = OverHttp(http, a.admin)
    ty = Taskyard(url=engine.url, token=a.admin)
    try:
        async with a_worker(ty) as worker:
            world = await build_world(a_http, worker.worker_id, a)
            before = await snapshot(http, world)
            # Not vacuous: A has one of everything B is about to name.
            assert set(world.runs.values()) <= {
                run["run_id"] for run in before["/api/v1/runs"]["runs"]
            }
            assert [
                len(before[f"/api/v1/{noun}"][key])
                for noun, key in (
                    ("workflows", "workflows"),
                    ("workflow-files", "files"),
                    ("events", "events"),
                    ("rate-limits", "rate_limits"),
                    ("crons", "crons"),
                    ("schedules", "schedules"),
                    ("alert-rules", "rules"),
                )
            ] == [1, 1, 1, 2, 1, 1, 1]
            assert before["/api/v1/workflow-files"]["files"][0]["error"]
            assert [w["worker_id"] for w in before["/api/v1/workers"]] == [world.worker_id]
            assert "a-task" in [t["name"] for t in before["/api/v1/tasks"]]
            assert len(before["/api/v1/tokens"]) == len(Role) + 1  # and "a-ci"

            b_http = OverHttp(http, b.admin)
            async with http.ws_connect("/api/v1/clients/connect", headers=b.headers()) as channel:
                assert (await channel.receive_json(timeout=5))["type"] == "welcome"
                probing = Probing(
                    b=b_http if transport == "http" else OverChannel(channel),
                    b_http=b_http,
                    http=http,
                    b_tenant=b,
                    world=world,
                )
                for (method, path), run_probe in MATRIX.items():
                    try:
                        await run_probe(probing)
                    except AssertionError as exc:
                        raise AssertionError(f"{method} {path}: {exc}") from exc

            # B's runs of A's task name went to no worker: A's worker never received them.
            for run_id in probing.b_runs:
                view = await ok(b_http, "GET", f"/api/v1/runs/{run_id}")
                assert (view["status"], view["attempt"]) == ("queued", 1)
                assert view["waiting_reason"] == (
                    "no connected worker has registered task 'a-task' on queue 'default'"
                )
            after = await snapshot(http, world)
        for path, seen in before.items():
            assert after[path] == seen, path
    finally:
        await ty.aio_close()


# -- the worker socket -----------------------------------------------------------------------------


class HandWorker:
    """A worker spoken by hand over the worker socket, keeping every message it receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.received: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type is aiohttp.WSMsgType.TEXT:
                data = json.loads(message.data)
                self.received.extend(data if isinstance(data, list) else [data])

    async def hello(
        self, worker_id: str, name: str, in_flight: Sequence[dict[str, Any]] = ()
    ) -> None:
        await self.ws.send_json(
            {
                "type": "hello",
                "protocol": protocol.PROTOCOL_VERSION,
                "worker_id": worker_id,
                "name": name,
                "slots": 10,
                "tasks": [{"name": "shared"}],
                "in_flight": list(in_flight),
            }
        )
        await self.next("welcome")

    async def next(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The first message of this kind (with these fields) received so far, or soon."""
        found: list[dict[str, Any]] = []

        async def arrived() -> bool:
            found[:] = [
                m
                for m in self.received
                if m["type"] == kind and all(m.get(name) == value for name, value in fields.items())
            ]
            return bool(found)

        await _until(arrived, timeout=5)
        return found[0]

    def assigned(self) -> set[str]:
        return {m["run_id"] for m in self.received if m["type"] == "assign"}

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


def about(run_id: str) -> list[dict[str, Any]]:
    """Every worker message about an attempt, each as a worker holding it would send it."""
    ref = {"run_id": run_id, "attempt": 1}
    now = time.time()
    return [
        {"type": "started", **ref},
        {"type": "log", **ref, "message": "b was here"},
        {"type": "stream", **ref, "data": {"from": "b"}},
        {"type": "refresh_timeout", **ref, "seconds": 3600},
        {
            "type": "record",
            **ref,
            "entry": {"position": 0, "kind": "memo", "call": "b()", "result": "b"},
        },
        {
            "type": "suspend",
            **ref,
            "position": 0,
            "call": "sleep(60s)",
            "wait": {"since": now, "until": now + 60},
        },
        {
            "type": "failed",
            **ref,
            "error": {"type": "B", "message": "b failed it"},
            "retryable": False,
        },
        {"type": "completed", **ref, "output": {"from": "b"}},
    ]


async def _sse_chunks(response: aiohttp.ClientResponse) -> list[Any]:
    """The `data:` chunks of a run's server-sent events, up to `event: end`."""
    chunks, event = [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            if event == "end":
                return chunks
            chunks.append(json.loads(line.removeprefix("data: ")))
    raise AssertionError("the stream ended without `event: end`")


async def test_worker_messages_about_another_tenants_run_are_answered_as_for_no_run(
    engine: Engine, http: aiohttp.ClientSession, a: TenantTokens, b: TenantTokens
) -> None:
    """B's worker takes the very worker id of A's and sends every message about the attempt
    A's worker holds: each is refused exactly as for a run that does not exist; nothing of
    A's run changes, no chunk reaches A's stream; B's drain does not drain A's worker, B's
    claim of A's attempt at hello is told to stop, and each worker gets its own tenant's runs
    only."""
    a_http, b_http = OverHttp(http, a.admin), OverHttp(http, b.admin)
    worker_id = str(uuid.uuid4())
    mine = HandWorker(await http.ws_connect("/api/v1/workers/connect", headers=a.headers("worker")))
    await mine.hello(worker_id, "a-worker")
    run = (await ok(a_http, "POST", "/api/v1/runs", {"task": "shared", "input": "a"}, status=201))[
        "run_id"
    ]
    await mine.next("assign", run_id=run)
    await mine.ws.send_json({"type": "started", "run_id": run, "attempt": 1})

    async def running() -> bool:
        return bool((await ok(a_http, "GET", f"/api/v1/runs/{run}"))["status"] == "running")

    await _until(running)
    stream = await http.get(f"/api/v1/runs/{run}/stream", headers=a.headers())
    assert stream.status == 200  # subscribed: every chunk published from now on reaches it
    chunks = asyncio.create_task(_sse_chunks(stream))
    events_before = await ok(a_http, "GET", f"/api/v1/runs/{run}/events")

    theirs = HandWorker(
        await http.ws_connect("/api/v1/workers/connect", headers=b.headers("worker"))
    )
    await theirs.hello(worker_id, "b-worker")
    decoy = str(uuid.uuid4())
    for real, fake in zip(about(run), about(decoy), strict=True):
        await theirs.ws.send_json(real)
        refused = await theirs.next("error", ref={"run_id": run, "attempt": 1})
        await theirs.ws.send_json(fake)
        unknown = await theirs.next("error", ref={"run_id": decoy, "attempt": 1})
        assert refused["code"] == "not_owner", (real["type"], refused)
        assert json.loads(json.dumps(unknown).replace(decoy, run)) == refused, real["type"]
        theirs.received.clear()

    # Each worker gets its own tenant's runs, though both have this worker id and task.
    b_run = (
        await ok(b_http, "POST", "/api/v1/runs", {"task": "shared", "input": "b"}, status=201)
    )["run_id"]
    await theirs.next("assign", run_id=b_run)
    await theirs.ws.send_json({"type": "drain"})
    second = (
        await ok(a_http, "POST", "/api/v1/runs", {"task": "shared", "input": "a2"}, status=201)
    )["run_id"]
    await mine.next("assign", run_id=second)  # B's drain did not drain A's worker
    await mine.ws.send_json({"type": "started", "run_id": second, "attempt": 1})
    assert [w["name"] for w in await ok(a_http, "GET", "/api/v1/workers")] == ["a-worker"]
    assert [w["name"] for w in await ok(b_http, "GET", "/api/v1/workers")] == ["b-worker"]
    await theirs.close()

    # Reconnecting, B claims A's running attempt: told to stop it, as for an unknown attempt.
    claimer = HandWorker(
        await http.ws_connect("/api/v1/workers/connect", headers=b.headers("worker"))
    )
    await claimer.hello(
        worker_id,
        "b-worker",
        in_flight=[{"run_id": second, "attempt": 1}, {"run_id": decoy, "attempt": 1}],
    )
    told = await claimer.next("cancel", run_id=second)
    assert told == {**await claimer.next("cancel", run_id=decoy), "run_id": second}
    await claimer.close()

    # A's runs are A's worker's alone, untouched by all of the above.
    await mine.ws.send_json(
        [
            {"type": "stream", "run_id": run, "attempt": 1, "data": {"from": "a"}},
            {"type": "log", "run_id": run, "attempt": 1, "message": "a was here"},
            {"type": "completed", "run_id": run, "attempt": 1, "output": {"from": "a"}},
            {"type": "completed", "run_id": second, "attempt": 1, "output": {"from": "a2"}},
        ]
    )
    await mine.next("ack")
    assert await asyncio.wait_for(chunks, 10) == [{"from": "a"}]
    stream.release()
    waited = await ok(
        a_http, "POST", "/api/v1/runs/wait", {"run_ids": [run, second], "timeout": 10}
    )
    assert [(v["status"], v["attempt"], v["output"]) for v in waited["runs"]] == [
        ("succeeded", 1, {"from": "a"}),
        ("succeeded", 1, {"from": "a2"}),
    ]
    events_after = await ok(a_http, "GET", f"/api/v1/runs/{run}/events")
    assert events_after[: len(events_before)] == events_before
    assert [e["type"] for e in events_after[len(events_before) :]] == ["succeeded"]
    assert mine.assigned() == {run, second}
    assert b_run not in mine.assigned()
    await mine.close()

    async def logs_written() -> bool:
        return bool(
            await engine.pool.fetchval(
                "SELECT count(*) FROM run_logs WHERE run_id = $1", uuid.UUID(run)
            )
        )

    await _until(logs_written)
    stored = await engine.pool.fetch(
        "SELECT tenant_id, message FROM run_logs WHERE run_id = $1", uuid.UUID(run)
    )
    assert [(row["tenant_id"], row["message"]) for row in stored] == [(a.tenant_id, "a was here")]
    assert (
        await engine.pool.fetchval(
            "SELECT count(*) FROM durable_log WHERE run_id = $1", uuid.UUID(run)
        )
        == 0
    )


# -- flow control ----------------------------------------------------------------------------------


@dataclass
class Tenant:
    """One tenant's client and its tasks, all under the same names as the other tenant's."""

    tag: str
    ty: Taskyard
    gate: asyncio.Event
    tasks: dict[str, Any]
    workflows: dict[str, Any]

    def worker(self) -> Any:
        return self.ty.worker(
            f"{self.tag}-worker",
            tasks=list(self.tasks.values()),
            workflows=list(self.workflows.values()),
            slots=20,
        )


def define(tag: str, ty: Taskyard) -> Tenant:
    gate = asyncio.Event()
    everyone = Concurrency(expression="'everyone'", max_runs=1)

    @ty.task(name="same")
    async def same(n: int) -> str:
        return tag

    @ty.task(name="exclusive", concurrency=everyone)
    async def exclusive(hold: bool) -> str:
        if hold:
            await gate.wait()
        return tag

    @ty.task(
        name="metered",
        rate_limits=[
            RateLimit(key="shared-api"),
            RateLimit(dynamic_key="'bucket'", limit=1, duration="hour"),
        ],
    )
    async def metered(n: int) -> str:
        return tag

    @ty.task(name="doomed")
    async def doomed(n: int) -> str:
        raise NonRetryableError(f"{tag} broke it")

    @ty.durable_task(name="waiting")
    async def waiting(n: int, ctx: DurableContext) -> str:
        payload = await ctx.wait_for_event("wake")
        return f"{tag} woken by {payload['by']}"

    signal = ty.workflow("on-signal", on_events=["signal"])

    @signal.task(name="react")
    async def react(payload: dict[str, str]) -> str:
        return f"{tag} saw {payload['by']}"

    one_at_a_time = ty.workflow("one-at-a-time", input=bool, concurrency=everyone)

    @one_at_a_time.task(name="hold")
    async def hold(held: bool) -> str:
        if held:
            await gate.wait()
        return tag

    return Tenant(
        tag,
        ty,
        gate,
        {
            "same": same,
            "exclusive": exclusive,
            "metered": metered,
            "doomed": doomed,
            "waiting": waiting,
        },
        {"signal": signal, "one_at_a_time": one_at_a_time},
    )


async def _status_is(handle: Any, status: RunStatus) -> None:
    async def reached() -> bool:
        return bool((await handle.aio_get()).status is status)

    await _until(reached)


async def test_work_and_flow_control_stay_within_their_tenant(
    engine: Engine, a: TenantTokens, b: TenantTokens, recorder: AlertRecorder
) -> None:
    tenants = [
        define("a", Taskyard(url=engine.url, token=a.admin)),
        define("b", Taskyard(url=engine.url, token=b.admin)),
    ]
    ta, tb = tenants
    try:
        async with ta.worker(), tb.worker():
            # Both register the same task names: each tenant sees its own worker for them.
            for t in tenants:

                async def connected(t: Tenant = t) -> bool:
                    tasks = await t.ty.transport.request("GET", "/api/v1/tasks")
                    return any(info["name"] == "same" for info in tasks)

                await _until(connected)  # the engine registers a worker as it welcomes it
                workers = await t.ty.transport.request("GET", "/api/v1/workers")
                assert [w["name"] for w in workers] == [f"{t.tag}-worker"]
                tasks = await t.ty.transport.request("GET", "/api/v1/tasks")
                assert {info["name"]: info["workers"] for info in tasks}["same"] == [
                    f"{t.tag}-worker"
                ]
            # Both run a task of the same name: each tenant's runs go to its own worker.
            runs = await asyncio.gather(
                *(t.tasks["same"].aio_run_many(list(range(10)), timeout=20) for t in tenants)
            )
            assert runs == [["a"] * 10, ["b"] * 10]
            # An idempotency key B uses too is B's own.
            first = await ta.tasks["same"].aio_run_no_wait(1, idempotency_key="order-1")
            other = await tb.tasks["same"].aio_run_no_wait(2, idempotency_key="order-1")
            assert first.run_id != other.run_id
            assert [await h.aio_result(timeout=10) for h in (first, other)] == ["a", "b"]

            # B holds the concurrency key 'everyone' (of a task and of a workflow) ...
            held = [
                await tb.tasks["exclusive"].aio_run_no_wait(True),
                await tb.workflows["one_at_a_time"].aio_run_no_wait(True),
            ]
            for handle in held:
                await _status_is(handle, RunStatus.RUNNING)
            behind = [
                await tb.tasks["exclusive"].aio_run_no_wait(False),
                await tb.workflows["one_at_a_time"].aio_run_no_wait(False),
            ]
            # ... which A's runs with the same key do not wait for.
            assert await ta.tasks["exclusive"].aio_run(False, timeout=10) == "a"
            assert await ta.workflows["one_at_a_time"].aio_run(False, timeout=10) == {"hold": "a"}
            assert [(await h.aio_get()).status for h in behind] == [RunStatus.QUEUED] * 2
            tb.gate.set()
            assert [await h.aio_result(timeout=10) for h in behind] == ["b", {"hold": "b"}]

            # Both define rate limit 'shared-api' (and use dynamic key 'bucket'), 1 an hour:
            # B's run takes B's units, A's run still finds its own.
            for t in tenants:
                await t.ty.rate_limits.aio_put("shared-api", limit=1, duration="hour")
            assert await tb.tasks["metered"].aio_run(1, timeout=10) == "b"
            waits = await tb.tasks["metered"].aio_run_no_wait(2)
            assert await ta.tasks["metered"].aio_run(1, timeout=10) == "a"
            view = await waits.aio_get()
            assert view.status is RunStatus.QUEUED
            assert "rate limit" in (view.waiting_reason or "")
            await waits.aio_cancel()
            for t in tenants:
                usage = {(r.key, r.used) for r in await t.ty.rate_limits.aio_list()}
                assert usage == {("shared-api", 1), ("bucket", 1)}, t.tag

            # Events wake the durable waits and start the workflows of their own tenant.
            waiting = [await t.tasks["waiting"].aio_run_no_wait(0) for t in tenants]
            for handle in waiting:
                await _status_is(handle, RunStatus.PENDING)
            b_signal = await tb.ty.events.aio_push("signal", {"by": "b"})
            await tb.ty.events.aio_push("wake", {"by": "b"})
            assert await waiting[1].aio_result(timeout=10) == "b woken by b"
            assert (await waiting[0].aio_get()).status is RunStatus.PENDING
            assert (await ta.ty.runs.aio_list(task=["on-signal"])).runs == []
            a_signal = await ta.ty.events.aio_push("signal", {"by": "a"})
            await ta.ty.events.aio_push("wake", {"by": "a"})
            assert await waiting[0].aio_result(timeout=10) == "a woken by a"
            for t, event in ((ta, a_signal), (tb, b_signal)):
                [run_id] = event.triggered
                view = (await t.ty.runs.aio_wait([run_id], timeout=10))[run_id]
                assert view.output == {"react": f"{t.tag} saw {t.tag}"}
                assert [r.run_id for r in (await t.ty.runs.aio_list(task=["on-signal"])).runs] == [
                    run_id
                ]

            # A's alert rule hears of A's failures only; B's rule, which takes every
            # failure, of B's only. Windows are short, so that no alert is folded away; the
            # tenants fail in turns, so each one's rules are loaded when the other fails.
            await ta.ty.transport.request(
                "POST",
                "/api/v1/alert-rules",
                json_body={
                    "channel": "recorder",
                    "target": {"to": "a"},
                    "tasks": ["doomed"],
                    "window": 0.001,
                },
            )
            await tb.ty.transport.request(
                "POST",
                "/api/v1/alert-rules",
                json_body={"channel": "recorder", "target": {"to": "b"}, "window": 0.001},
            )
            failed = []
            for t in (ta, tb, ta, tb):
                with pytest.raises(TaskFailed) as failure:
                    await t.tasks["doomed"].aio_run(1, timeout=10)
                failed.append((t.tag, A_NAME if t is ta else B_NAME, failure.value.run_id))

                async def alerted(count: int = len(failed)) -> bool:
                    return len(recorder.alerts) >= count

                await _until(alerted)
            await asyncio.sleep(0.2)  # any alert sent with the last ones has arrived by now
            assert sorted(
                (target["to"], alert.tenant_name, alert.run_id) for target, alert in recorder.alerts
            ) == sorted(failed)
    finally:
        for t in tenants:
            t.gate.set()
            await t.ty.aio_close()
