"""Workflow definitions: validation and the compiled form runs are progressed with.

A definition is valid when its step names are unique, every parent is a step of the workflow, the
steps form no cycle and every expression compiles. Each problem is reported with the step or
expression it is about, so the 422 a registration gets says what to fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from taskyard.domain.expressions import ExpressionError, check
from taskyard.domain.flow import FLOW_NAMES, check_options
from taskyard.errors import Unprocessable
from taskyard_sdk.models import (
    AllOf,
    AnyOf,
    Condition,
    EventCondition,
    SleepCondition,
    StepDefinition,
    Sticky,
    TaskOptions,
    WorkflowDefinition,
)

# The variables each kind of expression may read (what the engine evaluates it over).
CONDITION_NAMES = frozenset({"input", "parents"})  # skip_if, cancel_if
WAIT_FILTER_NAMES = frozenset({"payload", "metadata", "input"})  # wait_for Event(filter=...)
EVENT_FILTER_NAMES = frozenset({"payload", "metadata", "key"})  # a workflow's event_filter

# A wait_for condition tree with numbered leaves: ("sleep", i) | ("event", i) | ("or"|"and", (...))
ConditionTree = tuple[str, object]


@dataclass(frozen=True, slots=True)
class CompiledStep:
    name: str
    task: str  # "<workflow>:<step>", the task name workers register
    parents: tuple[str, ...]
    options: TaskOptions
    skip_if: str | None
    cancel_if: str | None
    wait_for: ConditionTree | None  # all of the definition's wait_for, as one tree
    sleeps: tuple[tuple[int, float], ...]  # (leaf, seconds)
    events: tuple[tuple[int, EventCondition], ...]  # (leaf, condition)


@dataclass(frozen=True, slots=True)
class CompiledWorkflow:
    name: str
    version: int
    definition: WorkflowDefinition
    steps: dict[str, CompiledStep]  # in topological order: parents before children
    on_failure: CompiledStep | None

    def step(self, name: str) -> CompiledStep | None:
        if self.on_failure is not None and name == self.on_failure.name:
            return self.on_failure
        return self.steps.get(name)


def step_task(workflow: str, step: str) -> str:
    return f"{workflow}:{step}"


def digest(definition: WorkflowDefinition) -> str:
    """Identifies a definition's content: registering the same one again is not a new version."""
    canonical = orjson.dumps(definition.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def compile_workflow(definition: WorkflowDefinition, version: int) -> CompiledWorkflow:
    """Validate and compile; raises Unprocessable naming the first problem found."""
    name = definition.name
    by_name: dict[str, StepDefinition] = {}
    for index, step in enumerate(definition.steps):
        if step.name in by_name:
            raise Unprocessable(
                f"workflow {name!r}: steps[{index}]: step name {step.name!r} is used twice"
            )
        by_name[step.name] = step
    for step in definition.steps:
        for parent in step.parents:
            if parent not in by_name:
                raise Unprocessable(
                    f"workflow {name!r}: step {step.name!r} names parent "
                    f"{parent!r}, which is not a step of this workflow"
                )
        if len(set(step.parents)) != len(step.parents):
            raise Unprocessable(f"workflow {name!r}: step {step.name!r} names a parent twice")
    order = _topological_order(name, by_name)
    _check_expression(name, "event_filter", definition.event_filter, EVENT_FILTER_NAMES)
    for index, level in enumerate(definition.concurrency):
        _check_expression(name, f"concurrency[{index}].expression", level.expression, FLOW_NAMES)
    steps = {
        step_name: _compile_step(name, by_name[step_name], definition.sticky) for step_name in order
    }
    on_failure = None
    if definition.on_failure is not None:
        handler = definition.on_failure
        if handler.name in by_name:
            raise Unprocessable(
                f"workflow {name!r}: on_failure step {handler.name!r} has the name of another step"
            )
        if handler.parents or handler.wait_for or handler.skip_if or handler.cancel_if:
            raise Unprocessable(
                f"workflow {name!r}: on_failure step {handler.name!r} runs "
                f"after a failure and takes no parents or conditions"
            )
        on_failure = _compile_step(name, handler, definition.sticky)
    return CompiledWorkflow(name, version, definition, steps, on_failure)


def _topological_order(workflow: str, steps: dict[str, StepDefinition]) -> list[str]:
    """Kahn's algorithm, keeping definition order among independent steps."""
    waiting_on = {name: len(step.parents) for name, step in steps.items()}
    children: dict[str, list[str]] = {name: [] for name in steps}
    for name, step in steps.items():
        for parent in step.parents:
            children[parent].append(name)
    ready = [name for name, count in waiting_on.items() if count == 0]
    order = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for child in children[name]:
            waiting_on[child] -= 1
            if waiting_on[child] == 0:
                ready.append(child)
    if len(order) < len(steps):
        cycle = _find_cycle({n: steps[n].parents for n in steps if n not in order})
        raise Unprocessable(
            f"workflow {workflow!r}: steps {' -> '.join(map(repr, cycle))} form a cycle"
        )
    return order


def _find_cycle(parents: dict[str, list[str]]) -> list[str]:
    """A cycle among steps that all lie on or behind one (each has a parent in the set)."""
    start = next(iter(parents))
    path, seen = [start], {start: 0}
    while True:
        following = next(p for p in parents[path[-1]] if p in parents)
        if following in seen:
            cycle = [*path[seen[following] :], following]
            return list(reversed(cycle))  # parent -> child order
        seen[following] = len(path)
        path.append(following)


def _compile_step(workflow: str, step: StepDefinition, sticky: Sticky | None) -> CompiledStep:
    try:
        check_options(step.options)
    except ExpressionError as exc:
        raise Unprocessable(f"workflow {workflow!r}: step {step.name!r}: {exc}") from None
    options = step.options
    if sticky is not None and options.sticky is None:  # the workflow's, unless the step has its own
        options = options.model_copy(update={"sticky": sticky})
    _check_expression(workflow, f"step {step.name!r}: skip_if", step.skip_if, CONDITION_NAMES)
    _check_expression(workflow, f"step {step.name!r}: cancel_if", step.cancel_if, CONDITION_NAMES)
    sleeps: list[tuple[int, float]] = []
    events: list[tuple[int, EventCondition]] = []

    def tree(condition: Condition) -> ConditionTree:
        leaf = len(sleeps) + len(events)
        if isinstance(condition, SleepCondition):
            sleeps.append((leaf, condition.seconds))
            return ("sleep", leaf)
        if isinstance(condition, EventCondition):
            _check_expression(
                workflow,
                f"step {step.name!r}: wait_for event {condition.key!r} filter",
                condition.filter,
                WAIT_FILTER_NAMES,
            )
            events.append((leaf, condition))
            return ("event", leaf)
        kind = "or" if isinstance(condition, AnyOf) else "and"
        assert isinstance(condition, AnyOf | AllOf)
        return (kind, tuple(tree(c) for c in condition.conditions))

    wait_for = ("and", tuple(tree(c) for c in step.wait_for)) if step.wait_for else None
    return CompiledStep(
        step.name,
        step_task(workflow, step.name),
        tuple(step.parents),
        options,
        step.skip_if,
        step.cancel_if,
        wait_for,
        tuple(sleeps),
        tuple(events),
    )


def _check_expression(workflow: str, where: str, text: str | None, names: frozenset[str]) -> None:
    if text is None:
        return
    try:
        check(text, names)
    except ExpressionError as exc:
        raise Unprocessable(f"workflow {workflow!r}: {where}: {exc}") from None


def holds(
    tree: ConditionTree,
    sleeping_since: float,
    sleeps: dict[int, float],
    matched: set[int],
    now: float,
) -> bool:
    """Whether a wait_for tree holds: sleeps that have run out, events that were matched."""
    kind, value = tree
    if kind == "sleep":
        assert isinstance(value, int)
        return now >= sleeping_since + sleeps[value]
    if kind == "event":
        return value in matched
    assert isinstance(value, tuple)
    results = (holds(child, sleeping_since, sleeps, matched, now) for child in value)
    return any(results) if kind == "or" else all(results)


def key_matches(pattern: str, key: str) -> bool:
    """Exact keys, or prefixes written with a trailing '*' ("user:*")."""
    if pattern.endswith("*"):
        return key.startswith(pattern[:-1])
    return key == pattern
