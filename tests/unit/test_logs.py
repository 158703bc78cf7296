"""Log lines with their run's fields: from `extra=run_fields(...)` or the running attempt's
context, as JSON or as text."""

from __future__ import annotations

import json
import logging

import pytest

from taskyard_sdk.logs import JsonLines, RunFields, TextLines, current_run_fields, run_fields


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("shop", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(made, key, value)
    RunFields().filter(made)
    return made


def test_a_line_logged_inside_an_attempt_carries_its_run() -> None:
    token = current_run_fields.set(run_fields("r-1", task="charge", attempt=2, tenant="acme"))
    try:
        line = json.loads(JsonLines().format(record("charged")))
    finally:
        current_run_fields.reset(token)
    assert line["message"] == "charged"
    assert (line["run_id"], line["task"], line["attempt"], line["tenant"]) == (
        "r-1",
        "charge",
        2,
        "acme",
    )
    assert line["level"] == "info"
    assert line["logger"] == "shop"


def test_extra_fields_win_and_lines_about_no_run_have_none() -> None:
    token = current_run_fields.set(run_fields("r-1", task="charge"))
    try:
        given = record("moved", **run_fields("r-2", tenant="acme"))
    finally:
        current_run_fields.reset(token)
    assert (given.run_id, given.task, given.tenant) == ("r-2", "charge", "acme")  # type: ignore[attr-defined]
    plain = json.loads(JsonLines().format(record("started")))
    assert "run_id" not in plain


def test_text_lines_name_the_run_unless_the_message_does() -> None:
    token = current_run_fields.set(run_fields("r-1", task="charge", attempt=2))
    try:
        assert TextLines().format(record("charged")).endswith("charged [run r-1 charge#2]")
        assert TextLines().format(record("r-1 succeeded")).endswith("r-1 succeeded")
    finally:
        current_run_fields.reset(token)


def test_an_unknown_format_is_refused() -> None:
    from taskyard_sdk.logs import configure_logging

    with pytest.raises(ValueError, match="'text' or 'json'"):
        configure_logging("info", "yaml")  # type: ignore[arg-type]
