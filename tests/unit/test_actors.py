"""The actor runtime: ordered messages, answers, refusals, crashes with restarts, clean stops."""

from __future__ import annotations

import asyncio

import pytest

from taskyard.actors.base import Actor, ActorStopped, AskTimeout
from taskyard.actors.timers import Timers
from taskyard.errors import Conflict


class Counter(Actor):
    """Counts; its 'durable' state lives in `store`, which on_start reloads (like Postgres)."""

    def __init__(self, store: dict[str, int]) -> None:
        super().__init__("counter")
        self.store = store
        self.starts = 0
        self.value = 0
        self.seen: list[int] = []

    async def on_start(self) -> None:
        self.starts += 1
        self.value = self.store.get("value", 0)

    def add(self, amount: int) -> int:
        self.seen.append(amount)
        self.value += amount
        self.store["value"] = self.value
        return self.value

    async def slow(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    def refuse(self) -> None:
        raise Conflict("not now")

    def explode(self) -> None:
        self.value = -999  # corrupt in-memory state, then crash
        raise RuntimeError("boom")


@pytest.fixture
async def counter() -> Counter:
    actor = Counter({})
    actor.restart_delay = 0.01
    await actor.start()
    yield actor  # type: ignore[misc]
    await actor.stop()


async def test_messages_run_in_order_and_ask_answers(counter: Counter) -> None:
    for amount in range(100):
        counter.tell(counter.add, amount)
    assert await counter.ask(counter.add, 0) == sum(range(100))
    assert counter.seen == [*range(100), 0]


async def test_ask_times_out_with_a_clear_error(counter: Counter) -> None:
    with pytest.raises(AskTimeout, match=r"actor counter did not answer slow within 0.05s"):
        await counter.ask(counter.slow, 1.0, timeout=0.05)


async def test_a_refusal_reaches_the_asker_and_the_actor_carries_on(counter: Counter) -> None:
    await counter.ask(counter.add, 5)
    with pytest.raises(Conflict, match="not now"):
        await counter.ask(counter.refuse)
    assert await counter.ask(counter.add, 1) == 6
    assert counter.restarts == 0


async def test_a_crash_restarts_the_actor_from_its_durable_state(counter: Counter) -> None:
    await counter.ask(counter.add, 7)
    with pytest.raises(RuntimeError, match="boom"):
        await counter.ask(counter.explode)
    # the in-memory corruption is gone: state was rebuilt by on_start
    assert await counter.ask(counter.add, 1) == 8
    assert counter.restarts == 1
    assert counter.starts == 2


async def test_messages_queued_during_a_restart_are_kept(counter: Counter) -> None:
    counter.tell(counter.explode)
    for _ in range(10):
        counter.tell(counter.add, 1)
    assert await counter.ask(counter.add, 0) == 10
    assert counter.restarts == 1


async def test_stop_is_idempotent_safe_before_start_and_refuses_later_messages() -> None:
    never_started = Counter({})
    await never_started.stop()
    actor = Counter({})
    await actor.start()
    await actor.stop()
    await actor.stop()
    with pytest.raises(ActorStopped):
        actor.tell(actor.add, 1)
    with pytest.raises(ActorStopped):
        await actor.ask(actor.add, 1)


async def test_timers_deliver_in_batches_at_their_time() -> None:
    timers = Timers()
    receiver = Counter({})
    await timers.start()
    await receiver.start()
    got: list[list[int]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    now = timers.clock()
    for item in (3, 1, 2):
        timers.schedule(now + 0.05 * item, receiver, got.append, item)
    timers.schedule(now + 0.05, receiver, got.append, 10)
    while sum(len(batch) for batch in got) < 4:
        await asyncio.sleep(0.01)
        assert loop.time() - start < 2
    assert got[0] == [1, 10], "items due together arrive in one message"
    assert [item for batch in got for item in batch] == [1, 10, 2, 3]
    await timers.stop()
    await receiver.stop()


def test_ids_are_uuid7_and_strictly_increasing() -> None:
    import time
    import uuid

    from taskyard.ids import new_id

    ids = [new_id() for _ in range(10_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids[:100])
    millis = ids[-1].int >> 80
    assert abs(millis - time.time() * 1000) < 5000


async def test_every_caller_of_start_waits_for_on_start() -> None:
    class Slow(Counter):
        async def on_start(self) -> None:
            await asyncio.sleep(0.05)
            await super().on_start()

    actor = Slow({"value": 41})
    first = asyncio.create_task(actor.start())
    await asyncio.sleep(0)
    await actor.start()  # the second caller must not return before the state is built
    assert actor.value == 41
    await first
    await actor.stop()


async def test_side_tasks_are_held_until_done_and_cancelled_when_the_actor_stops() -> None:
    actor = Counter({})
    await actor.start()
    finished, blocked = asyncio.Event(), asyncio.Event()

    async def quick() -> None:
        finished.set()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            blocked.set()
            raise

    actor.side_tasks.spawn(quick(), name="quick")
    hanging = actor.side_tasks.spawn(forever(), name="forever")
    await asyncio.wait_for(finished.wait(), 1)
    await asyncio.sleep(0)
    assert len(actor.side_tasks) == 1  # a finished one is let go
    await actor.side_tasks.wait(timeout=0.05)  # waiting gives up, cancels nothing
    assert not hanging.done()
    await actor.stop()
    assert blocked.is_set()
    assert hanging.cancelled()
    assert len(actor.side_tasks) == 0
