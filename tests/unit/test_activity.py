"""A queue's last hour: per-minute counts that roll over, and queue-wait percentiles read from
log-spaced buckets within 4.5% of the exact ones."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from taskyard.domain.activity import MINUTES, QueueActivity

NOW = 1_800_000_000.0  # a minute's start


def exact(waits: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(waits)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


@given(st.lists(st.floats(min_value=1e-4, max_value=86_400.0), min_size=1, max_size=300))
def test_wait_percentiles_are_within_the_bucket_error(waits: list[float]) -> None:
    activity = QueueActivity(since=NOW)
    for offset, waited in enumerate(waits):
        activity.started(NOW + offset % 3000, waited)  # spread over the hour's minutes
    found = activity.waits(NOW + 3000)
    assert found is not None
    assert found.count == len(waits)
    for fraction, value in ((0.5, found.p50), (0.9, found.p90), (0.99, found.p99)):
        assert abs(value / exact(waits, fraction) - 1) <= 0.045
    assert max(waits) <= found.max <= max(waits) * 2**0.125


def test_minutes_roll_over_and_an_hour_old_minute_is_forgotten() -> None:
    activity = QueueActivity(since=NOW)
    activity.started(NOW, 0.5)
    activity.finished(NOW + 1, succeeded=True)
    activity.finished(NOW + 61, succeeded=False)
    hour = activity.last_hour(NOW + 61)
    assert len(hour) == MINUTES
    assert [m.at for m in hour[-2:]] == [NOW, NOW + 60]
    assert (hour[-2].started, hour[-2].succeeded, hour[-2].failed) == (1, 1, 0)
    assert (hour[-1].started, hour[-1].succeeded, hour[-1].failed) == (0, 0, 1)
    assert sum(m.started + m.succeeded + m.failed for m in hour[:-2]) == 0

    # An hour later the ring's slot of NOW's minute is another minute's: NOW's counts are gone.
    later = NOW + MINUTES * 60
    activity.started(later, 2.0)
    hour = activity.last_hour(later)
    assert hour[0].at == NOW + 60
    assert hour[0].failed == 1
    assert hour[-1].started == 1
    assert hour[-1].succeeded == 0
    waits = activity.waits(later)
    assert waits is not None
    assert waits.count == 1
    assert abs(waits.p50 / 2.0 - 1) <= 0.045


def test_an_idle_hour_has_no_waits() -> None:
    activity = QueueActivity(since=NOW)
    activity.started(NOW, 1.0)
    assert activity.waits(NOW + MINUTES * 60) is None
