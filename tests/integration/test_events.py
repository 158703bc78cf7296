"""Events: stored, listed and searched; they trigger the workflows whose on_events match (exact
keys, prefix wildcards, CEL filters) and say which; replay triggers again."""

from __future__ import annotations

import aiohttp
import pytest

from taskyard.domain.events import EventIndex
from taskyard_sdk import Context, EventRequest, RunStatus, Taskyard


async def test_events_trigger_matching_workflows_and_say_which(ty: Taskyard) -> None:
    exact = ty.workflow("on-create", on_events=["user:create"])
    prefix = ty.workflow("on-any-user", on_events=["user:*"])
    filtered = ty.workflow(
        "on-pro-signup",
        on_events=["user:create"],
        event_filter="payload.plan == 'pro' && metadata.source == 'web'",
    )
    received: list[tuple[str, object, dict[str, str]]] = []

    async def record(payload: dict[str, object], ctx: Context) -> str:
        workflow_name = ctx.task.partition(":")[0]  # a step's task is "<workflow>:<step>"
        received.append((workflow_name, payload, ctx.metadata))
        return workflow_name

    for workflow in (exact, prefix, filtered):
        workflow.task(name="record")(record)

    async with ty.worker("events", workflows=[exact, prefix, filtered]):
        event = await ty.events.aio_push("user:create", {"plan": "pro"}, metadata={"source": "web"})
        assert len(event.triggered) == 3
        views = [await ty.runs.aio_get(run_id) for run_id in event.triggered]
        assert sorted(v.task for v in views) == ["on-any-user", "on-create", "on-pro-signup"]
        assert all(v.metadata == {"source": "web"} for v in views)

        other = await ty.events.aio_push("user:delete", {"plan": "pro"})
        assert [(await ty.runs.aio_get(r)).task for r in other.triggered] == ["on-any-user"]

        nothing = await ty.events.aio_push("invoice:paid", {"amount": 3})
        assert nothing.triggered == []
        assert (await ty.events.aio_get(nothing.event_id)).triggered == []

        finished = await ty.runs.aio_wait([*event.triggered, *other.triggered], timeout=30)
    assert all(view.status is RunStatus.SUCCEEDED for view in finished.values())
    assert ("on-pro-signup", {"plan": "pro"}, {"source": "web"}) in received


async def test_events_are_listed_searched_and_replayed(ty: Taskyard) -> None:
    wf = ty.workflow("audit", on_events=["audit:*"])

    @wf.task()
    async def note(payload: dict[str, int]) -> int:
        return payload["n"]

    async with ty.worker("audit", workflows=[wf]):
        pushed = await ty.events.aio_push_many(
            [
                EventRequest(key="audit:login", payload={"n": 1}, metadata={"user": "ann"}),
                {"key": "audit:logout", "payload": {"n": 2}, "metadata": {"user": "bob"}},
                {"key": "billing:charged", "payload": {"n": 3}},
            ]
        )
        assert [len(e.triggered) for e in pushed] == [1, 1, 0]

        assert [e.key for e in (await ty.events.aio_list(prefix="audit:")).events] == [
            "audit:logout",
            "audit:login",
        ]  # newest first
        assert [e.key for e in (await ty.events.aio_list(metadata={"user": "ann"})).events] == [
            "audit:login"
        ]
        assert [e.payload for e in (await ty.events.aio_list(key=["billing:charged"])).events] == [
            {"n": 3}
        ]
        page = await ty.events.aio_list(limit=2)
        assert page.next_cursor is not None
        rest = await ty.events.aio_list(limit=2, cursor=page.next_cursor)
        assert len(page.events) + len(rest.events) == 3

        replayed = await ty.events.aio_replay(pushed[0].event_id)
        assert replayed.replay_of == pushed[0].event_id
        assert replayed.event_id != pushed[0].event_id
        [run_id] = replayed.triggered
        assert run_id != pushed[0].triggered[0]
        view = (await ty.runs.aio_wait([run_id], timeout=30))[run_id]
    assert view.output == {"note": 1}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"key": "has space"}, "body.key"),
        ({"key": ""}, "body.key"),
        ({"payload": 1}, "body.key"),
        ({"key": "k", "metadata": {"a": 1}}, "body.metadata.a"),
        ({"key": "k", "payload": "nul \u0000"}, "body.payload"),
    ],
)
async def test_bad_events_are_refused_with_the_field_named(
    http: aiohttp.ClientSession, ty: Taskyard, body: dict[str, object], expected: str
) -> None:
    async with http.post(
        "/api/v1/events", json=body, headers={"Authorization": f"Bearer {ty.config.token}"}
    ) as response:
        error = (await response.json())["error"]
    assert response.status in (400, 422)
    assert expected in error["message"]
    assert (await ty.events.aio_list()).events == []


async def test_unknown_events_and_workflows_are_404s(ty: Taskyard) -> None:
    from taskyard_sdk import NotFound

    with pytest.raises(NotFound, match="no event"):
        await ty.events.aio_get("01a20000-0000-7000-8000-000000000000")
    with pytest.raises(NotFound, match="no workflow 'nope' is registered"):
        await ty.workflow("nope").aio_run_no_wait(1)


def test_the_event_index_finds_exact_keys_and_prefixes_and_forgets() -> None:
    index: EventIndex[str] = EventIndex()
    assert not index
    index.add("order:paid", "a")
    index.add("order:*", "b")
    index.add("user:*", "c")
    index.add("order:paid", "d")
    assert sorted(index.matching("order:paid")) == ["a", "b", "d"]
    assert sorted(index.matching("order:shipped")) == ["b"]
    assert list(index.matching("invoice:paid")) == []
    assert len(index) == 4
    for waiter in index.matching("order:paid"):  # changing it while iterating is safe
        index.discard("order:paid", waiter)
        index.discard("order:*", waiter)
    assert sorted(index.matching("user:new")) == ["c"]
    assert list(index.matching("order:paid")) == []
    assert len(index) == 1
