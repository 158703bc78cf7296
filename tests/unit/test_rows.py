"""Each row builder puts every value into the column of its name (store/rows.py): rows are plain
tuples, so a builder and its column list must agree on the order, and this is what checks it."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from taskyard.store import rows
from taskyard.store.rows import Columns

BUILDERS: list[tuple[Callable[..., rows.Row], Columns]] = [
    (rows.new_run_row, rows.NEW_RUN),
    (rows.run_event_row, rows.RUN_EVENT),
    (rows.run_log_row, rows.RUN_LOG),
    (rows.pushed_event_row, rows.PUSHED_EVENT),
    (rows.rate_usage_row, rows.RATE_USAGE),
    (rows.durable_entry_row, rows.DURABLE_ENTRY),
]


def _distinct(name: str, index: int) -> Any:
    """A value only this parameter has, of a type its column can hold."""
    if name.endswith("_id") or name == "replay_of":
        return uuid.UUID(int=index + 1)
    if name.endswith("_json"):
        return orjson.dumps({"from": name}).decode()
    if name in ("done", "configured"):
        return True  # the only bools: each builder has at most one
    if name == "triggered":
        return [uuid.UUID(int=1000 + index)]
    return (
        f"{name}-{index}"
        if name
        in (
            "task",
            "queue",
            "status",
            "key",
            "kind",
            "call",
            "type",
            "level",
            "message",
            "duration",
            "step",
            "idempotency_key",
            "wait",
        )
        else 10_000 + index
    )


def _stored(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


@pytest.mark.parametrize(("builder", "columns"), BUILDERS, ids=lambda b: getattr(b, "__name__", ""))
def test_a_builder_puts_each_value_in_its_own_column(
    builder: Callable[..., rows.Row], columns: Columns
) -> None:
    parameters = list(inspect.signature(builder).parameters)
    given = {name: _distinct(name, index) for index, name in enumerate(parameters)}
    if builder is rows.durable_entry_row:
        given["wait"] = orjson.dumps({"wait": 1}).decode()
    row = builder(**given)
    assert len(row) == len(columns.names)
    placed = 0
    for name, value in given.items():
        column = {"lim": "lim", "usage": "usage"}.get(name, name.removesuffix("_json"))
        if column not in columns.names:
            continue
        stored = row[getattr(columns, column)]
        if name.endswith("_json") or (builder is rows.durable_entry_row and name == "wait"):
            assert _stored(stored) == value.encode(), name  # embedded as the JSON it is
        elif name == "triggered":
            assert stored == "{" + str(value[0]) + "}"
        elif builder is rows.rate_usage_row and name == "usage":
            assert stored == orjson.dumps(value).decode()
        else:
            assert _stored(stored) == _stored(value), name
        placed += 1
    assert placed >= len(columns.names) - 3  # the few columns builders fill themselves


def test_a_column_that_does_not_exist_is_named_in_the_error() -> None:
    with pytest.raises(AttributeError, match="no column 'nope'"):
        _ = rows.NEW_RUN.nope
