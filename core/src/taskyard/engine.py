"""The engine process: database, plugins and the HTTP server, started and stopped as one.

    async with Engine(EngineSettings(database_url=...)) as engine:
        print(engine.url)

`stop()` is idempotent and safe before `start()`.

Over 400 lines on purpose: it is the composition root, the one place that builds every part and
wires the plugins' hooks, token revocation and trigger sources to them, in start-up order.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from taskyard.actors.alerter import Alerter
from taskyard.actors.base import SideTasks
from taskyard.actors.changes import ChangeFeed
from taskyard.actors.timers import Timers
from taskyard.config import EngineSettings
from taskyard.domain.auth import Principal, Role, parse_bearer
from taskyard.domain.runs import SharedOptions
from taskyard.errors import NotFound, Unauthorized, Unprocessable
from taskyard.http.app import build_app
from taskyard.http.client_socket import CHANNELS
from taskyard.http.dashboard import ROOT as DASHBOARD
from taskyard.http.dashboard import sign_in_link
from taskyard.http.forwarding import FORWARDER
from taskyard.http.routing import Router
from taskyard.integrations.worker import Integrations
from taskyard.plugin_manager import Plugins
from taskyard.plugins import (
    Action,
    AlertChannel,
    PushedEvent,
    RunChanged,
    RunEnded,
    TriggerSource,
)
from taskyard.services import Services
from taskyard.services.alerts import AlertRules
from taskyard.services.cluster import Cluster
from taskyard.services.metrics import Metrics
from taskyard.services.outbox import OutboxConfigError, OutboxDrainer
from taskyard.services.retention import Retention
from taskyard.services.tokens import Tokens
from taskyard.store import outbox as outbox_table
from taskyard.store.alerts import AlertRuleRepository
from taskyard.store.batch import register_node
from taskyard.store.db import TRANSIENT_ERRORS, WRITE_PLANNER, create_pool
from taskyard.store.embedded import EmbeddedPostgres
from taskyard.store.events import EventRepository
from taskyard.store.leases import LeaseRepository
from taskyard.store.migrator import MigrationError, migrate, pending_migrations
from taskyard.store.pauses import PauseRepository
from taskyard.store.persister import Persister
from taskyard.store.rate_limits import RateLimitRepository
from taskyard.store.retention import RetentionRepository
from taskyard.store.runs import RunRepository
from taskyard.store.schedules import ScheduleRepository
from taskyard.store.tenants import TenantExists, TenantRepository
from taskyard.store.token_cache import TokenCache
from taskyard.store.workflows import WorkflowRepository
from taskyard_sdk import outbox as outbox_schema
from taskyard_sdk.models import EventRequest, WorkflowDefinition

log = logging.getLogger(__name__)

LOCAL_TENANT = "default"
TOKEN_FILE = "token"


# OSErrors of a database connection (vs. e.g. a port in use, which waiting does not fix).
_CONNECTION_ERRNOS = frozenset(
    {errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}
)


def _database_went_away(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    if isinstance(exc, OSError):
        return exc.errno in _CONNECTION_ERRNOS
    return isinstance(exc, TRANSIENT_ERRORS)


class Engine:
    def __init__(self, settings: EngineSettings, *, plugins: Iterable[object] = ()) -> None:
        self.settings = settings
        self._extra_plugins = list(plugins)
        self._embedded: EmbeddedPostgres | None = None
        self._pool: asyncpg.Pool | None = None
        self._lease_pool: asyncpg.Pool | None = None  # the cluster's renewals, apart
        self._write_pool: asyncpg.Pool | None = None  # the persister's, planned for key lookups
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._plugins: Plugins | None = None
        self.repository: TenantRepository
        self.node_id = uuid.uuid4()
        self._persister: Persister | None = None
        self._services: Services | None = None
        self._timers: Timers | None = None
        self._alerter: Alerter | None = None
        self._metrics: Metrics | None = None
        self.alert_channels: dict[str, AlertChannel] = {}
        self.actions: dict[str, Action] = {}
        self._integrations: Integrations | None = None
        self._internal_tokens: dict[str, Principal] = {}
        self._token_cache: TokenCache | None = None
        self._background = SideTasks()  # trigger sources and token re-checks: cancelled at stop
        self.source_failures: Counter[str] = Counter()
        self._observe = False
        self._observers = SideTasks()  # plugin calls with committed changes: finished at stop
        self.database_url: str | None = settings.database_url
        self.outboxes: list[OutboxDrainer] = []
        self._outbox_tasks = SideTasks()  # the drainers of the tenants this node owns
        self._draining: dict[uuid.UUID, list[asyncio.Task[None]]] = {}
        self._cluster: Cluster | None = None
        self.retention: Retention | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving. Postgres going away while the engine starts (a restart, a failover)
        starts it again from the top, for as long as `database_wait_seconds` allows, as an
        unreachable database at the first connection does."""
        deadline = time.monotonic() + self.settings.database_wait_seconds
        while True:
            try:
                await self._start()
                return
            except BaseException as exc:
                await self.stop()
                if not _database_went_away(exc) or time.monotonic() >= deadline:
                    raise
                log.warning(
                    "the database went away while the engine was starting (%s); starting again", exc
                )
            self.node_id = uuid.uuid4()  # the last attempt may have registered its node
            await asyncio.sleep(0.5)

    async def _start(self) -> None:
        # Load plugins first, so a misspelt --plugin fails before anything else happens.
        self._plugins = Plugins(self.settings.plugins, self._extra_plugins)
        if self.database_url is None:
            self._embedded = EmbeddedPostgres(self.settings.data_dir)
            self.database_url = await asyncio.to_thread(self._embedded.start)
        self._pool = await create_pool(
            self.database_url, wait_seconds=self.settings.database_wait_seconds
        )
        async with self._pool.acquire() as conn:
            if self.settings.migrate:
                applied = await migrate(conn)
                if applied:
                    log.info("applied migrations: %s", ", ".join(applied))
            elif pending := await pending_migrations(conn):
                raise MigrationError(
                    f"the database lacks migrations {', '.join(pending)}; run "
                    f"`taskyard migrate` or start without --no-migrate"
                )
        self.repository = TenantRepository(self._pool)
        self._token_cache = TokenCache(
            self.repository,
            self.database_url,
            on_revoked=self._token_revoked,
            on_resumed=self._revocations_maybe_missed,
        )
        await self._token_cache.start()
        await self._bootstrap_local_tenant()
        await register_node(self._pool, self.node_id)
        self._write_pool = await create_pool(
            self.database_url, min_size=2, max_size=4, wait_seconds=0, server_settings=WRITE_PLANNER
        )
        self._persister = Persister(
            self._write_pool, self.node_id, linger=self.settings.flush_linger
        )
        await self._persister.start()
        for provided in await self._plugins.call("taskyard_alert_channels"):
            for channel in provided:
                self.alert_channels[channel.name] = channel
        self._timers = Timers()
        await self._timers.start()
        alert_rules = AlertRuleRepository(self._pool)
        self._alerter = Alerter(
            alert_rules,
            self._timers,
            channels=lambda: self.alert_channels,
            tenant_name=self._tenant_name,
            run_url=self.run_url,
        )
        await self._alerter.start()
        self._observe = self._plugins.implemented("taskyard_runs_ended")
        for provided in await self._plugins.call("taskyard_actions"):
            for action in provided:
                self.actions[action.name] = action
        self._services = Services(
            persister=self._persister,
            run_repository=RunRepository(self._pool, SharedOptions()),
            workflow_repository=WorkflowRepository(self._pool),
            event_repository=EventRepository(self._pool),
            rate_limit_repository=RateLimitRepository(self._pool),
            schedule_repository=ScheduleRepository(self._pool),
            pause_repository=PauseRepository(self._pool),
            settings=self.settings,
            timers=self._timers,
            tokens=Tokens(self.repository, self._token_cache),
            alert_rules=AlertRules(alert_rules, self._alerter, lambda: self.alert_channels),
            runs_ended=self._runs_ended,
            observe_all=self._observe,
            changes=ChangeFeed(
                self._runs_changed if self._plugins.implemented("taskyard_runs_changed") else None
            ),
        )
        await self._services.start()
        await self._bind_outboxes()

        # The cluster's ticks on connections of their own: a renewal never waits behind the
        # engine's other queries (recovering tenants can hold the whole pool for seconds).
        self._lease_pool = await create_pool(
            self.database_url, min_size=1, max_size=2, wait_seconds=0
        )
        self._cluster = Cluster(
            repository=LeaseRepository(
                self._pool, self.node_id, self.settings.lease_seconds, ticks=self._lease_pool
            ),
            directory=self._services.actors,
            persister=self._persister,
            database_url=self.database_url,
            name=self.settings.node_name
            or f"{socket.gethostname()}:{self.settings.data_dir.resolve()}",
            url=lambda: self.advertised_url,
            lease_seconds=self.settings.lease_seconds,
            renew_every=self.settings.lease_renew,
            adopted=self._tenant_adopted,
            releasing=self._tenant_releasing,
        )
        self.retention = Retention(
            RetentionRepository(self._pool),
            self._cluster.repository,
            default_days=self.settings.retention_days,
            every=self.settings.retention_every,
        )
        await self.retention.start()
        self._metrics = Metrics(
            self._services.actors,
            self._persister,
            self.repository,
            lambda: {
                "plugin_errors": self._plugins.errors if self._plugins else Counter(),
                "source_failures": self.source_failures,
                "failed_deliveries": (
                    self._alerter.failed_deliveries if self._alerter else Counter()
                ),
            },
            self._cluster,
        )
        plugin_router = Router(tags=("plugins",), channel=False)  # HTTP only: raw bodies
        await self._plugins.call("taskyard_routes", router=plugin_router)

        self._runner = web.AppRunner(
            build_app(self, [plugin_router]),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=10,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        # Serving already: calls that arrive before this node has taken its tenants wait for
        # their owner (or are forwarded to it), as during any lease's move.
        await self._cluster.start()
        self._integrations = Integrations(
            directory=self.settings.workflows_dir or self.settings.data_dir / "workflows",
            url=lambda: self.url,
            actions=self.actions,
            register=self._register_declared,
            token_for=self._internal_token,
            forget_token=self._forget_internal_token,
            loaded_plugins=self._plugins.names,
        )
        await self._integrations.start()
        await self._plugins.call("taskyard_startup", host=self)
        for provided in await self._plugins.call("taskyard_trigger_sources"):
            for source in provided:
                self._background.spawn(
                    self._run_source(source), name=f"trigger-source:{source.name}"
                )
        log.info("Taskyard engine serving on %s", self.url)
        await self._announce_dashboard()

    async def stop(self) -> None:
        """Stop serving, let requests in flight finish, write what is buffered, disconnect."""
        await self._background.cancel()
        if self.retention is not None:
            await self.retention.stop()
        if self._integrations is not None:
            integrations, self._integrations = self._integrations, None
            await integrations.stop()
        if self._cluster is not None:  # hands every tenant over while still serving
            await self._cluster.stop()
        await self._outbox_tasks.cancel()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._services is not None:
            services, self._services = self._services, None
            await services.stop()
        if self._alerter is not None:
            alerter, self._alerter = self._alerter, None
            await alerter.stop()
        await self._observers.wait()
        if self._persister is not None:
            persister, self._persister = self._persister, None
            await persister.stop()
        if self._timers is not None:
            timers, self._timers = self._timers, None
            await timers.stop()
        if self._token_cache is not None:
            token_cache, self._token_cache = self._token_cache, None
            await token_cache.stop()
        if self._plugins is not None and self._pool is not None:
            await self._plugins.call("taskyard_shutdown", host=self)
        self._plugins = None
        self._cluster = None
        for extra in (self._lease_pool, self._write_pool):
            if extra is not None:
                await extra.close()
        self._lease_pool = self._write_pool = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()
        if self._embedded is not None:
            embedded, self._embedded = self._embedded, None
            await asyncio.to_thread(embedded.stop)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- what handlers and plugins use -----------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the engine is not started")
        return self._pool

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the engine is not started")
        return self._services

    @property
    def metrics(self) -> Metrics:
        if self._metrics is None:
            raise RuntimeError("the engine is not started")
        return self._metrics

    @property
    def persister(self) -> Persister:
        if self._persister is None:
            raise RuntimeError("the engine is not started")
        return self._persister

    @property
    def token_cache(self) -> TokenCache:
        if self._token_cache is None:
            raise RuntimeError("the engine is not started")
        return self._token_cache

    @property
    def client_channels(self) -> int:
        """Client channels open now (SDKs calling over a websocket)."""
        return len(self._runner.app[CHANNELS]) if self._runner is not None else 0

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the engine is not serving yet")
        return self._port

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            raise RuntimeError("the engine is not serving")
        return self._cluster

    @property
    def http_forwarded(self) -> int:
        """Calls this node sent on to the owners of their tenants."""
        return self._runner.app[FORWARDER].forwarded if self._runner is not None else 0

    @property
    def advertised_url(self) -> str:
        """Where other nodes and workers reach this node."""
        return (self.settings.advertise_url or self.url).rstrip("/")

    @property
    def url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            raise RuntimeError("the engine is not started")
        return self._plugins

    @property
    def alerter(self) -> Alerter:
        if self._alerter is None:
            raise RuntimeError("the engine is not started")
        return self._alerter

    async def _announce_dashboard(self) -> None:
        """On a machine's own address, the one-click sign-in link for the local token (the
        one in `<data-dir>/token`, when it still signs in to this database)."""
        path = self.settings.data_dir / TOKEN_FILE
        if self.settings.host not in ("127.0.0.1", "localhost", "::1") or not path.exists():
            log.info("dashboard: %s%s (sign in with an API token)", self.url, DASHBOARD)
            return
        secret = path.read_text().strip()
        if await self.token_cache.principal(secret) is None:
            log.info("dashboard: %s%s (sign in with an API token)", self.url, DASHBOARD)
            return
        log.info("dashboard (signs in with the local token): %s", sign_in_link(self.url, secret))

    def run_url(self, run_id: uuid.UUID) -> str:
        """A run's page in the dashboard, for links in alerts."""
        base = (self.settings.public_url or self.url).rstrip("/")
        return f"{base}{DASHBOARD}/runs/{run_id}"

    async def _tenant_name(self, tenant_id: uuid.UUID) -> str:
        tenant = await self.repository.get_tenant(tenant_id)
        return tenant.name if tenant is not None else str(tenant_id)

    def _runs_ended(self, tenant_id: uuid.UUID, runs: list[RunEnded]) -> None:
        """Committed ends of runs: failures to the alerter, all of them to plugins that
        observe them (each call isolated, off the actors' paths)."""
        if self._alerter is not None and self._alerter.running:
            self._alerter.tell(self._alerter.runs_ended, tenant_id, runs)
        if self._observe and self._plugins is not None:
            self._observers.spawn(self._plugins.call("taskyard_runs_ended", runs=runs))

    async def _run_source(self, source: TriggerSource) -> None:
        """A plugin's trigger source, isolated: a failure is logged and counted, and the source
        started again after a pause that grows (up to a minute)."""
        delay = 1.0
        while True:
            try:
                await source.run(self)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.source_failures[source.name] += 1
                log.exception(
                    "trigger source %r failed; starting it again in %.0fs", source.name, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)

    @property
    def integrations(self) -> Integrations:
        if self._integrations is None:
            raise RuntimeError("the engine is not serving")
        return self._integrations

    async def _internal_token(self, tenant: str) -> str:
        """A worker token for the engine's own integration worker: in memory only, gone with
        the process."""
        found = await self.repository.tenant_named(tenant)
        if found is None:
            raise ValueError(f"no tenant named {tenant!r}")
        secret = "ty_internal_" + secrets.token_urlsafe(32)
        self._internal_tokens[secret] = Principal(
            found.tenant_id, found.name, uuid.uuid4(), Role.WORKER
        )
        return secret

    def _forget_internal_token(self, secret: str) -> None:
        self._internal_tokens.pop(secret, None)

    async def _register_declared(self, tenant: str, definition: WorkflowDefinition) -> None:
        found = await self.repository.tenant_named(tenant)
        if found is None:
            raise ValueError(
                f"no tenant named {tenant!r} (files in a folder belong to the "
                f"tenant the folder names)"
            )
        await self.services.workflows.register(found.tenant_id, definition)

    async def push_event(
        self, tenant: str, key: str, payload: Any, metadata: dict[str, str] | None = None
    ) -> PushedEvent:
        """For plugins (trigger sources): an event into a tenant named `tenant`."""
        found = await self.repository.tenant_named(tenant)
        if found is None:
            raise NotFound(f"no tenant named {tenant!r}")
        try:
            request = EventRequest(key=key, payload=payload, metadata=metadata or {})
        except ValidationError as exc:
            raise Unprocessable(f"event: {exc.errors()[0]['msg']}") from None
        [view] = await self.services.events.push(found.tenant_id, [request])
        return PushedEvent(view.event_id, list(view.triggered))

    def _runs_changed(self, tenant_id: uuid.UUID, changes: list[RunChanged]) -> None:
        """Committed state changes, to the plugins that observe them (isolated, off the
        actors' paths)."""
        if self._plugins is not None:
            self._observers.spawn(self._plugins.call("taskyard_runs_changed", changes=changes))

    def _token_revoked(self, token_id: uuid.UUID) -> None:
        """Requests are refused by the token cache; workers already connected are cut off."""
        if self._services is not None and self._services.registry.running:
            registry = self._services.registry
            registry.tell(registry.token_revoked, token_id)

    def _revocations_maybe_missed(self) -> None:
        """The revocation listener is back: look up the tokens of connected workers, whose
        revocation may have been announced while it was away."""
        if self._services is not None:
            self._background.spawn(self._recheck_worker_tokens(), name="recheck-tokens")

    async def _recheck_worker_tokens(self) -> None:
        try:
            revoked = await self.repository.revoked_among(list(self.services.registry.token_ids()))
        except Exception as exc:  # the next reconnection checks again
            log.warning("could not check the tokens of connected workers: %s", exc)
            return
        for token_id in revoked:
            self._token_revoked(token_id)

    async def authenticate(self, header: str | None) -> Principal:
        try:
            secret = parse_bearer(header)
        except ValueError as exc:
            raise Unauthorized(str(exc)) from None
        internal = self._internal_tokens.get(secret)
        if internal is not None:
            return internal
        principal = await self.token_cache.principal(secret)
        if principal is None:
            raise Unauthorized("token is invalid or has been revoked")
        return principal

    async def _bind_outboxes(self) -> None:
        """A drainer per `--outbox`, each bound to its tenant, and run by the node that owns
        that tenant (so one node drains a table); the engine's own table is installed first
        when one is bound to it."""
        self.outboxes = []
        if any(binding.url is None for binding in self.settings.outbox):
            async with self.pool.acquire() as conn:
                await outbox_schema.aio_install(conn)
        tables: dict[outbox_table.TableIdentity, OutboxDrainer] = {}
        for binding in self.settings.outbox:
            tenant = await self.repository.tenant_named(binding.tenant)
            if tenant is None:
                raise OutboxConfigError(
                    f"--outbox {binding.tenant}: there is no tenant named {binding.tenant!r} "
                    f"(create it with `taskyard tenant create {binding.tenant}`)"
                )
            drainer = OutboxDrainer(
                url=binding.url or self.database_url or "",
                tenant_id=tenant.tenant_id,
                runs=self.services.runs,
                workflows=self.services.workflows,
                events=self.services.events,
                engine_table=self._engine_outbox,
                tables=tables,
                poll=self.settings.outbox_poll,
            )
            self.outboxes.append(drainer)

    async def _tenant_adopted(self, tenant_id: uuid.UUID) -> None:
        self._draining[tenant_id] = [
            self._outbox_tasks.spawn(drainer.run(), name=f"outbox:{tenant_id}")
            for drainer in self.outboxes
            if drainer.tenant_id == tenant_id
        ]

    async def _tenant_releasing(self, tenant_id: uuid.UUID) -> None:
        tasks = self._draining.pop(tenant_id, [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _engine_outbox(self) -> outbox_table.TableIdentity | None:
        """The identity of the outbox table in the engine's own database, if there is one."""
        async with self.pool.acquire() as conn:
            try:
                return await outbox_table.identity(conn)
            except outbox_table.OutboxMissing:
                return None

    async def _bootstrap_local_tenant(self) -> None:
        """First start on an empty database: create the `default` tenant and write an admin
        token to `<data-dir>/token` (mode 0600), so local development needs no token setup."""
        if await self.repository.count_tenants() > 0:
            return
        try:
            tenant = await self.repository.create_tenant(LOCAL_TENANT)
        except TenantExists:  # another engine bootstrapped the same database at the same moment
            return
        _, secret = await self.repository.create_token(tenant.tenant_id, Role.ADMIN, "local")
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / TOKEN_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secret + "\n")
        os.chmod(path, 0o600)
        log.info("created tenant %r; its admin token is in %s", LOCAL_TENANT, path)
