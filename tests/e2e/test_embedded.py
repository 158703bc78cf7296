"""`taskyard engine` with no database URL runs on an embedded PostgreSQL under its data dir."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from taskyard.store.embedded import EmbeddedPostgres
from taskyard.testing import EngineProcess, clean_env
from tests.support import taskyard

pytestmark = pytest.mark.slow


def whoami(url: str, token: str) -> dict[str, str]:
    request = urllib.request.Request(
        f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def postgres_running(data_dir: Path) -> bool:
    result = subprocess.run(
        ["pgrep", "-f", f"postgres.*-D {data_dir / 'pg'}"], capture_output=True, check=False
    )
    return result.returncode == 0


def test_embedded_engine_serves_restarts_and_stops_its_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    engine = EngineProcess(["--data-dir", str(data_dir)], clean_env(), tmp_path / "e.log")
    started = time.monotonic()
    engine.start(wait=15)
    first_start = time.monotonic() - started
    try:
        token_file = data_dir / "token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert whoami(engine.url, token)["tenant_name"] == "default"
        assert postgres_running(data_dir)
    finally:
        assert engine.terminate() == 0
    assert not postgres_running(data_dir), "the engine stops the database it started"
    assert first_start < 15

    # Tenant management works against the embedded database while the engine is down ...
    created = taskyard("tenant", "create", "second", "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    assert not postgres_running(data_dir), "a CLI command stops the database it started"

    # ... and the next start reuses the cluster: same tenant, same token, no new bootstrap.
    engine.start(wait=15)
    try:
        assert whoami(engine.url, token)["tenant_name"] == "default"
        assert token_file.read_text().strip() == token
        assert "initialising embedded PostgreSQL" not in engine.log.split("shutting down")[-1]
    finally:
        assert engine.terminate() == 0


def test_a_running_embedded_server_is_reused_and_left_running(tmp_path: Path) -> None:
    outside = EmbeddedPostgres(tmp_path)
    outside.start()
    try:
        migrated = taskyard("migrate", "--data-dir", str(tmp_path))
        assert migrated.returncode == 0, migrated.stderr
        assert outside.is_running(), "a server started by someone else keeps running"
    finally:
        outside.stop()
    assert not outside.is_running()


def test_missing_binaries_name_both_remedies(tmp_path: Path) -> None:
    env = clean_env(PATH="/nonexistent")
    code = (
        "import importlib.util, pathlib, taskyard.store.embedded as e; "
        "importlib.util.find_spec = lambda name: None; "
        "pathlib.Path.glob = lambda self, pattern: iter(()); "
        "e.find_binaries()"
    )
    import sys

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 1
    assert "--database-url" in result.stderr
    assert "pip install pgserver" in result.stderr
