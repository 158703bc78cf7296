"""`taskyard workers` and `taskyard tasks`: who is connected, and what they run."""

from __future__ import annotations

from typing import Any

import click

from taskyard.commands import output
from taskyard.commands.connection import engine_options, run
from taskyard.commands.output import json_option
from taskyard_sdk import Taskyard


async def _get(client: Taskyard, path: str) -> list[dict[str, Any]]:
    # The SDK has no models for these two answers: they are read as the REST API sends them.
    answer: list[dict[str, Any]] = await client.transport.request("GET", path)
    return answer


@click.command()
@json_option
@engine_options
def workers(as_json: bool) -> None:
    """The workers connected now: their queue, slots (used/total), labels and tasks."""
    connected = run(lambda client: _get(client, "/api/v1/workers"))
    if as_json:
        output.print_json(connected)
        return
    grid = output.table("WORKER ID", "NAME", "QUEUE", "SLOTS", "LABELS", "CONNECTED", "TASKS")
    for worker in connected:
        output.row(
            grid,
            worker["worker_id"],
            worker["name"],
            worker["queue"],
            f"{worker['slots_used']}/{worker['slots']}",
            output.compact(output.pairs(worker["labels"])),
            output.when(worker["connected_at"]),
            output.compact(", ".join(worker["tasks"])),
        )
    output.show(grid, empty="no workers connected")


@click.command()
@json_option
@engine_options
def tasks(as_json: bool) -> None:
    """The tasks workers have registered, their main options and who runs them now."""
    registered = run(lambda client: _get(client, "/api/v1/tasks"))
    if as_json:
        output.print_json(registered)
        return
    grid = output.table("TASK", "QUEUE", "RETRIES", "TIMEOUT", "PRIORITY", "WORKERS")
    for task in registered:
        options = task["options"]
        output.row(
            grid,
            task["name"],
            options["queue"],
            str(options["retries"]),
            f"{options['execution_timeout']:g}s",
            str(options["priority"]),
            output.compact(", ".join(task["workers"])) or "none connected",
        )
    output.show(grid, empty="no tasks registered")
