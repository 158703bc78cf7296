"""A queue's suspended durable runs: what each waits for (`DurableWaits`), the log entries its
waits and memoised results write, and the reads that can end a wait (events pushed meanwhile, the
children it waits for). Owned by the queue actor, which decides the runs' states; this decides
only when a wait is over, and records it in the actor's `QueueEffects` for the actor to resume the
run once the result is committed.

A wait exists only while its run is the actor's and suspended: the actor removes it when the run
ends, so a late report (a read that finished after a cancel) finds no wait and is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from taskyard.domain.durable import DurableWait, DurableWaits
from taskyard.domain.expressions import ExpressionError, check
from taskyard.domain.workflows import WAIT_FILTER_NAMES
from taskyard.store.db import TRANSIENT_ERRORS
from taskyard.store.rows import durable_entry_row
from taskyard_sdk import protocol
from taskyard_sdk.logs import run_fields

if TYPE_CHECKING:
    from taskyard.actors.queue_effects import QueueEffects
    from taskyard.actors.waiters import RunWaiters
    from taskyard.domain.dispatch import Connection
    from taskyard.domain.events import PushedEvent
    from taskyard.store.events import EventRepository
    from taskyard.store.runs import RunRepository

log = logging.getLogger(__name__)
T = TypeVar("T")


def bad_filter(wait: protocol.WaitSpec) -> str | None:
    """Why a durable wait's event filter cannot be used (it would never match), if it cannot."""
    for event in wait.events:
        if event.filter is not None:
            try:
                check(event.filter, WAIT_FILTER_NAMES)
            except ExpressionError as exc:
                return f"the filter of the wait for {event.key!r}: {exc}"
    return None


def _outcome(run_id: uuid.UUID, document: dict[str, Any] | None) -> dict[str, Any]:
    """What a durable run's wait for a child returns: its status, output or error."""
    if document is None:
        return {"run_id": str(run_id), "status": "missing", "output": None, "error": None}
    return {
        "run_id": str(run_id),
        "status": document["status"],
        "output": document.get("output"),
        "error": document.get("error"),
    }


async def _until_read(read: Callable[[], Awaitable[T]], what: str) -> T:
    """A read a durable wait depends on, tried again while Postgres is away (a restart, a
    pool refilling): giving up would leave the wait blind to an event or to its children."""
    delay = 0.1
    while True:
        try:
            return await read()
        except TRANSIENT_ERRORS as exc:
            log.warning("could not read %s (%s); trying again in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class DurableRuns:
    def __init__(
        self,
        tenant_id: uuid.UUID,
        effects: QueueEffects,
        *,
        repository: RunRepository,
        events: EventRepository,
        waiters: RunWaiters,
    ) -> None:
        self.tenant_id = tenant_id
        self.effects = effects
        self.repository = repository
        self.event_repository = events
        self.waiters = waiters
        self.clear()

    def clear(self) -> None:
        self.waits = DurableWaits()

    def record(self, session: Connection, message: protocol.Record, now: float) -> None:
        """A finished durable entry (a memoised result, children spawned): stored, and the
        worker told once it is committed. A record sent again is stored again (a no-op)."""
        entry = message.entry
        self.effects.durable_rows.append(
            durable_entry_row(
                tenant_id=self.tenant_id,
                run_id=message.run_id,
                position=entry.position,
                kind=entry.kind,
                call=entry.call,
                done=True,
                result=entry.result,
                wait=None,
                finished_at=now,
            )
        )
        self.effects.recorded.setdefault(session, []).append(
            protocol.Recorded(
                run_id=message.run_id, attempt=message.attempt, position=entry.position
            )
        )

    def suspended(self, message: protocol.Suspend) -> DurableWait:
        """A run's attempt stopped to wait: the wait, stored as its log's open entry."""
        self.effects.durable_rows.append(
            durable_entry_row(
                tenant_id=self.tenant_id,
                run_id=message.run_id,
                position=message.position,
                kind="wait",
                call=message.call,
                done=False,
                result=None,
                wait=message.wait.model_dump_json(),
                finished_at=None,
            )
        )
        return DurableWait(message.run_id, message.position, message.call, message.wait)

    @staticmethod
    def stored(run_id: uuid.UUID, stored: tuple[int, str, str]) -> DurableWait:
        """The open wait of a suspended run's log (after a restart)."""
        position, call, spec = stored
        return DurableWait(run_id, position, call, protocol.WaitSpec.model_validate_json(spec))

    def remove(self, run_id: uuid.UUID) -> None:
        self.waits.remove(run_id)

    def describe(self, run_id: uuid.UUID) -> str | None:
        wait = self.waits.waits.get(run_id)
        return wait.describe() if wait is not None else None

    def check(self, run_id: uuid.UUID, now: float) -> None:
        """End the run's wait if it is over: its result is stored, and the run resumes once
        that is committed."""
        wait = self.waits.waits.get(run_id)
        if wait is None:
            return
        outcome = wait.outcome(now)
        if outcome is None:
            return
        self.waits.remove(run_id)
        self.effects.durable_rows.append(
            durable_entry_row(
                tenant_id=self.tenant_id,
                run_id=run_id,
                position=wait.position,
                kind="wait",
                call=wait.call,
                done=True,
                result=outcome,
                wait=wait.spec.model_dump_json(),
                finished_at=now,
            )
        )
        self.effects.resuming.append((run_id, wait.position))

    def events(self, events: list[PushedEvent], now: float) -> None:
        """Events just committed: they may end waits."""
        for run_id in self.waits.events(events):
            self.check(run_id, now)

    def past_events_read(
        self, run_id: uuid.UUID, position: int, events: list[PushedEvent], now: float
    ) -> None:
        wait = self.waits.waits.get(run_id)
        if wait is not None and wait.position == position:
            for event in events:
                wait.match(event)
            self.check(run_id, now)

    def children_ended(
        self, run_id: uuid.UUID, position: int, outcomes: list[dict[str, Any]] | None, now: float
    ) -> None:
        wait = self.waits.waits.get(run_id)
        if outcomes is not None and wait is not None and wait.position == position:
            wait.children = outcomes
            self.check(run_id, now)

    def add(self, wait: DurableWait) -> None:
        self.waits.add(wait)

    def past_events(self, wait: DurableWait) -> Coroutine[Any, Any, list[PushedEvent]]:
        """Events pushed since the wait began count even if they came before it was armed (an
        engine restart in between, say). The wait's patterns are taken now, the read later."""
        return self._past_events(wait, self.waits.patterns(wait.run_id))

    async def _past_events(self, wait: DurableWait, patterns: list[str]) -> list[PushedEvent]:
        run_id = wait.run_id
        try:
            return await _until_read(
                lambda: self.event_repository.since(self.tenant_id, patterns, wait.spec.since),
                f"past events for durable run {run_id}",
            )
        except Exception:
            log.exception(
                "could not read past events for durable run %s; it waits for new ones",
                run_id,
                extra=run_fields(run_id, tenant=self.tenant_id),
            )
            return []

    async def children(self, wait: DurableWait) -> list[dict[str, Any]] | None:
        """Until every child of the wait has ended: their outcomes (None if they could not
        be followed)."""
        run_id, children = wait.run_id, wait.spec.children
        futures = self.waiters.watch(self.tenant_id, children)
        try:
            what = f"the children of durable run {run_id}"
            while True:
                statuses = await _until_read(
                    lambda: self.repository.run_statuses(self.tenant_id, children), what
                )
                pending = [
                    futures[c]
                    for c, status in statuses.items()
                    if not status.terminal and not futures[c].done()
                ]
                if len(statuses) == len(children) and not pending:
                    break
                await asyncio.wait(
                    pending or list(futures.values()),
                    timeout=30,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            documents = await _until_read(
                lambda: self.repository.run_documents(self.tenant_id, children), what
            )
        except Exception:
            log.exception(
                "could not follow the children of durable run %s",
                run_id,
                extra=run_fields(run_id, tenant=self.tenant_id),
            )
            return None
        finally:
            self.waiters.unwatch(self.tenant_id, futures)
        return [_outcome(child, documents.get(child)) for child in children]
