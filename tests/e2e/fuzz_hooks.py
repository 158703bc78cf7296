"""Schemathesis hooks for tests/e2e/test_fuzz_api.py, loaded by its CLI (SCHEMATHESIS_HOOKS).

Long-polls on runs that exist wait their whole `timeout` (30 s unless given, up to 300): no
worker finishes the fuzzer's runs. Such waits are cut to a moment; all else is sent as made."""

from __future__ import annotations

from typing import Any

import schemathesis

LONG_POLLS = {"/api/v1/runs/{run_id}/result": "query", "/api/v1/runs/wait": "body"}
LONGEST_WAIT = 0.2  # seconds


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    where = LONG_POLLS.get(case.operation.path)
    values = case.query if where == "query" else case.body if where == "body" else None
    if not isinstance(values, dict):
        return
    timeout = values.get("timeout", 30)  # a number, or in the coverage phase its text
    if isinstance(timeout, bool) or not isinstance(timeout, int | float | str):
        return
    try:
        seconds = float(timeout)
    except ValueError:
        return
    if LONGEST_WAIT < seconds <= 300:  # what the engine would wait for; refusals stay as sent
        values["timeout"] = str(LONGEST_WAIT) if isinstance(timeout, str) else LONGEST_WAIT
