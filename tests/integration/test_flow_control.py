"""Flow control end to end, with real workers: concurrency keys and their strategies, rate limits
(named and dynamic, across an engine restart), priority, FIFO/LIFO, slots, labels, sticky
workflows, and the errors of each."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import BaseModel

from taskyard.engine import Engine
from taskyard_sdk import (
    Concurrency,
    ConcurrencyStrategy,
    InvalidRequest,
    Label,
    RateLimit,
    RunHandle,
    RunStatus,
    Sticky,
    TaskFailed,
    Taskyard,
)
from tests.conftest import engine_settings


class Job(BaseModel):
    user: str
    n: int = 0
    tokens: int = 1


class Tracker:
    """Starts and ends seen inside tasks, to check what ran at once and in which order."""

    def __init__(self) -> None:
        self.started: list[Any] = []
        self.running: dict[Any, int] = {}
        self.most: dict[Any, int] = {}
        self.times: list[float] = []

    def enter(self, key: Any, item: Any) -> None:
        self.started.append(item)
        self.times.append(time.monotonic())
        self.running[key] = self.running.get(key, 0) + 1
        self.most[key] = max(self.most.get(key, 0), self.running[key])

    def leave(self, key: Any) -> None:
        self.running[key] -= 1


async def _until(check: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.03)


async def _status(handle: RunHandle[Any]) -> RunStatus:
    return (await handle.aio_get()).status


# -- concurrency -----------------------------------------------------------------------------------


async def test_round_robin_gives_every_key_its_turn_and_holds_max_runs(ty: Taskyard) -> None:
    tracker = Tracker()

    @ty.task(concurrency=Concurrency(expression="input.user", max_runs=1))
    async def work(job: Job) -> int:
        tracker.enter(job.user, (job.user, job.n))
        await asyncio.sleep(0.02)
        tracker.leave(job.user)
        return job.n

    # A backlog from a busy user first, then two quieter ones: all queued before any worker.
    jobs = [Job(user="busy", n=n) for n in range(6)] + [
        Job(user=user, n=n) for user in ("ann", "bob") for n in range(2)
    ]
    handles = await work.aio_run_many_no_wait(jobs)
    async with ty.worker("fair", tasks=[work], slots=1):  # one at a time: the order shows
        await asyncio.gather(*(h.aio_result(timeout=30) for h in handles))
    users = [user for user, _ in tracker.started]
    assert users[:6] == ["busy", "ann", "bob", "busy", "ann", "bob"]
    assert users[6:] == ["busy"] * 4
    assert [n for user, n in tracker.started if user == "busy"] == list(range(6))  # FIFO in a key
    assert max(tracker.most.values()) == 1


async def test_a_constant_expression_is_a_global_limit(ty: Taskyard) -> None:
    tracker = Tracker()

    @ty.task(concurrency=Concurrency(expression="'everyone'", max_runs=2))
    async def limited(n: int) -> int:
        tracker.enter("all", n)
        await asyncio.sleep(0.05)
        tracker.leave("all")
        return n

    async with ty.worker("global", tasks=[limited], slots=20):
        assert await limited.aio_run_many(list(range(12))) == list(range(12))
    assert tracker.most["all"] == 2


async def test_cancel_in_progress_cancels_the_oldest_run_of_the_key(ty: Taskyard) -> None:
    release = asyncio.Event()

    @ty.task(
        concurrency=Concurrency(
            expression="input.user", max_runs=1, strategy=ConcurrencyStrategy.CANCEL_IN_PROGRESS
        )
    )
    async def deploy(job: Job) -> int:
        if job.n == 1:
            await asyncio.sleep(60)  # the first deploy hangs; a newer one replaces it
        await release.wait()
        return job.n

    async with ty.worker("deployer", tasks=[deploy], slots=5):
        first = await deploy.aio_run_no_wait(Job(user="site", n=1))
        await _until(lambda: _is(first, RunStatus.RUNNING))
        other_key = await deploy.aio_run_no_wait(Job(user="other-site", n=3))
        second = await deploy.aio_run_no_wait(Job(user="site", n=2))
        await _until(lambda: _is(first, RunStatus.CANCELLED))
        release.set()
        assert await second.aio_result(timeout=10) == 2
        assert await other_key.aio_result(timeout=10) == 3
    view = await first.aio_get()
    assert view.error is not None
    assert view.error.type == "ConcurrencyLimit"
    assert f"replaced by the newer run {second.run_id}" in view.error.message


async def test_cancel_newest_cancels_the_run_that_finds_its_key_full(ty: Taskyard) -> None:
    release = asyncio.Event()

    @ty.task(
        concurrency=Concurrency(
            expression="input.user", max_runs=1, strategy=ConcurrencyStrategy.CANCEL_NEWEST
        )
    )
    async def report(job: Job) -> int:
        await release.wait()
        return job.n

    async with ty.worker("reports", tasks=[report], slots=5):
        first = await report.aio_run_no_wait(Job(user="u", n=1))
        await _until(lambda: _is(first, RunStatus.RUNNING))
        second = await report.aio_run_no_wait(Job(user="u", n=2))
        with pytest.raises(TaskFailed) as failure:
            await second.aio_result(timeout=10)
        release.set()
        assert await first.aio_result(timeout=10) == 1
    assert failure.value.status is RunStatus.CANCELLED
    assert "already has 1 runs (cancel_newest)" in str(failure.value)


async def test_cancel_queued_except_newest_debounces(ty: Taskyard) -> None:
    release = asyncio.Event()
    seen: list[int] = []

    @ty.task(
        concurrency=Concurrency(
            expression="input.user",
            max_runs=1,
            strategy=ConcurrencyStrategy.CANCEL_QUEUED_EXCEPT_NEWEST,
        )
    )
    async def reindex(job: Job) -> int:
        seen.append(job.n)
        await release.wait()
        return job.n

    async with ty.worker("indexer", tasks=[reindex], slots=5):
        running = await reindex.aio_run_no_wait(Job(user="doc", n=0))
        await _until(lambda: _is(running, RunStatus.RUNNING))
        queued = [await reindex.aio_run_no_wait(Job(user="doc", n=n)) for n in range(1, 5)]
        release.set()
        assert await queued[-1].aio_result(timeout=10) == 4
        assert await running.aio_result(timeout=10) == 0
        statuses = [await _status(h) for h in queued[:-1]]
    assert statuses == [RunStatus.CANCELLED] * 3
    assert seen == [0, 4]


async def _is(handle: RunHandle[Any], status: RunStatus) -> bool:
    return await _status(handle) is status


# -- rate limits -----------------------------------------------------------------------------------


async def test_named_rate_limits_hold_runs_back_without_failing_them(ty: Taskyard) -> None:
    limit = await ty.rate_limits.aio_put("partner-api", limit=3, duration="second")
    assert (limit.limit, limit.duration.value, limit.available) == (3, "second", 3)
    tracker = Tracker()

    @ty.task(rate_limits=RateLimit(key="partner-api"))
    async def call_partner(n: int) -> int:
        tracker.enter("all", n)
        tracker.leave("all")
        return n

    async with ty.worker("partner", tasks=[call_partner], slots=20):
        handles = await call_partner.aio_run_many_no_wait(list(range(7)))
        await asyncio.sleep(0.3)
        waiting = [h for h in handles if await _status(h) is RunStatus.QUEUED]
        assert len(waiting) == 4
        assert "rate limit 'partner-api' has fewer than 1 units left" in (
            (await waiting[0].aio_get()).waiting_reason or ""
        )
        assert [await h.aio_result(timeout=20) for h in handles] == list(range(7))
    # Any second holds at most 3 assignments (the window is sliding, not per calendar second),
    # by the engine's clock: a worker's own start times add its delivery delay, which varies.
    views = [await h.aio_get() for h in handles]
    assigned = sorted(
        a.assigned_at.timestamp() for v in views for a in v.attempts if a.assigned_at is not None
    )
    assert len(assigned) == 7 == len(tracker.times)
    for index in range(len(assigned) - 3):
        assert assigned[index + 3] - assigned[index] >= 0.95, assigned
    listed = {r.key: r for r in await ty.rate_limits.aio_list()}
    assert listed["partner-api"].configured


async def test_a_run_asking_more_than_the_limit_fails_at_once(ty: Taskyard) -> None:
    await ty.rate_limits.aio_put("tiny", limit=2, duration="minute")

    @ty.task(rate_limits=RateLimit(key="tiny", units="input"))
    async def greedy(units: int) -> int:
        return units

    @ty.task(rate_limits=RateLimit(key="never-defined"))
    async def orphan(n: int) -> int:
        return n

    async with ty.worker("greedy", tasks=[greedy, orphan]):
        with pytest.raises(TaskFailed) as too_many:
            await greedy.aio_run(5, timeout=10)
        with pytest.raises(TaskFailed) as undefined:
            await orphan.aio_run(1, timeout=10)
        assert await greedy.aio_run(2, timeout=10) == 2
    assert too_many.value.error.type == "RateLimitExceeded"
    assert "asks for 5 units of rate limit 'tiny', whose limit is 2 per minute" in str(
        too_many.value
    )
    assert "rate limit 'never-defined' is not defined in this tenant" in str(undefined.value)


async def test_dynamic_rate_limits_count_per_key_and_units_from_the_input(ty: Taskyard) -> None:
    @ty.task(
        rate_limits=RateLimit(
            dynamic_key="'llm:' + input.user", units="input.tokens", limit=10, duration="minute"
        )
    )
    async def complete(job: Job) -> int:
        return job.tokens

    async with ty.worker("llm", tasks=[complete]):
        assert await complete.aio_run(Job(user="ann", tokens=7), timeout=10) == 7
        held = await complete.aio_run_no_wait(Job(user="ann", tokens=4))  # 11 > 10: waits
        assert await complete.aio_run(Job(user="bob", tokens=9), timeout=10) == 9  # own bucket
        assert await complete.aio_run(Job(user="ann", tokens=3), timeout=10) == 3  # 10: fits
        assert await _status(held) is RunStatus.QUEUED
        await held.aio_cancel()
    buckets = {r.key: r for r in await ty.rate_limits.aio_list()}
    assert (buckets["llm:ann"].used, buckets["llm:ann"].available) == (10, 0)
    assert buckets["llm:bob"].used == 9
    assert not buckets["llm:ann"].configured


async def test_rate_limit_usage_survives_an_engine_restart(db_url: str, data_dir: Path) -> None:
    def daily_task(ty: Taskyard) -> Any:
        @ty.task(rate_limits=RateLimit(key="daily"))
        async def once(n: int) -> int:
            return n

        return once

    async with Engine(engine_settings(db_url, data_dir)) as engine:
        token = (data_dir / "token").read_text().strip()
        ty = Taskyard(engine.url, token)
        once = daily_task(ty)
        await ty.rate_limits.aio_put("daily", limit=2, duration="day")
        async with ty.worker("before", tasks=[once]):
            assert await once.aio_run_many([1, 2], timeout=10) == [1, 2]
        await ty.aio_close()
    async with Engine(engine_settings(db_url, data_dir)) as engine:
        ty = Taskyard(engine.url, token)
        once = daily_task(ty)
        async with ty.worker("after", tasks=[once]):
            handle = await once.aio_run_no_wait(3)
            await asyncio.sleep(0.5)
            view = await handle.aio_get()
            assert view.status is RunStatus.QUEUED  # the day's two units are still taken
            assert "rate limit 'daily'" in (view.waiting_reason or "")
            await ty.rate_limits.aio_put("daily", limit=3, duration="day")  # raise it: it goes
            assert await handle.aio_result(timeout=10) == 3
        await ty.aio_close()


# -- order: priority, FIFO/LIFO, slots -------------------------------------------------------------


async def test_higher_priority_goes_first_and_lifo_takes_the_newest(ty: Taskyard) -> None:
    order: list[str] = []

    @ty.task()
    async def fifo(label: str) -> str:
        order.append(label)
        return label

    @ty.task(order="lifo", priority=1)
    async def lifo(label: str) -> str:
        order.append(label)
        return label

    handles = [await fifo.aio_run_no_wait(f"normal-{n}") for n in range(3)]
    handles += [await fifo.aio_run_no_wait(f"urgent-{n}", priority=4) for n in range(2)]
    handles += [await lifo.aio_run_no_wait(f"low-{n}") for n in range(3)]
    async with ty.worker("ordered", tasks=[fifo, lifo], slots=1):
        await asyncio.gather(*(h.aio_result(timeout=20) for h in handles))
    assert order == [
        "urgent-0",
        "urgent-1",
        "normal-0",
        "normal-1",
        "normal-2",
        "low-2",
        "low-1",
        "low-0",
    ]


async def test_a_worker_never_holds_more_than_its_slots(ty: Taskyard) -> None:
    tracker = Tracker()

    @ty.task()
    async def busy(n: int) -> int:
        tracker.enter("worker", n)
        await asyncio.sleep(0.03)
        tracker.leave("worker")
        return n

    async with ty.worker("small", tasks=[busy], slots=3):
        await busy.aio_run_many(list(range(30)), timeout=30)
    assert tracker.most["worker"] == 3


# -- routing: labels and sticky workflows ----------------------------------------------------------


async def test_required_labels_filter_workers_and_weights_rank_them(ty: Taskyard) -> None:
    @ty.task(desired_worker_labels={"gpu": Label("a100", required=True)})
    async def train(n: int) -> int:
        return n

    @ty.task(desired_worker_labels={"memory_gb": Label(32, comparator=">=", weight=10)})
    async def crunch(n: int) -> int:
        return n

    @ty.task(desired_worker_labels={"gpu": Label("h100", required=True)})
    async def impossible(n: int) -> int:
        return n

    async with (
        ty.worker(
            "cpu", tasks=[train, crunch, impossible], slots=50, labels={"memory_gb": 16}
        ) as cpu,
        ty.worker(
            "gpu",
            tasks=[train, crunch, impossible],
            slots=50,
            labels={"gpu": "a100", "memory_gb": 64},
        ) as gpu,
    ):
        trained = await train.aio_run_many_no_wait(list(range(10)))
        crunched = await crunch.aio_run_many_no_wait(list(range(10)))
        stuck = await impossible.aio_run_no_wait(0)
        for handle in [*trained, *crunched]:
            await handle.aio_result(timeout=10)
            view = await handle.aio_get()
            assert view.attempts[-1].worker_id == gpu.worker_id, view.task
        await asyncio.sleep(0.2)
        view = await stuck.aio_get()
        assert view.status is RunStatus.QUEUED
        assert view.waiting_reason == (
            "no connected worker has the labels task 'impossible' requires: gpu = 'h100'"
        )
        assert cpu.worker_id != gpu.worker_id
        await stuck.aio_cancel()


@pytest.mark.parametrize("sticky", [Sticky.SOFT, Sticky.HARD])
async def test_sticky_workflows_keep_their_steps_on_one_worker(
    ty: Taskyard, sticky: Sticky
) -> None:
    wf = ty.workflow(f"pipeline-{sticky.value}", sticky=sticky)

    @wf.task()
    async def fetch(n: int) -> int:
        await asyncio.sleep(0.01)
        return n

    @wf.task(parents=[fetch])
    async def transform(n: int) -> int:
        await asyncio.sleep(0.01)
        return n

    @wf.task(parents=[transform])
    async def load(n: int) -> int:
        return n

    async with ty.worker("a", workflows=[wf], slots=20), ty.worker("b", workflows=[wf], slots=20):
        handles = await wf.aio_run_many_no_wait(list(range(8)))
        for handle in handles:
            await handle.aio_result(timeout=20)
            view = await handle.aio_get()
            workers = set()
            for step in view.steps:
                step_view = await ty.runs.aio_get(step.run_id)
                workers.add(step_view.attempts[-1].worker_id)
            assert len(workers) == 1, view.run_id


async def test_hard_sticky_steps_wait_for_their_worker(ty: Taskyard) -> None:
    wf = ty.workflow("hard-wait", sticky="hard")
    first_may_end, gate = asyncio.Event(), asyncio.Event()

    @wf.task()
    async def first(n: int) -> int:
        await first_may_end.wait()
        return n

    @wf.task(parents=[first])
    async def second(n: int) -> int:
        return n

    @ty.task()
    async def blocker(n: int) -> int:
        await gate.wait()
        return n

    async with ty.worker("only", workflows=[wf], tasks=[blocker], slots=2) as only:
        handle = await wf.aio_run_no_wait(1)
        await _until(lambda: _step_is(ty, handle.run_id, "first", RunStatus.RUNNING))
        # The worker's other slot is busy, and a blocker waits to take the slot `first` frees:
        # when `second` is decided, its sticky worker is full.
        blockers = [await blocker.aio_run_no_wait(n) for n in range(2)]
        await _until(lambda: _is(blockers[0], RunStatus.RUNNING))
        first_may_end.set()
        await _until(lambda: _is(blockers[1], RunStatus.RUNNING))
        async with ty.worker("idle", workflows=[wf], slots=5):
            await _until(lambda: _step_is(ty, handle.run_id, "second", RunStatus.QUEUED))
            await asyncio.sleep(0.3)  # an idle worker that runs the step does not take it
            assert await _step_is(ty, handle.run_id, "second", RunStatus.QUEUED)
            view = await ty.runs.aio_get(await _step_id(ty, handle.run_id, "second"))
            assert view.waiting_reason is None  # its worker is connected, only busy
            gate.set()
            await handle.aio_result(timeout=10)
        view = await ty.runs.aio_get(await _step_id(ty, handle.run_id, "second"))
        assert view.attempts[-1].worker_id == only.worker_id


async def _step_id(ty: Taskyard, run_id: uuid.UUID, step: str) -> uuid.UUID:
    view = await ty.runs.aio_get(run_id)
    return next(s.run_id for s in view.steps if s.step == step)


async def _step_is(ty: Taskyard, run_id: uuid.UUID, step: str, status: RunStatus) -> bool:
    view = await ty.runs.aio_get(run_id)
    return any(s.step == step and s.status is status for s in view.steps)


# -- errors ----------------------------------------------------------------------------------------


async def test_bad_flow_options_and_inputs_are_refused_naming_the_problem(
    ty: Taskyard, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Bearer {ty.config.token}"}
    bad = [
        (
            {"task": "t", "options": {"concurrency": [{"expression": "input.("}]}},
            "concurrency[0].expression: 'input.(' is not valid CEL",
        ),
        (
            {"task": "t", "options": {"concurrency": [{"expression": "inptu.user"}]}},
            "concurrency[0].expression: 'inptu.user' reads 'inptu'",
        ),
        (
            {
                "task": "t",
                "input": {"name": "x"},
                "options": {"concurrency": [{"expression": "input.user"}]},
            },
            "(task 't'): concurrency[0].expression: 'input.user' could not be evaluated: input "
            "has no field 'user'",
        ),
        (
            {"task": "t", "options": {"rate_limits": [{"dynamic_key": "input.user"}]}},
            "dynamic_key 'input.user' needs limit and duration",
        ),
        (
            {"task": "t", "options": {"rate_limits": [{"key": "k", "units": 0}]}},
            "units must be at least 1",
        ),
        (
            {
                "task": "t",
                "input": {"tokens": "many"},
                "options": {
                    "rate_limits": [
                        {
                            "dynamic_key": "'k'",
                            "units": "input.tokens",
                            "limit": 5,
                            "duration": "second",
                        }
                    ]
                },
            },
            "rate_limits[0].units: 'input.tokens' gave 'many', not a whole number of units",
        ),
        (
            {
                "task": "t",
                "options": {"desired_worker_labels": {"gpu": {"value": "a100", "comparator": "~"}}},
            },
            "body.options.desired_worker_labels",
        ),
    ]
    for body, expected in bad:
        async with http.post("/api/v1/runs", json=body, headers=headers) as response:
            error = (await response.json())["error"]
        assert response.status == 422, body
        assert expected in error["message"], (expected, error["message"])
    wf = ty.workflow("bad-keys")

    @wf.task(concurrency=Concurrency(expression="payload.user"))
    async def step(n: int) -> int:
        return n

    with pytest.raises(InvalidRequest) as refused:
        await wf.aio_register()
    assert "step 'step': concurrency[0].expression: 'payload.user' reads 'payload'" in str(
        refused.value
    )
    async with http.put(
        "/api/v1/rate-limits/openai", json={"limit": 0}, headers=headers
    ) as response:
        assert response.status == 422
        assert "body.limit" in (await response.json())["error"]["message"]
    async with http.delete("/api/v1/rate-limits/nothing", headers=headers) as response:
        assert response.status == 404
        assert "no rate limit 'nothing'" in (await response.json())["error"]["message"]


async def test_a_worker_registering_a_bad_concurrency_expression_is_refused(ty: Taskyard) -> None:
    from taskyard_sdk import WorkerStopped

    @ty.task(concurrency=Concurrency(expression="input.user ==="))
    async def broken(n: int) -> int:
        return n

    with pytest.raises(WorkerStopped) as refused:
        async with ty.worker("refused", tasks=[broken]):
            pass
    assert "task 'broken': concurrency[0].expression: 'input.user ===' is not valid CEL" in str(
        refused.value
    )


# -- workflow-level concurrency --------------------------------------------------------------------


async def test_workflow_runs_wait_for_their_key_to_be_admitted(ty: Taskyard) -> None:
    gates = {n: asyncio.Event() for n in range(4)}
    wf = ty.workflow(
        "per-user-sync", input=Job, concurrency=Concurrency(expression="input.user", max_runs=1)
    )

    @wf.task()
    async def sync(job: Job) -> int:
        await gates[job.n].wait()
        return job.n

    async with ty.worker("sync", workflows=[wf], slots=10):
        a0, a1, a2 = [await wf.aio_run_no_wait(Job(user="a", n=n)) for n in range(3)]
        b3 = await wf.aio_run_no_wait(Job(user="b", n=3))
        await _until(lambda: _is(a0, RunStatus.RUNNING))
        await _until(lambda: _is(b3, RunStatus.RUNNING))
        waiting = await a1.aio_get()
        assert waiting.status is RunStatus.QUEUED
        assert waiting.steps == []  # nothing of it has started
        assert waiting.waiting_reason == ("concurrency key 'a' (input.user) has 1 of 1 runs going")
        gates[0].set()
        assert await a0.aio_result(timeout=10) == {"sync": 0}
        await _until(lambda: _is(a1, RunStatus.RUNNING))
        assert await _status(a2) is RunStatus.QUEUED
        for gate in gates.values():
            gate.set()
        assert [await h.aio_result(timeout=10) for h in (a1, a2, b3)] == [
            {"sync": 1},
            {"sync": 2},
            {"sync": 3},
        ]


@pytest.mark.parametrize(
    "strategy", [ConcurrencyStrategy.CANCEL_IN_PROGRESS, ConcurrencyStrategy.CANCEL_NEWEST]
)
async def test_workflow_cancel_strategies(ty: Taskyard, strategy: ConcurrencyStrategy) -> None:
    release = asyncio.Event()
    wf = ty.workflow(
        f"deploy-{strategy.value}",
        input=Job,
        concurrency=Concurrency(expression="input.user", strategy=strategy),
    )

    @wf.task()
    async def roll_out(job: Job) -> int:
        await release.wait()
        return job.n

    async with ty.worker("deployer", workflows=[wf], slots=10):
        first = await wf.aio_run_no_wait(Job(user="site", n=1))
        await _until(lambda: _step_is(ty, first.run_id, "roll_out", RunStatus.RUNNING))
        second = await wf.aio_run_no_wait(Job(user="site", n=2))
        if strategy is ConcurrencyStrategy.CANCEL_IN_PROGRESS:
            await _until(lambda: _is(first, RunStatus.CANCELLED))
            # the step's own cancellation is written by its queue, a moment after the run's
            await _until(lambda: _step_is(ty, first.run_id, "roll_out", RunStatus.CANCELLED))
            release.set()
            assert await second.aio_result(timeout=10) == {"roll_out": 2}
        else:
            with pytest.raises(TaskFailed) as refused:
                await second.aio_result(timeout=10)
            assert refused.value.error is not None
            assert refused.value.error.type == "ConcurrencyLimit"
            release.set()
            assert await first.aio_result(timeout=10) == {"roll_out": 1}


async def test_a_workflow_trigger_without_its_key_is_refused(ty: Taskyard) -> None:
    wf = ty.workflow("keyed-wf", concurrency=Concurrency(expression="input.user"))

    @wf.task()
    async def step(job: dict[str, str]) -> int:
        return 1

    await wf.aio_register()
    with pytest.raises(InvalidRequest) as refused:
        await wf.aio_run_no_wait({"name": "no user"})
    assert (
        "(workflow 'keyed-wf'): concurrency[0].expression: 'input.user' could not be "
        "evaluated: input has no field 'user'"
    ) in str(refused.value)
