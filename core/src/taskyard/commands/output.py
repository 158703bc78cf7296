"""How the operator commands print: rich tables for people, the REST API's JSON for scripts.

Everything shown comes from users (task names, log lines, payloads), so it is always printed as
plain text, never as rich markup: a log line reading "[red]" stays "[red]".
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from pydantic import BaseModel
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

F = TypeVar("F", bound=Callable[..., Any])

# Piped output is not wrapped to 80 columns, so that each row stays one line for grep and awk.
_PIPE_WIDTH = 1000
_CELL = 60  # longest free-form cell (payloads, labels) before it is cut, in a table
# Columns of ids are never wrapped or cut: people copy them into the next command.
_WHOLE = {"RUN", "EVENT", "CRON", "WORKER ID"}

STATUS_STYLES = {
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "yellow",
    "running": "cyan",
    "assigned": "cyan",
    "queued": "blue",
    "pending": "blue",
    "skipped": "dim",
}


def console(*, stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else _PIPE_WIDTH
    return Console(
        file=stream, width=width, highlight=False, markup=False, emoji=False, soft_wrap=True
    )


def render(renderable: RenderableType, *, stderr: bool = False) -> None:
    """Print a table or a text; piped, without the spaces rich pads lines with (so that
    `grep ... | cut` and `awk` see clean rows)."""
    out = console(stderr=stderr)
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    out.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    out.file.flush()


def print_json(value: BaseModel | Any) -> None:
    """The REST answer (a model of it, or the JSON as it came) as one document on stdout."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def print_json_line(value: BaseModel) -> None:
    """One JSON document per line (for streams such as `runs logs --follow --json`)."""
    sys.stdout.write(value.model_dump_json() + "\n")
    sys.stdout.flush()


def table(*headers: str) -> Table:
    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for header in headers:
        whole = header in _WHOLE
        grid.add_column(header, no_wrap=whole, min_width=36 if whole else None, overflow="fold")
    return grid


def row(grid: Table, *cells: Text | str | None) -> None:
    grid.add_row(*(cell if isinstance(cell, Text) else Text(cell or "") for cell in cells))


def show(grid: Table, *, empty: str) -> None:
    """The table, or `empty` (on stderr) when it has no rows."""
    if grid.row_count:
        render(grid)
    else:
        note(empty)


def fields(pairs: Iterable[tuple[str, Text | str | None]]) -> None:
    """A record as two columns of name and value (values may hold several lines)."""
    grid = Table(box=None, show_header=False, pad_edge=False)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in pairs:
        if value is not None and value != "":
            grid.add_row(Text(name), value if isinstance(value, Text) else Text(value))
    render(grid)


def heading(title: str) -> None:
    render(Text("\n" + title, style="bold"))


def note(message: str) -> None:
    """A remark for the person at the terminal, on stderr, so that stdout stays data."""
    render(Text(message), stderr=True)


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLES.get(value, ""))


def when(moment: datetime | float | None) -> str:
    """A time in UTC, to the second (what `--since` and `--until` take back)."""
    if moment is None:
        return ""
    if isinstance(moment, int | float):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"


def compact(value: Any, limit: int = _CELL) -> str:
    """JSON on one line, cut to `limit` characters for a table cell."""
    if value is None:
        return ""
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pairs(mapping: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in mapping.items())


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def json_option(command: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print the REST API's JSON answer instead of a table.",
    )(command)
