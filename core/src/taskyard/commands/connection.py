"""The engine the commands talk to: `--url` and `--token`, else the SDK's own rules (its
`Taskyard` client resolves them), and whatever goes wrong there as one line and exit 1."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import aiohttp
import click

from taskyard_sdk import AuthenticationError, Taskyard, TaskyardError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# A person at a terminal wants to hear at once that the engine is down or the URL is wrong;
# only a command that follows a run for a while rides out an engine restart.
ONE_SHOT_RETRY = 0.0
FOLLOW_RETRY = 30.0

_URL_HELP = "The engine's URL. Default: TASKYARD_URL, else http://127.0.0.1:7077."
_TOKEN_HELP = (
    "API token. Default: TASKYARD_TOKEN, the file TASKYARD_TOKEN_FILE names, or for "
    "a local engine the token it wrote to <TASKYARD_DATA_DIR or .taskyard>/token."
)


def engine_options(command: F) -> F:
    """`--url` and `--token` on a command; `run` reads them back."""
    for name, text in (("--token", _TOKEN_HELP), ("--url", _URL_HELP)):
        command = click.option(
            name,
            expose_value=False,
            callback=_remember,
            help=text,
            metavar=name.removeprefix("--").upper(),
        )(command)
    return command


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    ctx.meta[f"taskyard.{param.name}"] = value


class CommandFailed(Exception):
    """What the engine (or reaching it) refused, as the one line to print."""


def run(work: Callable[[Taskyard], Awaitable[T]], *, retry_for: float = ONE_SHOT_RETRY) -> T:
    """`work(client)` on a client for the command's engine, closed afterwards; failures are
    printed as `error: ...` with exit status 1, never as a traceback."""
    ctx = click.get_current_context()
    url, token = ctx.meta.get("taskyard.url"), ctx.meta.get("taskyard.token")
    try:
        return asyncio.run(_with_client(url, token, retry_for, work))
    except CommandFailed as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)


async def _with_client(
    url: str | None, token: str | None, retry_for: float, work: Callable[[Taskyard], Awaitable[T]]
) -> T:
    # One call or a few per command: plain HTTP costs less than opening the client channel.
    client = Taskyard(url, token, retry_for=retry_for, channel=False)
    config = client.config
    try:
        if config.token is None:
            raise CommandFailed(
                f"no token for the engine at {config.url}: pass --token, set TASKYARD_TOKEN "
                f"or TASKYARD_TOKEN_FILE, or run this where the local engine keeps its data "
                f"(it writes .taskyard/token, or <TASKYARD_DATA_DIR>/token, on its first start)"
            )
        try:
            return await work(client)
        except AuthenticationError as exc:
            reason = exc.message.partition("; pass token=")[0]  # the SDK's hint is for code
            raise CommandFailed(
                f"the engine at {config.url} refused the token from {config.token_source}: {reason}"
            ) from None
        except TaskyardError as exc:
            raise CommandFailed(str(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CommandFailed(
                f"lost the connection to the engine at {config.url}: {exc or type(exc).__name__}"
            ) from None
    finally:
        await client.aio_close()


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)
