"""The write-behind buffer: state changes are collected and flushed in one round trip per batch.

A synchronous service shared by the actors, like the timers: producers hand rows over with a
call that never waits (nor awaits), so no producer interleaves with another, and the buffer's
state is changed only by those calls and by its own flushes reporting back, each of which runs
to completion on the event loop. (It was an actor: two trips through its mailbox per trigger
cost more than the trigger's own logic.) Producers carry on; a flush starts as soon as the
previous one has committed (optionally lingering a moment to gather more), so batches grow with
load and Postgres sees far fewer transactions than tasks. `barrier()` and the futures of
`insert_runs()` resolve only after the batch holding those rows has committed: that is when a
trigger is acknowledged to its caller and a result to its worker.

Writes go through two lanes, each with at most one flush in flight, which commit concurrently on
connections of their own:
- **ordered**: everything the actors decide (run states, events, logs, workflow steps, durable
  entries, rate-limit usage). Its batches commit in the order they were handed over, which the
  actors rely on (a workflow run's end is written after the step rows decided with it, in the
  same or a later batch); `barrier()` waits for this lane.
- **triggers**: new runs that applications trigger (`insert_triggered`). Such a run depends on no
  earlier write, and nothing is written about it before it has committed (it is queued only
  then), so its batch can commit before or after any other: a trigger never waits behind a flush
  of results, and results never wait behind a burst of triggers.

Rows nobody waits for (a run's assignment and start, log lines, rate-limit usage) wait up to
`write_delay` for a batch that someone waits for (a barrier, an insert) and go with it: at low
load a run then costs one write of its states, not one per transition. States written with
`may_wait` wait that long even while other batches go: a newer state of the same run replaces
them meanwhile, so under load a run that ends within the delay is updated once (its assignment
is never written), not once per transition. What such rows record is recovered after a crash
like any unflushed transition (see docs/architecture.md); `flush()` writes them at once.

When Postgres goes away a batch is retried with back-off until it commits; producers wait once
the buffer holds `max_pending` rows (backpressure) instead of growing memory. A batch of the
ordered lane records its id in the lane's row of `persister_lanes`, so one whose commit
succeeded but whose answer was lost is not applied twice on retry; a batch of the triggers lane
(new runs alone) needs no record: written again, it finds its own runs. How a batch gets
committed through such failures is store/committer.py's.

One module over 400 lines, on purpose: what remains is the buffer alone, its lanes, held
states, barriers and backpressure, state that nearly every method here reads and changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import asyncpg

from taskyard.domain.meters import BATCH_BUCKETS, FLUSH_BUCKETS, Histogram
from taskyard.domain.rate_limits import Usage
from taskyard.errors import TenantMoved
from taskyard.store.batch import Inserted, WriteBatch
from taskyard.store.committer import Committer
from taskyard.store.rows import (
    DURABLE_ENTRY,
    NEW_RUN,
    PUSHED_EVENT,
    RATE_USAGE,
    RUN_STATE,
    Row,
    rate_usage_row,
)

log = logging.getLogger(__name__)

# (tenant, new runs, their future): the tenant, so a fence refusing it fails its waiters alone
InsertWaiter = tuple[uuid.UUID, list[uuid.UUID], asyncio.Future[list[Inserted]]]
Barrier = tuple[uuid.UUID | None, asyncio.Future[None]]  # (tenant waiting, if one), future
_EAGER_ROWS = 1000  # rows nobody waits for go at once when this many have gathered


@dataclass(eq=False)
class _Lane:
    """One stream of batches: what is gathering, and the flush in flight (at most one)."""

    name: str
    committer: Committer  # writes its batches, on a connection of its own
    batch_rows: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    flush_seconds: Histogram = field(default_factory=lambda: Histogram(FLUSH_BUCKETS))
    batch: WriteBatch = field(default_factory=WriteBatch.empty)
    barriers: list[Barrier] = field(default_factory=list)
    waiters: list[InsertWaiter] = field(default_factory=list)
    flushing: asyncio.Task[None] | None = None
    delayed: asyncio.TimerHandle | None = None  # the write_delay of rows nobody waits for
    due: bool = False  # they have waited long enough

    @property
    def busy(self) -> bool:
        return self.flushing is not None or bool(len(self.batch)) or bool(self.barriers)

    def take(self) -> tuple[WriteBatch, list[Barrier], list[InsertWaiter]]:
        taken = self.batch, self.barriers, self.waiters
        self.batch, self.barriers, self.waiters = WriteBatch.empty(), [], []
        return taken


@dataclass(frozen=True, slots=True)
class LaneSample:
    batch_rows: Histogram
    flush_seconds: Histogram
    errors: dict[str, int]  # by kind: connection (lost, retried), refused (by Postgres)
    reconnects: int


@dataclass(frozen=True, slots=True)
class PersisterSample:
    flushes: int
    rows_written: int
    pending: int  # rows handed over and not yet committed
    lanes: dict[str, LaneSample]


class Persister:
    """`start()` before use; `stop()` writes what was handed over (idempotent, safe before
    `start()`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        node_id: uuid.UUID,
        *,
        linger: float = 0.0,
        write_delay: float = 0.02,
        max_pending: int = 200_000,
        stop_timeout: float = 30.0,
    ) -> None:
        self.linger = linger
        self.write_delay = write_delay
        self.max_pending = max_pending
        self.stop_timeout = stop_timeout
        self.flushes = 0
        self.rows_written = 0
        self._ordered = _Lane("ordered", Committer(pool, node_id, "ordered", marked=True))
        self._triggers = _Lane("triggers", Committer(pool, node_id, "triggers", marked=False))
        # Told (by the cluster) of tenants whose rows the fence refused: their leases moved.
        self.leases_moved: Callable[[set[uuid.UUID]], None] = lambda tenants: None
        self._held: dict[uuid.UUID, Row] = {}  # states that may wait, by run
        self._release: asyncio.TimerHandle | None = None  # when they stop waiting
        self._pending = 0  # rows buffered or being written, both lanes
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._started = False
        self._stopped = False

    async def start(self) -> None:
        self._started = True

    def fence(self, epochs: Mapping[uuid.UUID, int]) -> None:
        """Fence every batch from now on by the leases this node holds (tenant -> epoch, kept
        by the cluster); until then batches are written unfenced (tests of the buffer)."""
        for lane in (self._ordered, self._triggers):
            lane.committer.epochs = epochs

    def _check(self) -> None:
        if self._stopped:
            raise PersisterStopped("the persister is stopped; nothing more can be written")

    # -- what producers call (none of it waits) --------------------------------------------------

    def insert_runs(self, rows: list[Row]) -> asyncio.Future[list[Inserted]]:
        """Insert new runs in order with the actors' other writes (workflow steps); the future
        resolves after commit with one `Inserted` per row."""
        self._check()
        future: asyncio.Future[list[Inserted]] = asyncio.get_running_loop().create_future()
        self._add_runs(self._ordered, rows, future)
        return future

    def insert_triggered(
        self, rows: list[Row], *, from_outbox: bool = False
    ) -> asyncio.Future[list[Inserted]]:
        """Insert runs an application triggered, on the triggers lane (see the module's
        docstring for why they may commit out of order); resolves like `insert_runs`.
        `from_outbox`: the runs are rows of the engine's own outbox, deleted as they commit."""
        self._check()
        future: asyncio.Future[list[Inserted]] = asyncio.get_running_loop().create_future()
        if from_outbox:
            self._triggers.batch.from_outbox.update(row[NEW_RUN.run_id] for row in rows)
        self._add_runs(self._triggers, rows, future)
        return future

    def write(
        self, states: list[Row], events: list[Row], logs: list[Row], *, may_wait: bool = False
    ) -> None:
        """Run states (latest wins), events and log lines, in one message. `may_wait`: nobody
        waits for these states, they may be held for `write_delay` (see above)."""
        self._check()
        self._add_many(states, events, logs, may_wait)

    def pushed_events(self, rows: list[Row], *, from_outbox: bool = False) -> None:
        """Events pushed by applications (see WriteBatch.pushed_events); `from_outbox` as for
        `insert_triggered`."""
        self._check()
        if from_outbox:
            self._ordered.batch.from_outbox.update(row[PUSHED_EVENT.event_id] for row in rows)
        self._add_pushed_events(rows)

    def definitions(self, rows: dict[tuple[uuid.UUID, str], str]) -> None:
        self._check()
        self._add_definitions(rows)

    def durable(self, rows: list[Row]) -> None:
        """Durable log entries (see WriteBatch.durable; the latest of an entry wins)."""
        self._check()
        self._add_durable(rows)

    def rate_usage(self, tenant_id: uuid.UUID, usages: list[Usage]) -> None:
        """Rate-limit buckets' usage (the latest of each bucket wins)."""
        self._check()
        self._add_rate_usage(
            [
                rate_usage_row(
                    tenant_id=tenant_id,
                    key=usage.key,
                    lim=usage.limit,
                    duration=usage.duration.value,
                    configured=usage.configured,
                    usage=usage.slots,
                )
                for usage in usages
            ]
        )

    def barrier(self, tenant_id: uuid.UUID | None = None) -> asyncio.Future[None]:
        """Resolves once everything handed over before this call on the ordered lane has
        committed (triggered runs are awaited through their own futures). The barrier of a
        tenant fails with TenantMoved if that tenant's rows were refused by the fence."""
        self._check()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._add_barrier(future, tenant_id)
        return future

    async def flush(self) -> None:
        """Write everything handed over before, held states included, and wait for it."""
        self._check()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._add_flush(future)
        await future

    async def capacity(self) -> None:
        """Wait while the buffer is full (backpressure for producers that can wait)."""
        await self._capacity.wait()

    # -- the buffer --------------------------------------------------------------------------------

    def _add_runs(
        self, lane: _Lane, rows: list[Row], future: asyncio.Future[list[Inserted]]
    ) -> None:
        lane.batch.new_runs.extend(rows)
        run_id = NEW_RUN.run_id
        lane.waiters.append((rows[0][0], [row[run_id] for row in rows], future))
        self._grew(lane, len(rows))

    def _add_many(
        self, states: list[Row], events: list[Row], logs: list[Row], may_wait: bool
    ) -> None:
        batch = self._ordered.batch
        run_states, held = batch.run_states, self._held
        grew = len(events) + len(logs)
        run_column = RUN_STATE.run_id
        for row in states:
            run_id = row[run_column]
            # A run's state is in the gathering batch or held, never in both: the newest wins.
            if may_wait and run_id not in run_states:
                if run_id not in held:
                    grew += 1
                held[run_id] = row
            else:
                if held.pop(run_id, None) is None and run_id not in run_states:
                    grew += 1
                run_states[run_id] = row
        batch.events.extend(events)
        batch.logs.extend(logs)
        if held and self._release is None:
            self._release = asyncio.get_running_loop().call_later(
                self.write_delay, self._release_held
            )
        self._grew(self._ordered, grew)

    def _release_held(self) -> None:
        """Held states go with the next batch of the ordered lane."""
        if self._release is not None:
            self._release.cancel()
            self._release = None
        if self._held:
            self._ordered.batch.run_states.update(self._held)
            self._held = {}
            self._ordered.due = True
            self._kick(self._ordered)

    def _add_flush(self, future: asyncio.Future[None]) -> None:
        self._release_held()
        self._add_barrier(future, None)

    def _add_pushed_events(self, rows: list[Row]) -> None:
        self._ordered.batch.pushed_events.extend(rows)
        self._grew(self._ordered, len(rows))

    def _add_definitions(self, rows: dict[tuple[uuid.UUID, str], str]) -> None:
        self._ordered.batch.definitions.update(rows)
        self._grew(self._ordered, len(rows))

    def _add_durable(self, rows: list[Row]) -> None:
        entries = self._ordered.batch.durable
        grew = 0
        for row in rows:
            key = (
                row[DURABLE_ENTRY.tenant_id],
                row[DURABLE_ENTRY.run_id],
                row[DURABLE_ENTRY.position],
            )
            if key not in entries:
                grew += 1
            entries[key] = row
        self._grew(self._ordered, grew)

    def _add_rate_usage(self, rows: list[Row]) -> None:
        usage = self._ordered.batch.rate_usage
        grew = 0
        for row in rows:
            key = (row[RATE_USAGE.tenant_id], row[RATE_USAGE.key])
            if key not in usage:
                grew += 1
            usage[key] = row
        self._grew(self._ordered, grew)

    def _add_barrier(self, future: asyncio.Future[None], tenant_id: uuid.UUID | None) -> None:
        lane = self._ordered
        if not lane.busy:
            future.set_result(None)  # nothing is pending: everything before is committed
            return
        lane.barriers.append((tenant_id, future))
        self._kick(lane)

    def _grew(self, lane: _Lane, rows: int) -> None:
        self._pending += rows
        if self._pending >= self.max_pending:
            self._capacity.clear()
        self._kick(lane)

    def _kick(self, lane: _Lane, *, now: bool = False) -> None:
        if lane.flushing is not None or not (len(lane.batch) or lane.barriers):
            return
        if not (
            now
            or lane.due
            or lane.barriers
            or lane.waiters
            or self.write_delay <= 0
            or len(lane.batch) >= _EAGER_ROWS
        ):
            if lane.delayed is None:
                lane.delayed = asyncio.get_running_loop().call_later(
                    self.write_delay, self._delay_over, lane
                )
            return
        if lane.delayed is not None:
            lane.delayed.cancel()
        lane.delayed, lane.due = None, False
        lane.flushing = asyncio.create_task(
            self._flush(lane, *lane.take()), name=f"persister-flush:{lane.name}"
        )

    def _delay_over(self, lane: _Lane) -> None:
        lane.delayed, lane.due = None, True
        self._kick(lane)

    async def _flush(
        self,
        lane: _Lane,
        batch: WriteBatch,
        barriers: list[Barrier],
        waiters: list[InsertWaiter],
    ) -> None:
        """A task of its own (producers never wait for I/O); reports back with `_flushed`."""
        if self.linger:
            await asyncio.sleep(self.linger)
            self._merge_late_arrivals(lane, batch, barriers, waiters)
            return
        await self._commit(lane, batch, barriers, waiters)

    def _merge_late_arrivals(
        self,
        lane: _Lane,
        batch: WriteBatch,
        barriers: list[Barrier],
        waiters: list[InsertWaiter],
    ) -> None:
        """After lingering, fold in what arrived meanwhile, then commit."""
        later, later_barriers, later_waiters = lane.take()
        batch.merge(later)
        barriers.extend(later_barriers)
        waiters.extend(later_waiters)
        lane.flushing = asyncio.create_task(
            self._commit(lane, batch, barriers, waiters), name=f"persister-commit:{lane.name}"
        )

    async def _commit(
        self,
        lane: _Lane,
        batch: WriteBatch,
        barriers: list[Barrier],
        waiters: list[InsertWaiter],
    ) -> None:
        rows = len(batch)

        def refuse_new_runs(error: Exception) -> None:
            self._refused(waiters, error)
            waiters.clear()

        def moved(tenants: set[uuid.UUID]) -> None:
            """Their rows were left out: what waits for them learns that the tenant moved."""
            error = TenantMoved(
                "this engine node no longer owns the tenant (its lease moved to another "
                "node); nothing was written: try again"
            )
            self._refused([w for w in waiters if w[0] in tenants], error)
            waiters[:] = [w for w in waiters if w[0] not in tenants]
            for tenant_id, future in barriers:
                if tenant_id in tenants and not future.done():
                    future.set_exception(error)
            self.leases_moved(tenants)

        began = time.perf_counter()
        inserted, error = await lane.committer.commit(batch, refuse_new_runs, moved)
        lane.flush_seconds.observe(time.perf_counter() - began)
        lane.batch_rows.observe(rows)
        self._flushed(lane, rows, barriers, waiters, inserted, error)

    def _refused(self, waiters: list[InsertWaiter], error: Exception) -> None:
        for _, _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def _flushed(
        self,
        lane: _Lane,
        rows: int,
        barriers: list[Barrier],
        waiters: list[InsertWaiter],
        inserted: dict[uuid.UUID, Inserted] | None,
        error: Exception | None,
    ) -> None:
        lane.flushing = None
        self.flushes += 1
        self._pending -= rows
        if self._pending < self.max_pending:
            self._capacity.set()
        if error is None:
            self.rows_written += rows
        for _, future in barriers:
            if not future.done():
                future.set_exception(error) if error else future.set_result(None)
        for _, run_ids, waiter in waiters:
            if waiter.done():
                continue
            if error is not None or inserted is None:
                waiter.set_exception(error or RuntimeError("batch failed"))
            else:
                waiter.set_result([inserted[run_id] for run_id in run_ids])
        self._kick(lane)

    def sample(self) -> PersisterSample:
        """Copies of its meters, for /metrics."""
        return PersisterSample(
            flushes=self.flushes,
            rows_written=self.rows_written,
            pending=self._pending,
            lanes={
                lane.name: LaneSample(
                    batch_rows=lane.batch_rows.copy(),
                    flush_seconds=lane.flush_seconds.copy(),
                    errors=dict(lane.committer.errors),
                    reconnects=lane.committer.reconnects,
                )
                for lane in (self._ordered, self._triggers)
            },
        )

    async def stop(self) -> None:
        """The final flush of both lanes, shielded from cancellation, so what was handed over is
        written. If Postgres stays away past `stop_timeout`, the rest is given up (and logged):
        none of it was acknowledged, since acknowledgements wait for commits."""
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout
        lanes = (self._ordered, self._triggers)
        self._release_held()
        try:
            while any(lane.busy for lane in lanes):
                for lane in lanes:
                    if lane.flushing is None:
                        self._kick(lane, now=True)
                flushing = [lane.flushing for lane in lanes if lane.flushing is not None]
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.error(
                        "giving up %d unwritten rows at shutdown: Postgres is unreachable",
                        self._pending,
                    )
                    for task in flushing:
                        task.cancel()
                    await asyncio.gather(*flushing, return_exceptions=True)
                    return
                await asyncio.wait([asyncio.shield(task) for task in flushing], timeout=remaining)
        finally:
            for lane in lanes:
                if lane.delayed is not None:
                    lane.delayed.cancel()
                await lane.committer.close()


class PersisterStopped(RuntimeError):
    """Writes handed over after `stop()`."""
