"""The examples in examples/, run as their docstrings say: engine, worker and client processes."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taskyard.testing import clean_env
from tests.e2e.conftest import Deploy
from tests.support import taskyard

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Example:
    """An example's commands, run against its engine and worker; the worker's log."""

    run: Callable[..., subprocess.CompletedProcess[str]]
    worker_log: Path


@contextlib.contextmanager
def example(name: str, deploy: Deploy, *engine_flags: str, **env: str) -> Iterator[Example]:
    """An engine and the example's worker, each in its process, as the example's docstring
    starts them; the worker must stop cleanly on SIGTERM when the block ends."""
    deployment = deploy(*engine_flags)
    environment = clean_env(
        TASKYARD_URL=deployment.url, TASKYARD_DATA_DIR=str(deployment.folder / "engine"), **env
    )
    script = str(ROOT / "examples" / f"{name}.py")
    worker_log = deployment.folder / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, script, "worker"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def run(command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, script, command],
            env=environment,
            timeout=timeout,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr + worker_log.read_text()
        return result

    try:
        yield Example(run, worker_log)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker_log.read_text()
    finally:
        worker.kill()
        worker.wait()


def test_the_hello_world_example_with_the_sync_api(deploy: Deploy) -> None:
    with example("hello_world", deploy) as ex:
        result = ex.run("trigger")
        assert result.stdout.splitlines() == [
            "greeting: 4 words, top [('hello', 2), ('world', 1), ('taskyard', 1)]",
            "TASKS ARE FUN!",
            "batch: [3, 6, 9]",
            "failed as expected: document 'blank' is empty",
            "async: 3 words",
        ]
        # The SDK closes what it opened: no "Unclosed client session" at exit.
        assert "Unclosed" not in result.stderr, result.stderr
    logged = ex.worker_log.read_text()
    assert "Unclosed" not in logged
    # A worker says what it does: its connection, each attempt, ctx.log lines, failures.
    for line in (
        "worker hello-worker connected to",
        "word_count[",
        "attempt 1 started",
        "succeeded in",
        "INFO taskyard.task: word_count[",
        "counting words of 'greeting' (attempt 1)",
        "failed in",
        "NonRetryableError: document 'blank' is empty",
    ):
        assert line in logged, (line, logged)


def test_the_signup_workflow_example(deploy: Deploy) -> None:
    with example("signup_workflow", deploy) as ex:
        assert ex.run("signup").stdout.splitlines() == [
            "Ada: run succeeded",
            "  workspace: ws-000007",
            "  email: Welcome to Acme, Ada!",
            "  newsletter: subscribed ada@example.com",
            "Grace: run succeeded",
            "  workspace: ws-000008",
            "  email: Welcome to Acme, Grace!",
            "  newsletter: skipped",
            "direct: Your workspace ws-000009 has 5 GB waiting for you.",
        ]


def test_the_llm_fairness_example(deploy: Deploy) -> None:
    with example("llm_fairness", deploy) as ex:
        lines = ex.run("demo", timeout=90).stdout.splitlines()
    positions = {
        line.split(":")[0]: int(line.split(" as call ")[1].split(" of ")[0]) for line in lines[:3]
    }
    # The two light users were served in turn with the busy one, not after its backlog.
    assert positions["ana"] <= 10, lines
    assert positions["ben"] <= 10, lines
    assert positions["busy"] == 18, lines
    assert lines[3] == "llm-tokens: 9000 of 200000 this minute"


def test_the_drip_campaign_example(deploy: Deploy, tmp_path: Path) -> None:
    emails = tmp_path / "emails.jsonl"
    with example("drip_campaign", deploy, DRIP_WAIT="3s", DRIP_EMAILS=str(emails)) as ex:
        assert ex.run("demo").stdout.splitlines() == [
            "ana: Welcome to Acme! / Thanks for upgrading to pro!",
            "ben: Welcome to Acme! / Still thinking it over? Here is 20% off.",
        ]
    sent = [json.loads(line) for line in emails.read_text().splitlines()]
    assert sorted((e["to"], e["subject"]) for e in sent) == [  # each email sent once
        ("ana@example.com", "Thanks for upgrading to pro!"),
        ("ana@example.com", "Welcome to Acme!"),
        ("ben@example.com", "Still thinking it over? Here is 20% off."),
        ("ben@example.com", "Welcome to Acme!"),
    ]


def test_the_bulk_insert_example(deploy: Deploy, empty_db_url: str) -> None:
    with example("bulk_insert", deploy, ANALYTICS_DATABASE_URL=empty_db_url) as ex:
        lines = ex.run("demo").stdout.splitlines()
    assert lines[:2] == [
        "1000 views recorded, each with its own row id: True",
        "rows stored: 1000",
    ]
    # Two sites of 500 views, batches of up to 200 of one site: 6 INSERTs at best.
    inserts = int(lines[2].split()[2])
    assert 6 <= inserts <= 50, lines
    assert lines[2].endswith("instead of 1000")
    assert "in one INSERT" in ex.worker_log.read_text()


def test_the_orders_outbox_example(deploy: Deploy, empty_db_url: str) -> None:
    installed = taskyard("outbox", "install", "--database-url", empty_db_url)
    assert installed.returncode == 0, installed.stderr
    with example(
        "orders_outbox",
        deploy,
        "--outbox",
        f"default={empty_db_url}",
        ORDERS_DATABASE_URL=empty_db_url,
    ) as ex:
        assert ex.run("demo").stdout.splitlines() == [
            "paid order: HTTP 201",
            "declined order: HTTP 402 (the card was declined)",
            "receipt for order 1 (42.00) sent",
            "order 1: receipt succeeded",
            "orders stored: 1, receipts sent: 1",
        ]
