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
    url: str
    token: str | None
    token_source: str


def resolve(url: str | None, token: str | None) -> Config:
    """URL: argument, TASKYARD_URL, or the local default. Token: argument, TASKYARD_TOKEN,
    the file named by TASKYARD_TOKEN_FILE, or (for a local engine) the token the engine wrote to
    `<TASKYARD_DATA_DIR or .taskyard>/token` on its first start."""
    url = (url or os.environ.get("TASKYARD_URL") or DEFAULT_URL).rstrip("/")
    if token:
        return Config(url, token, "the token argument")
    if env := os.environ.get("TASKYARD_TOKEN"):
        return Config(url, env.strip(), "TASKYARD_TOKEN")
    if file := os.environ.get("TASKYARD_TOKEN_FILE"):
        return Config(url, _read(Path(file)), f"TASKYARD_TOKEN_FILE ({file})")
    if urlsplit(url).hostname in _LOCAL_HOSTS:
        local = Path(os.environ.get("TASKYARD_DATA_DIR", ".taskyard")) / "token"
        if local.exists():
            return Config(url, _read(local), str(local))
    return Config(url, None, "nowhere")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
