"""Engine settings, filled from the command line and `TASKYARD_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from taskyard.domain.limits import MIB, PayloadLimits

DEFAULT_PORT = 7077


class OutboxBinding(BaseModel):
    """An outbox table the engine drains into one tenant: in an application's database
    (`url`), or in the engine's own (no url)."""

    tenant: str = Field(min_length=1)
    url: str | None = Field(default=None, pattern=r"^postgres(ql)?://")

    @classmethod
    def parse(cls, value: Any) -> Any:
        """`TENANT=URL` or `TENANT` (as the command line and TASKYARD_OUTBOX give it)."""
        if not isinstance(value, str):
            return value
        tenant, _, url = value.partition("=")
        return {"tenant": tenant.strip(), "url": url.strip() or None}


class EngineSettings(BaseModel):
    """Everything an engine process needs to start. Every field has a CLI flag and an env var."""

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. Without one, the embedded server in the data dir is used.",
    )
    host: str = Field(default="127.0.0.1", description="Address to serve on.")
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="0 picks a free port.")
    data_dir: Path = Field(
        default=Path(".taskyard"),
        description="Where the embedded database and the local token live.",
    )
    plugins: list[str] = Field(default_factory=list, description="Plugins to load, by name.")
    migrate: bool = Field(default=True, description="Apply pending migrations on start.")
    database_wait_seconds: float = Field(
        default=30.0, ge=0, description="Seconds to keep retrying an unreachable database."
    )
    max_request_bytes: int = Field(
        default=8 * MIB,
        gt=0,
        description="The largest request body or websocket frame accepted (413 beyond); it "
        "bounds a whole batch, and so every payload in it.",
    )
    max_input_bytes: int = Field(
        default=MIB, gt=0, description="The largest input of a run, as JSON (413 beyond)."
    )
    max_output_bytes: int = Field(
        default=MIB,
        gt=0,
        description="The largest output of a task, durable step or stream chunk, as JSON; a "
        "larger one fails its attempt.",
    )
    max_event_bytes: int = Field(
        default=MIB, gt=0, description="The largest event payload, as JSON (413 beyond)."
    )
    max_log_line_bytes: int = Field(
        default=64 * 1024, gt=0, description="Log lines longer than this are kept cut, noted."
    )
    heartbeat_interval: float = Field(
        default=5.0, gt=0, description="Seconds between worker heartbeats."
    )
    heartbeat_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds a worker may be silent (or disconnected) before it is lost and its "
        "runs are retried.",
    )
    recovery_hold: float = Field(
        default=1.0,
        ge=0,
        description="After a restart, seconds recovered runs wait for their workers to "
        "reconnect and claim them before they are assigned again.",
    )
    flush_linger: float = Field(
        default=0.0, ge=0, description="Seconds a write batch waits to gather more rows."
    )
    workflows_dir: Path | None = Field(
        default=None, description="Declarative workflow files (YAML); default <data-dir>/workflows."
    )
    outbox: list[OutboxBinding] = Field(
        default_factory=list,
        description="An outbox to drain, as TENANT=URL (an application database's "
        "taskyard_outbox table, its runs in that tenant) or TENANT alone (the engine's own "
        "database).",
    )
    outbox_poll: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between polls of an outbox, a safety net beside its notifications.",
    )
    metrics_token: str | None = Field(
        default=None,
        description="The bearer token /metrics asks for; without one, only this machine may "
        "scrape.",
    )
    node_name: str | None = Field(
        default=None,
        description="This engine node's name in its cluster (default: host name and port). A "
        "node restarted with the same name takes its leases back at once.",
    )
    advertise_url: str | None = Field(
        default=None,
        description="The URL other nodes and workers reach this node at (default: the address "
        "it serves on).",
    )
    lease_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a node's tenant leases last unrenewed: a node that dies loses its "
        "tenants to the others after this long.",
    )
    lease_renew: float = Field(
        default=1.0, gt=0, description="Seconds between a node's heartbeats and lease renewals."
    )
    public_url: str | None = Field(
        default=None, description="The URL users reach the engine at, for links in alerts."
    )
    retention_days: float = Field(
        default=7.0,
        gt=0,
        description="Days a finished run (with its events, logs and durable log) and a pushed "
        "event are kept, for tenants without a retention of their own.",
    )
    retention_every: float = Field(
        default=3600.0,
        gt=0,
        description="Seconds between retention sweeps; each also makes the coming days' "
        "history partitions.",
    )

    def payload_limits(self) -> PayloadLimits:
        return PayloadLimits.of(
            input_bytes=self.max_input_bytes,
            output_bytes=self.max_output_bytes,
            event_bytes=self.max_event_bytes,
            log_line_bytes=self.max_log_line_bytes,
        )

    @field_validator("outbox")
    @classmethod
    def _one_binding_per_outbox(cls, bindings: list[OutboxBinding]) -> list[OutboxBinding]:
        urls = [binding.url for binding in bindings]
        for url in urls:
            if urls.count(url) > 1:
                where = "an outbox URL" if url else "the engine's own database (TENANT alone)"
                raise ValueError(f"{where} is given twice: an outbox drains into one tenant")
        return bindings

    @field_validator("outbox", mode="before")
    @classmethod
    def _parse_outboxes(cls, values: Any) -> Any:
        return (
            [OutboxBinding.parse(v) for v in values] if isinstance(values, list | tuple) else values
        )
