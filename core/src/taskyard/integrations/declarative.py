"""Declarative workflows: YAML files of jobs whose steps call integration actions.

    name: welcome
    triggers: {events: ["user:create"], crons: []}
    jobs:
      notify:                      # jobs run in parallel; a job's steps run in order
        steps:
          - id: profile
            action: http:request   # a plugin's action, or the name of a task a worker runs
            with: {url: "https://crm.acme.test/users/{{ input.user_id }}"}
            timeout: 10s
            retries: 2
          - id: welcome
            action: email:send
            with: {to: "{{ steps.profile.body.email }}", subject: "Welcome!", body: "..."}

A file becomes a workflow definition (a step per step, each after the earlier steps of its job,
on the integration queue) and the integration worker's tasks, one per step, which render `with`
and call the action. Strings in `with` may hold CEL in `{{ }}` over `input` and `steps` (earlier
steps' outputs in the same job); a string that is one `{{ }}` keeps the value's type. Hatchet's
`{{ .field }}` is read as `{{ input.field }}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from taskyard.domain.expressions import ExpressionError, check, evaluate
from taskyard_sdk._durations import Duration, parse_duration
from taskyard_sdk.models import (
    NAME_PATTERN,
    Concurrency,
    RateLimit,
    StepDefinition,
    TaskOptions,
    WorkflowDefinition,
)

INTEGRATION_QUEUE = "integrations"
TEMPLATE = re.compile(r"\{\{\s*(.+?)\s*\}\}")
WHOLE_TEMPLATE = re.compile(r"\{\{\s*((?:(?!\{\{|\}\}).)+?)\s*\}\}")  # exactly one
STEP_REFERENCE = re.compile(r"\bsteps\.([A-Za-z_]\w*)")
TEMPLATE_NAMES = frozenset({"input", "steps"})
HATCHET_PATH = re.compile(r"\.[A-Za-z_]")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StepSpec(_Spec):
    id: str = Field(pattern=r"^[A-Za-z_]\w{0,99}$")
    action: str = Field(pattern=r"^[A-Za-z0-9_.\-]+:[A-Za-z0-9_.\-]+$")
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    timeout: float = 60.0
    retries: int = Field(default=0, ge=0, le=1000)
    backoff_factor: float | None = Field(default=None, ge=1, le=100)
    concurrency: list[Concurrency] = Field(default_factory=list, max_length=4)
    rate_limits: list[RateLimit] = Field(default_factory=list, max_length=4)

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: Duration) -> float:
        return parse_duration(value, name="timeout")


class JobSpec(_Spec):
    steps: list[StepSpec] = Field(min_length=1)


class TriggerSpec(_Spec):
    events: list[str] = Field(default_factory=list)
    crons: list[str] = Field(default_factory=list)


class WorkflowFile(_Spec):
    name: str = Field(pattern=NAME_PATTERN)
    version: int | str = 1
    triggers: TriggerSpec = Field(default_factory=TriggerSpec)
    jobs: dict[str, JobSpec] = Field(min_length=1)


class DeclarativeError(ValueError):
    """A file that cannot be used, with where and why."""

    def __init__(self, path: Path, line: int | None, reason: str) -> None:
        self.path, self.line, self.reason = path, line, reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Declared:
    path: Path
    spec: WorkflowFile
    definition: WorkflowDefinition

    def steps(self) -> list[StepSpec]:
        return [step for job in self.spec.jobs.values() for step in job.steps]


def load(
    path: Path, text: str, *, actions: Collection[str] = (), unloaded_plugins: Collection[str] = ()
) -> Declared:
    """Parse and check one file; raises DeclarativeError naming the line. `actions`: those the
    loaded plugins provide; an action named after a plugin that is installed but not loaded
    (`http:request` without `--plugin http`) is refused, since no worker would ever run it."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DeclarativeError(
            path, mark.line + 1 if mark else None, f"not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    lines = _lines(node)
    try:
        spec = WorkflowFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        where = ".".join(str(part) for part in loc)
        raise DeclarativeError(path, _line_of(lines, loc), f"{where}: {error['msg']}") from None
    seen: dict[str, str] = {}
    steps = []
    for job_name, job in spec.jobs.items():
        earlier: list[str] = []
        for index, step in enumerate(job.steps):
            at = ("jobs", job_name, "steps", index)
            if step.id in seen:
                raise DeclarativeError(
                    path,
                    _line_of(lines, (*at, "id")),
                    f"step id {step.id!r} is used twice (jobs {seen[step.id]!r} and {job_name!r})",
                )
            seen[step.id] = job_name
            plugin = step.action.partition(":")[0]
            if step.action not in actions and plugin in unloaded_plugins:
                raise DeclarativeError(
                    path,
                    _line_of(lines, (*at, "action")),
                    f"step {step.id!r}: action {step.action!r} comes from "
                    f"the {plugin} plugin, which is not loaded; start the "
                    f"engine with --plugin {plugin}",
                )
            for text_value, sub in _strings(step.with_, (*at, "with")):
                _check_templates(path, _line_of(lines, sub), job_name, step.id, text_value, earlier)
            steps.append(
                StepDefinition(
                    name=step.id,
                    parents=list(earlier),
                    options=TaskOptions(
                        execution_timeout=step.timeout,
                        retries=step.retries,
                        backoff_factor=step.backoff_factor,
                        concurrency=tuple(step.concurrency),
                        rate_limits=tuple(step.rate_limits),
                        queue=INTEGRATION_QUEUE,
                    ),
                )
            )
            earlier.append(step.id)
    try:
        definition = WorkflowDefinition(
            name=spec.name,
            on_events=spec.triggers.events,
            on_crons=spec.triggers.crons,
            steps=steps,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        raise DeclarativeError(
            path, _line_of(lines, ("triggers",)), f"triggers: {error['msg']}"
        ) from None
    return Declared(path, spec, definition)


def _expression(template: str) -> str:
    """A template's CEL; Hatchet's spelling `{{ .user.name }}` reads the input."""
    return "input" + template if HATCHET_PATH.match(template) else template


def _check_templates(
    path: Path, line: int | None, job: str, step: str, text: str, earlier: list[str]
) -> None:
    for template in TEMPLATE.findall(text):
        expression = _expression(template)
        try:
            check(expression, TEMPLATE_NAMES)
        except ExpressionError as exc:
            raise DeclarativeError(path, line, f"step {step!r}: {exc}") from None
        for reference in STEP_REFERENCE.findall(expression):
            if reference not in earlier:
                raise DeclarativeError(
                    path,
                    line,
                    f"step {step!r} reads steps.{reference}, which is not an "
                    f"earlier step of job {job!r}",
                )


def _strings(value: Any, at: tuple[Any, ...]) -> list[tuple[str, tuple[Any, ...]]]:
    """Every string inside `value`, with where it is."""
    if isinstance(value, str):
        return [(value, at)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _strings(item, (*at, key))]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in _strings(item, (*at, i))]
    return []


def render(value: Any, variables: dict[str, Any]) -> Any:
    """`with` parameters with their `{{ }}` templates evaluated."""
    if isinstance(value, str):
        whole = WHOLE_TEMPLATE.fullmatch(value.strip())
        if whole is not None:
            return evaluate(_expression(whole.group(1)), variables)
        return TEMPLATE.sub(
            lambda match: _text(evaluate(_expression(match.group(1)), variables)), value
        )
    if isinstance(value, dict):
        return {key: render(item, variables) for key, item in value.items()}
    if isinstance(value, list):
        return [render(item, variables) for item in value]
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _lines(node: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """The line (1-based) of every mapping value and sequence item, by its path."""
    lines: dict[tuple[Any, ...], int] = {}

    def walk(current: yaml.Node, at: tuple[Any, ...]) -> None:
        lines[at] = current.start_mark.line + 1
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                path = (*at, key.value)
                lines[path] = key.start_mark.line + 1
                walk(value, path)
                lines[path] = key.start_mark.line + 1
        elif isinstance(current, yaml.SequenceNode):
            for index, item in enumerate(current.value):
                walk(item, (*at, index))

    if node is not None:
        walk(node, ())
    return lines


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
