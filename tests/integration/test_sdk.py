"""The SDK as a user meets it: exports, configuration, errors, the synchronous API across real
processes, and a worker draining on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

import taskyard_sdk
from taskyard.engine import Engine
from taskyard.testing import free_port
from taskyard_sdk import (
    AuthenticationError,
    EngineUnreachable,
    RunStatus,
    Taskyard,
    parse_duration,
)
from taskyard_sdk._config import resolve
from tests.support import LEDGER_TABLE, WorkerProcess

ROOT = Path(__file__).resolve().parents[2]

EXPORTS = {
    "ApiError",
    "AuthenticationError",
    "Conflict",
    "BatchContext",
    "Batching",
    "ConnectionLost",
    "Context",
    "Depends",
    "EngineUnreachable",
    "ErrorInfo",
    "InvalidInput",
    "InvalidRequest",
    "NonRetryableError",
    "NotFound",
    "PermissionDenied",
    "LogLine",
    "LogPage",
    "ResultTimeout",
    "RetryAfter",
    "RunHandle",
    "RunPage",
    "RunStatus",
    "RunView",
    "Runs",
    "Task",
    "TaskFailed",
    "TaskOptions",
    "Taskyard",
    "TaskyardError",
    "Unavailable",
    "Worker",
    "WorkerStopped",
    "__version__",
    "parse_duration",
    # workflows and events
    "And",
    "Event",
    "EventPage",
    "EventRequest",
    "EventView",
    "Events",
    "Or",
    "RunKind",
    "Sleep",
    "Workflow",
    "WorkflowInfo",
    "WorkflowTask",
    # flow control and routing
    "Concurrency",
    "ConcurrencyStrategy",
    "Label",
    "QueueOrder",
    "RateDuration",
    "RateLimit",
    "RateLimitView",
    "RateLimits",
    "Sticky",
    "TaskSettings",
    # scheduling
    "CatchUp",
    "CronView",
    "Crons",
    # pausing
    "PauseKind",
    "PauseView",
    "Pauses",
    "Schedulable",
    "ScheduleView",
    "Schedules",
    # durable tasks
    "DurableContext",
    "NonDeterminismError",
    "WaitResult",
    "WaitTimeout",
}


def test_the_public_api_is_pinned() -> None:
    assert set(taskyard_sdk.__all__) == EXPORTS
    for name in EXPORTS:
        assert getattr(taskyard_sdk, name) is not None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1w", 604800),
        ("1.5", 1.5),
        (7, 7.0),
        (timedelta(minutes=2), 120.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["soon", "5 minutes", "-1", "1x", "", True])
def test_bad_durations_name_the_option(bad: object) -> None:
    with pytest.raises(ValueError, match="execution_timeout"):
        parse_duration(bad, name="execution_timeout")  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(st.integers(0, 1000), st.sampled_from(["ms", "s", "m", "h", "d"])),
        min_size=1,
        max_size=4,
    )
)
def test_compound_durations_add_up(parts: list[tuple[int, str]]) -> None:
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * unit[u] for n, u in parts))


def test_token_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TASKYARD_URL", "TASKYARD_TOKEN", "TASKYARD_TOKEN_FILE", "TASKYARD_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve(None, None).token is None
    (tmp_path / ".taskyard").mkdir()
    (tmp_path / ".taskyard" / "token").write_text("ty_local\n")
    assert resolve(None, None).token == "ty_local"
    assert resolve("http://engine.internal:7077", None).token is None, (
        "the local token file is only for a local engine"
    )
    file = tmp_path / "secret"
    file.write_text("ty_file")
    monkeypatch.setenv("TASKYARD_TOKEN_FILE", str(file))
    assert resolve(None, None).token == "ty_file"
    monkeypatch.setenv("TASKYARD_TOKEN", "ty_env")
    assert resolve(None, None).token == "ty_env"
    assert resolve(None, "ty_arg").token == "ty_arg"
    monkeypatch.setenv("TASKYARD_URL", "http://10.1.2.3:9000/")
    assert resolve(None, None).url == "http://10.1.2.3:9000"


async def test_an_unreachable_engine_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    ty = Taskyard(url=url, token="ty_x", retry_for=0.3)

    @ty.task
    async def nothing(n: int) -> int:
        return n

    started = time.monotonic()
    with pytest.raises(EngineUnreachable, match=rf"cannot reach the Taskyard engine at {url}"):
        await nothing.aio_run_no_wait(1)
    assert time.monotonic() - started >= 0.3, "retried before giving up"
    await ty.aio_close()


async def test_bad_and_missing_tokens_say_what_to_do(engine: Engine) -> None:
    ty = Taskyard(url=engine.url, token="ty_" + "x" * 43)
    with pytest.raises(AuthenticationError, match=r"invalid or has been revoked.*TASKYARD_TOKEN"):
        await ty.runs.aio_list()
    await ty.aio_close()
    no_token = Taskyard(url="http://db.example:7077")
    with pytest.raises(AuthenticationError, match="no token"):
        await no_token.runs.aio_list()


async def test_a_worker_with_a_bad_token_stops_with_the_reason(engine: Engine) -> None:
    ty = Taskyard(url=engine.url, token="ty_" + "y" * 43)

    @ty.task
    async def nothing(n: int) -> int:
        return n

    with pytest.raises(AuthenticationError, match="refused worker w's token"):
        await ty.worker("w", tasks=[nothing]).aio_start()
    await ty.aio_close()


async def test_a_big_batch_is_sent_in_several_requests(ty: Taskyard) -> None:
    """3,000 runs of 600-byte inputs are more than the engine takes in one request (1 MiB):
    the SDK splits them, each run encoded once, and the handles keep the inputs' order."""

    @ty.task(name="wide")
    async def wide(text: str) -> int:
        return len(text)

    inputs = [f"{n:05d}" + "x" * 600 for n in range(3000)]
    handles = await wide.aio_run_many_no_wait(inputs)
    assert len({handle.run_id for handle in handles}) == 3000
    for index in (0, 1234, 2999):
        view = await handles[index].aio_get()
        assert view.input == inputs[index]
        assert view.status is RunStatus.QUEUED


async def test_sigterm_drains_a_worker(
    engine: Engine, db_url: str, data_dir: Path, tmp_path: Path
) -> None:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    await conn.execute(LEDGER_TABLE)
    await conn.close()
    token = (data_dir / "token").read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    worker = WorkerProcess(
        engine.url, token, db_url, "drainer", tmp_path / "w.log", slots=5, sleep=1.0
    ).start()
    try:
        async with aiohttp.ClientSession(base_url=engine.url, headers=headers) as http:
            runs = [{"task": "record", "input": n} for n in range(3)]
            async with http.post("/api/v1/runs/batch", json={"runs": runs}) as response:
                run_ids = [ref["run_id"] for ref in (await response.json())["runs"]]
            for _ in range(200):
                async with http.get("/api/v1/runs", params={"status": "running"}) as response:
                    if len((await response.json())["runs"]) == 3:
                        break
                await asyncio.sleep(0.05)
            assert worker.process is not None
            worker.process.send_signal(signal.SIGTERM)
            for _ in range(200):  # the engine has heard the worker drain: nothing new for it
                async with http.get("/api/v1/workers") as response:
                    if all(w["draining"] for w in await response.json()):
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the engine never heard the worker drain")
            async with http.post("/api/v1/runs", json={"task": "record", "input": 99}) as resp:
                late = (await resp.json())["run_id"]
            exit_code = await asyncio.to_thread(worker.process.wait, 30)
            async with http.post(
                "/api/v1/runs/wait", json={"run_ids": run_ids, "timeout": 5}
            ) as response:
                waited = await response.json()
            async with http.get(f"/api/v1/runs/{late}") as response:
                late_view = await response.json()
    finally:
        worker.kill()
    assert exit_code == 0, worker.log
    assert [view["status"] for view in waited["runs"]] == ["succeeded"] * 3
    assert all(view["attempt"] == 1 for view in waited["runs"])
    assert late_view["status"] == "queued", "a draining worker takes no new work"
