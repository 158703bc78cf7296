"""`TASKYARD_LOG_FORMAT=json` (or `--log-format json`): the engine and a worker, each in a
process of its own, write one JSON object a line; a worker's lines about a run, its own and the
application's through any logger, carry the run's tenant, id, task and attempt."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from taskyard.testing import EngineProcess, clean_env
from taskyard_sdk import Taskyard

WORKER = """
import logging
from taskyard_sdk import Taskyard

ty = Taskyard()


@ty.task(name="charge", retries=1)
async def charge(amount: int, ctx) -> int:
    logging.getLogger("shop").info("charging %d", amount)
    if ctx.attempt == 1:
        raise RuntimeError("the card reader hiccuped")
    return amount


ty.worker("shop", tasks=[charge]).start()
"""


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is JSON, or this fails


def test_engine_and_worker_log_json_lines_with_the_run(db_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "engine"
    engine = EngineProcess(
        ["--database-url", db_url, "--data-dir", str(data_dir)],
        clean_env(TASKYARD_LOG_FORMAT="json"),
        tmp_path / "engine.log",
    ).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        token = (data_dir / "token").read_text().strip()
        script = tmp_path / "shop.py"
        script.write_text(WORKER)
        log_path = tmp_path / "worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, str(script)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=clean_env(
                    TASKYARD_URL=engine.url, TASKYARD_TOKEN=token, TASKYARD_LOG_FORMAT="json"
                ),
            )
        ty = Taskyard(engine.url, token)

        @ty.task(name="charge", retries=1)
        async def charge(amount: int) -> int:  # the worker's; declared here to trigger it
            raise NotImplementedError

        try:
            handle = charge.run_no_wait(42)
            assert handle.result(timeout=60) == 42
        finally:
            ty.close()
        time.sleep(0.3)  # the worker's last lines reach its log
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        engine.terminate()

    engine_lines = json_lines(engine.log)
    assert any("serving on" in line["message"] for line in engine_lines)
    assert all({"at", "level", "logger", "message"} <= set(line) for line in engine_lines)

    worker_lines = json_lines(log_path.read_text())
    about_run = [line for line in worker_lines if line.get("run_id") == str(handle.run_id)]
    mine = [line for line in about_run if line["logger"] == "shop"]
    assert [(line["message"], line["attempt"]) for line in mine] == [
        ("charging 42", 1),
        ("charging 42", 2),
    ]
    for line in about_run:
        assert (line["task"], line["tenant"]) == ("charge", "default")
    failed = [line for line in about_run if "failed" in line["message"]]
    assert [(line["level"], line["attempt"]) for line in failed] == [("warning", 1)]
