"""Retention: history kept as long as each tenant's retention says, and no longer.

A sweep (every `--retention-every` seconds, on one node of the cluster: the singleton lease
`retention`) makes the coming days' partitions, then drops each day partition whose every run
ended more than the longest retention ago (and the day's pushed events), then deletes in batches,
tenant by tenant, what is older than the tenant's own retention and still there: a shorter
retention than the longest, or the other runs of a day kept for an unfinished one. The rules of
what may go are in domain/retention.py; a day held by an unfinished run stays until it ends.

A crash mid-sweep loses nothing that should stay: a drop (partitions and their idempotency keys)
is one transaction, a batch of deleted runs (with their events, logs, durable logs and keys)
another, and the next sweep carries on from what is left.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from taskyard.actors.base import SideTasks
from taskyard.domain.retention import Partition, expired, first_id_of
from taskyard.store.leases import LeaseRepository
from taskyard.store.retention import EVENTS, RUN_TABLES, RetentionRepository

log = logging.getLogger(__name__)

SINGLETON = "retention"
DAYS_AHEAD = 2  # partitions made this many days ahead: a sweep or two may fail meanwhile
BATCH = 5000  # rows read or deleted a statement
_FIRST_SWEEP = 30.0  # seconds after start: not in the middle of a node's recovery
_SMALLEST_ID = uuid.UUID(int=0)


@dataclass
class Sweep:
    """What one sweep did."""

    partitions_made: int = 0
    dropped: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # day partitions kept for an unfinished run
    runs_deleted: int = 0
    events_deleted: int = 0


class Retention:
    def __init__(
        self,
        repository: RetentionRepository,
        leases: LeaseRepository,
        *,
        default_days: float,
        every: float,
    ) -> None:
        self.repository = repository
        self.leases = leases
        self.default_days = default_days
        self.every = every
        self.last: Sweep | None = None
        self._tasks = SideTasks()

    async def start(self) -> None:
        """Today's partitions and the next days' exist before the engine serves (an engine
        that was down for days would otherwise write today's runs into the default one)."""
        await self.repository.add_partitions(datetime.now(UTC).date(), DAYS_AHEAD)
        self._tasks.spawn(self._run(), name="retention")

    async def stop(self) -> None:
        await self._tasks.cancel()

    async def _run(self) -> None:
        await asyncio.sleep(min(_FIRST_SWEEP, self.every))
        while True:
            try:
                if await self.leases.hold_singleton(SINGLETON):
                    self.last = await self.sweep()
            except Exception:
                log.exception("retention: the sweep failed; trying again in %.0f s", self.every)
            await asyncio.sleep(self.every)

    async def sweep(self, now: datetime | None = None) -> Sweep:
        """One sweep, as of `now` (the present by default)."""
        now = now or datetime.now(UTC)
        done = Sweep()
        done.partitions_made = await self.repository.add_partitions(now.date(), DAYS_AHEAD)
        days = await self.repository.tenant_retention(self.default_days)
        longest = now - timedelta(days=max([self.default_days, *days.values()]))
        await self._drop_runs(longest, done)
        await self._drop_events(longest, done)
        runs_from = await self._legacy_end("runs")
        events_from = await self._legacy_end(EVENTS)
        for tenant_id, kept_days in days.items():
            if not await self.leases.hold_singleton(SINGLETON):
                log.info("retention: another node took the sweep over")
                break
            cutoff = now - timedelta(days=kept_days)
            done.runs_deleted += await self._delete_runs(tenant_id, runs_from, cutoff)
            done.events_deleted += await self._delete_events(tenant_id, events_from, cutoff)
        if done.dropped or done.runs_deleted or done.events_deleted:
            log.info(
                "retention: dropped %d partitions, deleted %d runs and %d events",
                len(done.dropped),
                done.runs_deleted,
                done.events_deleted,
            )
        return done

    async def _drop_runs(self, cutoff: datetime, done: Sweep) -> None:
        for partition in await self.repository.partitions("runs"):
            if not partition.ended_before(cutoff):
                continue
            contents = await self.repository.contents(partition)
            last = contents.last_finished
            if contents.unfinished or (last is not None and last >= cutoff):
                done.held.append(partition.name)
                continue
            names = [_sibling(partition, "runs", table) for table in RUN_TABLES]
            assert partition.upper is not None
            keys = (partition.lower, partition.upper)
            if await self.repository.drop(names, keys):
                done.dropped += names
            else:
                log.info("retention: %s is busy; dropping it next time", partition.name)

    async def _drop_events(self, cutoff: datetime, done: Sweep) -> None:
        for partition in await self.repository.partitions(EVENTS):
            if partition.ended_before(cutoff) and await self.repository.drop(
                [partition.name], None
            ):
                done.dropped.append(partition.name)

    async def _legacy_end(self, table: str) -> uuid.UUID:
        """Where the per-tenant deletes start: past the legacy partition, whose trees of runs do
        not share milliseconds (it goes whole, once all of it expired)."""
        for partition in await self.repository.partitions(table):
            if partition.legacy:
                assert partition.upper is not None
                return partition.upper
        return _SMALLEST_ID

    async def _delete_runs(self, tenant_id: uuid.UUID, start: uuid.UUID, cutoff: datetime) -> int:
        below, deleted = first_id_of(cutoff), 0
        while start < below:
            rows = await self.repository.history_rows(tenant_id, start, below, BATCH)
            if not rows:
                break
            doomed = expired(rows, cutoff)
            if doomed:
                await self.repository.delete_runs(tenant_id, doomed)
                deleted += len(doomed)
            start = uuid.UUID(int=rows[-1].run_id.int + 1)
        return deleted

    async def _delete_events(self, tenant_id: uuid.UUID, start: uuid.UUID, cutoff: datetime) -> int:
        below, deleted = first_id_of(cutoff), 0
        while True:
            count = await self.repository.delete_events(tenant_id, start, below, BATCH)
            deleted += count
            if count < BATCH:
                return deleted


def _sibling(partition: Partition, table: str, other: str) -> str:
    """The partition of `other` with the same bounds (named alike)."""
    return other + partition.name.removeprefix(table)
