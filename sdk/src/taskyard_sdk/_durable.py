"""Durable tasks: functions that sleep, wait for events and run children, and pick up where they
were after any crash.

Every durable call (`sleep`, `wait_for_event`, `wait_for`, `memo`, a child's `aio_run`) is an
entry in the run's log, by position. On a retry or after a crash the function runs again from the
top and every call the log already holds returns its stored result at once; the first call it does
not hold does its work (and is logged). A wait that is not over yet *suspends* the run: the attempt
stops, the worker's slot is free, and the engine assigns the run again, with its log, when the
wait ends. So the code must call the same durable things in the same order on every replay; a
different call at a logged position fails the run, naming both.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from pydantic_core import to_jsonable_python

from taskyard_sdk import protocol
from taskyard_sdk._conditions import And, Event, Or, Sleep
from taskyard_sdk._context import Context
from taskyard_sdk._durations import Duration, parse_duration
from taskyard_sdk._errors import NonRetryableError, TaskFailed
from taskyard_sdk.models import AllOf, AnyOf, ErrorInfo, EventCondition, RunStatus, SleepCondition

if TYPE_CHECKING:
    from taskyard_sdk._task import Task

T = TypeVar("T")

current_durable: ContextVar[DurableContext | None] = ContextVar("taskyard_durable", default=None)
"""The durable run whose code is executing: children it runs are durable entries."""


class NonDeterminismError(NonRetryableError):
    """A replay made a different durable call than the log holds at that position."""


class WaitTimeout(TimeoutError):
    """A durable wait reached its timeout before what it waited for happened."""


class Suspended(BaseException):
    """Raised inside a durable function to stop the attempt while it waits (a BaseException, so
    a bare `except Exception` in user code cannot swallow it)."""


class WaitResult:
    """What `ctx.wait_for(...)` returns: which events came (payloads by key), or that the sleep
    ended first."""

    def __init__(self, events: dict[str, Any], slept: bool) -> None:
        self.events = events
        self.slept = slept

    @property
    def event(self) -> Any:
        """The payload of the first event that came, or None."""
        return next(iter(self.events.values()), None)

    def __repr__(self) -> str:
        return f"WaitResult(events={self.events!r}, slept={self.slept})"


class DurableContext(Context):
    """The context of a durable task: `Context`, plus the durable calls."""

    def __init__(
        self,
        *,
        history: Sequence[protocol.DurableEntry],
        input: Any,
        record: Callable[[protocol.DurableEntry], Awaitable[None]],
        suspend: Callable[[int, str, protocol.WaitSpec], None],
        spawn: Callable[[Task[Any, Any], list[Any], list[str]], Awaitable[list[UUID]]],
        **context: Any,
    ) -> None:
        super().__init__(**context)
        self._history = {entry.position: entry for entry in history}
        self._input = input
        self._record = record
        self._suspend = suspend
        self._spawn = spawn
        self._position = 0

    # -- the durable calls -----------------------------------------------------------------------

    async def sleep(self, duration: Duration) -> None:
        """Sleep durably: the slot is free meanwhile, and a crash does not restart the clock."""
        seconds = parse_duration(duration, name="sleep")
        await self._wait(
            f"sleep({seconds:g}s)", lambda now: protocol.WaitSpec(since=now, until=now + seconds)
        )

    async def wait_for_event(
        self, key: str, *, filter: str | None = None, timeout: Duration | None = None
    ) -> Any:
        """Wait for an event pushed from now on (`key` exact, or a prefix ending in '*') whose
        CEL `filter` over `payload`, `metadata` and `input` holds; returns its payload. Raises
        WaitTimeout after `timeout`."""
        limit = parse_duration(timeout, name="timeout") if timeout is not None else None
        call = f"wait_for_event({key!r}, filter={filter!r}, timeout={limit!r})"
        result = await self._wait(
            call,
            lambda now: protocol.WaitSpec(
                since=now,
                events=[protocol.EventWait(key=key, filter=filter)],
                deadline=now + limit if limit is not None else None,
                input=self._input,
            ),
        )
        if result["timed_out"]:
            raise WaitTimeout(f"no {key!r} event came within {limit:g}s")
        return result["events"]["0"]

    async def wait_for(
        self, *conditions: Sleep | Event | Or | And, timeout: Duration | None = None
    ) -> WaitResult:
        """Wait for conditions: `Sleep`, `Event`, or one `Or(...)` / `And(...)` of them; all the
        arguments must hold (an `And`). Returns which events came; raises WaitTimeout after
        `timeout`."""
        mode, sleeps, events = _flatten(conditions)
        limit = parse_duration(timeout, name="timeout") if timeout is not None else None
        call = (
            f"wait_for({mode}, sleeps={sleeps!r}, events="
            f"{[(e.key, e.filter) for e in events]!r}, timeout={limit!r})"
        )
        result = await self._wait(
            call,
            lambda now: protocol.WaitSpec(
                since=now,
                until=now + min(sleeps)
                if mode == "any" and sleeps
                else (now + max(sleeps) if sleeps else None),
                mode=mode,
                events=[protocol.EventWait(key=e.key, filter=e.filter) for e in events],
                deadline=now + limit if limit is not None else None,
                input=self._input,
            ),
        )
        if result["timed_out"]:
            raise WaitTimeout(f"{call} did not hold within {limit:g}s")
        by_key = {events[int(index)].key: payload for index, payload in result["events"].items()}
        return WaitResult(by_key, bool(result["slept"]))

    async def memo(
        self, name: str, fn: Callable[..., T | Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T:
        """Run a side-effecting step once: its result is logged, and every replay returns it
        instead of calling `fn` again. The result must be JSON-able; it comes back as JSON data
        (a model comes back as a dict)."""
        call = f"memo({name!r})"
        position, entry = self._next("memo", call)
        if entry is not None:
            return entry.result  # type: ignore[no-any-return]
        value = fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = await value
        data = to_jsonable_python(value)
        await self._record(
            protocol.DurableEntry(position=position, kind="memo", call=call, result=data)
        )
        return data  # type: ignore[no-any-return]

    # -- children --------------------------------------------------------------------------------

    async def run_children(
        self, task: Task[Any, Any], inputs: Sequence[Any]
    ) -> list[dict[str, Any]]:
        """Spawn children (once: their ids are logged) and wait for all of them; each outcome is
        {"status", "output", "error"}."""
        if not inputs:
            return []
        call = f"spawn({task.name!r}, {len(inputs)})"
        position, entry = self._next("spawn", call)
        if entry is not None:
            run_ids = [UUID(value) for value in entry.result]
        else:
            keys = [f"durable:{self.run_id}:{position}:{index}" for index in range(len(inputs))]
            run_ids = await self._spawn(task, list(inputs), keys)
            await self._record(
                protocol.DurableEntry(
                    position=position,
                    kind="spawn",
                    call=call,
                    result=[str(run_id) for run_id in run_ids],
                )
            )
        result = await self._wait(
            f"children({task.name!r}, {len(inputs)})",
            lambda now: protocol.WaitSpec(since=now, children=run_ids),
        )
        return list(result["children"])

    # -- internals -------------------------------------------------------------------------------

    def _next(self, kind: str, call: str) -> tuple[int, protocol.DurableEntry | None]:
        """The next position, and its logged entry if done (the replay check happens here)."""
        position = self._position
        self._position += 1
        entry = self._history.get(position)
        if entry is not None and (entry.kind != kind or entry.call != call):
            raise NonDeterminismError(
                f"durable task {self.task!r} is not deterministic: at position {position} its "
                f"log has {entry.call}, but the code now calls {call}"
            )
        return position, entry if entry is not None and entry.done else None

    async def _wait(self, call: str, spec: Callable[[float], protocol.WaitSpec]) -> dict[str, Any]:
        position, entry = self._next("wait", call)
        if entry is not None:
            return entry.result  # type: ignore[no-any-return]
        open_wait = self._history.get(position)
        # Waiting on after a replay: the same spec (a sleep keeps its end time).
        wait = (
            protocol.WaitSpec.model_validate(open_wait.result)
            if open_wait is not None
            else spec(time.time())
        )
        self._suspend(position, call, wait)
        raise Suspended()


def _flatten(
    conditions: Sequence[Sleep | Event | Or | And],
) -> tuple[str, list[float], list[EventCondition]]:
    """Conditions as (mode, sleep seconds, events): one level of Or/And over Sleep and Event."""
    built: list[Any] = list(conditions)
    if len(built) == 1 and isinstance(built[0], AnyOf | AllOf):
        mode = "any" if isinstance(built[0], AnyOf) else "all"
        leaves = built[0].conditions
    else:
        mode, leaves = "all", built
    sleeps, events = [], []
    for leaf in leaves:
        if isinstance(leaf, SleepCondition):
            sleeps.append(leaf.seconds)
        elif isinstance(leaf, EventCondition):
            events.append(leaf)
        else:
            raise TypeError(
                "a durable wait takes Sleep and Event conditions, or one Or(...) / And(...) of them"
            )
    if mode == "all" and len(sleeps) > 1:
        sleeps = [max(sleeps)]
    return mode, sleeps, events


def child_results(task: Task[Any, Any], outcomes: list[dict[str, Any]]) -> list[Any]:
    """Children's outputs, decoded; a child that did not succeed is a TaskFailed in its place."""
    results: list[Any] = []
    for outcome in outcomes:
        try:
            status = RunStatus(outcome["status"])
        except ValueError:
            status = RunStatus.FAILED
        if status is RunStatus.SUCCEEDED:
            results.append(task.decode_output(outcome["output"]))
        else:
            error = ErrorInfo.model_validate(outcome["error"]) if outcome.get("error") else None
            results.append(TaskFailed(UUID(outcome["run_id"]), task.name, status, error))
    return results
