"""Which history may go: the rules of retention, apart from the SQL that applies them.

A run is kept while it is unfinished or finished less than its tenant's retention ago, and so is
everything made in the same millisecond of the same tenant. That millisecond is the run's tree
(a workflow run's steps and a run's children take their root's time, taskyard.ids), so a step or
a child is never removed while its workflow or parent still needs it; unrelated runs that share
the millisecond are kept a little longer with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from taskyard_sdk.models import RunStatus

DAY = timedelta(days=1)

UNFINISHED = tuple(status.value for status in RunStatus if not status.terminal)


def millisecond_of(run_id: uuid.UUID) -> int:
    """The Unix millisecond a UUIDv7 was made in (its first 48 bits)."""
    return int.from_bytes(run_id.bytes[:6], "big")


def first_id_at(millisecond: int) -> uuid.UUID:
    """The smallest id of a millisecond: ids of earlier milliseconds sort below it."""
    return uuid.UUID(bytes=millisecond.to_bytes(6, "big") + bytes(10))


def first_id_of(moment: datetime) -> uuid.UUID:
    return first_id_at(int(moment.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class HistoryRow:
    run_id: uuid.UUID
    status: str
    finished_at: datetime | None

    def kept(self, cutoff: datetime) -> bool:
        if self.status in UNFINISHED:
            return True
        # A run that ended without running (a skipped step) may have no finish time: its id's
        # millisecond stands for it.
        finished = self.finished_at or datetime.fromtimestamp(
            millisecond_of(self.run_id) / 1000, UTC
        )
        return finished >= cutoff


def expired(rows: Sequence[HistoryRow], cutoff: datetime) -> list[uuid.UUID]:
    """The runs among `rows` (one tenant's, whole milliseconds of them) that may be removed:
    those of milliseconds where no run is kept."""
    held = {millisecond_of(row.run_id) for row in rows if row.kept(cutoff)}
    return [row.run_id for row in rows if millisecond_of(row.run_id) not in held]


@dataclass(frozen=True, slots=True)
class Partition:
    """A partition of a history table: a UTC day's, the legacy one (every id below `upper`,
    from before the tables were partitioned), or the default one (no bounds)."""

    name: str
    day: date | None
    upper: uuid.UUID | None

    @property
    def legacy(self) -> bool:
        return self.day is None and self.upper is not None

    @property
    def lower(self) -> uuid.UUID | None:
        """Its first id; None for the legacy partition (every id below `upper`)."""
        return None if self.day is None else first_id_of(_start_of(self.day))

    def ended_before(self, moment: datetime) -> bool:
        """Every id of the partition was made before `moment`."""
        return self.upper is not None and self.upper <= first_id_of(moment)


def _start_of(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def day_partition(table: str, day: date) -> Partition:
    return Partition(f"{table}_p{day:%Y%m%d}", day, first_id_of(_start_of(day) + DAY))


def parse_partitions(table: str, names: Sequence[tuple[str, str]]) -> list[Partition]:
    """The partitions of `table` from (name, bound expression) pairs, as Postgres names them."""
    found = []
    for name, bound in names:
        suffix = name.removeprefix(f"{table}_")
        if suffix == "default":
            found.append(Partition(name, None, None))
        elif suffix == "legacy":
            upper = bound.rsplit("TO ('", 1)[1].split("'", 1)[0]
            found.append(Partition(name, None, uuid.UUID(upper)))
        elif suffix.startswith("p") and suffix[1:].isdigit():
            found.append(day_partition(table, datetime.strptime(suffix[1:], "%Y%m%d").date()))
    return sorted(found, key=lambda p: (p.upper is None, p.upper or uuid.UUID(int=0)))
