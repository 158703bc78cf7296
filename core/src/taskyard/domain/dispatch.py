"""The ready queue of one task queue, and the choice of what each worker starts next.

Order: priority first (4 before 1); within a priority, the task's order (FIFO by default, LIFO when
asked); for a task with a GROUP_ROUND_ROBIN concurrency level, keys take turns: each key's n-th
waiting run is in round n (counted from when the key last had nothing waiting), and a lower round
goes first, so every backlogged key gets one start per round. Between tasks, the heads of their
queues compare by priority, then arrival.

Nothing is started while the queue is paused, nor a run of a paused task or workflow, nor on a
paused worker (`pause`): they wait, their waiting reason saying so.

A run is only started when it is eligible: the worker runs its task, has its required labels
(and is its HARD sticky worker, if it has one) and as many free slots as the task's slot_cost,
none of its concurrency keys is full, and its rate limits have its units. A run that finds a
key full waits aside with that key ("parked") and goes back to the queue when a run of the key
ends; one that finds a rate limit empty waits aside with that bucket until the window frees the
units. So a blocked run costs nothing per decision, and a higher-priority run that is eligible
is never passed over.

Pure and synchronous, with the clock passed in: the QueueActor owns a Dispatcher (and the runs it
points to) and calls it from its handlers; the property tests drive it directly.

Over 400 lines on purpose: the heaps, the parked runs and the invariants above are one data
structure; its pieces only make sense together and are property-tested together.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable, ItemsView, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from taskyard.domain.labels import describe_required, score
from taskyard.domain.pauses import Pauses
from taskyard_sdk.models import (
    Batching,
    Concurrency,
    ConcurrencyStrategy,
    LabelValue,
    QueueOrder,
    RateLimit,
    RunStatus,
    Sticky,
    TaskOptions,
)

if TYPE_CHECKING:
    from taskyard.domain.rate_limits import RateLimiter
    from taskyard.domain.runs import Run


class Connection(Protocol):
    """A worker's connection as the queue actor holds it (the actors' WorkerSession): dispatch
    only asks whether there is one; the actor sends through it."""

    worker_id: uuid.UUID

    def send(self, message: Any) -> None: ...

    def send_many(self, messages: Iterable[Any]) -> None: ...


Entry = tuple[int, int, int, uuid.UUID]  # (-priority, round, +seq FIFO / -seq LIFO, run id)
# (task, options, HARD sticky worker, batch key): a batch task's runs of one key share a heap
HeapId = tuple[str, TaskOptions, uuid.UUID | None, str | None]
GroupId = tuple[str, Concurrency, str]  # (task, level, key)


class Held:
    """The attempts a worker holds (run id -> attempt) and the slots they take: a run whose
    task has `slot_cost` n takes n; the runs of one batch (`batch`: its first run's id) take
    their cost once, until the last of them is let go. Only `hold` adds one, so the count
    cannot drift."""

    __slots__ = ("_attempts", "_batch_of", "_batches", "_costs", "used")

    def __init__(self) -> None:
        self._attempts: dict[uuid.UUID, int] = {}
        self._costs: dict[uuid.UUID, int] = {}  # the attempts taking more than one slot
        self._batch_of: dict[uuid.UUID, uuid.UUID] = {}  # a batch's runs: their batch
        self._batches: dict[uuid.UUID, list[int]] = {}  # batch -> [its runs held, its cost]
        self.used = 0  # slots taken

    def hold(
        self, run_id: uuid.UUID, attempt: int, cost: int = 1, batch: uuid.UUID | None = None
    ) -> None:
        self.pop(run_id)  # held again (its next attempt): counted once
        self._attempts[run_id] = attempt
        if batch is not None:
            self._batch_of[run_id] = batch
            held = self._batches.setdefault(batch, [0, cost])
            held[0] += 1
            if held[0] == 1:
                self.used += cost
            return
        if cost != 1:
            self._costs[run_id] = cost
        self.used += cost

    def pop(self, run_id: uuid.UUID, default: int | None = None) -> int | None:
        attempt = self._attempts.pop(run_id, None)
        if attempt is None:
            return default
        batch = self._batch_of.pop(run_id, None)
        if batch is None:
            self.used -= self._costs.pop(run_id, 1)
            return attempt
        held = self._batches[batch]
        held[0] -= 1
        if held[0] == 0:
            del self._batches[batch]
            self.used -= held[1]
        return attempt

    def __delitem__(self, run_id: uuid.UUID) -> None:
        if self.pop(run_id) is None:
            raise KeyError(run_id)

    def get(self, run_id: uuid.UUID) -> int | None:
        return self._attempts.get(run_id)

    def __getitem__(self, run_id: uuid.UUID) -> int:
        return self._attempts[run_id]

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._attempts

    def __len__(self) -> int:
        return len(self._attempts)

    def __iter__(self) -> Iterator[uuid.UUID]:
        return iter(self._attempts)

    def items(self) -> ItemsView[uuid.UUID, int]:
        return self._attempts.items()


@dataclass(eq=False)
class WorkerSlots:
    """What a queue knows of one worker: its capacity, labels and the attempts it holds.

    `running` includes attempts the engine has given up on (timed out, cancelled) until the worker
    reports them ended: their slot is only free once the worker's code has actually stopped.
    """

    worker_id: uuid.UUID
    session: Connection | None
    tasks: frozenset[str] = frozenset()
    slots: int = 0
    labels: dict[str, LabelValue] = field(default_factory=dict)
    durable_tasks: frozenset[str] = frozenset()  # its durable ones: assignments carry the log
    running: Held = field(default_factory=Held)
    draining: bool = False
    paused: bool = False
    away_since: float | None = None  # disconnected (or not yet back after a restart) since
    heaps: list[list[Entry]] = field(default_factory=list)  # the ready heaps it may take from
    heap_costs: list[int] = field(default_factory=list)  # the slot cost of each one's runs
    widest: int = 1  # the largest of those
    heaps_version: int = -1

    @property
    def free(self) -> int:
        return self.slots - self.running.used

    @property
    def assignable(self) -> bool:
        return self.session is not None and not self.draining and not self.paused and self.free > 0

    def takes(self, task: str, options: TaskOptions) -> bool:
        return task in self.tasks and score(self.labels, options.desired_worker_labels) is not None


@dataclass(eq=False)
class KeyGroup:
    """The runs of one concurrency key of one task's level."""

    level: Concurrency
    holders: set[uuid.UUID] = field(default_factory=set)  # assigned or running
    waiting: dict[uuid.UUID, None] = field(default_factory=dict)  # ready, in arrival order
    parked: list[Entry] = field(default_factory=list)  # waiting runs that found it full
    next_round: int = 0

    @property
    def full(self) -> bool:
        return len(self.holders) >= self.level.max_runs

    @property
    def idle(self) -> bool:
        return not self.holders and not self.waiting


@dataclass(frozen=True, slots=True)
class Refusal:
    """A run the dispatcher will not queue: the QueueActor ends it with this status and error."""

    run: Run
    status: RunStatus
    error_type: str
    message: str


class Dispatcher:
    def __init__(
        self,
        runs: dict[uuid.UUID, Run],
        workers: dict[uuid.UUID, WorkerSlots],
        limiter: RateLimiter | None,
        count: Callable[[str, str], None] | None = None,
    ) -> None:
        self.runs = runs
        self.workers = workers
        self.limiter = limiter
        self.count = count or (lambda event, task: None)  # (event, task): the owner's meters
        self.heaps: dict[HeapId, list[Entry]] = {}
        self.heaps_version = 0
        self.groups: dict[GroupId, KeyGroup] = {}
        self.rounds: dict[tuple[str, Concurrency], int] = {}  # current round of an RR level
        self.rate_parked: dict[str, list[Entry]] = {}  # by the bucket that had too few units
        self.wakeups: list[tuple[float, str]] = []  # (when, bucket): for the owner's timers
        self.refused: list[Refusal] = []  # found out while picking: a limit that went away
        self.pauses = Pauses()
        self.queue_paused = False
        self.batching: dict[int, Batching] = {}  # a batch task's heap (by id) -> its gathering
        self.batch_wakeups: list[float] = []  # when a batch not due yet will be: owner's timers
        self._seq = 0

    # -- arrivals and departures -----------------------------------------------------------------

    def add(self, run: Run, *, arriving: bool) -> list[Refusal]:
        """Queue a run (new when `arriving`, else a retry or a replay). Returns the runs to end:
        this one, if it can never start or its concurrency strategy cancels it, and others its
        strategy cancels."""
        refusals: list[Refusal] = []
        if run.flow is not None and run.flow.error is not None:
            return [Refusal(run, RunStatus.FAILED, "FlowError", run.flow.error)]
        if run.options.rate_limits and (why := self._rate_refusal(run)) is not None:
            return [Refusal(run, RunStatus.FAILED, "RateLimitExceeded", why)]
        round_number = 0
        round_robin = False
        groups = self._groups_of(run)
        for group, key in groups:
            level = group.level
            if arriving and level.strategy is not ConcurrencyStrategy.GROUP_ROUND_ROBIN:
                refusal = self._strategy(run, group, key, refusals)
                if refusal is not None:
                    return [*refusals, refusal]
            if not round_robin and level.strategy is ConcurrencyStrategy.GROUP_ROUND_ROBIN:
                round_robin = True
                current = self.rounds.get((run.task, level), 0)
                round_number = max(current, group.next_round)
                group.next_round = round_number + 1
        for group, _ in groups:
            group.waiting[run.run_id] = None
        self._seq += 1
        run.seq = self._seq
        run.ready = True
        order = -run.seq if run.options.order is QueueOrder.LIFO else run.seq
        heapq.heappush(self._heap(run), (-run.priority, round_number, order, run.run_id))
        return refusals

    def _strategy(
        self, run: Run, group: KeyGroup, key: str, refusals: list[Refusal]
    ) -> Refusal | None:
        level = group.level
        where = f"concurrency key {key!r} ({level.expression}, max_runs {level.max_runs})"
        occupied = [*group.holders, *group.waiting]
        if level.strategy is ConcurrencyStrategy.CANCEL_NEWEST:
            if len(occupied) >= level.max_runs:
                return Refusal(
                    run,
                    RunStatus.CANCELLED,
                    "ConcurrencyLimit",
                    f"{where} already has {len(occupied)} runs (cancel_newest)",
                )
            return None
        if level.strategy is ConcurrencyStrategy.CANCEL_IN_PROGRESS:
            excess = len(occupied) - level.max_runs + 1
            victims = sorted(occupied)[: max(0, excess)]  # UUIDv7: the oldest first
        else:  # CANCEL_QUEUED_EXCEPT_NEWEST
            victims = list(group.waiting)
        named = {refusal.run.run_id for refusal in refusals}
        for run_id in victims:
            victim = self.runs.get(run_id)
            if victim is not None and run_id not in named:
                refusals.append(
                    Refusal(
                        victim,
                        RunStatus.CANCELLED,
                        "ConcurrencyLimit",
                        f"replaced by the newer run {run.run_id} of {where} "
                        f"({level.strategy.value})",
                    )
                )
        return None

    def hold(self, run: Run) -> None:
        """A run that is assigned or running already (found so after a restart, or reattached by
        its worker): it holds its keys' slots, even beyond max_runs."""
        for group, _ in self._groups_of(run):
            group.waiting.pop(run.run_id, None)
            group.holders.add(run.run_id)

    def reattach(self, run: Run, now: float) -> None:
        """A run its worker reclaimed after a restart that found it queued: its assignment was
        not written before the crash, and perhaps neither were the rate-limit units it took. It
        holds its keys again and takes its units again (counting them twice at worst leaves a
        little capacity idle for one window; not counting them could let a limit be exceeded)."""
        self.forget(run)
        self.hold(run)
        if run.options.rate_limits and self._rate_refusal(run) is None:
            assert self.limiter is not None
            self.limiter.take(self._wants(run), now)

    def forget(self, run: Run) -> None:
        """The run holds no slot and waits for none: it ended, or its attempt did (a retry is
        added again), or it left the queue. Safe to call more than once, on every path."""
        run.ready = False
        if run.flow is None or not run.options.concurrency:
            return
        for level, key in zip(run.options.concurrency, run.flow.keys, strict=False):
            group_id = (run.task, level, key)
            group = self.groups.get(group_id)
            if group is None:
                continue
            group.holders.discard(run.run_id)
            group.waiting.pop(run.run_id, None)
            # A slot it held is free; and a run that leaves while waiting may be the one a
            # release brought back for a free slot: either way the slot goes to the next one.
            if not group.full:
                self._unpark(group.parked)
            if group.idle and not group.parked:
                del self.groups[group_id]

    def rate_freed(self, bucket: str) -> None:
        """A rate-limit timer: the runs waiting for this bucket go back to the queue (those that
        still find it empty wait aside again)."""
        parked = self.rate_parked.pop(bucket, None)
        while parked:
            self._unpark(parked)

    # -- choosing --------------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether anything may wait in the queue (entries of runs that left since count too,
        until a pick drops them)."""
        return any(self.heaps.values())

    def pick(self, worker: WorkerSlots, now: float) -> Run | None:
        """The best run this worker may start now, with its keys' slots and rate-limit units
        taken; None when there is none."""
        heaps = self._heaps_for(worker)
        if worker.widest > 1 and (free := worker.free) < worker.widest:
            # Some runs need more slots than are free: not those.
            heaps = [h for h, cost in zip(heaps, worker.heap_costs, strict=True) if cost <= free]
        return self._pick(heaps, now)

    def assign(self, now: float) -> list[tuple[Run, WorkerSlots]]:
        """One decision for every worker with a free slot: a run per worker per round (which
        spreads work evenly) until no worker can start another. Each run picked is placed on the
        best worker for it (its HARD sticky one, else the best by labels), marked assigned there,
        and returned for the actor to save, time and send. Refusals and rate-limit wake-ups
        gather in `refused` and `wakeups`, as with `pick`."""
        assigned: list[tuple[Run, WorkerSlots]] = []
        if self.queue_paused:
            return assigned
        candidates = [worker for worker in self.workers.values() if worker.assignable]
        while candidates:
            next_round = []
            for worker in candidates:
                if not worker.assignable:  # filled meanwhile by runs that preferred it
                    continue
                run = self.pick(worker, now)
                if run is None:
                    continue
                target = self.best_worker(run, worker)
                batch = [run, *self._gather(run, now)] if run.options.batch else [run]
                batch_id = run.run_id if run.options.batch else None
                for member in batch:
                    member.ready = False
                    member.status = RunStatus.ASSIGNED
                    member.worker_id = target.worker_id
                    member.batch_id = batch_id
                    target.running.hold(
                        member.run_id, member.attempt, member.options.slot_cost, batch_id
                    )
                    assigned.append((member, target))
                if worker.free > 0:
                    next_round.append(worker)
            candidates = next_round
        return assigned

    def pick_any(self, now: float) -> Run | None:
        """The best run that may start now, whatever the worker: admission of workflow runs,
        which wait only for their concurrency keys."""
        return self._pick(list(self.heaps.values()), now)

    def blocking_key(self, run: Run) -> str | None:
        """Why a waiting run's concurrency keep it waiting, if they do."""
        for group, key in self._groups_of(run):
            if group.full:
                return (
                    f"concurrency key {key!r} ({group.level.expression}) has "
                    f"{len(group.holders)} of {group.level.max_runs} runs going"
                )
        return None

    def _pick(self, heaps: list[list[Entry]], now: float) -> Run | None:
        batching = self.batching
        while True:
            best: list[Entry] | None = None
            best_key: tuple[int, int] | None = None
            for heap in heaps:
                if not self._clean(heap):
                    continue
                top = heap[0]
                if (
                    batching
                    and (batch := batching.get(id(heap)))
                    and not self._due(heap, batch, now)
                ):
                    continue
                key = (top[0], abs(top[2]))
                if best_key is None or key < best_key:
                    best, best_key = heap, key
            if best is None:
                return None
            entry = heapq.heappop(best)
            run = self.runs[entry[3]]
            if self._blocked(run, entry, now):
                continue
            self._start(run, entry, now)
            return run

    def best_worker(self, run: Run, picker: WorkerSlots) -> WorkerSlots:
        """Where a picked run goes: its SOFT sticky worker when that one can take it, else the
        worker with room for it whose labels match best (the picker on a tie)."""
        flow = run.flow
        cost = run.options.slot_cost
        if run.options.sticky is Sticky.HARD and flow is not None and flow.sticky_worker:
            return picker  # only its worker's heap holds it: the picker is that worker
        if run.options.sticky is Sticky.SOFT and flow is not None and flow.sticky_worker:
            sticky = self.workers.get(flow.sticky_worker)
            if (
                sticky is not None
                and sticky.assignable
                and sticky.free >= cost
                and sticky.takes(run.task, run.options)
            ):
                return sticky
        desired = run.options.desired_worker_labels
        if not any(label.weight and not label.required for _, label in desired):
            return picker
        best, best_score = picker, score(picker.labels, desired) or 0
        for worker in self.workers.values():
            if (
                worker is picker
                or not worker.assignable
                or worker.free < cost
                or run.task not in worker.tasks
            ):
                continue
            worker_score = score(worker.labels, desired)
            if worker_score is not None and worker_score > best_score:
                best, best_score = worker, worker_score
        return best

    def _due(self, heap: list[Entry], batching: Batching, now: float) -> bool:
        """Whether a batch task's heap (its top live) makes a batch now: it holds `max_size`
        runs (entries of runs gone since count too: a batch may come out smaller), or its
        top run has waited `max_wait`. If not, the owner is told when it will."""
        if len(heap) >= batching.max_size:
            return True
        due_at = self.runs[heap[0][3]].queued_at + batching.max_wait
        if due_at <= now + 0.001:  # a timer may fire a hair early: never wake in a loop
            return True
        self.batch_wakeups.append(due_at)
        return False

    def _gather(self, leader: Run, now: float) -> list[Run]:
        """The runs that join `leader`'s batch: the next ones of its heap, up to max_size in
        all. A heap left empty is dropped (batch keys may be many)."""
        assert leader.options.batch is not None
        heap = self._heap(leader)
        joined: list[Run] = []
        while len(joined) < leader.options.batch.max_size - 1 and self._clean(heap):
            entry = heapq.heappop(heap)
            run = self.runs[entry[3]]
            self._start(run, entry, now)
            joined.append(run)
        if not heap:
            self._drop_heap(leader)
        return joined

    def _blocked(self, run: Run, entry: Entry, now: float) -> bool:
        """Park the run if a key is full or a rate limit lacks its units."""
        groups = self._groups_of(run)
        for group, _ in groups:
            if group.full:
                heapq.heappush(group.parked, entry)
                self._pass_on(groups)
                self.count("concurrency_wait", run.task)
                return True
        if run.options.rate_limits:
            why = self._rate_refusal(run)
            if why is not None:  # its limit was removed or lowered meanwhile
                self.refused.append(Refusal(run, RunStatus.FAILED, "RateLimitExceeded", why))
                self._pass_on(groups)
                return True
            assert self.limiter is not None
            for bucket, units, spec in self._wants(run):
                at = self.limiter.free_at([(bucket, units, spec)], now)
                if at > now:
                    heapq.heappush(self.rate_parked.setdefault(bucket, []), entry)
                    self.wakeups.append((at, bucket))
                    self._pass_on(groups)
                    self.count("rate_limit_wait", run.task)
                    return True
        return False

    def _pass_on(self, groups: list[tuple[KeyGroup, str]]) -> None:
        """A run that cannot start leaves its keys' free slots to the runs parked there (it may
        be the one a release brought back for that slot)."""
        for group, _ in groups:
            if group.parked and not group.full:
                self._unpark(group.parked)

    def _start(self, run: Run, entry: Entry, now: float) -> None:
        run.ready = False
        round_counted = False
        for group, _ in self._groups_of(run):
            group.waiting.pop(run.run_id, None)
            group.holders.add(run.run_id)
            if not round_counted and group.level.strategy is ConcurrencyStrategy.GROUP_ROUND_ROBIN:
                round_counted = True
                level = (run.task, group.level)
                self.rounds[level] = max(self.rounds.get(level, 0), entry[1])
        if run.options.rate_limits:
            assert self.limiter is not None
            self.limiter.take(self._wants(run), now)

    # -- why a run waits -------------------------------------------------------------------------

    def waiting_reason(self, run: Run, now: float) -> str | None:
        if not run.ready:
            return None
        if self.queue_paused:
            return f"paused: queue {run.queue!r} is paused"
        if (paused := self.pauses.of_task(run.task)) is not None:
            return paused
        connected = [w for w in self.workers.values() if w.session is not None]
        with_task = [w for w in connected if run.task in w.tasks]
        if not with_task:
            return f"no connected worker has registered task {run.task!r} on queue {run.queue!r}"
        if all(w.paused for w in with_task):
            return f"paused: every connected worker with task {run.task!r} is paused"
        if not any(w.takes(run.task, run.options) for w in with_task):
            return (
                f"no connected worker has the labels task {run.task!r} requires: "
                f"{describe_required(run.options.desired_worker_labels)}"
            )
        sticky = run.flow.sticky_worker if run.flow is not None else None
        if (
            run.options.sticky is Sticky.HARD
            and sticky is not None
            and all(w.worker_id != sticky for w in with_task)
        ):
            return f"waiting for worker {sticky} (sticky: hard), which is not connected"
        cost = run.options.slot_cost
        if cost > 1 and all(w.slots < cost for w in with_task):
            most = max(w.slots for w in with_task)
            return (
                f"task {run.task!r} takes {cost} slots (slot_cost) and no connected worker has "
                f"that many (the most is {most})"
            )
        if (blocked := self.blocking_key(run)) is not None:
            return blocked
        batching = run.options.batch
        if batching is not None and run.queued_at + batching.max_wait > now:
            key = run.flow.batch_key if run.flow is not None else None
            return (
                f"gathering a batch{f' of key {key!r}' if key is not None else ''}: it goes "
                f"when {batching.max_size} runs wait or in "
                f"{run.queued_at + batching.max_wait - now:.1f}s"
            )
        if run.options.rate_limits and self.limiter is not None:
            for bucket, units, spec in self._wants(run):
                at = self.limiter.free_at([(bucket, units, spec)], now)
                if at > now:
                    return (
                        f"rate limit {bucket!r} has fewer than {units} units left for "
                        f"{at - now:.1f}s"
                    )
        return None

    def busiest_keys(self, count: int) -> list[tuple[GroupId, KeyGroup]]:
        """The concurrency keys with the most runs holding or waiting for them."""
        return heapq.nlargest(
            count,
            self.groups.items(),
            key=lambda item: len(item[1].holders) + len(item[1].waiting),
        )

    def stats(self) -> dict[str, int]:
        return {
            "ready_heaps": len(self.heaps),
            "concurrency_keys": len(self.groups),
            "rate_parked": sum(len(h) for h in self.rate_parked.values()),
        }

    # -- internals -------------------------------------------------------------------------------

    def _heap_id(self, run: Run) -> HeapId:
        flow = run.flow
        sticky = (
            flow.sticky_worker if flow is not None and run.options.sticky is Sticky.HARD else None
        )
        return (run.task, run.options, sticky, flow.batch_key if flow is not None else None)

    def _heap(self, run: Run) -> list[Entry]:
        heap_id = self._heap_id(run)
        heap = self.heaps.get(heap_id)
        if heap is None:
            heap = self.heaps[heap_id] = []
            self.heaps_version += 1
            if run.options.batch is not None:
                self.batching[id(heap)] = run.options.batch
        return heap

    def _drop_heap(self, run: Run) -> None:
        """Forget the (empty) heap of a batch task's key."""
        heap = self.heaps.pop(self._heap_id(run), None)
        if heap is not None:
            self.batching.pop(id(heap), None)
            self.heaps_version += 1

    def _heaps_for(self, worker: WorkerSlots) -> list[list[Entry]]:
        if worker.heaps_version != self.heaps_version:
            pauses = self.pauses
            taken = [
                (heap, options.slot_cost)
                for (task, options, sticky, _), heap in self.heaps.items()
                if (sticky is None or sticky == worker.worker_id)
                and worker.takes(task, options)
                and pauses.of_task(task) is None
            ]
            worker.heaps = [heap for heap, _ in taken]
            worker.heap_costs = [cost for _, cost in taken]
            worker.widest = max(worker.heap_costs, default=1)
            worker.heaps_version = self.heaps_version
        return worker.heaps

    def worker_changed(self, worker: WorkerSlots) -> None:
        worker.heaps_version = -1
        worker.paused = worker.worker_id in self.pauses.workers

    def pause(self, pauses: Pauses, queue: str) -> None:
        """What is paused now in the tenant: of it, what concerns this queue applies from the
        next decision (what runs goes on)."""
        self.pauses = pauses
        self.queue_paused = queue in pauses.queues
        for worker in self.workers.values():
            self.worker_changed(worker)

    def _clean(self, heap: list[Entry]) -> bool:
        """Drop entries of runs that left the queue since; True if a live entry is on top."""
        runs = self.runs
        while heap:
            _, _, order, run_id = heap[0]
            run = runs.get(run_id)
            if run is not None and run.ready and run.seq == abs(order):
                return True
            heapq.heappop(heap)
        return False

    def _unpark(self, parked: list[Entry]) -> None:
        """Put the best live parked entry back in its queue."""
        while parked:
            entry = heapq.heappop(parked)
            run = self.runs.get(entry[3])
            if run is not None and run.ready and run.seq == abs(entry[2]):
                heapq.heappush(self._heap(run), entry)
                return

    def _groups_of(self, run: Run) -> list[tuple[KeyGroup, str]]:
        if run.flow is None or not run.options.concurrency:
            return []
        groups = []
        for level, key in zip(run.options.concurrency, run.flow.keys, strict=False):
            group = self.groups.get((run.task, level, key))
            if group is None:
                group = self.groups[(run.task, level, key)] = KeyGroup(level)
            groups.append((group, key))
        return groups

    def _wants(self, run: Run) -> list[tuple[str, int, RateLimit]]:
        assert run.flow is not None
        return [
            (bucket, units, spec)
            for (bucket, units), spec in zip(run.flow.units, run.options.rate_limits, strict=False)
        ]

    def _rate_refusal(self, run: Run) -> str | None:
        if self.limiter is None or run.flow is None:
            return "rate limits need the run's buckets, which were not worked out"
        for bucket, units, spec in self._wants(run):
            why = self.limiter.refusal(bucket, units, spec)
            if why is not None:
                return why
        return None
