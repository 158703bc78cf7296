"""DAG workflows end to end: outputs flow from parents to children, wide and deep shapes finish,
registration errors are 422s naming the problem, versions, failure handling, child runs."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel

from taskyard.engine import Engine
from taskyard_sdk import Context, RunKind, RunStatus, TaskFailed, Taskyard


class Numbers(BaseModel):
    x: int


class Total(BaseModel):
    value: int


async def test_a_three_level_diamond_passes_outputs_to_children(ty: Taskyard) -> None:
    wf = ty.workflow("diamond", input=Numbers)

    @wf.task()
    async def start(n: Numbers, ctx: Context) -> Total:
        return Total(value=n.x)

    @wf.task(parents=[start])
    async def double(n: Numbers, ctx: Context) -> Total:
        return Total(value=ctx.parent_output(start).value * 2)

    @wf.task(parents=[start])
    def add_ten(n: Numbers, ctx: Context) -> Total:  # sync steps run on the worker's pool
        return Total(value=ctx.parent_output(start).value + 10)

    @wf.task(parents=[double, add_ten])
    async def join(n: Numbers, ctx: Context) -> int:
        return ctx.parent_output(double).value + ctx.parent_output(add_ten).value + n.x

    async with ty.worker("diamond", workflows=[wf]):
        outputs = await wf.aio_run(Numbers(x=5), timeout=30)
    assert outputs == {
        "start": Total(value=5),
        "double": Total(value=10),
        "add_ten": Total(value=15),
        "join": 30,
    }


async def test_a_deep_chain_and_a_wide_fan_out_and_in_complete(ty: Taskyard) -> None:
    chain = ty.workflow("chain", input=int)

    def link_after(parents: list[Any]) -> Any:
        async def link(n: int, ctx: Context) -> int:
            return (ctx.parent_output(parents[0]) if parents else n) + 1

        return link

    previous = None
    for index in range(50):
        parents = [previous] if previous is not None else []
        previous = chain.task(name=f"link-{index:02d}", parents=parents)(link_after(parents))

    fan = ty.workflow("fan", input=int)

    @fan.task()
    async def split(n: int) -> int:
        return n

    def leaf_number(index: int) -> Any:
        async def leaf(n: int, ctx: Context) -> int:
            return ctx.parent_output(split) + index

        return leaf

    leaves = [
        fan.task(name=f"leaf-{index}", parents=[split])(leaf_number(index)) for index in range(1000)
    ]

    @fan.task(parents=leaves)
    async def gather(n: int, ctx: Context) -> int:
        return sum(ctx.parent_output(leaf) for leaf in leaves)

    async with ty.worker("shapes", workflows=[chain, fan], slots=200):
        deep, wide = await asyncio.gather(chain.aio_run(0, timeout=60), fan.aio_run(1, timeout=60))
    assert deep["link-49"] == 50
    assert wide["gather"] == sum(1 + i for i in range(1000))
    assert len(wide) == 1002


@pytest.mark.parametrize(
    ("steps", "extra", "expected"),
    [
        (
            [
                {"name": "a", "parents": ["b"]},
                {"name": "b", "parents": ["c"]},
                {"name": "c", "parents": ["a"]},
            ],
            {},
            "steps 'a' -> 'c' -> 'b' -> 'a' form a cycle",
        ),
        ([{"name": "a", "parents": ["a"]}], {}, "steps 'a' -> 'a' form a cycle"),
        ([{"name": "a", "parents": ["ghost"]}], {}, "step 'a' names parent 'ghost', which is not"),
        ([{"name": "a"}, {"name": "a"}], {}, "steps[1]: step name 'a' is used twice"),
        (
            [{"name": "a", "skip_if": "input.x =="}],
            {},
            "step 'a': skip_if: 'input.x ==' is not valid CEL at line 1, column 9",
        ),
        ([{"name": "a", "cancel_if": "parents.b ))"}], {}, "step 'a': cancel_if: 'parents.b ))'"),
        (
            [{"name": "a", "wait_for": [{"type": "event", "key": "k", "filter": "payload.("}]}],
            {},
            "step 'a': wait_for event 'k' filter: 'payload.(' is not valid CEL",
        ),
        ([{"name": "a"}], {"event_filter": "key =="}, "event_filter: 'key ==' is not valid CEL"),
        (
            [{"name": "a", "skip_if": "inptu.x == 1"}],
            {},
            "step 'a': skip_if: 'inptu.x == 1' reads 'inptu', which is not defined here; "
            "it may use input, parents",
        ),
        (
            [{"name": "a"}],
            {"event_filter": "input.x == 1 && [1].all(v, v > 0)"},
            "event_filter: 'input.x == 1 && [1].all(v, v > 0)' reads 'input'",
        ),
        ([{"name": "a"}], {"on_failure": {"name": "a"}}, "on_failure step 'a' has the name of"),
    ],
)
async def test_bad_definitions_are_refused_with_the_problem_named(
    http: aiohttp.ClientSession,
    ty: Taskyard,
    steps: list[dict[str, Any]],
    extra: dict[str, Any],
    expected: str,
) -> None:
    body = {"name": "broken", "steps": steps, **extra}
    async with http.post(
        "/api/v1/workflows", json=body, headers={"Authorization": f"Bearer {ty.config.token}"}
    ) as response:
        error = (await response.json())["error"]
    assert response.status == 422
    assert expected in error["message"]
    assert "broken" in error["message"]


async def test_a_changed_definition_is_a_new_version_and_runs_keep_theirs(
    ty: Taskyard, http: aiohttp.ClientSession
) -> None:
    from taskyard_sdk import Event

    v1 = ty.workflow("versioned")

    @v1.task()
    async def first(n: int) -> str:
        return "v1"

    @v1.task(parents=[first], wait_for=[Event("go")])
    async def second(n: int) -> str:
        return "v1-second"

    info = await v1.aio_register()
    assert (info.version, info.created) == (1, True)
    again = await v1.aio_register()
    assert (again.version, again.created) == (1, False)
    async with ty.worker("v1", workflows=[v1]):
        handle = await v1.aio_run_no_wait(0)
        await _wait_for_step(ty, handle.run_id, "second", RunStatus.PENDING)

        v2 = ty.workflow("versioned")

        @v2.task(name="first")
        async def first_v2(n: int) -> str:
            return "v2"

        assert (await v2.aio_register()).version == 2
        await ty.events.aio_push("go")
        outputs = await handle.aio_result(timeout=30)
    assert outputs == {"first": "v1", "second": "v1-second"}
    view = await ty.runs.aio_get(handle.run_id)
    assert (view.kind, view.workflow_version) == (RunKind.WORKFLOW, 1)
    assert [step.step for step in view.steps] == ["first", "second"]
    async with http.get(
        "/api/v1/workflows/versioned", headers={"Authorization": f"Bearer {ty.config.token}"}
    ) as response:
        assert (await response.json())["version"] == 2
    # Rolling back to the first definition makes it the latest again, as version 3.
    rolled_back = await v1.aio_register()
    assert (rolled_back.version, rolled_back.created) == (3, True)
    async with ty.worker("v1-again", workflows=[v1]):
        handle = await v1.aio_run_no_wait(0)
        await _wait_for_step(ty, handle.run_id, "second", RunStatus.PENDING)
        await ty.events.aio_push("go")
        assert await handle.aio_result(timeout=30) == {"first": "v1", "second": "v1-second"}
    assert (await ty.runs.aio_get(handle.run_id)).workflow_version == 3


async def _wait_for_step(
    ty: Taskyard, run_id: uuid.UUID, step: str, status: RunStatus, timeout: float = 15
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        view = await ty.runs.aio_get(run_id)
        if any(s.step == step and s.status is status for s in view.steps):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"step {step!r} of run {run_id} never became {status}")


async def test_a_failed_step_cancels_its_descendants_and_runs_on_failure(ty: Taskyard) -> None:
    wf = ty.workflow("fragile")
    seen: dict[str, Any] = {}

    @wf.task()
    async def ok(n: int) -> int:
        return 1

    @wf.task(retries=1)
    async def breaks(n: int) -> int:
        raise RuntimeError("the disk is full")

    @wf.task(parents=[breaks])
    async def after(n: int) -> int:
        return 2

    @wf.on_failure_task()
    async def alert(n: int, ctx: Context) -> str:
        seen.update(ctx.failures)
        return "alerted"

    async with ty.worker("fragile", workflows=[wf]):
        with pytest.raises(TaskFailed) as failure:
            await wf.aio_run(0, timeout=30)
    assert failure.value.status is RunStatus.FAILED
    assert "step 'breaks' failed: the disk is full" in failure.value.error.message
    assert seen["breaks"].message == "the disk is full"
    view = await ty.runs.aio_get(failure.value.run_id)
    steps = {s.step: s for s in view.steps}
    assert steps["ok"].status is RunStatus.SUCCEEDED
    assert steps["breaks"].status is RunStatus.FAILED
    assert steps["breaks"].attempt == 2
    assert steps["after"].status is RunStatus.CANCELLED
    assert steps["alert"].status is RunStatus.SUCCEEDED
    assert view.output == {"ok": 1}


async def test_cancelling_a_workflow_run_cancels_its_running_steps(ty: Taskyard) -> None:
    wf = ty.workflow("long")
    started = asyncio.Event()

    @wf.task()
    async def slow(n: int) -> int:
        started.set()
        await asyncio.sleep(60)
        return 1

    @wf.task(parents=[slow])
    async def never(n: int) -> int:
        return 2

    async with ty.worker("long", workflows=[wf]):
        handle = await wf.aio_run_no_wait(0)
        await asyncio.wait_for(started.wait(), 10)
        assert await handle.aio_cancel() is RunStatus.CANCELLED
        view = await handle.aio_get()
        assert view.status is RunStatus.CANCELLED
        [step] = view.steps
        deadline = asyncio.get_running_loop().time() + 10
        while (await ty.runs.aio_get(step.run_id)).status is not RunStatus.CANCELLED:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)


async def test_runs_spawned_inside_a_task_are_its_children(ty: Taskyard) -> None:
    @ty.task()
    async def child(n: int) -> int:
        return n * 10

    @ty.task()
    async def sleeper(n: int) -> int:
        await asyncio.sleep(60)
        return n

    @ty.task()
    async def parent(n: int, ctx: Context) -> list[int]:
        results = [await child.aio_run(1)]
        results += [r for r in await child.aio_run_many([2, 3]) if isinstance(r, int)]
        await sleeper.aio_run_no_wait(0)
        return results

    @ty.task()
    def sync_parent(n: int) -> int:  # sync tasks spawn through the blocking API
        return child.run(n)

    async with ty.worker("family", tasks=[child, sleeper, parent, sync_parent]):
        handle = await parent.aio_run_no_wait(0)
        assert await handle.aio_result(timeout=30) == [10, 20, 30]
        sync_handle = await sync_parent.aio_run_no_wait(4)
        assert await sync_handle.aio_result(timeout=30) == 40
        view = await handle.aio_get()
        assert len(view.children) == 4
        children = [await ty.runs.aio_get(c) for c in view.children]
        assert {c.parent_run_id for c in children} == {handle.run_id}
        assert len((await sync_handle.aio_get()).children) == 1
        [sleeping] = [c for c in children if c.task == "sleeper"]
        assert sleeping.status in (RunStatus.QUEUED, RunStatus.ASSIGNED, RunStatus.RUNNING)
        await ty.runs.aio_cancel(sleeping.run_id)  # a finished parent leaves its children be


async def test_cancelling_a_parent_cancels_its_children(ty: Taskyard, engine: Engine) -> None:
    ids: list[uuid.UUID] = []
    spawned = asyncio.Event()

    @ty.task()
    async def sleeper(n: int) -> int:
        await asyncio.sleep(60)
        return n

    @ty.task()
    async def parent(n: int, ctx: Context) -> int:
        handle = await sleeper.aio_run_no_wait(n)
        ids.append(handle.run_id)
        spawned.set()
        await asyncio.sleep(60)
        return n

    async with ty.worker("tree", tasks=[sleeper, parent]):
        handle = await parent.aio_run_no_wait(1)
        await asyncio.wait_for(spawned.wait(), 10)
        await handle.aio_cancel()
        view = await ty.runs.aio_get(ids[0])
    assert view.status is RunStatus.CANCELLED
    assert view.error is not None
    assert f"run {handle.run_id} was cancelled" in view.error.message


async def test_run_metadata_is_filterable_for_workflow_runs(ty: Taskyard) -> None:
    wf = ty.workflow("tagged")

    @wf.task()
    async def only(n: int) -> int:
        return n

    async with ty.worker("tagged", workflows=[wf]):
        await wf.aio_run(1, metadata={"customer": "acme"}, timeout=30)
        await wf.aio_run(2, metadata={"customer": "globex"}, timeout=30)
    page = await ty.runs.aio_list(metadata={"customer": "acme"})
    assert {(r.kind, r.task) for r in page.runs} == {
        (RunKind.WORKFLOW, "tagged"),
        (RunKind.TASK, "tagged:only"),
    }


async def test_the_blocking_api_runs_workflows_and_pushes_events(ty: Taskyard) -> None:
    """The sync twins, called from a thread as a plain script would call them."""
    wf = ty.workflow("blocking", input=Numbers, on_events=["numbers:*"])

    @wf.task()
    async def square(n: Numbers) -> Total:
        return Total(value=n.x * n.x)

    async with ty.worker("blocking", workflows=[wf]):
        assert await asyncio.to_thread(wf.run, Numbers(x=3)) == {"square": Total(value=9)}
        many = await asyncio.to_thread(wf.run_many, [Numbers(x=1), Numbers(x=2)])
        assert many == [{"square": Total(value=1)}, {"square": Total(value=4)}]
        handle = await asyncio.to_thread(wf.run_no_wait, Numbers(x=5))
        assert await asyncio.to_thread(handle.result) == {"square": Total(value=25)}

        event = await asyncio.to_thread(
            ty.events.push, "numbers:new", {"x": 6}, metadata={"via": "sync"}
        )
        [run_id] = event.triggered
        assert (await ty.runs.aio_wait([run_id], timeout=30))[run_id].output == {
            "square": {"value": 36}
        }
        pushed = await asyncio.to_thread(
            ty.events.push_many,
            [{"key": "numbers:a", "payload": {"x": 1}}, {"key": "other", "payload": None}],
        )
        assert [len(e.triggered) for e in pushed] == [1, 0]
        listed = await asyncio.to_thread(ty.events.list, metadata={"via": "sync"})
        assert [e.event_id for e in listed.events] == [event.event_id]
        replayed = await asyncio.to_thread(ty.events.replay, event.event_id)
        assert replayed.replay_of == event.event_id
        assert len(replayed.triggered) == 1
        fetched = await asyncio.to_thread(ty.events.get, replayed.event_id)
        assert fetched.triggered == replayed.triggered


async def test_a_workflow_started_in_a_task_is_its_child_and_cancels_with_it(ty: Taskyard) -> None:
    started: list[uuid.UUID] = []
    sub = ty.workflow("sub")

    @ty.task()
    async def grandchild(n: int) -> int:
        await asyncio.sleep(60)
        return n

    @sub.task()
    async def spawn(n: int, ctx: Context) -> int:
        handle = await grandchild.aio_run_no_wait(n)  # a child of this step's run
        started.append(handle.run_id)
        await asyncio.sleep(60)
        return n

    @ty.task()
    async def orchestrate(n: int) -> int:
        await sub.aio_run(n)
        return n

    async with ty.worker("nested", tasks=[grandchild, orchestrate], workflows=[sub]):
        top = await orchestrate.aio_run_no_wait(1)
        for _ in range(200):
            if started:
                break
            await asyncio.sleep(0.05)
        [workflow_run_id] = (await top.aio_get()).children
        workflow_run = await ty.runs.aio_get(workflow_run_id)
        assert (workflow_run.kind, workflow_run.parent_run_id) == (RunKind.WORKFLOW, top.run_id)
        await top.aio_cancel()
        for run_id in (workflow_run_id, started[0]):
            view = await ty.runs.aio_get(run_id)
            assert view.status is RunStatus.CANCELLED, (run_id, view.status)
        assert {s.status for s in (await ty.runs.aio_get(workflow_run_id)).steps} == {
            RunStatus.CANCELLED
        }
