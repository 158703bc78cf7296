"""How a batch of the persister (store/persister.py) reaches Postgres: one lane's batches, one at a
time, on a connection the lane holds. A batch is retried until it commits: after a connection
failure or a deadlock with back-off (a marked lane first asks whether its last try committed, so
no batch is applied twice); when Postgres refuses it, its new runs are refused first (the only
rows from outside the engine), then the rest retried, and at last written in halves down to the
rows it refuses, which alone are given up.

A batch is fenced by the leases of the tenants it writes for (see store/batch.py's Fence): when
Postgres refuses the fence, the rows of the tenants whose leases moved are left out (their new
owner recovers from what is committed) and the rest is written.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from taskyard.store.batch import (
    Fence,
    Inserted,
    LeasesMoved,
    WriteBatch,
    batch_committed,
    write_batch,
    written_before,
)
from taskyard.store.db import TRANSIENT_ERRORS

log = logging.getLogger(__name__)


class Committer:
    """`marked`: the lane records each batch it commits (see store/batch.py), so a retry after a
    lost answer is recognised; a lane of new runs alone needs no record."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        node_id: uuid.UUID,
        lane: str,
        *,
        marked: bool,
        epochs: Mapping[uuid.UUID, int] | None = None,
    ) -> None:
        self.pool = pool
        self.lane = lane
        self.node_id = node_id
        self.mark = (node_id, lane) if marked else None
        # The epochs of the tenants' leases this node holds (the cluster's, read at each try);
        # None: writes are not fenced.
        self.epochs = epochs
        # Held from the pool for as long as it works: a pool acquire and release per flush costs
        # about as much CPU as the flush's own statement.
        self.conn: Any = None
        # For /metrics: what went wrong, by kind (lost connection, refused batch), and the
        # connections taken again after one was lost.
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self._lost = False

    async def commit(
        self,
        batch: WriteBatch,
        refuse_new_runs: Callable[[Exception], None],
        moved: Callable[[set[uuid.UUID]], None] = lambda tenants: None,
    ) -> tuple[dict[uuid.UUID, Inserted] | None, Exception | None]:
        """Write `batch`; what became of its new runs, or the error for which Postgres refused
        it (all but the rows it refuses were written then). New runs Postgres refuses are
        dropped from the batch and `refuse_new_runs` is told why, at once; `moved` is told the
        tenants whose rows were left out because their leases moved on."""
        delay = 0.05
        retried = False
        refusals = 0
        while True:
            try:
                batch.fence = self._fence(batch)
                if self.mark is None and not len(batch):
                    return {}, None
                conn = await self._connection()
                if self.mark is None:  # new runs alone: writing them again is harmless
                    return await write_batch(conn, batch, None), None
                if retried and await batch_committed(conn, *self.mark, batch.batch_id):
                    return await written_before(conn, batch), None
                return await write_batch(conn, batch, self.mark), None
            except LeasesMoved as refused:
                self.errors["fenced"] += 1
                log.warning("%s; leaving out their rows", refused)
                batch.drop_tenants(refused.tenants)
                moved(refused.tenants)
            except asyncpg.TransactionRollbackError as exc:  # a deadlock: nothing was written
                retried = True
                self.errors["conflict"] += 1
                log.warning("Postgres rolled a batch back (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except TRANSIENT_ERRORS as exc:
                retried = True
                self._lose("connection")
                await self.close()
                log.warning(
                    "could not write %d rows to Postgres (%s); retrying in %.2fs",
                    len(batch),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                if batch.new_runs:
                    # New runs are the only rows from outside the engine: refuse those (their
                    # triggers get the error, nothing was acknowledged) and write the rest, which
                    # the engine has already acted on.
                    log.exception(
                        "Postgres refused a batch with %d new runs; refusing them",
                        len(batch.new_runs),
                    )
                    refuse_new_runs(exc)
                    batch.new_runs = []
                    continue
                refusals += 1
                self.errors["refused"] += 1
                if refusals < 5:  # perhaps a passing fault we do not recognise: try again
                    log.warning("Postgres refused a batch (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                # One bad row must not cost the others: write what Postgres takes, halving
                # the batch down to the rows it refuses, which alone are given up.
                dropped = await self._isolate_refused(batch, moved)
                log.error(
                    "Postgres refused a batch of %d rows (%s); wrote all but %d rows it refuses",
                    len(batch),
                    exc,
                    dropped,
                )
                return None, exc

    def _fence(self, batch: WriteBatch) -> Fence | None:
        if self.epochs is None:
            return None
        tenants = list(batch.tenants())
        epochs = self.epochs
        return Fence(self.node_id, tenants, [epochs.get(tenant, 0) for tenant in tenants])

    async def _isolate_refused(
        self, batch: WriteBatch, moved: Callable[[set[uuid.UUID]], None]
    ) -> int:
        """Write `batch` in halves, and halves of halves where Postgres refuses one, giving up
        only the single rows it refuses; how many. Connection failures wait and retry, as for
        any batch. (Its barriers still fail: what waited for it cannot know whose row went.)"""
        delay = 0.05
        while True:
            try:
                batch.fence = self._fence(batch)
                await write_batch(await self._connection(), batch, self.mark)
                return 0
            except LeasesMoved as refused:
                batch.drop_tenants(refused.tenants)
                moved(refused.tenants)
            except TRANSIENT_ERRORS:
                self._lose("connection")
                await self.close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except Exception as exc:
                if len(batch) == 1:
                    log.error(
                        "giving up a row that Postgres refuses (%s): %s", exc, batch.describe()
                    )
                    return 1
                first, second = batch.halves()
                return await self._isolate_refused(first, moved) + await self._isolate_refused(
                    second, moved
                )

    async def _connection(self) -> Any:
        if self.conn is None:
            self.conn = await self.pool.acquire()
            if self._lost:
                self.reconnects += 1
                self._lost = False
        return self.conn

    def _lose(self, kind: str) -> None:
        self.errors[kind] += 1
        self._lost = True

    async def close(self) -> None:
        """Give the connection back (a broken one: the pool replaces it); the next try takes
        another."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await self.pool.release(conn)
            except Exception:  # already gone with its server: nothing more to free
                log.debug("could not release the %s lane's connection", self.lane, exc_info=True)
