"""The `taskyard` command: run the engine, migrate the database, manage tenants and tokens, and
the operator commands (`runs`, `workers`, `tasks`, `trigger`, `events`, `crons`) that talk to a
running engine."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from taskyard import __version__
from taskyard.commands import COMMANDS
from taskyard.config import EngineSettings
from taskyard.domain.auth import Role
from taskyard_sdk.logs import configure_logging

if TYPE_CHECKING:
    import asyncpg

    from taskyard.store.tenants import TenantRepository

# The engine's own modules are imported by the commands that use them: the operator commands
# need only the SDK, and start in a fraction of the time.

T = TypeVar("T")


def _expected() -> tuple[type[BaseException], ...]:
    """Failures we explain in one line instead of a traceback."""
    import asyncpg

    from taskyard.plugin_manager import UnknownPluginError
    from taskyard.services.outbox import OutboxConfigError
    from taskyard.store.db import DatabaseUnavailable
    from taskyard.store.embedded import EmbeddedPostgresError
    from taskyard.store.migrator import MigrationError
    from taskyard.store.tenants import TenantExists

    return (
        MigrationError,
        OutboxConfigError,
        UnknownPluginError,
        DatabaseUnavailable,
        EmbeddedPostgresError,
        TenantExists,
        OSError,
        asyncpg.PostgresError,
    )


def _run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run
    else:
        runner = uvloop.run
    expected = _expected()
    try:
        return runner(main)
    except expected as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


database_url_option = click.option(
    "--database-url",
    envvar="TASKYARD_DATABASE_URL",
    default=None,
    help="PostgreSQL URL. Without one, the embedded server in --data-dir is used.",
)
database_wait_option = click.option(
    "--database-wait",
    envvar="TASKYARD_DATABASE_WAIT",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds to keep retrying an unreachable database.",
)
data_dir_option = click.option(
    "--data-dir",
    envvar="TASKYARD_DATA_DIR",
    default=".taskyard",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the embedded database and the local token live.",
)


@click.group()
@click.version_option(__version__, prog_name="taskyard")
@click.option(
    "--log-level",
    envvar="TASKYARD_LOG_LEVEL",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "--log-format",
    envvar="TASKYARD_LOG_FORMAT",
    default="text",
    show_default=True,
    type=click.Choice(["text", "json"]),
    help="json: one object a line, lines about a run with its tenant, run id, task, attempt.",
)
def main(log_level: str, log_format: Literal["text", "json"]) -> None:
    """Taskyard: durable task queue and workflow orchestrator on PostgreSQL."""
    configure_logging(log_level, log_format)


# Flags named otherwise than their settings field (the field names read better in code).
_FLAG_NAMES = {
    "database_wait_seconds": "database-wait",
    "workflows_dir": "workflows",
    "plugins": "plugin",
}
# Repeatable flags, and how their variable separates values (None: by whitespace, since a
# PostgreSQL URL may hold commas).
_LISTS = {"plugins": ",", "outbox": None}
_CLICK_TYPES: dict[Any, Any] = {int: int, float: float, str: str, Path: click.Path(path_type=Path)}


def _engine_options(command: Callable[..., None]) -> Callable[..., None]:
    """One flag and one `TASKYARD_*` variable per `EngineSettings` field, with the field's
    description and default: the settings model is the one place engine defaults live, and it
    validates what is given."""
    for name, field in reversed(EngineSettings.model_fields.items()):
        flag = _FLAG_NAMES.get(name, name.replace("_", "-"))
        envvar = "TASKYARD_" + (name if name in _LISTS else flag).upper().replace("-", "_")
        help_text = field.description or ""
        if field.annotation is bool:
            option = click.option(
                f"--{flag}/--no-{flag}",
                name,
                envvar=envvar,
                default=field.default,
                show_default=True,
                help=help_text,
            )
        elif name in _LISTS:
            separator = "comma" if _LISTS[name] == "," else "space"
            option = click.option(
                f"--{flag}",
                name,
                multiple=True,
                metavar=name.upper().removesuffix("S"),
                help=f"{help_text} Repeatable; {envvar} is {separator}-separated.",
            )
        else:
            base = next(
                t
                for t in (int, float, Path, str)
                if t in (field.annotation, *getattr(field.annotation, "__args__", ()))
            )
            option = click.option(
                f"--{flag}",
                name,
                envvar=envvar,
                default=field.default,
                type=_CLICK_TYPES[base],
                help=help_text,
                show_default=True,
            )
        command = option(command)
    return command


@main.command()
@_engine_options
def engine(**given: Any) -> None:
    """Run the engine until SIGINT or SIGTERM."""
    for name, separator in _LISTS.items():
        if not given[name]:
            variable = os.environ.get(f"TASKYARD_{name.upper()}", "")
            given[name] = [v.strip() for v in variable.split(separator) if v.strip()]
    from pydantic import ValidationError

    try:
        settings = EngineSettings(**given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = str(error["loc"][0])
        flag = _FLAG_NAMES.get(name, name.replace("_", "-"))
        raise click.BadParameter(
            f"{error['msg']} (got {error.get('input')!r})", param_hint=f"--{flag}"
        ) from None
    _run(_serve(settings))


def _collect_garbage_less() -> None:
    """The engine holds many long-lived objects (a queue's runs) and makes few reference cycles,
    so the collector's scans of them are mostly wasted: everything start-up built (modules,
    schemas, the expression grammar) is frozen out of collections, and collections run about
    70 times less often (a run in a batch of 1,000 cost 25-36 µs of CPU with the defaults,
    16-24 µs with these)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def _serve(settings: EngineSettings) -> None:
    from taskyard.engine import Engine

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    engine = Engine(settings)
    await engine.start()
    _collect_garbage_less()
    try:
        await stop.wait()
        logging.getLogger("taskyard").info("shutting down")
    finally:
        await engine.stop()


@contextlib.asynccontextmanager
async def _database(
    database_url: str | None, data_dir: Path, wait_seconds: float
) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the given database, or on the embedded one (started just for this command
    when the engine is not running, and stopped again after)."""
    from taskyard.store.db import create_pool
    from taskyard.store.embedded import EmbeddedPostgres

    embedded = None
    if database_url is None:
        embedded = EmbeddedPostgres(data_dir)
        database_url = await asyncio.to_thread(embedded.start)
    try:
        pool = await create_pool(database_url, min_size=1, max_size=2, wait_seconds=wait_seconds)
        try:
            yield pool
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _repository(pool: asyncpg.Pool) -> TenantRepository:
    from taskyard.store.migrator import MigrationError, pending_migrations
    from taskyard.store.tenants import TenantRepository

    async with pool.acquire() as conn:
        if pending := await pending_migrations(conn):
            raise MigrationError(
                f"the database lacks migrations {', '.join(pending)}; run `taskyard migrate` first"
            )
    return TenantRepository(pool)


@main.command("migrate")
@database_url_option
@database_wait_option
@data_dir_option
def migrate_command(database_url: str | None, database_wait: float, data_dir: Path) -> None:
    """Apply pending database migrations."""
    from taskyard.store.migrator import migrate

    async def run() -> list[str]:
        async with _database(database_url, data_dir, database_wait) as pool, pool.acquire() as conn:
            return await migrate(conn)

    applied = _run(run())
    click.echo(f"applied: {', '.join(applied)}" if applied else "database is up to date")


@main.group()
def outbox() -> None:
    """Transactional enqueue: the outbox table that applications write their triggers to."""


@outbox.command("install")
@database_url_option
@database_wait_option
@data_dir_option
def outbox_install(database_url: str | None, database_wait: float, data_dir: Path) -> None:
    """Create the taskyard_outbox table in a database (an application's, given by
    --database-url); the engine drains it with --outbox TENANT=URL."""
    from taskyard_sdk.outbox import TABLE, aio_install

    async def run() -> None:
        async with _database(database_url, data_dir, database_wait) as pool, pool.acquire() as conn:
            await aio_install(conn)

    _run(run())
    click.echo(f"{TABLE} is installed")


@main.group()
def tenant() -> None:
    """Manage tenants."""


@tenant.command("create")
@click.argument("name")
@database_url_option
@database_wait_option
@data_dir_option
def tenant_create(
    name: str, database_url: str | None, database_wait: float, data_dir: Path
) -> None:
    """Create a tenant and print its id and an admin token (shown once)."""

    async def run() -> tuple[uuid.UUID, str]:
        async with _database(database_url, data_dir, database_wait) as pool:
            repository = await _repository(pool)
            created = await repository.create_tenant(name)
            _, secret = await repository.create_token(created.tenant_id, Role.ADMIN, "admin")
            return created.tenant_id, secret

    tenant_id, secret = _run(run())
    click.echo(f"tenant id:   {tenant_id}")
    click.echo(f"admin token: {secret}")
    click.echo("Store the token now: it is not shown again.", err=True)


@tenant.command("retention")
@click.option("--tenant", "tenant_id", required=True, type=click.UUID, help="Tenant id.")
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    help="Days the tenant's finished runs and pushed events are kept.",
)
@click.option("--engine-default", is_flag=True, help="Keep them as long as the engine's default.")
@database_url_option
@database_wait_option
@data_dir_option
def tenant_retention(
    tenant_id: uuid.UUID,
    days: float | None,
    engine_default: bool,
    database_url: str | None,
    database_wait: float,
    data_dir: Path,
) -> None:
    """Set how long a tenant's history is kept (the next retention sweep applies it)."""
    if (days is not None) == engine_default:
        raise click.UsageError("give either --days or --engine-default")

    async def run() -> bool:
        async with _database(database_url, data_dir, database_wait) as pool:
            return await (await _repository(pool)).set_retention(tenant_id, days)

    if not _run(run()):
        raise click.ClickException(f"no tenant with id {tenant_id}")
    kept = f"{days:g} days" if days is not None else "the engine's --retention-days"
    click.echo(f"tenant {tenant_id} keeps its history for {kept}")


@main.group()
def token() -> None:
    """Manage API tokens."""


@token.command("create")
@click.option("--tenant", "tenant_id", required=True, type=click.UUID, help="Tenant id.")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--name", default="", help="A label to recognise the token by.")
@database_url_option
@database_wait_option
@data_dir_option
def token_create(
    tenant_id: uuid.UUID,
    role: str,
    name: str,
    database_url: str | None,
    database_wait: float,
    data_dir: Path,
) -> None:
    """Create a token for a tenant and print it (shown once)."""

    async def run() -> tuple[uuid.UUID, str] | None:
        async with _database(database_url, data_dir, database_wait) as pool:
            repository = await _repository(pool)
            if await repository.get_tenant(tenant_id) is None:
                return None
            info, secret = await repository.create_token(tenant_id, Role(role), name)
            return info.token_id, secret

    created = _run(run())
    if created is None:
        raise click.ClickException(f"no tenant with id {tenant_id}")
    click.echo(f"token id: {created[0]}")
    click.echo(f"token:    {created[1]}")


@token.command("revoke")
@click.argument("token_id", type=click.UUID)
@database_url_option
@database_wait_option
@data_dir_option
def token_revoke(
    token_id: uuid.UUID, database_url: str | None, database_wait: float, data_dir: Path
) -> None:
    """Revoke a token by its id."""

    async def run() -> bool:
        async with _database(database_url, data_dir, database_wait) as pool:
            return await (await _repository(pool)).revoke_token(token_id) is not None

    if not _run(run()):
        raise click.ClickException(f"no token with id {token_id}")
    click.echo(f"revoked {token_id}")


@main.command("plugins")
def plugins_command() -> None:
    """List the installed plugins (usable with `taskyard engine --plugin NAME`)."""
    from taskyard.plugin_manager import installed_plugins

    found = installed_plugins()
    if not found:
        click.echo("no plugins installed")
    for name, entry_point in sorted(found.items()):
        click.echo(f"{name}\t{entry_point.value}")


for _command in COMMANDS:
    main.add_command(_command)
