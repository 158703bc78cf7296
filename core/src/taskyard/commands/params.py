"""What operators type, parsed before anything is sent: bad input is a usage error (exit 2).

Each parser is an option callback (not a `click.ParamType`, whose typing changed across click
versions): it gets the text and raises `click.BadParameter`, which click reports as
`Invalid value for '--since': ...`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from taskyard_sdk import parse_duration

F = TypeVar("F", bound=Callable[..., Any])


def json_value(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """A JSON document (`--input '{"n": 1}'`); `-` reads it from standard input."""
    if value is None:
        return None
    text = sys.stdin.read() if value == "-" else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc}): {text[:80]!r}") from None


def metadata_pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str] | None:
    """`key:value` pairs (repeatable), as runs and events carry metadata and the REST API's
    `metadata` filter takes it."""
    pairs: dict[str, str] = {}
    for value in values:
        key, colon, rest = value.partition(":")
        if not colon or not key:
            raise click.BadParameter(f"{value!r} is not key:value (e.g. customer:acme)")
        pairs[key] = rest
    return pairs or None


def moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """A point in time: ISO 8601 (`2026-12-01T09:00`, UTC unless it has an offset), or a
    duration ago (`30m`, `2h`, `1d`)."""
    if value is None:
        return None
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
        except ValueError:
            raise click.BadParameter(
                f"{value!r} is neither an ISO time (2026-12-01T09:00) nor "
                f"a duration ago (30m, 2h, 1d)"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def json_input(name: str, what: str) -> Callable[[F], F]:
    return click.option(
        name,
        callback=json_value,
        metavar="JSON",
        help=f"{what} as JSON ('-' reads it from stdin). Default: null.",
    )


def metadata_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--metadata",
        multiple=True,
        callback=metadata_pairs,
        metavar="KEY:VALUE",
        help=f"{help} Repeatable.",
    )


def time_options(what: str) -> Callable[[F], F]:
    """`--since` and `--until`, as the REST API's list endpoints filter by creation time."""

    def decorate(command: F) -> F:
        command = click.option(
            "--until",
            callback=moment,
            metavar="TIME",
            help=f"{what} before; the same forms as --since.",
        )(command)
        return click.option(
            "--since",
            callback=moment,
            metavar="TIME",
            help=f"{what} at or after: an ISO time (UTC unless it says) or a "
            f"duration ago such as 30m, 2h, 1d.",
        )(command)

    return decorate


def page_options(command: F) -> F:
    command = click.option("--cursor", help="The previous page's next cursor.")(command)
    return click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)(
        command
    )
