"""`taskyard runs list|show|logs|cancel|replay` and `taskyard trigger`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
from pydantic import BaseModel, ValidationError
from rich.text import Text

from taskyard.commands import output
from taskyard.commands.connection import (
    FOLLOW_RETRY,
    CommandFailed,
    engine_options,
    fail,
    run,
)
from taskyard.commands.output import json_option
from taskyard.commands.params import json_input, metadata_option, page_options, time_options
from taskyard_sdk import (
    LogLine,
    LogPage,
    NotFound,
    ResultTimeout,
    RunPage,
    RunStatus,
    RunView,
    TaskFailed,
    Taskyard,
)
from taskyard_sdk.models import RunRef, TriggerRequest, WorkflowTriggerRequest

_LOG_PAGE = 5000  # the most lines the engine gives in one page
_FOLLOW_POLL = 1.0  # seconds a follower waits for the run to end before reading new lines
_LEVEL_STYLES = {"error": "red", "critical": "red", "warning": "yellow", "debug": "dim"}


@click.group()
def runs() -> None:
    """List, inspect, tail, cancel and replay runs on a running engine."""


@runs.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in RunStatus]),
    help="Repeatable.",
)
@click.option(
    "--task",
    "tasks",
    multiple=True,
    metavar="NAME",
    help="A task, or a workflow's name. Repeatable.",
)
@time_options("Created")
@metadata_option("A key:value the run's metadata holds.")
@page_options
@json_option
@engine_options
def list_runs(
    statuses: tuple[str, ...],
    tasks: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    metadata: dict[str, str] | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """Runs, newest first, filtered as GET /api/v1/runs filters them."""

    async def fetch(client: Taskyard) -> RunPage:
        return await client.runs.aio_list(
            status=statuses,
            task=tasks,
            since=since,
            until=until,
            metadata=metadata,
            limit=limit,
            cursor=cursor,
        )

    page = run(fetch)
    if as_json:
        output.print_json(page)
        return
    grid = output.table("RUN", "TASK", "STATUS", "ATTEMPT", "CREATED", "TOOK", "METADATA")
    for summary in page.runs:
        output.row(
            grid,
            str(summary.run_id),
            summary.task,
            output.status(summary.status),
            str(summary.attempt),
            output.when(summary.created_at),
            output.took(summary.started_at, summary.finished_at),
            output.compact(output.pairs(summary.metadata)),
        )
    output.show(grid, empty="no runs match")
    if page.next_cursor:
        output.note(f"more: add --cursor {page.next_cursor}")


@runs.command("show")
@click.argument("run_id", type=click.UUID)
@json_option
@engine_options
def show_run(run_id: uuid.UUID, as_json: bool) -> None:
    """A run: its status, input, output or error, attempts, steps and children."""
    view = run(lambda client: client.runs.aio_get(run_id))
    if as_json:
        output.print_json(view)
        return
    error = view.error
    output.fields(
        [
            ("run", str(view.run_id)),
            ("task", view.task),
            ("kind", view.kind.value),
            ("status", output.status(view.status)),
            ("waiting", view.waiting_reason),
            ("attempt", str(view.attempt)),
            ("queue", view.queue),
            ("priority", str(view.priority)),
            ("metadata", output.pairs(view.metadata)),
            ("idempotency key", view.idempotency_key),
            ("created", output.when(view.created_at)),
            ("started", output.when(view.started_at)),
            ("finished", output.when(view.finished_at)),
            ("took", output.took(view.started_at, view.finished_at)),
            ("workflow run", _optional(view.workflow_run_id)),
            ("parent", _optional(view.parent_run_id)),
            ("input", output.pretty(view.input)),
            ("output", output.pretty(view.output) if view.status is RunStatus.SUCCEEDED else None),
            ("error", Text(f"{error.type}: {error.message}", style="red") if error else None),
            ("traceback", error.traceback.rstrip() if error and error.traceback else None),
        ]
    )
    if view.attempts:
        output.heading("attempts")
        grid = output.table("ATTEMPT", "STATUS", "WORKER ID", "STARTED", "TOOK", "ERROR")
        for attempt in view.attempts:
            failure = attempt.error
            output.row(
                grid,
                str(attempt.attempt),
                output.status(attempt.status),
                _optional(attempt.worker_id),
                output.when(attempt.started_at),
                output.took(attempt.started_at, attempt.finished_at),
                output.compact(f"{failure.type}: {failure.message}") if failure else "",
            )
        output.render(grid)
    if view.steps:
        output.heading("steps")
        grid = output.table("RUN", "STEP", "STATUS", "ATTEMPT", "TOOK")
        for step in view.steps:
            output.row(
                grid,
                str(step.run_id),
                step.step,
                output.status(step.status),
                str(step.attempt),
                output.took(step.started_at, step.finished_at),
            )
        output.render(grid)
    if view.children:
        output.heading("children")
        for child in view.children:
            output.render(Text(str(child)))


@runs.command("logs")
@click.argument("run_id", type=click.UUID)
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing new lines until the run has finished."
)
@json_option
@engine_options
def run_logs(run_id: uuid.UUID, follow: bool, as_json: bool) -> None:
    """The run's log lines (what its task logged with ctx.log), oldest first. With --json:
    the lines as GET /api/v1/runs/{id}/logs pages them, or with --follow one line of JSON
    per log line."""
    if follow:
        show = output.print_json_line if as_json else _print_line
        run(lambda client: _follow(client, run_id, show), retry_for=FOLLOW_RETRY)
        return
    page = run(lambda client: _all_lines(client, run_id))
    if as_json:
        output.print_json(page)
        return
    if not page.lines:
        output.note(f"run {run_id} has logged nothing")
    for line in page.lines:
        _print_line(line)


@runs.command("cancel")
@click.argument("run_id", type=click.UUID)
@json_option
@engine_options
def cancel_run(run_id: uuid.UUID, as_json: bool) -> None:
    """Cancel a queued or running run (and the runs it spawned)."""
    status = run(lambda client: client.runs.aio_cancel(run_id))
    if as_json:
        output.print_json({"run_id": str(run_id), "status": status.value})
    else:
        output.render(Text(f"run {run_id} {status.value}"))


@runs.command("replay")
@click.argument("run_id", type=click.UUID)
@json_option
@engine_options
def replay_run(run_id: uuid.UUID, as_json: bool) -> None:
    """Run a finished run again: its next attempt, with the same input."""
    view = run(lambda client: client.runs.aio_replay(run_id))
    if as_json:
        output.print_json(view)
    else:
        output.render(
            Text(f"run {run_id} replayed as attempt {view.attempt} ({view.status.value})")
        )


@click.command()
@click.argument("name")
@json_input("--input", "The run's input")
@metadata_option("A key:value to label the run with.")
@click.option("--priority", type=click.IntRange(1, 4), help="1 (lowest) to 4.")
@click.option("--idempotency-key", help="Trigger at most one run for this key.")
@click.option(
    "--wait", is_flag=True, help="Wait for the run: print its output, or its error and exit 1."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="With --wait: seconds to wait before giving up (the run goes on).",
)
@json_option
@engine_options
def trigger(
    name: str,
    input: Any,
    metadata: dict[str, str] | None,
    priority: int | None,
    idempotency_key: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Trigger a run of a task or a workflow by name and print its run id. With --wait,
    print its output (JSON) instead, or its error with exit status 1; with --json, the
    REST answer (the run, or with --wait its view)."""
    try:  # the SDK's own request models: the CLI sends what the SDK would
        body = WorkflowTriggerRequest(
            input=input,
            metadata=metadata or {},
            priority=priority,
            idempotency_key=idempotency_key,
        )
    except ValidationError as exc:
        fail(f"cannot trigger {name!r}: {exc}")

    async def start(client: Taskyard) -> tuple[RunRef, RunView | None]:
        path, request = await _trigger_request(client, name, body)
        ref = RunRef.model_validate(
            await client.transport.request(
                "POST", path, json_body=request.model_dump(mode="json", exclude_defaults=True)
            )
        )
        if not wait:
            return ref, None
        try:
            views = await client.runs.aio_wait([ref.run_id], timeout=timeout)
        except ResultTimeout:
            raise CommandFailed(
                f"run {ref.run_id} has not finished after {timeout:g}s; it goes "
                f"on (taskyard runs show {ref.run_id})"
            ) from None
        return ref, views[ref.run_id]

    ref, view = run(start)
    if view is None:
        if as_json:
            output.print_json(ref)
        else:
            click.echo(str(ref.run_id))
        return
    if as_json:
        output.print_json(view)
    elif view.status is RunStatus.SUCCEEDED:
        click.echo(output.pretty(view.output))
    if view.status is not RunStatus.SUCCEEDED:
        failure = str(TaskFailed(view.run_id, view.task, view.status, view.error))
        if view.error is not None and view.error.traceback:
            failure += f" (its traceback: taskyard runs show {view.run_id})"
        fail(failure)


async def _trigger_request(
    client: Taskyard, name: str, body: WorkflowTriggerRequest
) -> tuple[str, BaseModel]:
    """Where to post `body`: a workflow's name starts a workflow run, any other name is a
    task's (whose run waits for a worker that registers it). The engine answers which it is."""
    try:
        await client.transport.request("GET", f"/api/v1/workflows/{name}")
    except NotFound:
        try:
            return "/api/v1/runs", TriggerRequest(task=name, **dict(body))
        except ValidationError as exc:
            raise CommandFailed(f"cannot trigger task {name!r}: {exc}") from None
    return f"/api/v1/workflows/{name}/runs", body


async def _all_lines(client: Taskyard, run_id: uuid.UUID) -> LogPage:
    lines: list[LogLine] = []
    after: int | None = None
    while True:
        page = await client.runs.aio_logs(run_id, after=after, limit=_LOG_PAGE)
        lines += page.lines
        after = page.next_after if page.next_after is not None else after
        if len(page.lines) < _LOG_PAGE:
            return LogPage(lines=lines, next_after=after)


async def _follow(client: Taskyard, run_id: uuid.UUID, show: Callable[[LogLine], None]) -> None:
    """Print lines as they come until the run has finished: between reads, wait (up to
    _FOLLOW_POLL) for its end, so that the follower stops as soon as it does; after the end,
    one last read takes the lines logged just before it."""
    after: int | None = None
    finished = False
    while True:
        page = await client.runs.aio_logs(run_id, after=after, limit=_LOG_PAGE)
        for line in page.lines:
            show(line)
        after = page.next_after if page.next_after is not None else after
        if len(page.lines) == _LOG_PAGE:
            continue
        if finished:
            return
        try:
            await client.runs.aio_wait([run_id], timeout=_FOLLOW_POLL)
            finished = True
        except ResultTimeout:
            pass


def _print_line(line: LogLine) -> None:
    head = f"{output.when(line.at)} #{line.attempt} {line.level.upper():<7} "
    text = Text(head, style="dim")
    # The lines of a multi-line message stay under its first, not at the margin.
    text.append(
        line.message.replace("\n", "\n" + " " * len(head)),
        style=_LEVEL_STYLES.get(line.level.lower(), ""),
    )
    output.render(text)


def _optional(value: uuid.UUID | None) -> str:
    return "" if value is None else str(value)
