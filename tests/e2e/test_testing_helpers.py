"""The helpers users test their own code with: `task.mock_run` (no engine), and the pytest
fixtures the engine ships (`taskyard_engine`, `taskyard_client`), exercised the way a user's
suite would use them: a test file run by pytest in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from taskyard.testing import clean_env
from taskyard_sdk import Context, Taskyard

USER_TESTS = """
import pytest
from pydantic import BaseModel
from taskyard_sdk import Context, Taskyard

ty = Taskyard(url="http://127.0.0.1:9", token="not-yet")  # the application's own client


class Signup(BaseModel):
    email: str


@ty.task()
def send_welcome(signup: Signup, ctx: Context) -> str:
    ctx.log(f"welcoming {signup.email}")
    return f"sent to {signup.email}"


@pytest.fixture(autouse=True)
def app_uses_the_test_engine(taskyard_engine):
    ty.connect_to(taskyard_engine.url, taskyard_engine.token)


def test_through_a_real_engine(taskyard_client):
    with taskyard_client.worker("test-worker", tasks=[send_welcome]):
        assert send_welcome.run(Signup(email="ana@acme.test")) == "sent to ana@acme.test"
    runs = taskyard_client.runs.list(task=["send_welcome"])
    assert [run.status.value for run in runs.runs] == ["succeeded"]


async def test_async_too(taskyard_client):
    async with taskyard_client.worker("async-worker", tasks=[send_welcome]):
        assert await send_welcome.aio_run(Signup(email="bo@acme.test")) == "sent to bo@acme.test"
"""


def test_a_users_suite_runs_its_tasks_on_the_engine_the_fixtures_start(
    tmp_path: Path, db_url: str
) -> None:
    (tmp_path / "test_users_app.py").write_text(USER_TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_users_app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(TASKYARD_TEST_DATABASE_URL=db_url),
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 passed" in result.stdout
    assert "Unclosed" not in output
    assert "warning" not in result.stdout.lower(), output


class Order(BaseModel):
    order_id: int
    amount: int


def test_mock_run_runs_a_task_and_a_step_here_without_an_engine(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ty = Taskyard(url="http://127.0.0.1:9", token="unused")  # nothing listens there

    @ty.task()
    async def total(order: Order, ctx: Context) -> int:
        ctx.log(f"order {order.order_id}")
        return order.amount * 2

    wf = ty.workflow("checkout", input=Order)

    @wf.task()
    async def reserve(order: Order) -> dict[str, int]:
        return {"held": order.amount}

    @wf.task(parents=[reserve])
    def charge(order: Order, ctx: Context) -> str:
        if ctx.was_skipped(reserve):
            return "nothing to charge"
        return f"charged {ctx.parent_output(reserve)['held']}"

    caplog.set_level("INFO", logger="taskyard.task")
    assert total.mock_run({"order_id": 7, "amount": 5}) == 10
    assert "order 7" in caplog.text
    assert (
        charge.mock_run(Order(order_id=1, amount=3), parents={"reserve": {"held": 3}})
        == "charged 3"
    )
    assert charge.mock_run(Order(order_id=1, amount=3), skipped=[reserve]) == "nothing to charge"
    with pytest.raises(TypeError, match="is not a workflow step"):
        total.mock_run(Order(order_id=1, amount=1), parents={"x": 1})
