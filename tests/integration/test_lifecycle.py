"""The run lifecycle end to end, with real workers over real websockets: outputs, logs, retries
and back-off, non-retryable errors, both timeouts, cancellation, replay, slots."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter

import pytest
from pydantic import BaseModel

from taskyard.engine import Engine
from taskyard_sdk import (
    Context,
    InvalidInput,
    NonRetryableError,
    RetryAfter,
    RunHandle,
    RunStatus,
    TaskFailed,
    Taskyard,
)


class Numbers(BaseModel):
    a: int
    b: int


class Sum(BaseModel):
    total: int


async def events_of(ty: Taskyard, run_id: object) -> list[dict[str, object]]:
    return await ty.transport.request("GET", f"/api/v1/runs/{run_id}/events")


async def test_a_task_runs_and_returns_its_typed_output(ty: Taskyard) -> None:
    @ty.task
    async def add(numbers: Numbers, ctx: Context) -> Sum:
        ctx.log(f"adding {numbers.a} and {numbers.b}\nsecond line")
        return Sum(total=numbers.a + numbers.b)

    async with ty.worker("adder", tasks=[add]):
        handle = await add.aio_run_no_wait(Numbers(a=2, b=3), metadata={"kind": "test"})
        assert await handle.aio_result(timeout=10) == Sum(total=5)
        view = await handle.aio_get()
    assert view.status is RunStatus.SUCCEEDED
    assert view.output == {"total": 5}
    assert view.metadata == {"kind": "test"}
    [attempt] = view.attempts
    assert attempt.status is RunStatus.SUCCEEDED
    assert attempt.assigned_at
    assert attempt.started_at
    assert attempt.finished_at
    assert attempt.assigned_at <= attempt.started_at <= attempt.finished_at
    events = await events_of(ty, handle.run_id)
    assert [e["type"] for e in events] == ["queued", "assigned", "started", "succeeded"]
    logs = await ty.transport.request("GET", f"/api/v1/runs/{handle.run_id}/logs")
    assert [line["message"] for line in logs["lines"]] == ["adding 2 and 3\nsecond line"]


async def test_logs_are_read_in_pages_from_either_api(ty: Taskyard) -> None:
    @ty.task
    async def chatty(lines: int, ctx: Context) -> None:
        for n in range(lines):
            ctx.log(f"line {n}", level="warning" if n == 2 else "info")

    async with ty.worker("chatty", tasks=[chatty]):
        handle = await chatty.aio_run_no_wait(3)
        await handle.aio_result(timeout=10)
    first = await ty.runs.aio_logs(handle.run_id, limit=2)
    assert [(line.message, line.level) for line in first.lines] == [
        ("line 0", "info"),
        ("line 1", "info"),
    ]
    rest = await ty.runs.aio_logs(handle.run_id, after=first.next_after)
    assert [(line.message, line.level, line.attempt) for line in rest.lines] == [
        ("line 2", "warning", 1)
    ]
    end = await asyncio.to_thread(ty.runs.logs, handle.run_id, after=rest.next_after)
    assert (end.lines, end.next_after) == ([], None)  # nothing more: ask again from rest's
    everything = await asyncio.to_thread(ty.runs.logs, handle.run_id)
    assert everything.lines == first.lines + rest.lines


async def test_input_is_validated_before_anything_is_sent(ty: Taskyard) -> None:
    @ty.task
    async def add(numbers: Numbers) -> int:
        return numbers.a + numbers.b

    with pytest.raises(InvalidInput, match="input for task 'add' is invalid"):
        await add.aio_run_no_wait({"a": "not a number", "b": 1})  # type: ignore[arg-type]
    page = await ty.runs.aio_list()
    assert page.runs == []


async def test_retries_wait_for_their_back_off(ty: Taskyard) -> None:
    calls: list[float] = []

    @ty.task(retries=3, backoff_factor=2, backoff_max_seconds=0.3)
    async def flaky(n: int, ctx: Context) -> str:
        calls.append(time.monotonic())
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return f"ok on attempt {ctx.attempt}"

    async with ty.worker("w", tasks=[flaky]):
        assert await flaky.aio_run(1, timeout=10) == "ok on attempt 3"
    assert len(calls) == 3
    assert all(later - earlier >= 0.28 for earlier, later in itertools.pairwise(calls))
    handle_events = await ty.runs.aio_list()
    run_id = handle_events.runs[0].run_id
    events = await events_of(ty, run_id)
    kinds = [e["type"] for e in events]
    assert kinds.count("failed") == 2
    assert kinds.count("retry_scheduled") == 2
    assert [e["detail"]["delay"] for e in events if e["type"] == "retry_scheduled"] == [0.3, 0.3]  # type: ignore[index]
    view = await ty.runs.aio_get(run_id)
    assert [a.status for a in view.attempts] == [
        RunStatus.FAILED,
        RunStatus.FAILED,
        RunStatus.SUCCEEDED,
    ]
    assert view.attempts[0].error is not None
    assert view.attempts[0].error.type == "ConnectionError"
    assert "attempt 1 failed" in (view.attempts[0].error.traceback or "")


async def test_non_retryable_errors_skip_retries(ty: Taskyard) -> None:
    attempts: list[int] = []

    @ty.task(retries=5)
    def strict(n: int, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise NonRetryableError("bad request: n must be even")

    async with ty.worker("w", tasks=[strict]):
        with pytest.raises(TaskFailed) as failure:
            await strict.aio_run(3, timeout=10)
    assert attempts == [1]
    assert failure.value.status is RunStatus.FAILED
    assert failure.value.error is not None
    assert failure.value.error.type == "NonRetryableError"
    assert failure.value.error.message == "bad request: n must be even"


async def test_a_task_can_choose_its_retry_delay(ty: Taskyard) -> None:
    calls: list[float] = []

    @ty.task(retries=1)
    async def polite(n: int, ctx: Context) -> int:
        calls.append(time.monotonic())
        if ctx.attempt == 1:
            raise RetryAfter(0.4, "rate limited")
        return ctx.attempt

    async with ty.worker("w", tasks=[polite]):
        assert await polite.aio_run(0, timeout=10) == 2
    assert calls[1] - calls[0] >= 0.38


async def test_execution_timeout_cancels_the_attempt(ty: Taskyard) -> None:
    seen: list[str] = []

    @ty.task(execution_timeout=0.3)
    async def sleepy(n: int) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async with ty.worker("w", tasks=[sleepy]):
        started = time.monotonic()
        with pytest.raises(TaskFailed) as failure:
            await sleepy.aio_run(0, timeout=10)
        assert time.monotonic() - started < 5
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.02)
    assert seen == ["cancelled"]
    assert failure.value.status is RunStatus.TIMED_OUT
    assert failure.value.error is not None
    assert failure.value.error.type == "ExecutionTimeout"


async def test_the_children_of_a_run_that_timed_out_are_cancelled_with_it(ty: Taskyard) -> None:
    """A step or task cut off by its timeout can no longer use what it spawned: the child it
    was waiting for (queued, on a queue nobody serves) is cancelled, not left queued."""

    @ty.task(queue="nobody-serves-this")
    async def child(n: int) -> int:
        return n

    spawned: list[RunHandle[int]] = []

    @ty.task(execution_timeout=0.5)
    async def parent(n: int) -> int:
        handle = await child.aio_run_no_wait(n)
        spawned.append(handle)
        return await handle.aio_result()

    async with ty.worker("parents", tasks=[parent]):
        with pytest.raises(TaskFailed) as failure:
            await parent.aio_run(1, timeout=10)
    assert failure.value.status is RunStatus.TIMED_OUT
    [handle] = spawned
    for _ in range(100):
        view = await handle.aio_get()
        if view.status is RunStatus.CANCELLED:
            break
        await asyncio.sleep(0.05)
    assert view.status is RunStatus.CANCELLED
    assert view.parent_run_id == failure.value.run_id
    assert view.error is not None
    assert view.error.message == f"run {failure.value.run_id} timed out"


async def test_refresh_timeout_extends_the_deadline(ty: Taskyard) -> None:
    @ty.task(execution_timeout=0.5)
    async def long_job(steps: int, ctx: Context) -> int:
        for _ in range(steps):
            ctx.refresh_timeout("1s")
            await asyncio.sleep(0.3)
        return steps

    async with ty.worker("w", tasks=[long_job]):
        assert await long_job.aio_run(4, timeout=10) == 4


async def test_cancel_a_running_async_task(ty: Taskyard) -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    @ty.task
    async def forever(n: int) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            outcome.append("CancelledError")
            raise

    @ty.task
    async def quick(n: int) -> int:
        return n

    async with ty.worker("w", tasks=[forever, quick], slots=1):
        handle = await forever.aio_run_no_wait(0)
        await asyncio.wait_for(started.wait(), 10)
        assert await handle.aio_cancel() is RunStatus.CANCELLED
        with pytest.raises(TaskFailed) as failure:
            await handle.aio_result(timeout=5)
        # the only slot is free again once the worker's code has stopped
        assert await quick.aio_run(7, timeout=10) == 7
    assert outcome == ["CancelledError"]
    assert failure.value.status is RunStatus.CANCELLED


async def test_cancel_a_running_sync_task(ty: Taskyard) -> None:
    started = threading.Event()
    observed: list[bool] = []

    @ty.task
    def polling(n: int, ctx: Context) -> str:
        started.set()
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        observed.append(ctx.cancelled)
        return "stopped"

    async with ty.worker("w", tasks=[polling]):
        handle = await polling.aio_run_no_wait(0)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        assert await handle.aio_cancel() is RunStatus.CANCELLED
        for _ in range(200):
            if observed:
                break
            await asyncio.sleep(0.02)
    assert observed == [True]
    view = await handle.aio_get()
    assert view.status is RunStatus.CANCELLED


async def test_sync_tasks_run_on_the_workers_own_threads(ty: Taskyard) -> None:
    @ty.task
    def where(n: int) -> str:
        return threading.current_thread().name

    async with ty.worker("pool", tasks=[where]):
        name = await where.aio_run(0, timeout=10)
    assert name.startswith("taskyard-pool")


async def test_a_worker_never_runs_more_than_its_slots(ty: Taskyard) -> None:
    running = 0
    peak = 0

    @ty.task
    async def busy(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1
        return n

    async with ty.worker("w", tasks=[busy], slots=3):
        results = await busy.aio_run_many(list(range(30)), timeout=20)
    assert results == list(range(30))
    assert peak == 3


async def test_run_many_reports_failures_in_place(ty: Taskyard) -> None:
    @ty.task
    async def odd_fails(n: int) -> int:
        if n % 2:
            raise ValueError(f"{n} is odd")
        return n

    async with ty.worker("w", tasks=[odd_fails]):
        results = await odd_fails.aio_run_many([0, 1, 2, 3], return_exceptions=True, timeout=10)
        with pytest.raises(TaskFailed, match="1 is odd"):
            await odd_fails.aio_run_many([0, 1], timeout=10)
    assert results[0] == 0
    assert results[2] == 2
    assert isinstance(results[1], TaskFailed)
    assert isinstance(results[3], TaskFailed)


async def test_replay_runs_a_finished_run_again(ty: Taskyard) -> None:
    calls: Counter[int] = Counter()

    @ty.task
    async def count(n: int, ctx: Context) -> int:
        calls[ctx.attempt] += 1
        return ctx.attempt

    async with ty.worker("w", tasks=[count]):
        handle = await count.aio_run_no_wait(1)
        assert await handle.aio_result(timeout=10) == 1
        replayed = await ty.runs.aio_replay(handle.run_id)
        assert replayed.attempt == 2
        assert await handle.aio_result(timeout=10) == 2
    assert calls == {1: 1, 2: 1}


async def test_waiting_reason_clears_when_a_worker_arrives(ty: Taskyard) -> None:
    @ty.task
    async def late(n: int) -> int:
        return n

    handle = await late.aio_run_no_wait(5)
    view = await handle.aio_get()
    assert view.waiting_reason == (
        "no connected worker has registered task 'late' on queue 'default'"
    )
    async with ty.worker("w", tasks=[late]):
        assert await handle.aio_result(timeout=10) == 5
    tasks = await ty.transport.request("GET", "/api/v1/tasks")
    assert [t["name"] for t in tasks] == ["late"]


async def test_chunks_stream_live_to_subscribers(engine: Engine, ty: Taskyard) -> None:
    go = asyncio.Event()

    @ty.task
    async def tokens(words: list[str], ctx: Context) -> int:
        await go.wait()
        for word in words:
            ctx.stream({"token": word})
        return len(words)

    async with ty.worker("w", tasks=[tokens]):
        handle = await tokens.aio_run_no_wait(["a", "b", "c"])
        session = ty.transport.session()
        async with session.get(
            f"{ty.url}/api/v1/runs/{handle.run_id}/stream", headers=ty.transport.headers
        ) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            go.set()  # subscribed (the headers came after the subscription): start streaming
            body = (await response.read()).decode()
        assert body.split("\n\n")[:4] == [
            'data: {"token":"a"}',
            'data: {"token":"b"}',
            'data: {"token":"c"}',
            'event: end\ndata: {"status":"succeeded"}',
        ]
        # the SDK's iterator over a finished run ends at once
        assert [chunk async for chunk in handle.aio_stream()] == []

        go.clear()
        live = await tokens.aio_run_no_wait(["x", "y"])

        async def collect() -> list[object]:
            return [chunk async for chunk in live.aio_stream()]

        collecting = asyncio.create_task(collect())
        streams = engine.services.streams
        for _ in range(500):  # until the engine has the subscription
            if streams._subscribers:
                break
            await asyncio.sleep(0.01)
        go.set()
        assert await asyncio.wait_for(collecting, 10) == [{"token": "x"}, {"token": "y"}]
