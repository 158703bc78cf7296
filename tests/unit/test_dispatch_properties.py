"""Property tests of the scheduling decisions (domain/dispatch.py): the dispatcher's own assignment
loop, driven under random arrivals, completions, cancellations, worker churn, the paths that give
a run's concurrency keys back (an assignment that fails, a worker lost, an execution timeout whose
worker still holds the slot until it reports the attempt ended), pausing and resuming the queue,
a task or a worker, and the passing of time, with tasks that take more than one slot
(`slot_cost`). Every pick is checked as it is made, and after
every step the invariants hold: never more than max_runs assigned per concurrency key, no rate
limit exceeded in any window, slots never exceeded (a run taking its task's slot_cost), a HARD
sticky run never moves, a higher priority never passed over for a worker that could start it,
and no run that could start left waiting beside a free slot (nothing parked is stranded, no
concurrency slot leaks)."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskyard.domain.dispatch import Dispatcher, WorkerSlots
from taskyard.domain.flow import Flow
from taskyard.domain.pauses import Pauses
from taskyard.domain.rate_limits import RateLimiter
from taskyard.domain.runs import Run
from taskyard.ids import new_id
from taskyard_sdk.models import (
    Concurrency,
    Label,
    RateDuration,
    RateLimit,
    RunStatus,
    Sticky,
    TaskOptions,
)

TENANT = uuid.uuid4()
CONNECTED = object()  # stands for a live session: the dispatcher only asks whether there is one

ROUND_ROBIN = Concurrency(expression="input.user", max_runs=2)
RATE = RateLimit(key="api", units="input.units")
OPTIONS = {
    "keyed": TaskOptions(concurrency=(ROUND_ROBIN,)),
    "metered": TaskOptions(rate_limits=(RATE,)),
    "gpu": TaskOptions(desired_worker_labels={"gpu": Label("a100", required=True)}),
    "pinned": TaskOptions(sticky=Sticky.HARD),
    "pinned_weighted": TaskOptions(
        sticky=Sticky.HARD, desired_worker_labels={"gpu": Label("a100", weight=50)}
    ),  # weights must not move a HARD sticky run
    "both": TaskOptions(
        concurrency=(Concurrency(expression="'all'", max_runs=3),), rate_limits=(RATE,)
    ),
    "two_gpus": TaskOptions(slot_cost=2),
    "three_gpus": TaskOptions(slot_cost=3, priority=3),  # beside cheaper runs of lower priority
    "wide_pinned": TaskOptions(slot_cost=2, sticky=Sticky.SOFT),
    "wide_weighted": TaskOptions(  # labels may move it to a worker without the room: never
        slot_cost=2, desired_worker_labels={"gpu": Label("a100", weight=50)}
    ),
}
LIMIT, WINDOW = 5, 1.0  # "api": 5 units a second


def queued_run(
    run_id: uuid.UUID,
    task: str,
    options: TaskOptions,
    flow: Flow,
    priority: int = 2,
    at: float = 0.0,
) -> Run:
    return Run(
        tenant_id=TENANT,
        run_id=run_id,
        task=task,
        queue="default",
        status=RunStatus.QUEUED,
        attempt=1,
        priority=priority,
        options=options,
        created_at=at,
        queued_at=at,
        flow=flow,
    )


class CheckedDispatcher(Dispatcher):
    """The real dispatcher, each of whose picks is held against a brute-force answer."""

    machine: SchedulingMachine

    def pick(self, worker: WorkerSlots, now: float) -> Run | None:
        machine = self.machine
        eligible = [r for r in machine.runs.values() if r.ready and machine.can_start(r, worker)]
        run = super().pick(worker, now)
        if run is None:
            assert not eligible, f"{worker.worker_id} could start {eligible}"
        else:
            assert run.priority >= max(r.priority for r in eligible), "priority passed over"
        return run


class SchedulingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1_000.0
        self.limiter = RateLimiter(clock=lambda: self.now)
        self.limiter.configure("api", LIMIT, RateDuration.SECOND)
        self.runs: dict[uuid.UUID, Run] = {}
        self.workers: dict[uuid.UUID, WorkerSlots] = {}
        self.dispatcher = CheckedDispatcher(self.runs, self.workers, self.limiter)
        self.dispatcher.machine = self
        self.wakeups: list[tuple[float, str]] = []
        self.taken: list[tuple[float, int]] = []  # (when, units) from "api"
        self.paused: set[str] = set()  # "queue", task names, worker ids as text
        self.seq = 0

    # -- arrivals, completions, cancellations ----------------------------------------------------

    @rule(
        kind=st.sampled_from(sorted(OPTIONS)),
        user=st.sampled_from("ab"),  # few keys: they fill, and runs park on them
        priority=st.integers(1, 4),
        units=st.integers(1, 3),
    )
    def arrive(self, kind: str, user: str, priority: int, units: int) -> None:
        options = OPTIONS[kind]
        sticky = None
        if "pinned" in kind and self.workers:
            sticky = sorted(self.workers)[units % len(self.workers)]
        keys = tuple(user if level is ROUND_ROBIN else "all" for level in options.concurrency)
        flow = Flow(keys, tuple(("api", units) for _ in options.rate_limits), sticky)
        self.seq += 1
        run = queued_run(uuid.UUID(int=self.seq), kind, options, flow, priority, self.now)
        self.runs[run.run_id] = run
        self._end(self.dispatcher.add(run, arriving=True))

    @precondition(lambda self: bool(self._assigned()))
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        self._finish(self.runs[data.draw(st.sampled_from(self._assigned()))])

    @precondition(lambda self: bool(self._assigned()))
    @rule(data=st.data())
    def assignment_fails(self, data: st.DataObject) -> None:
        """The run's input could not be read: queued again where it was, as the queue actor
        does (its slot and its keys are given back)."""
        run = self.runs[data.draw(st.sampled_from(self._assigned()))]
        assert run.worker_id is not None
        self.workers[run.worker_id].running.pop(run.run_id, None)
        self._requeue(run)

    @precondition(lambda self: bool(self._assigned()))
    @rule(data=st.data())
    def execution_times_out(self, data: st.DataObject) -> None:
        """Retried at once; its keys are given back, but its worker's slot stays taken until
        the worker reports the cancelled attempt ended."""
        run = self.runs[data.draw(st.sampled_from(self._assigned()))]
        run.attempt += 1
        self._requeue(run)

    @precondition(lambda self: any(self._stale(w) for w in self.workers.values()))
    @rule()
    def workers_report_cancelled_attempts_ended(self) -> None:
        for worker in self.workers.values():
            for run_id in self._stale(worker):
                del worker.running[run_id]

    @precondition(lambda self: bool(self.runs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._finish(self.runs[data.draw(st.sampled_from(sorted(self.runs)))])

    # -- workers ---------------------------------------------------------------------------------

    @rule(
        slots=st.integers(1, 4),
        gpu=st.booleans(),
        tasks=st.sets(st.sampled_from(sorted(OPTIONS)), min_size=1),
    )
    def worker_joins(self, slots: int, gpu: bool, tasks: set[str]) -> None:
        self.seq += 1  # ids in order of creation: the same steps give the same choices
        worker = WorkerSlots(
            uuid.UUID(int=self.seq),
            CONNECTED,  # type: ignore[arg-type]
            tasks=frozenset(tasks),
            slots=slots,
            labels={"gpu": "a100"} if gpu else {},
        )
        self.workers[worker.worker_id] = worker

    @precondition(lambda self: bool(self.workers))
    @rule(data=st.data())
    def worker_lost(self, data: st.DataObject) -> None:
        """Its runs are retried (queued again), as the queue actor does."""
        worker = self.workers.pop(data.draw(st.sampled_from(sorted(self.workers))))
        for run_id, attempt in worker.running.items():
            run = self.runs.get(run_id)
            if run is not None and run.attempt == attempt and run.worker_id == worker.worker_id:
                self._requeue(run)

    @rule(data=st.data(), pause=st.booleans())
    def pause_or_resume(self, data: st.DataObject, pause: bool) -> None:
        """The queue, a task or a worker is paused or resumed: nothing of it is assigned
        while paused; once resumed, what waited for it may start (checked at each pick)."""
        what = data.draw(st.sampled_from(["queue", *sorted(OPTIONS), *map(str, self.workers)]))
        (self.paused.add if pause else self.paused.discard)(what)
        workers = frozenset(w for w in self.workers if str(w) in self.paused)
        pauses = Pauses(
            queues=frozenset({"default"} if "queue" in self.paused else ()),
            tasks=frozenset(self.paused & set(OPTIONS)),
            workers=workers,
        )
        self.dispatcher.pause(pauses, "default")

    # -- time and decisions ----------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.01, 0.1, 0.3, 1.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        due = [(at, bucket) for at, bucket in self.wakeups if at <= self.now]
        self.wakeups = [w for w in self.wakeups if w[0] > self.now]
        for _, bucket in due:
            self.dispatcher.rate_freed(bucket)

    @rule()
    def dispatch(self) -> None:
        """The queue actor's decision: the dispatcher's own loop (each pick checked above)."""
        for run, target in self.dispatcher.assign(self.now):
            assert "queue" not in self.paused
            assert run.task not in self.paused
            assert str(target.worker_id) not in self.paused, "assigned to a paused worker"
            assert run.status is RunStatus.ASSIGNED
            assert target.running[run.run_id] == run.attempt
            assert target.worker_id == run.worker_id
            if run.options.sticky is Sticky.HARD and run.flow and run.flow.sticky_worker:
                assert target.worker_id == run.flow.sticky_worker, "a HARD sticky run moved"
            if run.options.rate_limits:
                assert run.flow is not None
                self.taken.append((self.now, run.flow.units[0][1]))
        self._end(self.dispatcher.refused)
        self.dispatcher.refused = []
        self.wakeups += self.dispatcher.wakeups
        self.dispatcher.wakeups.clear()

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def slots_are_never_exceeded(self) -> None:
        for worker in self.workers.values():
            taken = sum(self.runs[run_id].options.slot_cost for run_id in worker.running)
            assert worker.running.used == taken
            assert taken <= worker.slots

    @invariant()
    def no_key_runs_more_than_max_runs(self) -> None:
        running: Counter[tuple[str, Concurrency, str]] = Counter()
        for run in self.runs.values():
            if run.status is RunStatus.ASSIGNED and run.flow is not None:
                for level, key in zip(run.options.concurrency, run.flow.keys, strict=True):
                    running[(run.task, level, key)] += 1
        for (_, level, _), count in running.items():
            assert count <= level.max_runs

    @invariant()
    def no_window_exceeds_the_rate_limit(self) -> None:
        for index, (start, _) in enumerate(self.taken):
            in_window = sum(units for at, units in self.taken[index:] if at < start + WINDOW)
            assert in_window <= LIMIT, (start, self.taken)

    # -- helpers ---------------------------------------------------------------------------------

    def can_start(self, run: Run, worker: WorkerSlots) -> bool:
        """Brute force: could this worker start this run now?"""
        if not worker.takes(run.task, run.options):
            return False
        if {"queue", run.task, str(worker.worker_id)} & self.paused:
            return False
        taken = sum(self.runs[run_id].options.slot_cost for run_id in worker.running)
        if worker.slots - taken < run.options.slot_cost:
            return False
        flow = run.flow
        assert flow is not None
        if run.options.sticky is Sticky.HARD and flow.sticky_worker not in (None, worker.worker_id):
            return False
        for level, key in zip(run.options.concurrency, flow.keys, strict=True):
            going = sum(
                1
                for other in self.runs.values()
                if other.status is RunStatus.ASSIGNED
                and other.task == run.task
                and other.flow is not None
                and key in other.flow.keys
            )
            if going >= level.max_runs:
                return False
        if run.options.rate_limits:
            wants = [(b, u, RATE) for b, u in flow.units]
            return self.limiter.free_at(wants, self.now) <= self.now
        return True

    def _assigned(self) -> list[uuid.UUID]:
        return sorted(r.run_id for r in self.runs.values() if r.status is RunStatus.ASSIGNED)

    def _stale(self, worker: WorkerSlots) -> list[uuid.UUID]:
        """Attempts the worker still runs that the engine has given up on."""
        return [
            run_id
            for run_id, attempt in worker.running.items()
            if run_id not in self.runs
            or self.runs[run_id].attempt != attempt
            or self.runs[run_id].worker_id != worker.worker_id
        ]

    def _requeue(self, run: Run) -> None:
        self.dispatcher.forget(run)
        run.status, run.worker_id = RunStatus.QUEUED, None
        self._end(self.dispatcher.add(run, arriving=False))

    def _finish(self, run: Run) -> None:
        self.dispatcher.forget(run)
        del self.runs[run.run_id]
        for worker in self.workers.values():
            worker.running.pop(run.run_id, None)

    def _end(self, refusals: Any) -> None:
        for refusal in refusals:
            if refusal.run.run_id in self.runs:
                self._finish(refusal.run)


SchedulingMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=50, deadline=None
)
test_scheduling = SchedulingMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(
    backlogs=st.lists(st.integers(1, 12), min_size=2, max_size=6),
    max_runs=st.integers(1, 3),
    slots=st.integers(1, 4),
)
def test_backlogged_keys_take_turns(backlogs: list[int], max_runs: int, slots: int) -> None:
    """Round-robin: while every key still has runs waiting, no key has started more than one
    run more than any other (per round, each key starts once)."""
    level = Concurrency(expression="input.user", max_runs=max_runs)
    options = TaskOptions(concurrency=(level,))
    runs: dict[uuid.UUID, Run] = {}
    worker = WorkerSlots(
        uuid.uuid4(),
        CONNECTED,
        tasks=frozenset({"t"}),  # type: ignore[arg-type]
        slots=slots,
    )
    dispatcher = Dispatcher(runs, {worker.worker_id: worker}, None)
    waiting: dict[str, int] = {}
    for key, size in enumerate(backlogs):  # each key's whole backlog, one key after another
        waiting[str(key)] = size
        for _ in range(size):
            run = queued_run(new_id(), "t", options, Flow((str(key),)))
            runs[run.run_id] = run
            dispatcher.add(run, arriving=True)
    started: Counter[str] = Counter()
    order: list[str] = []
    while any(waiting.values()):
        run = dispatcher.pick(worker, 0.0)
        assert run is not None
        key = run.flow.keys[0] if run.flow else ""
        started[key] += 1
        waiting[key] -= 1
        order.append(key)
        if all(waiting.values()):
            counts = [started[k] for k in waiting]
            assert max(counts) - min(counts) <= 1, order
        dispatcher.forget(run)  # it finishes at once
        del runs[run.run_id]
    assert sum(started.values()) == sum(backlogs)


def test_a_holder_that_ends_wakes_the_run_parked_on_its_key() -> None:
    """The smallest case of a release: the key's one slot frees, and its parked run starts."""
    options = TaskOptions(concurrency=(Concurrency(expression="input.user", max_runs=1),))
    runs: dict[uuid.UUID, Run] = {}
    worker = WorkerSlots(
        uuid.uuid4(),
        CONNECTED,  # type: ignore[arg-type]
        tasks=frozenset({"t"}),
        slots=3,
    )
    dispatcher = Dispatcher(runs, {worker.worker_id: worker}, None)
    for n in (1, 2):
        run = queued_run(uuid.UUID(int=n), "t", options, Flow(("a",)))
        runs[run.run_id] = run
        dispatcher.add(run, arriving=True)
    [(first, _)] = dispatcher.assign(0.0)
    assert dispatcher.assign(0.0) == []  # the second waits for the key
    dispatcher.forget(first)
    del runs[first.run_id], worker.running[first.run_id]
    assert [run.run_id.int for run, _ in dispatcher.assign(0.0)] == [2]
