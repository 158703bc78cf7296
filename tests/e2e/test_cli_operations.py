"""The operator commands (`taskyard runs|trigger|workers|tasks|events|crons`), each run as a real
subprocess against a real engine with a real worker; `--json` is checked against what the REST
API answers for the same question.

A subprocess costs about half a second to start, so each test runs its commands side by side
(`in_parallel`) and asserts several things of each."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from taskyard.engine import Engine
from taskyard.testing import clean_env, free_port
from taskyard_sdk import Context, NonRetryableError, RunStatus, Taskyard
from tests.support import taskyard

Result = subprocess.CompletedProcess[str]


class Cli:
    """The `taskyard` command pointed at the test's engine (URL and token from the environment,
    as an operator's shell would have them)."""

    def __init__(self, engine: Engine, token: str, http: aiohttp.ClientSession) -> None:
        self.url = engine.url
        self.token = token
        self.http = http

    async def __call__(self, *args: str, **env: str) -> Result:
        variables = {"TASKYARD_URL": self.url, "TASKYARD_TOKEN": self.token, **env}
        return await asyncio.to_thread(taskyard, *args, env=clean_env(**variables))

    async def rest(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        async with self.http.get(
            path, params=params, headers={"Authorization": f"Bearer {self.token}"}
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture
def cli(engine: Engine, data_dir: Path, http: aiohttp.ClientSession) -> Cli:
    return Cli(engine, (data_dir / "token").read_text().strip(), http)


async def in_parallel(*calls: Any) -> list[Result]:
    return list(await asyncio.gather(*calls))


def ok(result: Result) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(result: Result, code: int) -> str:
    """The one line a failed command printed, checked to be one line and no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    if code == 1:
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ")
        return line
    return result.stderr.strip().splitlines()[-1]  # click's usage block ends with the error


def register_tasks(ty: Taskyard, go: asyncio.Event) -> dict[str, Any]:
    @ty.task
    async def greet(person: dict[str, str], ctx: Context) -> dict[str, str]:
        ctx.log(f"greeting {person['name']}\n[red]not markup[/red]")
        ctx.log("done", level="warning")
        return {"greeting": f"hello {person['name']}"}

    @ty.task
    async def boom(_: None) -> None:
        raise NonRetryableError("the [bold]disk[/] is full")

    @ty.task(execution_timeout="5m")
    async def hang(_: None) -> None:
        await asyncio.Event().wait()  # until cancelled

    @ty.task
    async def crawl(_: None, ctx: Context) -> int:
        ctx.log("line 0")
        await go.wait()
        ctx.log("line 1")
        return 2

    return {"greet": greet, "boom": boom, "hang": hang, "crawl": crawl}


async def until_running(ty: Taskyard, run_id: uuid.UUID) -> None:
    for _ in range(200):
        if (await ty.runs.aio_get(run_id)).status is RunStatus.RUNNING:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never started")


async def test_runs_list_show_logs_cancel_replay(ty: Taskyard, cli: Cli) -> None:
    go = asyncio.Event()
    tasks = register_tasks(ty, go)
    async with ty.worker("ops", tasks=list(tasks.values())):
        greet = await tasks["greet"].aio_run_no_wait({"name": "ann"}, metadata={"team": "a"})
        boom = await tasks["boom"].aio_run_no_wait(None)
        await ty.runs.aio_wait([greet.run_id, boom.run_id], timeout=10)
        hang = await tasks["hang"].aio_run_no_wait(None)
        await until_running(ty, hang.run_id)
        later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()

        (
            table,
            filtered_json,
            page_one,
            show_boom,
            show_greet_json,
            logs,
            logs_json,
            bad_metadata,
            bad_since,
            unknown_run,
        ) = await in_parallel(
            cli("runs", "list"),
            cli(
                "runs",
                "list",
                "--status",
                "succeeded",
                "--task",
                "greet",
                "--metadata",
                "team:a",
                "--since",
                "1h",
                "--until",
                later,
                "--json",
            ),
            cli("runs", "list", "--limit", "2", "--json"),
            cli("runs", "show", str(boom.run_id)),
            cli("runs", "show", str(greet.run_id), "--json"),
            cli("runs", "logs", str(greet.run_id)),
            cli("runs", "logs", str(greet.run_id), "--json"),
            cli("runs", "list", "--metadata", "team"),
            cli("runs", "list", "--since", "yesterday"),
            cli("runs", "show", str(uuid.uuid4())),
        )

        rows = ok(table).splitlines()
        assert rows[0].split() == [
            "RUN",
            "TASK",
            "STATUS",
            "ATTEMPT",
            "CREATED",
            "TOOK",
            "METADATA",
        ]
        assert [row.split()[:3] for row in rows[2:]] == [  # newest first
            [str(hang.run_id), "hang", "running"],
            [str(boom.run_id), "boom", "failed"],
            [str(greet.run_id), "greet", "succeeded"],
        ]
        assert rows[-1].endswith("team=a")
        assert all(row == row.rstrip() for row in rows)  # piped: no padding to trim

        filtered = json.loads(ok(filtered_json))
        assert [run["run_id"] for run in filtered["runs"]] == [str(greet.run_id)]
        assert filtered == await cli.rest(
            "/api/v1/runs", [("task", "greet"), ("metadata", "team:a")]
        )
        first_page = json.loads(ok(page_one))
        assert first_page == await cli.rest("/api/v1/runs", [("limit", "2")])

        shown = ok(show_boom)
        assert str(boom.run_id) in shown
        assert "NonRetryableError: the [bold]disk[/] is full" in shown  # as text, not markup
        assert "traceback" in shown
        assert json.loads(ok(show_greet_json)) == await cli.rest(f"/api/v1/runs/{greet.run_id}")

        first, second, third = ok(logs).splitlines()
        assert first.endswith("#1 INFO    greeting ann")
        assert second.strip() == "[red]not markup[/red]"  # under the first line, as text
        assert third.endswith("#1 WARNING done")
        assert json.loads(ok(logs_json)) == await cli.rest(f"/api/v1/runs/{greet.run_id}/logs")

        assert "'team' is not key:value" in refused(bad_metadata, 2)
        assert "'yesterday' is neither an ISO time" in refused(bad_since, 2)
        assert "in this tenant (HTTP 404 not_found)" in refused(unknown_run, 1)

        next_page, cancelled, replayed = await in_parallel(
            cli("runs", "list", "--limit", "2", "--cursor", first_page["next_cursor"]),
            cli("runs", "cancel", str(hang.run_id)),
            cli("runs", "replay", str(boom.run_id), "--json"),
        )
        assert [row.split()[0] for row in ok(next_page).splitlines()[2:]] == [str(greet.run_id)]
        assert ok(cancelled).strip() == f"run {hang.run_id} cancelled"
        view = json.loads(ok(replayed))
        assert (view["run_id"], view["attempt"]) == (str(boom.run_id), 2)

        # --follow tails a run that is still going (here one line of JSON per log line), and
        # stops when it ends; meanwhile the cancelled run refuses a second cancel.
        crawl = await tasks["crawl"].aio_run_no_wait(None)
        follower = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskyard",
            "runs",
            "logs",
            "--follow",
            "--json",
            str(crawl.run_id),
            env=clean_env(TASKYARD_URL=cli.url, TASKYARD_TOKEN=cli.token),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert follower.stdout is not None
        cancelled_again = await cli("runs", "cancel", str(hang.run_id))
        assert refused(cancelled_again, 1) == (
            f"error: run {hang.run_id} is already cancelled (HTTP 409 conflict)"
        )
        first = await asyncio.wait_for(follower.stdout.readline(), 30)
        assert json.loads(first)["message"] == "line 0"
        go.set()  # only now does the task log its second line and finish
        out, err = await asyncio.wait_for(follower.communicate(), 30)
        assert follower.returncode == 0, err
        assert [json.loads(line) for line in [first, *out.splitlines()]] == (
            await cli.rest(f"/api/v1/runs/{crawl.run_id}/logs")
        )["lines"]


async def test_trigger_prints_the_run_or_waits_for_its_output(ty: Taskyard, cli: Cli) -> None:
    tasks = register_tasks(ty, asyncio.Event())
    wf = ty.workflow("pipeline")

    @wf.task()
    async def fetch(_: None) -> int:
        return 41

    @wf.task(parents=[fetch])
    async def add(_: None, ctx: Context) -> int:
        return ctx.parent_output(fetch) + 1

    async with ty.worker("ops", tasks=list(tasks.values()), workflows=[wf]):
        (waited, failed, started, keyed, workflow, bad_input, timed_out) = await in_parallel(
            cli("trigger", "greet", "--input", '{"name": "bo"}', "--wait"),
            cli("trigger", "boom", "--wait"),
            cli("trigger", "greet", "--input", '{"name": "cy"}'),
            cli(
                "trigger",
                "greet",
                "--input",
                '{"name": "di"}',
                "--metadata",
                "team:b",
                "--priority",
                "3",
                "--idempotency-key",
                "order-7",
                "--json",
            ),
            cli("trigger", "pipeline", "--wait"),
            cli("trigger", "greet", "--input", "{name: bo}"),
            cli("trigger", "hang", "--wait", "--timeout", "0.5"),
        )

        assert json.loads(ok(waited)) == {"greeting": "hello bo"}
        line = refused(failed, 1)
        assert "of task 'boom' failed: NonRetryableError: the [bold]disk[/] is full" in line
        assert "taskyard runs show" in line
        run_id = uuid.UUID(ok(started).strip())  # the id alone, for RUN=$(taskyard trigger ...)
        assert (await ty.runs.aio_wait([run_id], timeout=10))[run_id].output == {
            "greeting": "hello cy"
        }
        ref = json.loads(ok(keyed))
        assert (ref["task"], ref["created"]) == ("greet", True)
        keyed_view = await cli.rest(f"/api/v1/runs/{ref['run_id']}")
        assert (
            keyed_view["metadata"],
            keyed_view["priority"],
            keyed_view["input"],
            keyed_view["idempotency_key"],
        ) == ({"team": "b"}, 3, {"name": "di"}, "order-7")
        assert json.loads(ok(workflow)) == {"fetch": 41, "add": 42}
        assert "Invalid value for '--input': not JSON" in refused(bad_input, 2)
        assert "has not finished after 0.5s; it goes on" in refused(timed_out, 1)

        again = json.loads(
            ok(
                await cli(
                    "trigger",
                    "greet",
                    "--input",
                    '{"name": "di"}',
                    "--idempotency-key",
                    "order-7",
                    "--json",
                )
            )
        )
        assert (again["run_id"], again["created"], again["idempotent_replay"]) == (
            ref["run_id"],
            False,
            True,
        )
        for run in (await ty.runs.aio_list(task=["hang"])).runs:
            if not run.status.terminal:
                await ty.runs.aio_cancel(run.run_id)  # so that the worker drains at once


async def test_workers_tasks_events_and_crons(ty: Taskyard, cli: Cli, data_dir: Path) -> None:
    tasks = register_tasks(ty, asyncio.Event())
    wf = ty.workflow("fulfil", on_events=["order:paid"])

    @wf.task()
    async def ship(_: Any) -> str:
        return "shipped"

    async with ty.worker("ops", tasks=list(tasks.values()), workflows=[wf], labels={"zone": "eu"}):
        cron = await tasks["greet"].aio_create_cron("nightly", "0 3 * * *", input={"name": "cron"})
        (
            workers,
            workers_json,
            task_table,
            tasks_json,
            pushed,
            pushed_json,
            crons,
            crons_json,
        ) = await in_parallel(
            # the local engine's token file, as with the SDK: no TASKYARD_TOKEN
            cli("workers", TASKYARD_TOKEN="", TASKYARD_DATA_DIR=str(data_dir)),
            cli("workers", "--json"),
            cli(
                "tasks", "--url", cli.url, "--token", cli.token, TASKYARD_URL="", TASKYARD_TOKEN=""
            ),
            cli("tasks", "--json"),
            cli(
                "events",
                "push",
                "order:paid",
                "--payload",
                '{"order": 7}',
                "--metadata",
                "source:cli",
            ),
            cli("events", "push", "user:signup", "--json"),
            cli("crons", "list"),
            cli("crons", "list", "--json"),
        )

        rest_workers = await cli.rest("/api/v1/workers")
        [worker] = rest_workers
        rows = ok(workers).splitlines()
        assert rows[0].split()[:5] == ["WORKER", "ID", "NAME", "QUEUE", "SLOTS"]
        assert rows[2].split()[:5] == [worker["worker_id"], "ops", "default", "0/100", "zone=eu"]
        listed_json = json.loads(ok(workers_json))
        for read in (rest_workers, listed_json):
            del read[0]["last_heard_at"]  # heartbeats move it on between the two reads
        assert listed_json == rest_workers

        listed = {row.split()[0]: row.split() for row in ok(task_table).splitlines()[2:]}
        assert set(listed) == {"greet", "boom", "hang", "crawl", "fulfil:ship"}
        assert listed["hang"] == ["hang", "default", "0", "300s", "2", "ops"]
        assert json.loads(ok(tasks_json)) == await cli.rest("/api/v1/tasks")

        event_id = uuid.UUID(ok(pushed).strip())
        assert "triggered 1 workflow run(s): " in pushed.stderr
        signup = json.loads(ok(pushed_json))
        assert (signup["key"], signup["triggered"]) == ("user:signup", [])

        [cron_row] = ok(crons).splitlines()[2:]
        assert cron_row.split()[:4] == [str(cron.cron_id), "nightly", "task", "greet"]
        assert "active" in cron_row.split()
        assert json.loads(ok(crons_json)) == await cli.rest("/api/v1/crons")

        # the pause runs after the listing above: run beside it, the listing could see it paused
        listed_events, by_key_json, paused = await in_parallel(
            cli("events", "list", "--prefix", "order:"),
            cli("events", "list", "--key", "order:paid", "--metadata", "source:cli", "--json"),
            cli("crons", "pause", str(cron.cron_id), "--json"),
        )
        assert json.loads(ok(paused)) == await cli.rest(f"/api/v1/crons/{cron.cron_id}")
        assert json.loads(paused.stdout)["paused"] is True
        [event_row] = ok(listed_events).splitlines()[2:]
        assert event_row.split()[:2] == [str(event_id), "order:paid"]
        assert event_row.split()[-2:] == ["source=cli", '{"order":7}']
        assert json.loads(ok(by_key_json)) == await cli.rest(
            "/api/v1/events", [("key", "order:paid"), ("metadata", "source:cli")]
        )

        replayed, resumed = await in_parallel(
            cli("events", "replay", str(event_id), "--json"),
            cli("crons", "resume", str(cron.cron_id)),
        )
        assert ok(resumed).startswith(f"cron {cron.cron_id} (nightly) active; next fire ")
        replay = json.loads(ok(replayed))
        assert replay["replay_of"] == str(event_id)
        assert replay["event_id"] != str(event_id)


async def test_pause_resume_and_paused(ty: Taskyard, cli: Cli) -> None:
    paused_queue, paused_task = await in_parallel(
        cli("pause", "queue", "default", "--reason", "incident 42"),
        cli("pause", "task", "resize", "--json"),
    )
    assert ok(paused_queue).strip() == "queue default paused"
    assert json.loads(ok(paused_task))["paused"] is True
    listed, listed_json = await in_parallel(cli("paused"), cli("paused", "--json"))
    rows = [line.split()[:2] for line in ok(listed).splitlines()[2:]]
    assert rows == [["queue", "default"], ["task", "resize"]]
    assert "incident 42" in listed.stdout
    assert json.loads(ok(listed_json)) == await cli.rest("/api/v1/pauses")
    resumed, nothing, bad_kind = await in_parallel(
        cli("resume", "queue", "default"),
        cli("pause", "worker", str(uuid.uuid4())),
        cli("pause", "shelf", "x"),
    )
    assert ok(resumed).strip() == "queue default resumed"
    assert refused(nothing, 1).startswith("error: no connected worker")
    assert "'shelf' is not one of" in refused(bad_kind, 2)
    assert [p.name for p in await ty.pauses.aio_list()] == ["resize"]


async def test_reaching_the_engine_fails_in_one_line(cli: Cli, tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    no_token, wrong_token, unreachable = await in_parallel(
        cli("workers", TASKYARD_TOKEN="", TASKYARD_DATA_DIR=str(tmp_path)),
        cli("runs", "list", "--token", "ty_not_a_real_token"),
        cli("events", "list", "--url", nowhere),
    )
    assert refused(no_token, 1).startswith(
        f"error: no token for the engine at {cli.url}: pass --token, set TASKYARD_TOKEN"
    )
    assert refused(wrong_token, 1).startswith(
        f"error: the engine at {cli.url} refused the token from the token argument: "
    )
    assert refused(unreachable, 1).startswith(
        f"error: cannot reach the Taskyard engine at {nowhere}"
    )


async def test_the_operator_commands_do_not_load_the_engine() -> None:
    # They need only the SDK, and so start in about half the time `taskyard engine` takes.
    probe = (
        "import sys, taskyard.cli; print(sorted({'asyncpg', 'taskyard.engine'} & set(sys.modules)))"
    )
    loaded = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
