"""The examples in examples/, run as their docstrings say: engine, worker and client processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from taskyard.testing import EngineProcess, clean_env

ROOT = Path(__file__).resolve().parents[2]


def test_the_signup_workflow_example(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / ".taskyard"
    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(data_dir)],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    env = clean_env(TASKYARD_URL=engine.url, TASKYARD_DATA_DIR=str(data_dir))
    script = str(ROOT / "examples" / "signup_workflow.py")
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, script, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        result = subprocess.run(
            [sys.executable, script, "signup"],
            env=env,
            timeout=60,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr + worker_log.read_text()
        assert result.stdout.splitlines() == [
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
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker_log.read_text()
    finally:
        worker.kill()
        worker.wait()
        engine.kill()


def test_the_llm_fairness_example(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / ".taskyard"
    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(data_dir)],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    env = clean_env(TASKYARD_URL=engine.url, TASKYARD_DATA_DIR=str(data_dir))
    script = str(ROOT / "examples" / "llm_fairness.py")
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, script, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        result = subprocess.run(
            [sys.executable, script, "demo"],
            env=env,
            timeout=90,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr + worker_log.read_text()
        lines = result.stdout.splitlines()
        positions = {
            line.split(":")[0]: int(line.split(" as call ")[1].split(" of ")[0])
            for line in lines[:3]
        }
        # The two light users were served in turn with the busy one, not after its backlog.
        assert positions["ana"] <= 10, lines
        assert positions["ben"] <= 10, lines
        assert positions["busy"] == 18, lines
        assert lines[3] == "llm-tokens: 9000 of 200000 this minute"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker_log.read_text()
    finally:
        worker.kill()
        worker.wait()
        engine.kill()


def test_the_drip_campaign_example(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / ".taskyard"
    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(data_dir)],
        clean_env(),
        tmp_path / "engine.log",
    ).start()
    emails = tmp_path / "emails.jsonl"
    env = clean_env(
        TASKYARD_URL=engine.url,
        TASKYARD_DATA_DIR=str(data_dir),
        DRIP_WAIT="3s",
        DRIP_EMAILS=str(emails),
    )
    script = str(ROOT / "examples" / "drip_campaign.py")
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, script, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        result = subprocess.run(
            [sys.executable, script, "demo"],
            env=env,
            timeout=60,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr + worker_log.read_text()
        assert result.stdout.splitlines() == [
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
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker_log.read_text()
    finally:
        worker.kill()
        worker.wait()
        engine.kill()
