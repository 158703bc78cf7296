"""The rules of retention: a run goes only with every run of its tenant's millisecond (its
tree), and only once all of them ended before the cutoff; ids and partitions agree on time."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from taskyard.domain.retention import (
    UNFINISHED,
    HistoryRow,
    day_partition,
    expired,
    first_id_at,
    first_id_of,
    millisecond_of,
    parse_partitions,
)
from taskyard.ids import id_at_time_of, new_id
from taskyard_sdk.models import RunStatus

CUTOFF = datetime(2026, 12, 1, tzinfo=UTC)
BASE = int(CUTOFF.timestamp() * 1000) - 10_000

rows = st.lists(
    st.tuples(
        st.integers(0, 5),  # which of six milliseconds
        st.sampled_from([status.value for status in RunStatus]),
        st.one_of(st.none(), st.integers(-3, 3)),  # finished, in seconds around the cutoff
    ),
    max_size=30,
)


def history(spec: list[tuple[int, str, int | None]]) -> list[HistoryRow]:
    made = []
    for index, (millisecond, status, finished) in enumerate(spec):
        run_id = uuid.UUID(int=first_id_at(BASE + millisecond).int + index + 1)
        at = None if finished is None else CUTOFF + timedelta(seconds=finished)
        made.append(HistoryRow(run_id, status, at))
    return made


@given(rows)
def test_a_run_goes_only_with_its_whole_millisecond_and_only_when_it_all_ended(
    spec: list[tuple[int, str, int | None]],
) -> None:
    found = history(spec)
    doomed = set(expired(found, CUTOFF))
    for row in found:
        same = [
            other for other in found if millisecond_of(other.run_id) == millisecond_of(row.run_id)
        ]
        all_ended = all(
            other.status not in UNFINISHED
            and (other.finished_at or CUTOFF - timedelta(seconds=10)) < CUTOFF
            for other in same
        )
        assert (row.run_id in doomed) == all_ended, (row, same)


def test_an_id_keeps_its_origin_time_and_a_named_one_is_the_same_every_time() -> None:
    origin = new_id()
    child = id_at_time_of(origin)
    assert millisecond_of(child) == millisecond_of(origin)
    assert child.version == 7
    assert child.variant == uuid.RFC_4122
    step = id_at_time_of(origin, "charge")
    assert step == id_at_time_of(origin, "charge") != id_at_time_of(origin, "refund")
    assert millisecond_of(step) == millisecond_of(origin)


def test_partitions_are_read_back_in_order_with_their_bounds() -> None:
    day = CUTOFF.date()
    found = parse_partitions(
        "runs",
        [
            ("runs_default", "DEFAULT"),
            ("runs_p20261202", "FOR VALUES FROM ('x') TO ('y')"),
            ("runs_p20261201", "FOR VALUES FROM ('x') TO ('y')"),
            ("runs_legacy", f"FOR VALUES FROM (MINVALUE) TO ('{first_id_of(CUTOFF)}')"),
        ],
    )
    assert [p.name for p in found] == [
        "runs_legacy",
        "runs_p20261201",
        "runs_p20261202",
        "runs_default",
    ]
    assert found[1] == day_partition("runs", day)
    assert found[1].upper == first_id_of(CUTOFF + timedelta(days=1))
    assert [p.legacy for p in found] == [True, False, False, False]
    assert found[0].upper == first_id_of(CUTOFF)
    assert found[1].ended_before(CUTOFF + timedelta(days=1))
    assert not found[1].ended_before(CUTOFF + timedelta(hours=23))
    assert not found[3].ended_before(CUTOFF + timedelta(days=999))
