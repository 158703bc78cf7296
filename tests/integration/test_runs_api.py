"""The runs REST API without workers: triggering, reading, listing, cancelling, replaying."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from taskyard.domain.auth import Role
from taskyard.engine import Engine
from tests.conftest import TenantTokens


async def post(
    http: aiohttp.ClientSession,
    path: str,
    tenant: TenantTokens,
    body: object = None,
    role: str = "client",
) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with http.post(path, json=body, headers=tenant.headers(role)) as response:
        return response.status, await response.json()


async def get(
    http: aiohttp.ClientSession, path: str, tenant: TenantTokens, **params: object
) -> tuple[int, object]:
    async with http.get(path, params=params, headers=tenant.headers("client")) as response:
        return response.status, await response.json()


async def test_trigger_then_read_the_run(http: aiohttp.ClientSession, tenant: TenantTokens) -> None:
    status, ref = await post(
        http,
        "/api/v1/runs",
        tenant,
        {
            "task": "resize",
            "input": {"url": "https://example.com/a.png"},
            "metadata": {"customer": "c1"},
            "options": {"retries": 2, "priority": 3},
        },
    )
    assert status == 201
    assert ref["status"] == "queued"
    assert ref["created"] is True
    status, run = await get(http, f"/api/v1/runs/{ref['run_id']}", tenant)
    assert status == 200
    assert isinstance(run, dict)
    assert run["input"] == {"url": "https://example.com/a.png"}
    assert (run["task"], run["status"], run["attempt"], run["priority"]) == (
        "resize",
        "queued",
        1,
        3,
    )
    assert run["metadata"] == {"customer": "c1"}
    assert run["waiting_reason"] == (
        "no connected worker has registered task 'resize' on queue 'default'"
    )
    status, events = await get(http, f"/api/v1/runs/{ref['run_id']}/events", tenant)
    assert [e["type"] for e in events] == ["queued"]  # type: ignore[union-attr]


async def test_idempotency_key_returns_the_existing_run(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    body = {"task": "charge", "input": {"cents": 100}, "idempotency_key": "order-7"}
    first_status, first = await post(http, "/api/v1/runs", tenant, body)
    again_status, again = await post(http, "/api/v1/runs", tenant, body)
    assert (first_status, again_status) == (201, 200)
    assert again["run_id"] == first["run_id"]
    assert again["created"] is False
    # concurrently, in one batch and across batches: still one run
    results = await asyncio.gather(
        *(
            post(
                http,
                "/api/v1/runs/batch",
                tenant,
                {"runs": [{**body, "idempotency_key": "order-8"}] * 3},
            )
            for _ in range(5)
        )
    )
    run_ids = {ref["run_id"] for _, batch in results for ref in batch["runs"]}
    assert len(run_ids) == 1
    assert sum(ref["created"] for _, batch in results for ref in batch["runs"]) == 1


async def test_a_reused_idempotency_key_says_so_and_whether_the_input_differs(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    body = {"task": "charge", "input": {"cents": 100, "ok": True}, "idempotency_key": "order-9"}
    status, first = await post(http, "/api/v1/runs", tenant, body)
    assert status == 201
    assert (first["idempotent_replay"], first["input_differs"]) == (False, False)
    # the same input, as another client may write it: a replay of the same work
    status, same = await post(
        http, "/api/v1/runs", tenant, {**body, "input": {"ok": True, "cents": 100.0}}
    )
    assert status == 200
    assert (same["run_id"], same["idempotent_replay"], same["input_differs"]) == (
        first["run_id"],
        True,
        False,
    )
    for other in ({"cents": 250, "ok": True}, {"cents": 100, "ok": 1}, None):
        status, differs = await post(http, "/api/v1/runs", tenant, {**body, "input": other})
        assert status == 200, other
        assert (differs["run_id"], differs["idempotent_replay"], differs["input_differs"]) == (
            first["run_id"],
            True,
            True,
        ), other
    # another task under the same key: the answer names the run's own task
    status, elsewhere = await post(http, "/api/v1/runs", tenant, {**body, "task": "refund"})
    assert (status, elsewhere["task"], elsewhere["input_differs"]) == (200, "charge", False)
    status, batch = await post(
        http,
        "/api/v1/runs/batch",
        tenant,
        {"runs": [{**body, "input": {"cents": 1}}, {"task": "charge", "input": {"cents": 1}}]},
    )
    assert status == 201
    assert [(ref["idempotent_replay"], ref["input_differs"]) for ref in batch["runs"]] == [
        (True, True),
        (False, False),
    ]


async def test_listing_runs_since_or_until_before_1970(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    """Run ids hold their creation time from 1970 on: earlier moments used to answer 500."""
    _, ref = await post(http, "/api/v1/runs", tenant, {"task": "old"})
    status, page = await get(http, "/api/v1/runs", tenant, since="1760-03-30T13:30:14-03:55")
    assert status == 200
    assert [run["run_id"] for run in page["runs"]] == [ref["run_id"]]  # type: ignore[index]
    status, page = await get(http, "/api/v1/runs", tenant, until="0450-05-20T12:24:00Z")
    assert (status, page["runs"]) == (200, [])  # type: ignore[index]


async def test_a_stream_whose_client_went_away_ends_quietly(
    engine: Engine, tenant: TenantTokens, caplog: pytest.LogCaptureFixture
) -> None:
    """Writing the end of a stream nobody reads is no database outage to log."""
    async with aiohttp.ClientSession(base_url=engine.url) as http:
        _, ref = await post(http, "/api/v1/runs", tenant, {"task": "quiet"})
        async with http.get(
            f"/api/v1/runs/{ref['run_id']}/stream", headers=tenant.headers("client")
        ) as response:
            assert response.status == 200
        # the connection is closed; the run ends, and the stream tries to say so
        await asyncio.sleep(0.1)
        status, _ = await post(http, f"/api/v1/runs/{ref['run_id']}/cancel", tenant)
        assert status == 200
        await asyncio.sleep(0.3)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], [
        r.getMessage() for r in caplog.records
    ]


async def test_batch_trigger_and_list_with_filters_and_pages(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    status, batch = await post(
        http,
        "/api/v1/runs/batch",
        tenant,
        {
            "runs": [
                {"task": "a" if i % 2 else "b", "input": i, "metadata": {"n": str(i)}}
                for i in range(25)
            ]
        },
    )
    assert status == 201
    assert len(batch["runs"]) == 25
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 10, "task": "a"}
        if cursor:
            params["cursor"] = cursor
        status, page = await get(http, "/api/v1/runs", tenant, **params)
        assert status == 200
        assert isinstance(page, dict)
        seen += [run["run_id"] for run in page["runs"]]
        assert all(run["task"] == "a" for run in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = [ref["run_id"] for i, ref in enumerate(batch["runs"]) if i % 2]
    assert seen == list(reversed(expected)), "newest first, every run once"

    status, page = await get(http, "/api/v1/runs", tenant, metadata="n:4")
    assert [run["metadata"] for run in page["runs"]] == [{"n": "4"}]  # type: ignore[index]
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    status, page = await get(http, "/api/v1/runs", tenant, since=future)
    assert page["runs"] == []  # type: ignore[index]
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    status, page = await get(http, "/api/v1/runs", tenant, since=past, status="queued", limit=1000)
    assert len(page["runs"]) == 25  # type: ignore[index,arg-type]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"input": 1}, "body.task"),
        ({"task": "has space"}, "body.task"),
        ({"task": "t", "priority": 9}, "body.priority"),
        ({"task": "t", "options": {"retries": -1}}, "body.options.retries"),
        ({"task": "t", "options": {"execution_timeout": "soon"}}, "body.options.execution_timeout"),
        ({"task": "t", "metadata": {"k": 1}}, "body.metadata.k"),
        # a retry that far out is a time PostgreSQL refuses, failing the persister's whole batch
        (
            {"task": "t", "options": {"backoff_max_seconds": 1e300}},
            "body.options.backoff_max_seconds",
        ),
    ],
)
async def test_invalid_triggers_are_422(
    http: aiohttp.ClientSession, tenant: TenantTokens, body: dict[str, object], location: str
) -> None:
    status, error = await post(http, "/api/v1/runs", tenant, body)
    assert status == 422
    assert error["error"]["message"].startswith(location)


async def test_nul_in_input_is_refused_and_nothing_is_stored(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    async with http.post(
        "/api/v1/runs",
        data=b'{"task": "t", "input": {"s": "a\\u0000"}}',
        headers={**tenant.headers(), "Content-Type": "application/json"},
    ) as response:
        assert response.status == 422
        assert "body.input.s: contains a NUL" in (await response.json())["error"]["message"]
    assert await engine.pool.fetchval("SELECT count(*) FROM runs") == 0


async def test_unknown_runs_and_other_tenants_runs_are_404(
    engine: Engine, http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    other = await engine.repository.create_tenant("other")
    _, other_token = await engine.repository.create_token(other.tenant_id, Role.CLIENT)
    async with http.post(
        "/api/v1/runs", json={"task": "secret"}, headers={"Authorization": f"Bearer {other_token}"}
    ) as response:
        other_run = (await response.json())["run_id"]
    for path in (
        f"/api/v1/runs/{other_run}",
        f"/api/v1/runs/{uuid.uuid4()}",
        f"/api/v1/runs/{other_run}/events",
        f"/api/v1/runs/{other_run}/logs",
    ):
        status, error = await get(http, path, tenant)
        assert status == 404, path
        assert error["error"]["code"] == "not_found"  # type: ignore[index]
    status, refused = await post(http, f"/api/v1/runs/{other_run}/cancel", tenant)
    assert status == 404
    assert refused["error"]["message"] == f"no run {other_run} in this tenant"
    status, invalid = await get(http, "/api/v1/runs/not-an-id", tenant)
    assert status == 422
    assert "path.run_id" in invalid["error"]["message"]  # type: ignore[index]
    # Nor can another tenant's run be named as a parent, of a run or of a run in a batch.
    for path, body, field in (
        ("/api/v1/runs", {"task": "t", "parent_run_id": other_run}, "body.parent_run_id"),
        (
            "/api/v1/runs/batch",
            {"runs": [{"task": "t"}, {"task": "t", "parent_run_id": other_run}]},
            "body.runs[1].parent_run_id",
        ),
    ):
        status, refused = await post(http, path, tenant, body)
        assert status == 422, path
        assert refused["error"]["message"] == f"{field}: no run {other_run} in this tenant"
    status, mine = await post(http, "/api/v1/runs", tenant, {"task": "t"})
    status, child = await post(
        http, "/api/v1/runs", tenant, {"task": "t", "parent_run_id": mine["run_id"]}
    )
    assert status == 201
    status, view = await get(http, f"/api/v1/runs/{child['run_id']}", tenant)
    assert view["parent_run_id"] == mine["run_id"]  # type: ignore[index]


async def test_cancel_a_queued_run_then_replay_it(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    _, ref = await post(http, "/api/v1/runs", tenant, {"task": "later", "input": [1, 2]})
    run = f"/api/v1/runs/{ref['run_id']}"
    status, cancelled = await post(http, f"{run}/cancel", tenant)
    assert (status, cancelled["status"]) == (200, "cancelled")
    status, again = await post(http, f"{run}/cancel", tenant)
    assert status == 409
    assert "already cancelled" in again["error"]["message"]
    status, view = await get(http, run, tenant)
    assert view["status"] == "cancelled"  # type: ignore[index]
    assert view["error"]["type"] == "Cancelled"  # type: ignore[index]

    status, replayed = await post(http, f"{run}/replay", tenant)
    assert status == 200
    assert (replayed["status"], replayed["attempt"], replayed["input"]) == ("queued", 2, [1, 2])
    status, conflict = await post(http, f"{run}/replay", tenant)
    assert status == 409
    assert "only finished runs can be replayed" in conflict["error"]["message"]
    _, events = await get(http, f"{run}/events", tenant)
    assert [e["type"] for e in events] == ["queued", "cancelled", "replayed"]  # type: ignore[union-attr]


async def test_a_run_nobody_takes_times_out_in_the_queue(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    _, ref = await post(
        http, "/api/v1/runs", tenant, {"task": "orphan", "options": {"schedule_timeout": 0.3}}
    )
    async with http.get(
        f"/api/v1/runs/{ref['run_id']}/result", params={"timeout": 5}, headers=tenant.headers()
    ) as response:
        view = await response.json()
    assert view["status"] == "timed_out"
    assert view["error"]["type"] == "ScheduleTimeout"
    assert "no connected worker has registered task 'orphan'" in view["error"]["message"]


async def test_wait_returns_pending_runs_after_its_timeout(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    _, ref = await post(http, "/api/v1/runs", tenant, {"task": "slowpoke"})
    status, waited = await post(
        http, "/api/v1/runs/wait", tenant, {"run_ids": [ref["run_id"]], "timeout": 0.2}
    )
    assert status == 200
    assert waited == {"runs": [], "pending": [ref["run_id"]]}
    unknown = uuid.uuid4()
    status, refused = await post(
        http, "/api/v1/runs/wait", tenant, {"run_ids": [str(unknown)], "timeout": 0}
    )
    assert status == 404
    assert str(unknown) in refused["error"]["message"]


async def test_a_batch_gives_its_options_to_runs_without_their_own(
    http: aiohttp.ClientSession, tenant: TenantTokens
) -> None:
    status, batch = await post(
        http,
        "/api/v1/runs/batch",
        tenant,
        {
            "options": {"priority": 4, "retries": 1},
            "runs": [
                {"task": "t", "input": 1},
                {"task": "t", "input": 2, "options": {"priority": 1}},
            ],
        },
    )
    assert status == 201
    priorities = []
    for ref in batch["runs"]:
        _, run = await get(http, f"/api/v1/runs/{ref['run_id']}", tenant)
        assert isinstance(run, dict)
        priorities.append(run["priority"])
    assert priorities == [4, 1], "the batch's options, unless a run brings its own"

    status, error = await post(
        http,
        "/api/v1/runs/batch",
        tenant,
        {
            "options": {"concurrency": [{"expression": "input.", "max_runs": 1}]},
            "runs": [{"task": "t", "input": 1}],
        },
    )
    assert status == 422
    assert error["error"]["message"].startswith("options: concurrency[0].expression")
