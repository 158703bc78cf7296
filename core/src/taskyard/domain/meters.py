"""Counters and histograms the engine keeps for `/metrics`, as plain numbers: the actor that
makes a decision counts it in its own meters (a dict update, a bisect), and a scrape reads copies
of them. Nothing here knows Prometheus; the HTTP layer turns samples into its text format.

Label values are bounded: a queue's meters name at most MAX_TASKS tasks, and fold the rest into
OTHER, so a client triggering made-up task names cannot grow the series without end.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

MAX_TASKS = 500
OTHER = "_other"

# Seconds. Trigger -> start spans a hot queue's milliseconds and a backlog's hours.
WAIT_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip
RUN_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0,
)  # fmt: skip
FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0)


class Histogram:
    """Observations counted in buckets by upper bound (`le`), the last one unbounded."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        copied = Histogram(self.bounds)
        copied.counts = list(self.counts)
        copied.total = self.total
        return copied

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, observations up to it) for each bucket, `+Inf` last: Prometheus's form."""
        running = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        return buckets


@dataclass
class QueueSample:
    """A copy of a queue's meters at one moment, with its state then."""

    queue: str
    counts: Counter[tuple[str, str]]  # (event, task): triggered, retried, timed out, refused...
    finished: Counter[tuple[str, str]]  # (task, final status)
    waits: dict[str, Histogram]  # trigger (or a retry's due time) -> start, by task
    runs: dict[str, Histogram]  # start -> end of an attempt, by task
    queued: int = 0
    running: int = 0
    suspended: int = 0
    oldest_queued_age: float = 0.0
    workers: int = 0
    slots: int = 0
    slots_used: int = 0


@dataclass
class QueueMeters:
    """What one queue's actor counts, by task."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    finished: Counter[tuple[str, str]] = field(default_factory=Counter)
    waits: dict[str, Histogram] = field(default_factory=dict)
    runs: dict[str, Histogram] = field(default_factory=dict)
    _tasks: set[str] = field(default_factory=set)

    def label(self, task: str) -> str:
        """The task's label value: its name, or OTHER past MAX_TASKS names."""
        if task in self._tasks:
            return task
        if len(self._tasks) >= MAX_TASKS:
            return OTHER
        self._tasks.add(task)
        return task

    def count(self, event: str, task: str) -> None:
        self.counts[(event, self.label(task))] += 1

    def started(self, task: str, waited: float) -> None:
        name = self.label(task)
        histogram = self.waits.get(name)
        if histogram is None:
            histogram = self.waits[name] = Histogram(WAIT_BUCKETS)
        histogram.observe(waited)

    def ended(self, task: str, ran: float) -> None:
        """An attempt that started has ended (however): how long it ran."""
        name = self.label(task)
        histogram = self.runs.get(name)
        if histogram is None:
            histogram = self.runs[name] = Histogram(RUN_BUCKETS)
        histogram.observe(ran)

    def finish(self, task: str, status: str) -> None:
        self.finished[(self.label(task), status)] += 1

    def sample(self, queue: str) -> QueueSample:
        return QueueSample(
            queue=queue,
            counts=Counter(self.counts),
            finished=Counter(self.finished),
            waits={task: histogram.copy() for task, histogram in self.waits.items()},
            runs={task: histogram.copy() for task, histogram in self.runs.items()},
        )
