"""The dispatcher's batches (domain/dispatch.py): a batch task's runs of one key go together to
one worker, at most max_size of them, once that many wait or the oldest has waited max_wait;
a batch takes its slot cost once, until the last of its runs is let go."""

from __future__ import annotations

import uuid

from taskyard.domain.dispatch import Dispatcher, Held, WorkerSlots
from taskyard.domain.flow import Flow
from taskyard.domain.runs import Run
from taskyard_sdk.models import Batching, RunStatus, TaskOptions

CONNECTED = object()
BATCH = TaskOptions(batch=Batching(max_size=3, max_wait=1.0, key="input.account"))


def setup(slots: int = 4) -> tuple[Dispatcher, dict[uuid.UUID, Run], WorkerSlots]:
    runs: dict[uuid.UUID, Run] = {}
    worker = WorkerSlots(
        uuid.uuid4(),
        CONNECTED,  # type: ignore[arg-type]
        tasks=frozenset({"insert"}),
        slots=slots,
    )
    return Dispatcher(runs, {worker.worker_id: worker}, None), runs, worker


def arrive(dispatcher: Dispatcher, runs: dict[uuid.UUID, Run], key: str, at: float) -> Run:
    run = Run(
        tenant_id=uuid.UUID(int=0),
        run_id=uuid.UUID(int=len(runs) + 1),
        task="insert",
        queue="default",
        status=RunStatus.QUEUED,
        attempt=1,
        priority=2,
        options=BATCH,
        created_at=at,
        queued_at=at,
        flow=Flow(batch_key=key),
    )
    runs[run.run_id] = run
    dispatcher.add(run, arriving=True)
    return run


def batches(assigned: list[tuple[Run, WorkerSlots]]) -> list[list[int]]:
    grouped: dict[uuid.UUID | None, list[int]] = {}
    for run, _ in assigned:
        grouped.setdefault(run.batch_id, []).append(run.run_id.int)
    return list(grouped.values())


def test_a_full_batch_goes_at_once_and_the_rest_after_max_wait() -> None:
    dispatcher, runs, worker = setup()
    for _ in range(4):
        arrive(dispatcher, runs, "acme", at=0.0)
    assert batches(dispatcher.assign(0.1)) == [[1, 2, 3]]  # max_size: no waiting
    assert dispatcher.assign(0.2) == []  # one left, not waited long enough
    assert min(dispatcher.batch_wakeups) == 1.0
    assert batches(dispatcher.assign(1.0)) == [[4]]
    assert worker.running.used == 2  # two batches, one slot each


def test_keys_make_separate_batches() -> None:
    dispatcher, runs, _ = setup()
    for key in ("acme", "globex", "acme", "globex"):
        arrive(dispatcher, runs, key, at=0.0)
    assert sorted(batches(dispatcher.assign(1.0))) == [[1, 3], [2, 4]]


def test_a_batch_holds_its_slots_until_its_last_run_is_let_go() -> None:
    held = Held()
    batch = uuid.uuid4()
    members = [uuid.uuid4() for _ in range(3)]
    for run_id in members:
        held.hold(run_id, 1, cost=2, batch=batch)
    held.hold(uuid.uuid4(), 1, cost=1)
    assert held.used == 3
    del held[members[0]]
    assert held.pop(members[1]) == 1
    assert held.used == 3  # the batch still runs for its last run
    del held[members[2]]
    assert held.used == 1
    assert len(held) == 1


def test_a_worker_with_no_free_slot_takes_no_batch() -> None:
    dispatcher, runs, worker = setup(slots=1)
    worker.running.hold(uuid.uuid4(), 1)
    for _ in range(3):
        arrive(dispatcher, runs, "acme", at=0.0)
    assert dispatcher.assign(5.0) == []
    assert all(run.ready for run in runs.values())
