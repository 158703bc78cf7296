"""The `taskyard` command line, run as a real subprocess against a real database."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest

from taskyard.testing import EngineProcess, clean_env, free_port, http_status
from taskyard_sdk import NotFound, RunStatus, RunView, Taskyard
from tests.support import taskyard


def whoami(url: str, token: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        f"{url}/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_migrate_then_up_to_date(empty_db_url: str) -> None:
    first = taskyard("migrate", "--database-url", empty_db_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 0001_tenants_and_tokens")
    again = taskyard("migrate", env=clean_env(TASKYARD_DATABASE_URL=empty_db_url))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "database is up to date"


def test_unreachable_database_is_a_one_line_error() -> None:
    result = taskyard(
        "migrate",
        "--database-wait",
        "0.3",
        "--database-url",
        f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: cannot connect to PostgreSQL")
    assert "Traceback" not in result.stderr


def test_tenants_and_tokens_from_the_command_line(db_url: str, tmp_path: Path) -> None:
    created = taskyard("tenant", "create", "acme", "--database-url", db_url)
    assert created.returncode == 0, created.stderr
    tenant_id = re.search(r"tenant id:\s+(\S+)", created.stdout).group(1)  # type: ignore[union-attr]
    admin = re.search(r"admin token:\s+(ty_\S+)", created.stdout).group(1)  # type: ignore[union-attr]

    duplicate = taskyard("tenant", "create", "acme", "--database-url", db_url)
    assert duplicate.returncode == 1
    assert "a tenant named 'acme' already exists" in duplicate.stderr

    token = taskyard(
        "token",
        "create",
        "--tenant",
        tenant_id,
        "--role",
        "worker",
        "--name",
        "w1",
        "--database-url",
        db_url,
    )
    assert token.returncode == 0, token.stderr
    token_id = re.search(r"token id:\s+(\S+)", token.stdout).group(1)  # type: ignore[union-attr]
    worker = re.search(r"token:\s+(ty_\S+)", token.stdout).group(1)  # type: ignore[union-attr]

    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(tmp_path / "d")],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    try:
        status, body = whoami(engine.url, admin)
        assert status == 200
        assert (body["tenant_id"], body["tenant_name"]) == (tenant_id, "acme")
        assert body["role"] == "admin"
        status, body = whoami(engine.url, worker)
        assert (status, body["role"], body["token_id"]) == (200, "worker", token_id)

        revoked = taskyard("token", "revoke", token_id, "--database-url", db_url)
        assert revoked.returncode == 0, revoked.stderr
        status, body = whoami(engine.url, worker)
        assert status == 401
        assert body["error"]["code"] == "unauthorized"
    finally:
        assert engine.terminate() == 0


def test_token_commands_reject_unknown_ids(db_url: str) -> None:
    unknown = "00000000-0000-0000-0000-000000000001"
    created = taskyard(
        "token", "create", "--tenant", unknown, "--role", "client", "--database-url", db_url
    )
    assert created.returncode != 0
    assert f"no tenant with id {unknown}" in created.stderr
    revoked = taskyard("token", "revoke", unknown, "--database-url", db_url)
    assert revoked.returncode != 0
    assert f"no token with id {unknown}" in revoked.stderr
    bad_role = taskyard(
        "token", "create", "--tenant", unknown, "--role", "root", "--database-url", db_url
    )
    assert bad_role.returncode == 2
    assert "'root' is not one of" in bad_role.stderr


def test_engine_settings_come_from_the_environment(db_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        TASKYARD_DATABASE_URL=db_url,
        TASKYARD_PORT=str(port),
        TASKYARD_HOST="127.0.0.1",
        TASKYARD_DATA_DIR=str(tmp_path / "d"),
        TASKYARD_PLUGINS="hello",
    )
    engine = EngineProcess([], env, tmp_path / "engine.log", port=port)  # no flags at all
    engine.start()
    try:
        token = (tmp_path / "d" / "token").read_text().strip()
        request = urllib.request.Request(
            f"{engine.url}/api/v1/hello", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["hello"] == "default"
    finally:
        assert engine.terminate() == 0
    assert "shutting down" in engine.log


def test_every_engine_setting_has_a_flag_and_a_variable_with_its_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flags are made from the settings model: a new setting gets its flag and variable, and
    a flag's default is the model's."""
    from taskyard.cli import engine as command
    from taskyard.config import EngineSettings

    for name in EngineSettings.model_fields:
        monkeypatch.delenv("TASKYARD_" + name.upper(), raising=False)
    monkeypatch.delenv("TASKYARD_DATABASE_WAIT", raising=False)
    monkeypatch.delenv("TASKYARD_WORKFLOWS", raising=False)
    assert {param.name for param in command.params} == set(EngineSettings.model_fields)
    defaults = command.make_context("engine", []).params
    assert EngineSettings(**defaults | {"plugins": []}) == EngineSettings()

    monkeypatch.setenv("TASKYARD_RECOVERY_HOLD", "2.5")
    monkeypatch.setenv("TASKYARD_FLUSH_LINGER", "0.01")
    monkeypatch.setenv("TASKYARD_MIGRATE", "false")
    monkeypatch.setenv("TASKYARD_HEARTBEAT_TIMEOUT", "30")
    given = command.make_context("engine", ["--heartbeat-timeout", "20"]).params
    assert (given["recovery_hold"], given["flush_linger"], given["migrate"]) == (2.5, 0.01, False)
    assert given["heartbeat_timeout"] == 20.0  # the flag wins over the variable


def test_a_bad_engine_setting_is_a_one_line_error_naming_its_flag() -> None:
    result = taskyard("engine", "--heartbeat-timeout", "-1", "--port", str(free_port()))
    assert result.returncode == 2
    assert "Invalid value for --heartbeat-timeout: Input should be greater than 0" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_an_outbox_is_installed_and_drained_from_the_command_line(
    db_url: str, empty_db_url: str, tmp_path: Path
) -> None:
    installed = taskyard("outbox", "install", "--database-url", empty_db_url)
    assert installed.returncode == 0, installed.stderr
    assert "taskyard_outbox is installed" in installed.stdout
    assert taskyard("outbox", "install", "--database-url", empty_db_url).returncode == 0  # again
    ty = Taskyard(url="http://127.0.0.1:1", token="unused")
    task = ty.task(name="greet")(greet)
    with psycopg.connect(empty_db_url) as conn:
        handle = task.run_in(conn, "ann")
    port = free_port()
    env = clean_env(
        TASKYARD_DATABASE_URL=db_url,
        TASKYARD_PORT=str(port),
        TASKYARD_DATA_DIR=str(tmp_path / "d"),
        TASKYARD_OUTBOX=f"default={empty_db_url}",
    )
    engine = EngineProcess([], env, tmp_path / "engine.log", port=port)
    engine.start()
    try:
        token = (tmp_path / "d" / "token").read_text().strip()
        client = Taskyard(url=engine.url, token=token)
        try:
            view = queued(client, handle.run_id)
        finally:
            client.close()
        assert (view.task, view.status, view.input) == ("greet", RunStatus.QUEUED, "ann")
    finally:
        assert engine.terminate() == 0


def greet(name: str) -> str:
    return f"hello {name}"


def queued(client: Taskyard, run_id: uuid.UUID) -> RunView:
    """The run, once the engine has drained it from the outbox."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return client.runs.get(run_id)
        except NotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_bad_outbox_is_a_one_line_error(db_url: str) -> None:
    bad_url = taskyard("engine", "--outbox", "acme=mysql://db", "--port", str(free_port()))
    assert bad_url.returncode == 2
    assert "Invalid value for --outbox: String should match pattern" in bad_url.stderr
    unknown = taskyard(
        "engine", "--database-url", db_url, "--outbox", "nobody", "--port", str(free_port())
    )
    assert unknown.returncode == 1
    assert "--outbox nobody: there is no tenant named 'nobody'" in unknown.stderr
    twice = taskyard("engine", "--outbox", "a", "--outbox", "b", "--port", str(free_port()))
    assert twice.returncode == 2
    assert "the engine's own database (TENANT alone) is given twice" in twice.stderr
    assert "Traceback" not in bad_url.stderr + unknown.stderr + twice.stderr


def test_no_migrate_refuses_a_database_that_lacks_migrations(empty_db_url: str) -> None:
    result = taskyard(
        "engine", "--no-migrate", "--database-url", empty_db_url, "--port", str(free_port())
    )
    assert result.returncode == 1
    assert "the database lacks migrations 0001_tenants_and_tokens" in result.stderr
    assert "run `taskyard migrate` or start without --no-migrate" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_plugin_stops_the_engine_listing_installed_ones(db_url: str) -> None:
    result = taskyard(
        "engine", "--database-url", db_url, "--port", str(free_port()), "--plugin", "nope"
    )
    assert result.returncode == 1
    assert (
        "unknown plugin 'nope'; installed plugins: email, hello, http, otel, slack, webhooks"
        in result.stderr
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_engine_shuts_down_cleanly_on_signals(
    db_url: str, tmp_path: Path, signal_name: str
) -> None:
    import signal

    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(tmp_path)],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    assert engine.process is not None
    engine.process.send_signal(getattr(signal, signal_name))
    assert engine.process.wait(30) == 0
    assert http_status(f"{engine.url}/healthz") is None
