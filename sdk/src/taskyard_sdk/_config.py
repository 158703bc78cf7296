"""Where the engine is and which token to present, from arguments or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:7077"
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


@dataclass(frozen=True)
class Config:
    urls: tuple[str, ...]  # the engine nodes of a cluster (one, usually): tried in turn
    token: str | None
    token_source: str

    @property
    def url(self) -> str:
        return self.urls[0]


def resolve(url: str | None, token: str | None) -> Config:
    """URL: argument, TASKYARD_URL, or the local default; several (a cluster's nodes) may be
    given separated by commas. Token: argument, TASKYARD_TOKEN, the file named by
    TASKYARD_TOKEN_FILE, or (for a local engine) the token the engine wrote to
    `<TASKYARD_DATA_DIR or .taskyard>/token` on its first start."""
    given = url or os.environ.get("TASKYARD_URL") or DEFAULT_URL
    urls = tuple(part.strip().rstrip("/") for part in given.split(",") if part.strip())
    if not urls:
        raise ValueError(f"no engine URL in {given!r}")
    url = urls[0]
    if token:
        return Config(urls, token, "the token argument")
    if env := os.environ.get("TASKYARD_TOKEN"):
        return Config(urls, env.strip(), "TASKYARD_TOKEN")
    if file := os.environ.get("TASKYARD_TOKEN_FILE"):
        return Config(urls, _read(Path(file)), f"TASKYARD_TOKEN_FILE ({file})")
    if urlsplit(url).hostname in _LOCAL_HOSTS:
        local = Path(os.environ.get("TASKYARD_DATA_DIR", ".taskyard")) / "token"
        if local.exists():
            return Config(urls, _read(local), str(local))
    return Config(urls, None, "nowhere")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
