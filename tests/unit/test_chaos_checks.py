"""The chaos run's checks have teeth: fed ledgers and views that break a promise, each check
counts the violation, and what the promise allows it lets pass (bench/chaos_checks.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from bench.chaos_checks import (
    Acked,
    CronTicks,
    Evidence,
    Execution,
    Outage,
    Push,
    TaskRule,
    attempts_verdict,
    judge,
    read_ledger,
)

T0 = 1_800_000_000.0  # a whole second


def evidence(**fields: Any) -> Evidence:
    base = Evidence(
        acked=[],
        views={},
        step_views={},
        executions=[],
        notes=[],
        pushes=[],
        missing_events=[],
        outages=[],
        kills={},
        stopped_at=T0 + 100,
        crons=[],
        unfinished_anywhere=0,
        rules={},
        dag_outputs=lambda n: {},
        dag_rules={},
        durable_tasks=frozenset({"nap"}),
        order_event="order",
        keyed_task="keyed",
        max_runs=2,
        limited_task="limited",
        rate_limit=3,
        rate_window=1.0,
    )
    return replace(base, **fields)


def run(
    task: str,
    start: float,
    end: float | None,
    *,
    run_id: str = "r",
    attempt: int = 1,
    proc: str = "w0.1",
    outcome: str | None = "ok",
    **fields: Any,
) -> Execution:
    return Execution(
        run_id,
        attempt,
        task,
        proc,
        T0 + start,
        None if end is None else T0 + end,
        outcome if end is not None else None,
        fields,
    )


def test_three_attempts_of_a_key_at_once_are_counted_and_a_handed_on_slot_is_not() -> None:
    handed_on = [
        run("keyed", 0, 1, run_id="a", key="k"),
        run("keyed", 0, 2, run_id="b", key="k"),
        run("keyed", 1, 3, run_id="c", key="k"),
    ]
    assert judge(evidence(executions=handed_on)).violations["concurrency"] == []
    # A killed worker's attempt ends at the kill, not at the ledger's end of time.
    killed = [
        run("keyed", 0, None, run_id="a", key="k", proc="w1.1"),
        run("keyed", 0.5, 2, run_id="b", key="k"),
        run("keyed", 1.5, 3, run_id="c", key="k"),
    ]
    verdict = judge(evidence(executions=killed, kills={"w1.1": T0 + 1.2}))
    assert verdict.violations["concurrency"] == []
    verdict = judge(evidence(executions=killed, kills={"w1.1": T0 + 1.6}))
    assert len(verdict.violations["concurrency"]) == 1


def test_more_starts_than_the_limit_within_a_window_are_a_violation() -> None:
    starts = [
        run("limited", at, at + 0.1, run_id=str(i)) for i, at in enumerate((0, 0.1, 0.2, 1.0))
    ]
    assert judge(evidence(executions=starts)).violations["rate_limit"] == []
    early = [*starts[:3], run("limited", 0.99, 1.1, run_id="3")]
    assert len(judge(evidence(executions=early)).violations["rate_limit"]) == 1


def test_work_run_again_is_a_duplicate_only_a_kill_explains() -> None:
    again = [run("flaky", 0, 1), run("flaky", 5, 6, attempt=2, proc="w2.1")]
    verdict = judge(evidence(executions=again))
    assert len(verdict.violations["unexplained_duplicates"]) == 1
    verdict = judge(evidence(executions=again, kills={"w0.1": T0 + 2}))
    assert verdict.violations["unexplained_duplicates"] == []
    assert verdict.figures["duplicates (a worker killed mid-attempt)"] == 1
    # Across an engine kill, work the engine may not have written yet: the known issue.
    down = Outage("engine", "engine", T0 + 1.5, T0 + 2, T0 + 3, "kill -9")
    verdict = judge(evidence(executions=again, outages=[down]))
    assert verdict.violations["unexplained_duplicates"] == []
    assert len(verdict.known["duplicates_after_engine_kill"]) == 1
    long_after = replace(down, down_at=T0 + 4, restart_at=T0 + 4.5)  # its end long written
    verdict = judge(evidence(executions=again, outages=[long_after]))
    assert len(verdict.violations["unexplained_duplicates"]) == 1
    planned = [run("flaky", 0, 1, outcome="DeliberateFailure"), run("flaky", 2, 3, attempt=2)]
    verdict = judge(evidence(executions=planned))
    assert verdict.violations["unexplained_duplicates"] == []
    assert verdict.figures["duplicates (a worker killed mid-attempt)"] == 0


def test_crons_doubled_or_missed_beyond_the_catch_up_policy() -> None:
    every = [(T0 + s, "succeeded") for s in range(1, 11) if s != 5]
    crons = [
        CronTicks("all", "all", T0, T0 + 12, every),
        CronTicks("latest", "latest", T0, T0 + 12, [*every, (T0 + 3, "succeeded")]),
    ]
    verdict = judge(evidence(crons=crons))
    assert len(verdict.violations["cron_missed"]) == 2  # tick 5, under both policies
    assert len(verdict.violations["cron_doubled"]) == 1
    # The engine down from 4.5 s to 5.8 s: `latest` may skip tick 5, `all` may not.
    down = Outage("engine", "engine", T0 + 4.5, T0 + 5.2, T0 + 5.8, "kill -9")
    verdict = judge(evidence(crons=crons, outages=[down]))
    assert [line.split(":")[0] for line in verdict.violations["cron_missed"]] == ["cron all (all)"]


def test_a_durable_sleep_or_wait_that_wakes_early_is_a_violation() -> None:
    pushes = [Push("go", 1, "1:1", T0 + 5, True, False, "e1", T0 + 5.01)]
    notes = [
        {
            "ev": "woke",
            "kind": "sleep",
            "run": "r",
            "begun": T0,
            "seconds": 3.0,
            "t": T0 + 2.9,
            "proc": "w0.1",
        },
        {
            "ev": "woke",
            "kind": "sleep",
            "run": "s",
            "begun": T0,
            "seconds": 3.0,
            "t": T0 + 3.0,
            "proc": "w0.1",
        },
        {"ev": "woke", "kind": "event", "run": "u", "token": "1:1", "t": T0 + 4.9, "proc": "w0.1"},
        {"ev": "woke", "kind": "event", "run": "v", "token": "nobody", "t": T0 + 6, "proc": "w0.1"},
    ]
    verdict = judge(evidence(notes=notes, pushes=pushes))
    assert len(verdict.violations["sleep_early"]) == 1
    assert len(verdict.violations["event_early"]) == 2


def attempt(number: int, status: str, error: str | None = None) -> dict[str, Any]:
    return {
        "attempt": number,
        "status": status,
        "error": {"type": error, "message": "m"} if error else None,
    }


def test_a_run_ends_as_its_definition_says() -> None:
    rule = TaskRule(
        3, lambda n, job: "DeliberateFailure" if n <= job["fail"] else None, lambda job: job["n"]
    )
    job = {"n": 7, "fail": 1}
    ok = {
        "status": "succeeded",
        "output": 7,
        "attempts": [
            attempt(1, "failed", "DeliberateFailure"),
            attempt(2, "failed", "WorkerLost"),
            attempt(3, "succeeded"),
        ],
    }
    assert attempts_verdict(ok, rule, job) is None
    assert "was to fail" in str(
        attempts_verdict(
            {"status": "succeeded", "output": 7, "attempts": [attempt(1, "succeeded")]}, rule, job
        )
    )
    gave_up_early = {
        "status": "failed",
        "attempts": [attempt(1, "failed", "DeliberateFailure"), attempt(2, "failed", "WorkerLost")],
    }
    assert attempts_verdict(gave_up_early, rule, job) is not None
    spent = {
        "status": "failed",
        "attempts": [
            attempt(1, "failed", "DeliberateFailure"),
            *(attempt(n, "failed", "WorkerLost") for n in (2, 3, 4)),
        ],
    }
    assert attempts_verdict(spent, rule, job) is None
    fatal = TaskRule(3, lambda n, job: "NonRetryableError", lambda job: None)
    retried = {
        "status": "failed",
        "attempts": [
            attempt(1, "failed", "NonRetryableError"),
            attempt(2, "failed", "NonRetryableError"),
        ],
    }
    assert "was retried" in str(attempts_verdict(retried, fatal, job))
    acked = [Acked("r", "flaky", job)]
    verdict = judge(evidence(acked=acked, views={"r": ok}, rules={"flaky": rule}))
    assert verdict.total_violations == 0
    verdict = judge(evidence(acked=acked, views={}, rules={"flaky": rule}))
    assert len(verdict.violations["lost"]) == 1
    verdict = judge(evidence(acked=acked, views={"r": {"status": "queued"}}, rules={"flaky": rule}))
    assert len(verdict.violations["unfinished"]) == 1


def test_a_ledger_line_cut_by_a_kill_is_skipped_and_an_unended_start_kept() -> None:
    start = {"ev": "start", "run": "r", "attempt": 1, "task": "flaky", "proc": "w0.1", "t": T0}
    end = {**start, "ev": "end", "outcome": "DeliberateFailure", "t": T0 + 1}
    again = {**start, "attempt": 2, "t": T0 + 2}
    lines = [json.dumps(start), json.dumps(end), json.dumps(again), '{"ev": "end", "ru']
    executions, notes = read_ledger(lines)
    assert [(e.attempt, e.end, e.outcome) for e in executions] == [
        (1, T0 + 1, "DeliberateFailure"),
        (2, None, None),
    ]
    assert notes == []
