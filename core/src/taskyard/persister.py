"""The write-behind buffer: state changes are collected and flushed in one transaction per batch.

Producers hand rows over and carry on; a flush starts as soon as the previous one has committed
(optionally lingering a moment to gather more), so batches grow with load and Postgres sees far
fewer transactions than tasks. `barrier()` and the futures of `insert_runs()` resolve only after
the batch holding those rows has committed: that is when a trigger is acknowledged to its caller
and a result to its worker.

When Postgres goes away the batch is retried with back-off until it commits; producers wait once
the buffer holds `max_pending` rows (backpressure) instead of growing memory. Each batch records
its id in `engine_nodes`, so a batch whose COMMIT succeeded but whose answer was lost is not
applied twice on retry.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import asyncpg
import orjson

from taskyard.actors import Actor
from taskyard.db import TRANSIENT_ERRORS
from taskyard.ratelimits import Usage
from taskyard.repository import Inserted, Row, WriteBatch, batch_committed, write_batch

log = logging.getLogger(__name__)



def _new_batch() -> WriteBatch:
    return WriteBatch(uuid.uuid4(), [], {}, [], [], {})


class Persister(Actor):
    def __init__(self, pool: asyncpg.Pool, node_id: uuid.UUID, *, linger: float = 0.0,
                 max_pending: int = 200_000, stop_timeout: float = 30.0) -> None:
        super().__init__("persister")
        self.pool = pool
        self.node_id = node_id
        self.linger = linger
        self.max_pending = max_pending
        self.stop_timeout = stop_timeout
        self.flushes = 0
        self.rows_written = 0
        self._batch = _new_batch()
        self._barriers: list[asyncio.Future[None]] = []
        self._insert_waiters: list[tuple[list[uuid.UUID], asyncio.Future[list[Inserted]]]] = []
        self._flushing: asyncio.Task[None] | None = None
        self._pending = 0  # rows buffered or being written
        self._capacity = asyncio.Event()
        self._capacity.set()

    # -- what producers call (each only enqueues a message) --------------------------------------

    def insert_runs(self, rows: list[Row]) -> asyncio.Future[list[Inserted]]:
        """Insert new runs; the future resolves after commit with one `Inserted` per row."""
        future: asyncio.Future[list[Inserted]] = asyncio.get_running_loop().create_future()
        self.tell(self._add_runs, rows, future)
        return future

    def write(self, states: list[Row], events: list[Row], logs: list[Row]) -> None:
        """Run states (latest wins), events and log lines, in one message."""
        self.tell(self._add_many, states, events, logs)

    def pushed_events(self, rows: list[Row]) -> None:
        """Events pushed by applications (see WriteBatch.pushed_events)."""
        self.tell(self._add_pushed_events, rows)

    def definitions(self, rows: dict[tuple[uuid.UUID, str], str]) -> None:
        self.tell(self._add_definitions, rows)

    def durable(self, rows: list[Row]) -> None:
        """Durable log entries (see WriteBatch.durable; the latest of an entry wins)."""
        self.tell(self._add_durable, rows)

    def rate_usage(self, tenant_id: uuid.UUID, usages: list[Usage]) -> None:
        """Rate-limit buckets' usage (the latest of each bucket wins)."""
        self.tell(self._add_rate_usage, [
            (tenant_id, usage.key, usage.limit, usage.duration.value, usage.configured,
             orjson.dumps(usage.slots).decode()) for usage in usages])

    def barrier(self) -> asyncio.Future[None]:
        """Resolves once everything handed over before this call has committed."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tell(self._add_barrier, future)
        return future

    async def flush(self) -> None:
        await self.barrier()

    async def capacity(self) -> None:
        """Wait while the buffer is full (backpressure for producers that can wait)."""
        await self._capacity.wait()

    # -- handlers --------------------------------------------------------------------------------

    def _add_runs(self, rows: list[Row],
                  future: asyncio.Future[list[Inserted]]) -> None:
        self._batch.new_runs.extend(rows)
        self._insert_waiters.append(([row[1] for row in rows], future))
        self._grew(len(rows))

    def _add_many(self, states: list[Row], events: list[Row], logs: list[Row]) -> None:
        run_states = self._batch.run_states
        grew = len(events) + len(logs)
        for row in states:
            key = (row[0], row[1])
            if key not in run_states:
                grew += 1
            run_states[key] = row
        self._batch.events.extend(events)
        self._batch.logs.extend(logs)
        self._grew(grew)

    def _add_pushed_events(self, rows: list[Row]) -> None:
        self._batch.pushed_events.extend(rows)
        self._grew(len(rows))

    def _add_definitions(self, rows: dict[tuple[uuid.UUID, str], str]) -> None:
        self._batch.definitions.update(rows)
        self._grew(len(rows))

    def _add_durable(self, rows: list[Row]) -> None:
        entries = self._batch.durable
        grew = 0
        for row in rows:
            key = (row[0], row[1], row[2])
            if key not in entries:
                grew += 1
            entries[key] = row
        self._grew(grew)

    def _add_rate_usage(self, rows: list[Row]) -> None:
        usage = self._batch.rate_usage
        grew = 0
        for row in rows:
            key = (row[0], row[1])
            if key not in usage:
                grew += 1
            usage[key] = row
        self._grew(grew)

    def _add_barrier(self, future: asyncio.Future[None]) -> None:
        if not len(self._batch) and self._flushing is None:
            future.set_result(None)  # nothing is pending: everything before is committed
            return
        self._barriers.append(future)
        self._kick()

    def _grew(self, rows: int) -> None:
        self._pending += rows
        if self._pending >= self.max_pending:
            self._capacity.clear()
        self._kick()

    def _kick(self) -> None:
        if self._flushing is None and (len(self._batch) or self._barriers):
            batch, self._batch = self._batch, _new_batch()
            barriers, self._barriers = self._barriers, []
            waiters, self._insert_waiters = self._insert_waiters, []
            self._flushing = asyncio.create_task(self._flush(batch, barriers, waiters),
                                                 name="persister-flush")

    async def _flush(self, batch: WriteBatch, barriers: list[asyncio.Future[None]],
                     waiters: list[tuple[list[uuid.UUID], asyncio.Future[list[Inserted]]]]
                     ) -> None:
        """Runs outside the mailbox (so producers are never blocked by I/O); reports back with
        `_flushed`, which is where the actor's state changes."""
        if self.linger:
            await asyncio.sleep(self.linger)
            self._post(self._merge_late_arrivals, batch, barriers, waiters)
            return
        await self._commit(batch, barriers, waiters)

    def _merge_late_arrivals(self, batch: WriteBatch, barriers: list[asyncio.Future[None]],
                             waiters: list[tuple[list[uuid.UUID],
                                                 asyncio.Future[list[Inserted]]]]) -> None:
        """After lingering, fold in what arrived meanwhile, then commit."""
        batch.merge(self._batch)
        barriers.extend(self._barriers)
        waiters.extend(self._insert_waiters)
        self._batch, self._barriers, self._insert_waiters = _new_batch(), [], []
        self._flushing = asyncio.create_task(self._commit(batch, barriers, waiters),
                                             name="persister-commit")

    async def _commit(self, batch: WriteBatch, barriers: list[asyncio.Future[None]],
                      waiters: list[tuple[list[uuid.UUID], asyncio.Future[list[Inserted]]]]
                      ) -> None:
        delay = 0.05
        retried = False
        refusals = 0
        rows = len(batch)
        while True:
            try:
                async with self.pool.acquire() as conn:
                    if retried and await batch_committed(conn, self.node_id, batch.batch_id):
                        inserted: dict[uuid.UUID, Inserted] = {}
                        inserted = await self._already_inserted(conn, batch)
                    else:
                        async with conn.transaction():
                            inserted = await write_batch(conn, self.node_id, batch)
                break
            except TRANSIENT_ERRORS as exc:
                retried = True
                log.warning("could not write %d rows to Postgres (%s); retrying in %.2fs",
                            len(batch), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                if batch.new_runs:
                    # New runs are the only rows from outside the engine: refuse those (their
                    # triggers get the error, nothing was acknowledged) and write the rest, which
                    # the engine has already acted on.
                    log.exception("Postgres refused a batch with %d new runs; refusing them",
                                  len(batch.new_runs))
                    self._post(self._refused, waiters, exc)
                    batch.new_runs, waiters = [], []
                    continue
                refusals += 1
                if refusals < 5:  # perhaps a passing fault we do not recognise: try again
                    log.warning("Postgres refused a batch (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                log.exception("giving up a batch of %d rows that Postgres refuses", len(batch))
                self._post(self._flushed, rows, barriers, waiters, None, exc)
                return
        self._post(self._flushed, rows, barriers, waiters, inserted, None)

    def _refused(self, waiters: list[tuple[list[uuid.UUID], asyncio.Future[list[Inserted]]]],
                 error: Exception) -> None:
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    async def _already_inserted(self, conn: asyncpg.Connection,
                                batch: WriteBatch) -> dict[uuid.UUID, Inserted]:
        """Results of a batch that had committed before the connection broke."""
        rows = await conn.fetch(
            "SELECT run_id, status FROM runs r JOIN unnest($1::uuid[], $2::uuid[]) AS k(t, id) "
            "ON r.tenant_id = k.t AND r.run_id = k.id",
            [row[0] for row in batch.new_runs], [row[1] for row in batch.new_runs])
        found = {row["run_id"]: row["status"] for row in rows}
        result = {}
        for row in batch.new_runs:
            run_id = row[1]
            assert isinstance(run_id, uuid.UUID)
            result[run_id] = Inserted(run_id, run_id in found, found.get(run_id, str(row[4])))
        return result

    def _flushed(self, rows: int, barriers: list[asyncio.Future[None]],
                 waiters: list[tuple[list[uuid.UUID], asyncio.Future[list[Inserted]]]],
                 inserted: dict[uuid.UUID, Inserted] | None, error: Exception | None) -> None:
        self._flushing = None
        self.flushes += 1
        self._pending -= rows
        if self._pending < self.max_pending:
            self._capacity.set()
        if error is None:
            self.rows_written += rows
        for future in barriers:
            if not future.done():
                future.set_exception(error) if error else future.set_result(None)
        for run_ids, waiter in waiters:
            if waiter.done():
                continue
            if error is not None or inserted is None:
                waiter.set_exception(error or RuntimeError("batch failed"))
            else:
                waiter.set_result([inserted[run_id] for run_id in run_ids])
        self._kick()

    async def on_stop(self) -> None:
        """The final flush, shielded from cancellation, so what was handed over is written.
        If Postgres stays away past `stop_timeout`, the rest is given up (and logged): none of it
        was acknowledged, since acknowledgements wait for commits."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout
        self._drain_mailbox()
        while self._flushing is not None or len(self._batch) or self._barriers:
            if self._flushing is None:
                self._kick()
            assert self._flushing is not None
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.error("giving up %d unwritten rows at shutdown: Postgres is unreachable",
                          self._pending)
                self._flushing.cancel()
                return
            try:
                await asyncio.wait_for(asyncio.shield(self._flushing), remaining)
            except TimeoutError:
                continue
            # the flush reports back through the mailbox, which no longer runs by itself
            self._drain_mailbox()

    def _drain_mailbox(self) -> None:
        while not self._mailbox.empty():
            handler, args, future = self._mailbox.get_nowait()
            try:
                result: Any = handler(*args)
            except Exception as exc:
                log.exception("persister message failed during shutdown")
                if future is not None and not future.done():
                    future.set_exception(exc)
            else:
                if future is not None and not future.done():
                    future.set_result(result)
