"""Draining an outbox (see taskyard_sdk.outbox and docs/outbox.md): rows that applications
committed become runs and events through the same services as the REST API's triggers, with the
row's id as the run's (or event's) id, which makes each row's trigger idempotent.

A batch of rows is claimed (store/outbox.py), triggered, and its rows deleted: by the statement
that inserts the runs when the table is in the engine's own database, after the runs committed
otherwise. A crash in between leaves claimed rows behind; the next drain triggers them again and
finds the runs already there (same ids), so every committed row gives exactly one run.

The drainer waits on a LISTEN of the table's notifications, and polls as a safety net (a
notification is lost while the listening connection is down). Several batches are in flight at
once, so claiming the next overlaps committing the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from pydantic import BaseModel, ValidationError

from taskyard.errors import ApiError
from taskyard.services.events import Events
from taskyard.services.runs import Runs
from taskyard.services.workflows import Workflows
from taskyard.store import outbox as table
from taskyard.store.db import TRANSIENT_ERRORS, connect, create_pool, redact
from taskyard.store.outbox import OutboxEntry, OutboxMissing
from taskyard_sdk.models import EventRequest, TriggerRequest, WorkflowTriggerRequest
from taskyard_sdk.outbox import CHANNEL

log = logging.getLogger(__name__)

BATCH = 1000  # rows claimed at once
IN_FLIGHT = 4  # batches triggered at once
LEASE = 60.0  # seconds a claim holds a row for its drainer
_MAX_RETRY_DELAY = 60.0
# The database away, or the table not installed yet: both worth waiting for.
_WAIT_AND_RETRY: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, OutboxMissing)

_MODELS: dict[str, type[BaseModel]] = {
    "task": TriggerRequest,
    "workflow": WorkflowTriggerRequest,
    "event": EventRequest,
}


class OutboxConfigError(ValueError):
    """An --outbox the engine cannot drain as given."""


class OutboxDrainer:
    """One outbox table, drained into one tenant's runs, for as long as `run()` runs."""

    def __init__(
        self,
        *,
        url: str,
        tenant_id: uuid.UUID,
        runs: Runs,
        workflows: Workflows,
        events: Events,
        engine_table: tuple[object, ...] | None,
        poll: float,
    ) -> None:
        self.url = url
        self.tenant_id = tenant_id
        self.runs = runs
        self.workflows = workflows
        self.events = events
        self.engine_table = engine_table  # the identity of the engine's own outbox, if it has one
        self.poll = poll
        self.own = False  # this is the engine's own table: rows go in the runs' transaction
        self.drained = 0  # rows turned into runs or events
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(IN_FLIGHT)

    async def run(self) -> None:
        """Drain until cancelled, starting again when the database goes away or a batch fails
        in a way no row explains (its rows are claimed again then)."""
        delay = 0.1
        while True:
            try:
                await self._drain()
            except _WAIT_AND_RETRY as exc:
                log.warning(
                    "cannot drain the outbox at %s (%s); trying again in %.1fs",
                    redact(self.url),
                    exc,
                    delay,
                )
            except Exception:
                log.exception("draining the outbox at %s failed; starting again", redact(self.url))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _drain(self) -> None:
        listener = await connect(self.url)
        pool = None
        try:
            self.own = await table.identity(listener) == self.engine_table
            await listener.add_listener(CHANNEL, self._notified)
            pool = await create_pool(self.url, min_size=1, max_size=IN_FLIGHT + 1, wait_seconds=0)
            released = await table.release(listener)
            if released:
                log.info("released %d outbox rows an earlier drain had claimed", released)
            async with asyncio.TaskGroup() as batches:
                while True:
                    self._wake.clear()
                    await self._slots.acquire()
                    try:
                        entries = await table.claim(listener, BATCH, LEASE)
                    except BaseException:
                        self._slots.release()
                        raise
                    if entries:
                        batches.create_task(self._finish(pool, entries))
                    else:
                        self._slots.release()
                    if len(entries) < BATCH:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), self.poll)
        finally:
            if pool is not None:
                pool.terminate()
            listener.terminate()

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _finish(self, pool: asyncpg.Pool, entries: list[OutboxEntry]) -> None:
        """Trigger a batch's rows, then delete those that committed (unless their insert did)
        and record why the others failed."""
        try:
            failures = await self._trigger(entries)
            done = [entry.id for entry in entries if entry.id not in failures]
            async with pool.acquire() as conn:
                if done and not self.own:
                    await table.delete(conn, done)
                if failures:
                    await table.failed(conn, failures)
            self.drained += len(done)
        finally:
            self._slots.release()

    async def _trigger(self, entries: list[OutboxEntry]) -> dict[uuid.UUID, tuple[str, float]]:
        """Trigger the rows, grouped as the REST API's batch calls are; returns why each row
        that failed did, and how long it waits before it is tried again."""
        failures: dict[uuid.UUID, tuple[str, float]] = {}
        groups: dict[tuple[str, str], list[tuple[OutboxEntry, Any]]] = defaultdict(list)
        for entry in entries:
            try:
                request = _MODELS[entry.kind].model_validate_json(entry.body)
            except (KeyError, ValidationError) as exc:
                failures[entry.id] = _failure(entry, f"not a valid {entry.kind} trigger: {exc}")
                continue
            group = "" if entry.kind == "task" else entry.target  # one call for all tasks
            groups[(entry.kind, group)].append((entry, request))
        for (kind, target), members in groups.items():
            trigger = self._caller(kind, target)
            try:
                await trigger(members)
            except ApiError as refused:
                if len(members) == 1:
                    failures[members[0][0].id] = _failure(members[0][0], str(refused))
                    continue
                for member in members:  # which ones are refused: each on its own
                    try:
                        await trigger([member])
                    except ApiError as exc:
                        failures[member[0].id] = _failure(member[0], str(exc))
        return failures

    def _caller(
        self, kind: str, target: str
    ) -> Callable[[list[tuple[OutboxEntry, Any]]], Awaitable[object]]:
        tenant_id, own = self.tenant_id, self.own

        async def tasks(members: list[tuple[OutboxEntry, Any]]) -> object:
            ids = [entry.id for entry, _ in members]
            return await self.runs.trigger(
                tenant_id, [r for _, r in members], ids=ids, from_outbox=own
            )

        async def workflows(members: list[tuple[OutboxEntry, Any]]) -> object:
            ids = [entry.id for entry, _ in members]
            return await self.workflows.trigger(
                tenant_id, target, [r for _, r in members], ids=ids, from_outbox=own
            )

        async def events(members: list[tuple[OutboxEntry, Any]]) -> object:
            ids = [entry.id for entry, _ in members]
            return await self.events.push(
                tenant_id, [r for _, r in members], ids=ids, from_outbox=own
            )

        return {"task": tasks, "workflow": workflows, "event": events}[kind]


def _failure(entry: OutboxEntry, error: str) -> tuple[str, float]:
    log.warning(
        "outbox row %s (%s %r) not triggered: %s", entry.id, entry.kind, entry.target, error
    )
    return error, min(0.5 * 2 ** min(entry.attempts, 10), _MAX_RETRY_DELAY)
