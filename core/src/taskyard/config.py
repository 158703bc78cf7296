"""Engine settings, filled from the command line and `TASKYARD_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

DEFAULT_PORT = 7077


class EngineSettings(BaseModel):
    """Everything an engine process needs to start. Every field has a CLI flag and an env var."""

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; None starts an embedded server under data_dir."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535, description="0 picks a free port.")
    data_dir: Path = Path(".taskyard")
    plugins: list[str] = Field(default_factory=list)
    migrate: bool = True
    database_wait_seconds: float = Field(
        default=30.0, ge=0, description="How long to retry a database that is not up yet."
    )
    max_request_bytes: int = Field(default=1024 * 1024, gt=0)
    heartbeat_interval: float = Field(
        default=5.0, gt=0, description="How often workers send a heartbeat."
    )
    heartbeat_timeout: float = Field(
        default=15.0,
        gt=0,
        description="A worker silent (or disconnected) this long is lost; its runs are retried.",
    )
    recovery_hold: float = Field(
        default=1.0,
        ge=0,
        description="After a restart, how long recovered runs wait for their workers to "
        "reconnect and claim them before they are assigned again.",
    )
    flush_linger: float = Field(
        default=0.0, ge=0, description="How long a write batch waits to gather more rows."
    )
    workflows_dir: Path | None = Field(
        default=None, description="Declarative workflow files; default <data_dir>/workflows."
    )
    public_url: str | None = Field(
        default=None, description="URL users reach the engine at (for links in alerts)."
    )
