"""The operator commands (`taskyard runs`, `workers`, `tasks`, `trigger`, `events`, `crons`,
`pause`, `resume`, `paused`).

They talk to a running engine over its REST API through the SDK's `Taskyard` client, with the
SDK's URL and token rules, and never import the engine: they work from any machine that can
reach it, and start quickly.
"""

from __future__ import annotations

import click

from taskyard.commands.crons import crons
from taskyard.commands.events import events
from taskyard.commands.pauses import pause, paused, resume
from taskyard.commands.runs import runs, trigger
from taskyard.commands.workers import tasks, workers

COMMANDS: tuple[click.Command, ...] = (
    runs,
    trigger,
    workers,
    tasks,
    events,
    crons,
    pause,
    resume,
    paused,
)

__all__ = ["COMMANDS"]
