"""The chaos run's judgement: from the ledgers the tasks wrote, the engine's views of the
acknowledged runs, the cron ticks, the event pushes and the faults the driver injected, decide
whether the engine kept its promises. Pure functions, no I/O: bench/chaos.py gathers the
evidence.

Each check counts violations, with a line saying which run or key and when:

- lost: an acknowledged run or event the engine does not know.
- unfinished: an acknowledged run (or any run the engine holds) not finished at the end.
- wrong_outcome: a run that did not end as its definition says: a retried task succeeds after its
  planned failures, or fails once its retries are spent (attempts beyond the plan may fail only
  because a worker was lost), a NonRetryableError is never retried, a DAG's outputs are its
  steps' sums, a durable wait returns the payload of an event that was pushed for it.
- unexplained_duplicates: work executed again although the previous execution neither failed on
  purpose nor had its worker process killed between its start and the repeat. Repeats that a
  kill explains are counted as duplicates, not violations. Repeats across an engine kill, of work
  the engine may not have written yet, are reported apart, as the known issue
  `duplicates_after_engine_kill` (bench/README.md says why).
- concurrency: an instant at which more than `max_runs` attempts of one key were executing,
  from the ledger's intervals (an attempt whose process was killed ends at the kill).
- rate_limit: `limit + 1` runs started within less than the window (taken at the engine's
  recorded assignment time where it has one for that attempt, else at the ledger's start).
- cron_doubled, cron_missed: a tick fired twice; a tick missing that the catch-up policy does not
  excuse (`all`: none; `latest`: only ticks missed while the engine was down, of which at most
  the latest fires).
- sleep_early: code after a durable sleep ran before its wake-up time.
- event_early: a durable wait woke before the event it returned was pushed, or with an event
  pushed before the wait began, or with a payload nobody pushed.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# What a killed worker's attempts fail with: WorkerLost after the heartbeat timeout, or
# ExecutionTimeout when its deadline comes first (each engine restart gives a missing worker the
# whole timeout again; the deadline stays). An attempt failed so while its worker was fine shows
# up as a duplicate: it is run again although its process was not killed.
CHAOS_ERRORS = frozenset({"WorkerLost", "ExecutionTimeout"})
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "skipped"})
CHECKS = (
    "lost",
    "unfinished",
    "wrong_outcome",
    "unexplained_duplicates",
    "concurrency",
    "rate_limit",
    "cron_doubled",
    "cron_missed",
    "sleep_early",
    "event_early",
)
KNOWN_ISSUES = ("duplicates_after_engine_kill",)


@dataclass(frozen=True, eq=False)  # by identity: two copies of one attempt are two executions
class Execution:
    """One execution of a task's code, from its ledger lines (`end` None: it never ended)."""

    run: str
    attempt: int
    task: str
    proc: str
    start: float
    end: float | None
    outcome: str | None
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Outage:
    """A fault the driver injected: `target` was down from `down_at`; its restart began at
    `restart_at` and it served again at `up_at`."""

    kind: str  # "postgres", "engine" or "worker"
    target: str
    down_at: float
    restart_at: float
    up_at: float
    detail: str = ""


@dataclass(frozen=True)
class Acked:
    """A run the engine acknowledged (a 2xx answer to its trigger, or to the event that
    started it)."""

    run_id: str
    kind: str
    job: Mapping[str, Any]


@dataclass(frozen=True)
class Push:
    """One push of an event, acknowledged or not."""

    key: str
    n: int
    token: str
    sent: float
    acknowledged: bool
    during_outage: bool
    event_id: str | None = None
    created_at: float | None = None  # the engine's time for it, when acknowledged
    triggered: tuple[str, ...] = ()


@dataclass(frozen=True)
class CronTicks:
    name: str
    catch_up: str
    created: float  # when the cron was created, and deleted (ticks between are judged)
    deleted: float
    runs: Sequence[tuple[float, str]]  # (tick, status) of each run the cron started


@dataclass(frozen=True)
class TaskRule:
    """How a task's runs must end: `planned(attempt, job)` is the error type the attempt raises
    on purpose (None: it succeeds); `output(job)` the output of a success."""

    retries: int
    planned: Callable[[int, Mapping[str, Any]], str | None]
    output: Callable[[Mapping[str, Any]], Any]


@dataclass
class Evidence:
    acked: list[Acked]
    views: dict[str, dict[str, Any]]  # run id -> GET /api/v1/runs/{id}, for the acked runs
    step_views: dict[str, dict[str, Any]]  # the steps of workflow runs that did not succeed
    executions: list[Execution]
    notes: list[dict[str, Any]]  # the ledgers' "woke" and "effect" lines
    pushes: list[Push]
    missing_events: list[str]  # acknowledged events the engine could not show
    outages: list[Outage]
    kills: dict[str, float]  # worker process -> when it was killed (the end of its executions)
    stopped_at: float  # when the surviving workers were stopped
    crons: list[CronTicks]
    unfinished_anywhere: int  # runs the engine holds that had not finished at the end
    rules: dict[str, TaskRule]  # kind -> rule, for the kinds judged attempt by attempt
    dag_outputs: Callable[[int], dict[str, Any]]
    dag_rules: dict[str, TaskRule]  # step name -> rule
    durable_tasks: frozenset[str]
    order_event: str
    keyed_task: str
    max_runs: int
    limited_task: str
    rate_limit: int
    rate_window: float


@dataclass
class Verdict:
    figures: dict[str, Any] = field(default_factory=dict)
    violations: dict[str, list[str]] = field(
        default_factory=lambda: {check: [] for check in CHECKS}
    )
    # Broken promises that are known and not fixed yet (see bench/README.md): reported with the
    # violations, not counted among them.
    known: dict[str, list[str]] = field(
        default_factory=lambda: {issue: [] for issue in KNOWN_ISSUES}
    )

    @property
    def total_violations(self) -> int:
        return sum(len(found) for found in self.violations.values())


def read_ledger(lines: Iterable[str]) -> tuple[list[Execution], list[dict[str, Any]]]:
    """Executions (a start line and its end line, if any) and the other notes of one ledger.
    A line cut short by a kill -9 in the middle of its write is ignored."""
    started: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    executions: list[Execution] = []
    notes: list[dict[str, Any]] = []

    def close(line: dict[str, Any] | None, begin: dict[str, Any]) -> None:
        extra = {
            k: v for k, v in begin.items() if k not in ("ev", "run", "attempt", "task", "proc", "t")
        }
        executions.append(
            Execution(
                run=begin["run"],
                attempt=begin["attempt"],
                task=begin["task"],
                proc=begin["proc"],
                start=begin["t"],
                end=line["t"] if line else None,
                outcome=line["outcome"] if line else None,
                fields=extra,
            )
        )

    for raw in lines:
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        ident = (line.get("run"), line.get("attempt"), line.get("proc"))
        if line["ev"] == "start":
            started[ident].append(line)  # type: ignore[index]
        elif line["ev"] == "end" and started.get(ident):  # type: ignore[arg-type]
            close(line, started[ident].pop(0))  # type: ignore[index]
        elif line["ev"] in ("woke", "effect"):
            notes.append(line)
    for begins in started.values():
        for begin in begins:
            close(None, begin)
    return executions, notes


def judge(evidence: Evidence) -> Verdict:
    verdict = Verdict()
    _finished_as_designed(evidence, verdict)
    _duplicates(evidence, verdict)
    _concurrency(evidence, verdict)
    _rate_limit(evidence, verdict)
    _crons(evidence, verdict)
    _durable_wakes(evidence, verdict)
    _faults(evidence, verdict)
    return verdict


# -- outcomes ----------------------------------------------------------------------------------


def attempts_verdict(view: Mapping[str, Any], rule: TaskRule, job: Mapping[str, Any]) -> str | None:
    """Why a run's attempts do not match its rule, or None."""
    attempts = sorted(view.get("attempts") or [], key=lambda a: a["attempt"])
    status = view["status"]
    if not attempts:
        return f"status {status} with no attempt"
    last = attempts[-1]
    if last["attempt"] > rule.retries + 1:
        return f"{last['attempt']} attempts, {rule.retries} retries allowed"
    for number, current in enumerate(attempts, start=1):
        if current["attempt"] != number:
            return f"attempt numbers {[a['attempt'] for a in attempts]}"
        planned = rule.planned(number, job)
        error = current.get("error") or {}
        if current["status"] == "succeeded":
            if planned is not None:
                return f"attempt {number} succeeded; it was to fail with {planned}"
            if current is not last:
                return f"attempt {number} succeeded, and attempt {last['attempt']} followed"
        elif current["status"] in ("failed", "timed_out"):
            if error.get("type") not in CHAOS_ERRORS and error.get("type") != planned:
                return (
                    f"attempt {number} {current['status']}: {error.get('type')}: "
                    f"{error.get('message')}"
                )
            if error.get("type") == "NonRetryableError" and current is not last:
                return f"attempt {number} raised NonRetryableError and was retried"
        else:
            return f"attempt {number} is {current['status']}"
    if last["status"] == "succeeded":
        if status != "succeeded":
            return f"its last attempt succeeded, the run is {status}"
        if view.get("output") != rule.output(job):
            return f"output {view.get('output')!r}, expected {rule.output(job)!r}"
        return None
    spent = (
        last["attempt"] == rule.retries + 1
        or (last.get("error") or {}).get("type") == "NonRetryableError"
    )
    if status != "failed" or not spent:
        return f"status {status} after {last['attempt']} attempts ({rule.retries} retries)"
    return None


def _finished_as_designed(evidence: Evidence, verdict: Verdict) -> None:
    lost, unfinished, wrong = (
        verdict.violations[k] for k in ("lost", "unfinished", "wrong_outcome")
    )
    tokens = {push.token: push for push in evidence.pushes}
    by_kind: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    for acked in evidence.acked:
        by_kind[acked.kind] += 1
        view = evidence.views.get(acked.run_id)
        label = f"{acked.kind} run {acked.run_id} (job {dict(acked.job)})"
        if view is None:
            lost.append(f"{label}: the engine does not know it")
            continue
        if view["status"] not in TERMINAL:
            unfinished.append(f"{label}: still {view['status']}")
            continue
        finished[acked.kind] += 1
        outcomes[f"{acked.kind} {view['status']}"] += 1
        problem = _outcome_problem(evidence, acked, view, tokens)
        if problem:
            wrong.append(f"{label}: {problem}")
    lost.extend(
        f"event {event_id} was acknowledged and the engine cannot show it"
        for event_id in evidence.missing_events
    )
    for push in evidence.pushes:
        if push.acknowledged and push.key == evidence.order_event and len(push.triggered) != 1:
            wrong.append(f"order event {push.event_id} started {len(push.triggered)} runs")
    if evidence.unfinished_anywhere:
        unfinished.append(
            f"{evidence.unfinished_anywhere} runs in the engine's database had not finished"
        )
    verdict.figures["runs acknowledged"] = sum(by_kind.values())
    verdict.figures["runs acknowledged by kind"] = dict(sorted(by_kind.items()))
    verdict.figures["runs finished"] = sum(finished.values())
    verdict.figures["outcomes"] = dict(sorted(outcomes.items()))


def _outcome_problem(
    evidence: Evidence, acked: Acked, view: Mapping[str, Any], tokens: Mapping[str, Push]
) -> str | None:
    job = acked.job
    if acked.kind in evidence.rules:
        return attempts_verdict(view, evidence.rules[acked.kind], job)
    if acked.kind == "dag":
        steps = [step["step"] for step in view.get("steps") or []]
        if len(steps) != len(set(steps)):
            return f"a step was created twice: {sorted(steps)}"
        if view["status"] == "succeeded":
            expected = evidence.dag_outputs(int(job["n"]))
            return (
                None
                if view.get("output") == expected
                else f"outputs {view.get('output')}, expected {expected}"
            )
        # Failed: only as the rules allow (a step's retries spent by lost workers).
        problems = []
        for step in view.get("steps") or []:
            step_view = evidence.step_views.get(str(step["run_id"]))
            rule = evidence.dag_rules.get(step["step"])
            if step_view is None or rule is None or step_view["status"] in ("cancelled", "skipped"):
                continue
            problem = attempts_verdict(step_view, rule, job)
            if problem:
                problems.append(f"step {step['step']}: {problem}")
        spent = any(s["status"] in ("failed", "timed_out") for s in view.get("steps") or [])
        if problems or not spent:
            return f"status {view['status']}: {problems or 'no step failed'}"
        return None
    if acked.kind == "order":
        if view["status"] != "succeeded" or view.get("output") != {"ship": job["n"]}:
            return f"status {view['status']}, output {view.get('output')}"
        return None
    if acked.kind == "await_go":
        if view["status"] != "succeeded":
            return f"status {view['status']}: {view.get('error')}"
        push = tokens.get(str(view.get("output")))
        if push is None or push.n != job["n"]:
            return f"output {view.get('output')!r} is no event pushed for job {job['n']}"
        return None
    return f"no rule for kind {acked.kind}"


# -- duplicates --------------------------------------------------------------------------------


def _duplicates(evidence: Evidence, verdict: Verdict) -> None:
    """Repeats of work: explained when the repeated execution's process was killed after it
    began and before the repeat began. A repeat across an engine kill, whose first execution
    may still have been unwritten (it had not ended, or ended shortly before the kill or while
    Postgres was down), is the known issue `duplicates_after_engine_kill`; any other repeat is
    a violation."""
    explained: Counter[str] = Counter()
    unexplained = verdict.violations["unexplained_duplicates"]
    after_engine_kill = verdict.known["duplicates_after_engine_kill"]
    engine_kills = [o for o in evidence.outages if o.kind == "engine"]
    postgres_down = [o for o in evidence.outages if o.kind == "postgres"]

    def killed_between(proc: str, begin: float, end: float) -> bool:
        at = evidence.kills.get(proc)
        return at is not None and begin <= at <= end

    def engine_killed_between(begin: float, ended: float | None, end: float) -> Outage | None:
        for kill in engine_kills:
            if not begin <= kill.down_at <= end:
                continue
            unwritten = (
                ended is None
                or ended > kill.down_at - 1.0
                or any(pg.down_at <= kill.down_at and pg.up_at >= ended for pg in postgres_down)
            )
            if unwritten:
                return kill
        return None

    def judge_repeat(
        what: str, previous: tuple[str, float, float | None], current: tuple[str, float]
    ) -> None:
        (proc, began, ended), (again_on, again) = previous, current
        if killed_between(proc, began, again):
            explained[what.split(" ")[0].split(":")[0]] += 1
            return
        line = (
            f"{what} ran again at {_clock(again)} on {again_on} after running on {proc} "
            f"from {_clock(began)}, a process not killed in between"
        )
        kill = engine_killed_between(began, ended, again)
        if kill is not None:
            after_engine_kill.append(f"{line}; the engine was killed at {_clock(kill.down_at)}")
        else:
            unexplained.append(line)

    by_run: dict[str, list[Execution]] = defaultdict(list)
    for execution in evidence.executions:
        if execution.task not in evidence.durable_tasks:  # durable runs replay by design
            by_run[execution.run].append(execution)
    for executions in by_run.values():
        executions.sort(key=lambda e: e.start)
        for previous, current in itertools.pairwise(executions):
            if previous.outcome == "DeliberateFailure" and current.attempt > previous.attempt:
                continue  # a planned retry
            judge_repeat(
                f"{current.task} run {current.run} attempt {current.attempt} "
                f"(before: attempt {previous.attempt}, {previous.outcome or 'no end'})",
                (previous.proc, previous.start, previous.end),
                (current.proc, current.start),
            )
    effects: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in evidence.notes:
        if line["ev"] == "effect":
            effects[line["run"]].append(line)
    for run, lines in effects.items():
        lines.sort(key=lambda line: line["t"])
        for previous, current in itertools.pairwise(lines):
            judge_repeat(
                f"durable-effect of run {run}",
                (previous["proc"], previous["t"], previous["t"]),
                (current["proc"], current["t"]),
            )
    verdict.figures["executions"] = len(evidence.executions)
    verdict.figures["duplicates (a worker killed mid-attempt)"] = sum(explained.values())
    verdict.figures["duplicates by task"] = dict(sorted(explained.items()))
    verdict.figures["duplicates after an engine kill (known issue)"] = len(after_engine_kill)


# -- flow control ------------------------------------------------------------------------------


def _interval_end(evidence: Evidence, execution: Execution) -> float:
    if execution.end is not None:
        return execution.end
    return evidence.kills.get(execution.proc, evidence.stopped_at)


def _concurrency(evidence: Evidence, verdict: Verdict) -> None:
    found = verdict.violations["concurrency"]
    by_key: dict[str, list[Execution]] = defaultdict(list)
    for execution in evidence.executions:
        if execution.task == evidence.keyed_task:
            by_key[str(execution.fields.get("key"))].append(execution)
    peak = 0
    for key, executions in sorted(by_key.items()):
        # Ends sort before starts at the same instant: a slot handed on is not an overlap.
        points = sorted(
            [(e.start, 1, e) for e in executions]
            + [(_interval_end(evidence, e), 0, e) for e in executions],
            key=lambda p: (p[0], p[1]),
        )
        running: set[Execution] = set()
        for at, is_start, execution in points:
            if not is_start:
                running.discard(execution)
                continue
            running.add(execution)
            peak = max(peak, len(running))
            if len(running) > evidence.max_runs:
                found.append(
                    f"key {key!r}: {len(running)} attempts at once at {_clock(at)}: "
                    + ", ".join(
                        f"{e.run} #{e.attempt} on {e.proc}"
                        for e in sorted(running, key=lambda e: e.start)
                    )
                )
    verdict.figures["most attempts of one key at once"] = f"{peak} (max_runs {evidence.max_runs})"


def _rate_limit(evidence: Evidence, verdict: Verdict) -> None:
    found = verdict.violations["rate_limit"]
    assigned: dict[tuple[str, int], float] = {}
    for acked in evidence.acked:
        view = evidence.views.get(acked.run_id)
        if acked.kind != "limited" or view is None:
            continue
        for entry in view.get("attempts") or []:
            if entry.get("assigned_at"):
                assigned[(acked.run_id, entry["attempt"])] = _epoch(entry["assigned_at"])
    # The engine records an attempt's latest assignment: the copy that started first after it
    # (a reattached attempt's record is the reattachment, after its start, so none).
    copies: dict[tuple[str, int], list[Execution]] = defaultdict(list)
    for execution in evidence.executions:
        if execution.task == evidence.limited_task:
            copies[(execution.run, execution.attempt)].append(execution)
    takes: list[tuple[float, bool, Execution]] = []  # (when, by the engine's clock?, execution)
    for ident, executions in copies.items():
        at = assigned.get(ident)
        after = [e for e in executions if at is not None and e.start >= at]
        timed = min(after, key=lambda e: e.start) if after else None
        for execution in executions:
            if execution is timed:
                assert at is not None
                takes.append((at, True, execution))
            else:
                takes.append((execution.start, False, execution))
    takes.sort(key=lambda take: take[0])
    limit, window = evidence.rate_limit, evidence.rate_window
    busiest = 0
    times = [take[0] for take in takes]
    for index, (at, _, _) in enumerate(takes):
        busiest = max(busiest, bisect.bisect_left(times, at + window) - index)
        if index + limit < len(takes) and takes[index + limit][0] - at < window - 1e-6:
            group = takes[index : index + limit + 1]
            found.append(
                f"{limit + 1} runs took the limit within "
                f"{takes[index + limit][0] - at:.3f}s from {_clock(at)} (times from "
                f"{'the engine' if all(t[1] for t in group) else 'engine and ledger'}"
                f"): " + ", ".join(f"{t[2].run} #{t[2].attempt}" for t in group)
            )
    verdict.figures["most rate-limited starts in one window"] = (
        f"{busiest} (limit {limit} per {window:g}s)"
    )
    verdict.figures["rate-limited starts timed by the engine"] = (
        f"{sum(1 for t in takes if t[1])} of {len(takes)}"
    )
    # For information: the same count by the workers' clocks, which lag the engine's decisions
    # by a delivery each (a window here may hold one more start than the engine let go).
    starts = sorted(t[2].start for t in takes)
    verdict.figures["most rate-limited starts in one window, by the ledger"] = max(
        (bisect.bisect_left(starts, at + window) - i for i, at in enumerate(starts)), default=0
    )


# -- crons -------------------------------------------------------------------------------------


def _crons(evidence: Evidence, verdict: Verdict) -> None:
    doubled, missed = verdict.violations["cron_doubled"], verdict.violations["cron_missed"]
    engine_down = [o for o in evidence.outages if o.kind == "engine"]
    fired_total = 0
    skipped: Counter[str] = Counter()
    for cron in evidence.crons:
        counts = Counter(tick for tick, _ in cron.runs)
        fired_total += len(counts)
        for tick, times in sorted(counts.items()):
            if times > 1:
                doubled.append(f"cron {cron.name}: tick {_clock(tick)} fired {times} times")
        for tick, status in cron.runs:
            if status != "succeeded":
                verdict.violations["wrong_outcome"].append(
                    f"cron {cron.name}: the run of tick {_clock(tick)} ended {status}"
                )
        # Judge whole seconds after the first second and before the deletion's last two.
        first, last = math.ceil(cron.created) + 1, math.floor(cron.deleted) - 2
        fired = sorted(counts)
        for tick in range(first, last + 1):
            if tick in counts:
                continue
            before = max((t for t in fired if t < tick), default=cron.created)
            after = min((t for t in fired if t > tick), default=cron.deleted)
            if cron.catch_up == "latest" and _excused(before, after, engine_down):
                skipped[cron.name] += 1
                continue
            missed.append(
                f"cron {cron.name} ({cron.catch_up}): tick {_clock(tick)} never "
                f"fired, {_outage_near(tick, evidence.outages)}"
            )
        if cron.catch_up == "latest":
            for outage in engine_down:
                early = [t for t in fired if outage.down_at < t < outage.restart_at - 1]
                if early:
                    missed.append(
                        f"cron {cron.name}: ticks {[_clock(t) for t in early]} "
                        f"missed while the engine was down all fired (latest only)"
                    )
    verdict.figures["cron ticks fired"] = fired_total
    verdict.figures["cron ticks skipped while the engine was down (latest)"] = sum(skipped.values())


def _excused(before: float, after: float, engine_down: Sequence[Outage]) -> bool:
    """A gap between fired ticks `before` and `after` that `latest` allows: the engine was
    killed after `before` fired, and `after` is the latest tick before it came back (or the
    first after)."""
    return any(
        before < outage.down_at and outage.restart_at - 1 <= after <= outage.up_at + 1
        for outage in engine_down
    )


def _outage_near(at: float, outages: Sequence[Outage]) -> str:
    near = [o for o in outages if o.down_at - 2 <= at <= o.up_at + 2]
    if not near:
        return "with no fault near it"
    return "near " + "; ".join(
        f"{o.kind} {o.target} down {_clock(o.down_at)}-{_clock(o.up_at)}" for o in near
    )


# -- durable waits -----------------------------------------------------------------------------


def _durable_wakes(evidence: Evidence, verdict: Verdict) -> None:
    early_sleep, early_event = verdict.violations["sleep_early"], verdict.violations["event_early"]
    tokens = {push.token: push for push in evidence.pushes}
    begun: dict[str, float] = {}
    for execution in evidence.executions:
        if execution.task in evidence.durable_tasks:
            begun[execution.run] = min(begun.get(execution.run, math.inf), execution.start)
    slept = woken = 0
    for line in evidence.notes:
        if line["ev"] != "woke":
            continue
        if line["kind"] == "sleep":
            slept += 1
            wake_at = line["begun"] + line["seconds"]
            if line["t"] < wake_at:
                early_sleep.append(
                    f"durable run {line['run']}: woke at {_clock(line['t'])}, "
                    f"{wake_at - line['t']:.3f}s before {_clock(wake_at)}"
                )
        else:
            woken += 1
            push = tokens.get(line["token"])
            if push is None:
                early_event.append(
                    f"durable run {line['run']}: woke with {line['token']!r}, which nobody pushed"
                )
            elif line["t"] < push.sent:
                early_event.append(
                    f"durable run {line['run']}: woke at {_clock(line['t'])}, "
                    f"before its event was pushed ({_clock(push.sent)})"
                )
            elif push.created_at is not None and push.created_at < begun.get(line["run"], 0):
                early_event.append(
                    f"durable run {line['run']}: woke with event {push.event_id} "
                    f"pushed at {_clock(push.created_at)}, before its wait "
                    f"began"
                )
    verdict.figures["durable sleeps ended"] = slept
    verdict.figures["durable event waits ended"] = woken


# -- faults ------------------------------------------------------------------------------------


def _faults(evidence: Evidence, verdict: Verdict) -> None:
    kinds = Counter(f"{o.kind} {o.detail}".strip() for o in evidence.outages)
    verdict.figures["faults injected"] = dict(sorted(kinds.items()))
    during = [p for p in evidence.pushes if p.during_outage]
    verdict.figures["events pushed during outages"] = (
        f"{len(during)} ({sum(p.acknowledged for p in during)} acknowledged)"
    )
    verdict.figures["events pushed"] = (
        f"{len(evidence.pushes)} ({sum(p.acknowledged for p in evidence.pushes)} acknowledged)"
    )


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S.%f")[:-3]
