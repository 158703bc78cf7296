"""Draining an outbox (see taskyard_sdk.outbox and docs/outbox.md): rows that applications
committed become runs and events through the same services as the REST API's triggers, with the
row's id as the run's (or event's) id.

A batch of rows is claimed (store/outbox.py), triggered, and its rows deleted: by the statement
that inserts the runs when the table is in the engine's own database, after the runs committed
otherwise. A crash in between leaves claimed rows behind; the next drain releases and triggers
them again, and the services find their runs (or events) already there by id and start nothing
twice, so every committed row gives exactly one run, run once.

The drainer waits on a LISTEN of the table's notifications, and polls as a safety net (a
notification is lost while the listening connection is down). While there is a backlog, several
batches are in flight at once, so claiming the next overlaps committing the last; rows that
trickle in are gathered while the batch before them commits. A batch that fails in a way no row
explains (its database went away) stops the drain once the others in flight have finished; the
drain starts again from the top, which releases the claims.
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

from taskyard.errors import Unprocessable
from taskyard.services.events import Events
from taskyard.services.runs import Runs
from taskyard.services.workflows import Workflows
from taskyard.store import outbox as table
from taskyard.store.db import TRANSIENT_ERRORS, connect, create_pool, redact
from taskyard.store.outbox import OutboxEntry, OutboxMissing, TableIdentity
from taskyard_sdk.models import EventRequest, TaskOptions, TriggerRequest, WorkflowTriggerRequest
from taskyard_sdk.outbox import CHANNEL

log = logging.getLogger(__name__)

BATCH = 1000  # rows claimed at once
IN_FLIGHT = 4  # batches triggered at once
LEASE = 60.0  # seconds a claim says it holds a row for (see store/outbox.py)
_MAX_RETRY_DELAY = 60.0
# The database away, or the table not installed yet: both worth waiting for.
_WAIT_AND_RETRY: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, OutboxMissing)

_MODELS: dict[str, type[BaseModel]] = {
    "task": TriggerRequest,
    "workflow": WorkflowTriggerRequest,
    "event": EventRequest,
}

Member = tuple[OutboxEntry, Any]  # a row and its validated request
Failures = dict[uuid.UUID, tuple[str, float]]  # row id -> (why, seconds until it is tried again)


class OutboxConfigError(ValueError):
    """An --outbox the engine cannot drain as given."""


class OutboxDrainer:
    """One outbox table, drained into one tenant's runs, for as long as `run()` runs.
    `engine_table`: the identity of the engine's own outbox table (None without one), read
    again at every start of a drain, since it changes when Postgres restarts. `tables`: the
    tables the engine's drainers drain, shared by them, so one table is drained once."""

    def __init__(
        self,
        *,
        url: str,
        tenant_id: uuid.UUID,
        runs: Runs,
        workflows: Workflows,
        events: Events,
        engine_table: Callable[[], Awaitable[TableIdentity | None]],
        tables: dict[TableIdentity, OutboxDrainer],
        poll: float,
    ) -> None:
        self.url = url
        self.tenant_id = tenant_id
        self.runs = runs
        self.workflows = workflows
        self.events = events
        self.engine_table = engine_table
        self.tables = tables
        self.poll = poll
        self.own = False  # the engine's own table: rows go in the runs' transaction
        self.drained = 0  # rows turned into runs or events
        self._schema = ""  # the table's, which its notifications carry
        self._wake = asyncio.Event()
        self._broken: BaseException | None = None  # a batch's failure, which ends the drain
        self._claimed = False  # since the last (re)start

    async def run(self) -> None:
        """Drain until cancelled, starting again when the database goes away or a batch fails
        in a way no row explains."""
        delay = 0.1
        while True:
            try:
                await self._drain()
            except OutboxConfigError as exc:
                log.error("%s", exc)
            except _WAIT_AND_RETRY as exc:
                log.warning(
                    "cannot drain the outbox at %s (%s); trying again in %.1fs",
                    redact(self.url),
                    exc,
                    delay,
                )
            except Exception:
                log.exception("draining the outbox at %s failed; starting again", redact(self.url))
            if self._claimed:
                delay = 0.1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _drain(self) -> None:
        self._claimed, self._broken = False, None
        listener = await connect(self.url)
        pool: asyncpg.Pool | None = None
        batches: set[asyncio.Task[None]] = set()
        identity: TableIdentity | None = None
        try:
            identity = await table.identity(listener)
            if self.tables.setdefault(identity, self) is not self:
                identity = None
                raise OutboxConfigError(
                    f"the outbox at {redact(self.url)} is drained by another --outbox already"
                )
            self.own = identity == await self.engine_table()
            self._schema = identity.schema
            await listener.add_listener(CHANNEL, self._notified)
            pool = await create_pool(self.url, min_size=1, max_size=IN_FLIGHT, wait_seconds=0)
            released = await table.release(listener)
            if released:
                log.info("released %d outbox rows an earlier drain had claimed", released)
            slots = asyncio.Semaphore(IN_FLIGHT)
            while True:
                self._wake.clear()
                await slots.acquire()
                if self._broken is not None:
                    slots.release()
                    raise self._broken
                try:
                    entries = await table.claim(listener, BATCH, LEASE)
                except BaseException:
                    slots.release()
                    raise
                self._claimed = True
                if entries:
                    batch = asyncio.create_task(self._finish(pool, entries))
                    batches.add(batch)
                    batch.add_done_callback(lambda done: self._done(done, batches, slots))
                else:
                    slots.release()
                if len(entries) < BATCH:
                    # No backlog: the next claim waits for the batches in flight, so that rows
                    # committed meanwhile are claimed, triggered and deleted together rather
                    # than each in three transactions of its own (an idle drainer still claims
                    # a row the moment it is notified).
                    if batches:
                        await asyncio.wait(set(batches))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll)
        except asyncio.CancelledError:  # the engine stops: what is in flight is recovered
            for batch in batches:
                batch.cancel()
            raise
        finally:
            if batches:  # their runs are committing: let them, so none is left unqueued
                await asyncio.gather(*batches, return_exceptions=True)
            if identity is not None and self.tables.get(identity) is self:
                del self.tables[identity]
            if pool is not None:
                pool.terminate()
            listener.terminate()

    def _done(
        self, batch: asyncio.Task[None], batches: set[asyncio.Task[None]], slots: asyncio.Semaphore
    ) -> None:
        batches.discard(batch)
        slots.release()
        if not batch.cancelled() and batch.exception() is not None and self._broken is None:
            self._broken = batch.exception()
            self._wake.set()

    def _notified(self, _conn: Any, _pid: int, _channel: str, schema: str) -> None:
        if schema == self._schema:  # not another schema's outbox in the same database
            self._wake.set()

    async def _finish(self, pool: asyncpg.Pool, entries: list[OutboxEntry]) -> None:
        """Trigger a batch's rows, then delete those that are runs now (unless their insert
        did) and record why the others failed."""
        failures, leftover = await self._trigger(entries)
        done = [entry.id for entry in entries if entry.id not in failures]
        delete = done if not self.own else [i for i in done if i in leftover]
        async with pool.acquire() as conn:
            if delete:
                await table.delete(conn, delete)
            if failures:
                await table.failed(conn, failures)
        self.drained += len(done)

    async def _trigger(self, entries: list[OutboxEntry]) -> tuple[Failures, set[uuid.UUID]]:
        """Trigger the rows, grouped as the REST API's batch calls are: tasks in one call,
        a workflow's runs in one, events in one. Returns why each row that failed did (with
        its delay), and the rows whose trigger inserted nothing (their runs or events were
        there already), which an insert's statement therefore did not delete."""
        failures: Failures = {}
        leftover: set[uuid.UUID] = set()
        groups: dict[tuple[str, str], list[Member]] = defaultdict(list)
        for entry in entries:
            try:
                request = _MODELS[entry.kind].model_validate_json(entry.body)
            except (KeyError, ValidationError) as exc:
                failures[entry.id] = _failure(entry, f"not a valid {entry.kind} trigger: {exc}")
                continue
            # One call per workflow (the API's path), per set of task options, for all events.
            group = entry.target if entry.kind == "workflow" else entry.options or ""
            groups[(entry.kind, group)].append((entry, request))
        for (kind, group), members in groups.items():
            try:
                leftover |= await self._call(kind, group, members)
            except Exception as refused:
                if len(members) == 1:
                    failures[members[0][0].id] = _failure(members[0][0], str(refused))
                    continue
                for member in members:  # which ones are refused: each on its own
                    try:
                        leftover |= await self._call(kind, group, [member])
                    except Exception as exc:
                        failures[member[0].id] = _failure(member[0], str(exc))
        if failures:
            first, (why, _) = next(iter(failures.items()))
            log.warning(
                "%d outbox rows were not triggered and wait to be tried again (row %s: %s)",
                len(failures),
                first,
                why,
            )
        return failures, leftover

    async def _call(self, kind: str, group: str, members: list[Member]) -> set[uuid.UUID]:
        """One call of the service for `kind` (`group`: the workflow, or the tasks' options);
        the rows whose trigger inserted nothing."""
        ids = [entry.id for entry, _ in members]
        requests = [request for _, request in members]
        if kind == "event":
            views = await self.events.push(self.tenant_id, requests, ids=ids, from_outbox=self.own)
            pushed = {view.event_id for view in views}
            return {i for i in ids if i not in pushed}
        if kind == "workflow":
            refs = await self.workflows.trigger(
                self.tenant_id, group, requests, ids=ids, from_outbox=self.own
            )
        else:
            try:
                options = TaskOptions.model_validate_json(group) if group else None
            except ValidationError as exc:
                raise Unprocessable(f"options: {exc}") from None
            refs = await self.runs.trigger(
                self.tenant_id, requests, options, ids=ids, from_outbox=self.own
            )
        return {i for i, ref in zip(ids, refs, strict=True) if not ref.created}


def _failure(entry: OutboxEntry, error: str) -> tuple[str, float]:
    """Why a row failed, and its back-off: 0.5 s after its first try, doubling up to a minute
    (`attempts` counts claims, this one included)."""
    return error, min(0.5 * 2 ** min(entry.attempts - 1, 10), _MAX_RETRY_DELAY)
