"""What the SDK's decorators and worker accept: one string where a list is expected is one item,
tasks and workflows in either list of a worker, parents by name; anything else is refused
naming it."""

from __future__ import annotations

import pytest

from taskyard_sdk import Context, NotFound, Taskyard


async def test_a_single_event_key_is_one_trigger_not_one_per_character(ty: Taskyard) -> None:
    wf = ty.workflow("on-paid", on_events="order:paid", on_crons="0 3 * * *")
    assert wf.on_events == ["order:paid"]
    assert wf.on_crons == ["0 3 * * *"]

    @wf.task()
    async def note(payload: dict[str, int], ctx: Context) -> int:
        return payload["n"]

    async with ty.worker("paid", workflows=[wf]):
        assert (await ty.events.aio_push("d", {"n": 1})).triggered == []
        assert (await ty.events.aio_push("o", {"n": 1})).triggered == []
        [run_id] = (await ty.events.aio_push("order:paid", {"n": 2})).triggered
        finished = await ty.runs.aio_wait([run_id], timeout=20)
    assert finished[run_id].status.value == "succeeded"


def test_what_is_not_a_string_or_a_list_of_strings_is_refused(ty: Taskyard) -> None:
    with pytest.raises(
        TypeError,
        match=r"workflow 'w': on_events must be a string or a list "
        r"of strings, not a list holding 7",
    ):
        ty.workflow("w", on_events=["a", 7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="task 'nightly': on_crons must be"):

        @ty.task(name="nightly", on_crons=[None])  # type: ignore[list-item]
        async def nightly(n: int) -> int:
            return n


async def test_a_worker_takes_tasks_and_workflows_in_either_list(ty: Taskyard) -> None:
    @ty.task()
    async def double(n: int) -> int:
        return 2 * n

    wf = ty.workflow("pipeline")

    @wf.task()
    async def first(n: int) -> int:
        return n + 1

    @wf.task(parents=["first"])  # by name, as well as by object
    async def second(n: int, ctx: Context) -> int:
        return ctx.parent_output(first) * 10

    async with ty.worker("mixed", tasks=[wf], workflows=[double]):
        assert await double.aio_run(4) == 8
        outputs = await wf.aio_run(1)
    assert outputs == {"first": 2, "second": 20}
    with pytest.raises(TypeError, match="worker 'bad': 'double' is neither a task nor a workflow"):
        ty.worker("bad", tasks=["double"])  # type: ignore[list-item]
    with pytest.raises(
        ValueError,
        match=r"step 'third': workflow 'pipeline' has no step 'frist' "
        r"declared before it \(its steps: 'first', 'second'\)",
    ):

        @wf.task(parents=["frist"])
        async def third(n: int) -> int:
            return n


async def test_a_workflow_triggered_before_any_worker_registered_it_runs(ty: Taskyard) -> None:
    """The SDK holds the definition: a trigger the engine cannot place registers it first, so
    the order in which the processes start does not matter."""
    wf = ty.workflow("early-bird")

    @wf.task()
    async def only(n: int) -> int:
        return n * 3

    with pytest.raises(NotFound) as refused:  # what the engine itself answers
        await ty.transport.request(
            "POST", "/api/v1/workflows/early-bird/runs", json_body={"input": 2}
        )
    assert refused.value.code == "workflow_not_registered"
    handle = await wf.aio_run_no_wait(2)
    [batched] = await wf.aio_run_many_no_wait([5])
    async with ty.worker("late", workflows=[wf]):
        assert await handle.aio_result(timeout=20) == {"only": 6}
        assert await batched.aio_result(timeout=20) == {"only": 15}


async def test_a_task_triggered_before_its_worker_registered_keeps_its_own_options(
    ty: Taskyard,
) -> None:
    """The trigger carries the task's options, so a run queued before any worker registered
    the task retries as the task says, not with the defaults (no retries)."""
    attempts: list[int] = []

    @ty.task(retries=2)
    async def flaky(n: int, ctx: Context) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError("not yet")
        return n

    handle = await flaky.aio_run_no_wait(9)
    async with ty.worker("late-flaky", tasks=[flaky]):
        assert await handle.aio_result(timeout=20) == 9
    assert attempts == [1, 2, 3]
