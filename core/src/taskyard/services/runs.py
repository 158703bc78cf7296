"""Operations on runs: trigger, cancel (with what a run spawned), replay, wait for, and read
with the reason a run waits. A run in memory belongs to its queue actor (a workflow run to its
tenant actor): these ask the actor, and read what is committed in Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from taskyard.actors.waiters import RunEnd
from taskyard.domain.expressions import ExpressionError
from taskyard.domain.flow import check_options, flow_for
from taskyard.domain.limits import Limit
from taskyard.domain.runs import EMPTY_METADATA, WORKFLOW_QUEUE, Run, json_bytes
from taskyard.errors import ApiError, Conflict, NotFound, Unprocessable
from taskyard.ids import new_run_id
from taskyard.services.directory import ActorDirectory
from taskyard.store.persister import Persister
from taskyard.store.rows import new_run_row
from taskyard.store.runs import RunRepository
from taskyard_sdk.models import (
    RunKind,
    RunRef,
    RunStatus,
    RunView,
    TaskOptions,
    TriggerRequest,
    WorkflowTriggerRequest,
)

DEFAULT_OPTIONS = TaskOptions()


def no_such_run(run_id: uuid.UUID) -> NotFound:
    """What a run id the tenant has no run of is answered (the same as another tenant's)."""
    return NotFound(f"no run {run_id} in this tenant")


async def refusals(
    run_ids: Sequence[uuid.UUID], changes: Iterable[Awaitable[object]]
) -> dict[uuid.UUID, ApiError | None]:
    """The changes of runs made side by side: for each run, the refusal it met (an ApiError)
    or None; any other exception is raised."""
    outcomes = await asyncio.gather(*changes, return_exceptions=True)
    refused: dict[uuid.UUID, ApiError | None] = {}
    for run_id, outcome in zip(run_ids, outcomes, strict=True):
        if isinstance(outcome, BaseException) and not isinstance(outcome, ApiError):
            raise outcome
        refused[run_id] = outcome if isinstance(outcome, ApiError) else None
    return refused


class Runs:
    def __init__(
        self,
        actors: ActorDirectory,
        persister: Persister,
        repository: RunRepository,
        input_limit: Limit,
    ) -> None:
        self.actors = actors
        self.persister = persister
        self.repository = repository
        self.input_limit = input_limit

    async def trigger(
        self,
        tenant_id: uuid.UUID,
        requests: list[TriggerRequest],
        options: TaskOptions | None = None,
        *,
        ids: Sequence[uuid.UUID] | None = None,
        from_outbox: bool = False,
    ) -> list[RunRef]:
        """Create runs; returns once they are committed (an acknowledged run is never lost).
        `options` are those of a batch, for its runs that carry none of their own. `ids`: the
        runs' ids, when the caller chose them (an outbox's rows); a run that already has its id
        was triggered before (a row drained again after a crash) and is answered as it is,
        `created` false. `from_outbox`: the runs are rows of the engine's own outbox, deleted
        in the transaction that inserts them."""
        if ids is None:
            return await self._create(tenant_id, requests, options, None, from_outbox)
        known = await self.repository.run_statuses(tenant_id, list(ids))
        fresh = [index for index, run_id in enumerate(ids) if run_id not in known]
        created = iter(
            await self._create(
                tenant_id,
                [requests[i] for i in fresh],
                options,
                [ids[i] for i in fresh],
                from_outbox,
            )
            if fresh
            else []
        )
        return [
            RunRef(run_id=run_id, task=request.task, status=known[run_id], created=False)
            if run_id in known
            else next(created)
            for run_id, request in zip(ids, requests, strict=True)
        ]

    async def _create(
        self,
        tenant_id: uuid.UUID,
        requests: list[TriggerRequest],
        options: TaskOptions | None,
        ids: Sequence[uuid.UUID] | None,
        from_outbox: bool,
    ) -> list[RunRef]:
        await self.persister.capacity()
        if options is not None:
            self._check(options, "options")
        await self.check_parents(tenant_id, requests)
        unconfigured = (
            sorted({r.task for r in requests if r.options is None}) if options is None else []
        )
        registered: dict[str, TaskOptions] = {}
        if unconfigured:
            tenant = self.actors.tenant(tenant_id)
            registered = await tenant.ask(tenant.options_for, unconfigured)
        now = time.time()
        runs, rows = [], []
        interned: dict[int, tuple[TaskOptions, str]] = {}  # by identity: hashing costs more
        for index, request in enumerate(requests):
            given = request.options or options or registered.get(request.task) or DEFAULT_OPTIONS
            found = interned.get(id(given))
            if found is None:
                if request.options is not None:
                    where = f"runs[{index}] " if len(requests) > 1 else ""
                    self._check(request.options, f"{where}(task {request.task!r})")
                found = interned[id(given)] = self.repository.options.intern(given)
            run_options, run_options_json = found
            priority = request.priority or run_options.priority
            input_json = json_bytes(request.input)
            if len(input_json) > self.input_limit.bytes:
                where = f"body.runs[{index}].input" if len(requests) > 1 else "body.input"
                raise self.input_limit.refusal(where, len(input_json))
            try:
                flow = flow_for(run_options, request.input, request.metadata)
            except ExpressionError as exc:
                where = f"runs[{index}] " if len(requests) > 1 else ""
                raise Unprocessable(f"{where}(task {request.task!r}): {exc}") from None
            run = Run(
                tenant_id=tenant_id,
                run_id=ids[index] if ids is not None else new_run_id(request.parent_run_id),
                task=sys.intern(request.task),
                queue=run_options.queue,
                status=RunStatus.QUEUED,
                attempt=1,
                priority=priority,
                options=run_options,
                created_at=now,
                queued_at=now,
                metadata=request.metadata or EMPTY_METADATA,
                input_json=input_json,
                flow=flow,
            )
            runs.append(run)
            rows.append(
                new_run_row(
                    tenant_id=tenant_id,
                    run_id=run.run_id,
                    task=run.task,
                    queue=run.queue,
                    status="queued",
                    priority=priority,
                    options_json=run_options_json,
                    input_json=input_json,
                    metadata_json=orjson.dumps(request.metadata) if request.metadata else b"{}",
                    created_at=now,
                    idempotency_key=request.idempotency_key,
                    parent_run_id=request.parent_run_id,
                    flow_json=flow.to_json() if flow is not None else None,
                )
            )
        inserted = await self.persister.insert_triggered(rows, from_outbox=from_outbox)
        refs = [
            RunRef(
                run_id=outcome.run_id,
                task=run.task,
                status=RunStatus(outcome.status),
                created=outcome.created,
            )
            for run, outcome in zip(runs, inserted, strict=True)
        ]
        self.actors.enqueue(
            tenant_id, [run for run, outcome in zip(runs, inserted, strict=True) if outcome.created]
        )
        return refs

    async def check_parents(
        self, tenant_id: uuid.UUID, requests: Sequence[TriggerRequest | WorkflowTriggerRequest]
    ) -> None:
        """A parent must be a run of this tenant (a run is written before it is assigned, so
        any run that can spawn one is found). One lookup per batch, none without parents."""
        wanted = {r.parent_run_id for r in requests if r.parent_run_id is not None}
        if not wanted:
            return
        missing = wanted - set(await self.repository.run_statuses(tenant_id, list(wanted)))
        if missing:
            index, request = next(
                (i, r) for i, r in enumerate(requests) if r.parent_run_id in missing
            )
            where = f"runs[{index}]." if len(requests) > 1 else ""
            raise Unprocessable(
                f"body.{where}parent_run_id: no run {request.parent_run_id} in this tenant"
            )

    @staticmethod
    def _check(options: TaskOptions, where: str) -> None:
        """Options given with a trigger: their expressions must compile (422 naming them)."""
        try:
            check_options(options)
        except ExpressionError as exc:
            raise Unprocessable(f"{where}: {exc}") from None

    async def cancel(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID, reason: str = "cancelled on request"
    ) -> RunStatus:
        """Cancel a run, and with it the runs it spawned and (for a workflow run) its steps."""
        refused = (await self.cancel_many(tenant_id, [run_id], reason))[run_id]
        if refused is not None:
            raise refused
        return RunStatus.CANCELLED

    async def cancel_many(
        self,
        tenant_id: uuid.UUID,
        run_ids: Sequence[uuid.UUID],
        reason: str = "cancelled on request",
    ) -> dict[uuid.UUID, ApiError | None]:
        """Cancel runs and what they spawned, each generation read in one query; for each run,
        why it was not cancelled (None: it was). Acknowledged once durable."""
        runs = await self.repository.load_runs(tenant_id, list(run_ids))
        refused: dict[uuid.UUID, ApiError | None] = {}
        for run_id in run_ids:
            run = runs.get(run_id)
            if run is None:
                refused[run_id] = no_such_run(run_id)
            elif run.status.terminal:
                # A run that ended in memory but is not written yet answers 409, as a written
                # one does.
                refused[run_id] = Conflict(f"run {run_id} is already {run.status.value}")
        asked = [runs[run_id] for run_id in run_ids if run_id not in refused]
        refused |= await refusals(
            [run.run_id for run in asked],
            (self._cancel_one(tenant_id, run, reason) for run in asked),
        )
        await self._cancel_descendants(
            tenant_id, [run_id for run_id, why in refused.items() if why is None], None
        )
        await self.persister.flush()
        return refused

    async def _cancel_one(self, tenant_id: uuid.UUID, run: Run, reason: str) -> None:
        if run.queue == WORKFLOW_QUEUE:
            tenant = self.actors.tenant(tenant_id)
            await tenant.ask(tenant.cancel_run, run.run_id, reason)
        elif run.status is RunStatus.PENDING and run.workflow_run_id is not None:
            tenant = self.actors.tenant(tenant_id)  # a step waiting on its conditions
            await tenant.ask(tenant.cancel_step, run, reason)
        else:
            actor = self.actors.queue_for(tenant_id, run.queue)
            await actor.ask(actor.cancel, run.run_id, reason)

    async def cancel_children(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID, reason: str | None = None
    ) -> None:
        """The runs a cancelled run spawned (and a workflow run's steps), and theirs; `reason`
        is given to all of them (by default each is told its parent was cancelled)."""
        await self._cancel_descendants(tenant_id, [run_id], reason)

    async def _cancel_descendants(
        self, tenant_id: uuid.UUID, parents: list[uuid.UUID], reason: str | None
    ) -> None:
        while parents:
            await self.persister.flush()  # so the query below sees the steps just cancelled
            children = await self.repository.active_children(tenant_id, parents)
            runs = await self.repository.load_runs(tenant_id, list(children))
            live = [run for run in runs.values() if not run.status.terminal]
            refused = await refusals(
                [run.run_id for run in live],
                (
                    self._cancel_one(
                        tenant_id, run, reason or f"run {children[run.run_id]} was cancelled"
                    )
                    for run in live
                ),
            )
            for why in refused.values():  # one that ended meanwhile: its children still go
                if why is not None and not isinstance(why, Conflict):
                    raise why
            parents = list(children)

    async def replay(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> None:
        run = await self._load(tenant_id, run_id)
        if run.queue == WORKFLOW_QUEUE or run.workflow_run_id is not None:
            raise Conflict(
                f"run {run_id} is a workflow run or one of its steps, which cannot be "
                f"replayed; trigger the workflow again"
            )
        if not run.status.terminal:
            raise Conflict(
                f"run {run_id} is {run.status.value}; only finished runs can be replayed"
            )
        actor = self.actors.queue_for(tenant_id, run.queue)
        await actor.ask(actor.replay, run)
        await self.persister.flush()

    async def _load(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> Run:
        run = await self.repository.load_run(tenant_id, run_id)
        if run is None:
            raise no_such_run(run_id)
        return run

    async def waiting_reason(self, tenant_id: uuid.UUID, view: RunView) -> str | None:
        if view.status is RunStatus.PENDING and view.kind is not RunKind.WORKFLOW:
            actor = self.actors.existing_queue(
                tenant_id, view.queue
            )  # a durable run suspended there?
            durable: str | None = (
                await actor.ask(actor.waiting_reason, view.run_id, timeout=5)
                if actor is not None
                else None
            )
            return durable or "waiting for its wait_for conditions"
        if view.status is not RunStatus.QUEUED:
            return None
        if view.kind is RunKind.WORKFLOW:
            tenant = self.actors.tenant(tenant_id)
            admission: str | None = await tenant.ask(
                tenant.admission_reason, view.run_id, timeout=5
            )
            return admission
        actor = self.actors.existing_queue(tenant_id, view.queue)
        if actor is None:
            return None
        reason: str | None = await actor.ask(actor.waiting_reason, view.run_id, timeout=5)
        return reason

    async def wait(
        self, tenant_id: uuid.UUID, run_ids: Iterable[uuid.UUID], timeout: float
    ) -> tuple[list[dict[str, Any]], list[uuid.UUID]]:
        """Wait until every run has finished or `timeout` passes. Returns the finished runs as
        documents shaped like RunView, and the ids still pending. The runs are watched before
        they are read, so an end committed in between is not missed; a run read unfinished is not
        read again: its owner's notice of its committed end says what changed."""
        wanted = list(dict.fromkeys(run_ids))
        futures = self.actors.waiters.watch(tenant_id, wanted)
        try:
            found = await self.repository.run_documents(tenant_id, wanted)
            unknown = [str(run_id) for run_id in wanted if run_id not in found]
            if unknown:
                raise NotFound(
                    f"no run {', '.join(unknown[:5])} in this tenant"
                    + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
                )
            pending = [
                futures[run_id]
                for run_id, document in found.items()
                if not RunStatus(document["status"]).terminal
            ]
            if pending and timeout > 0:
                await asyncio.wait(pending, timeout=timeout)
                for future in pending:
                    if future.done():
                        _ended(found[future.result().run_id], future.result())
        finally:
            self.actors.waiters.unwatch(tenant_id, futures)
        finished, still = [], []
        for run_id in wanted:
            document = found[run_id]
            if RunStatus(document["status"]).terminal:
                finished.append(document)
            else:
                still.append(run_id)
        return finished, still

    async def view(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunView:
        """A run's view, with its waiting reason; 404 when the tenant has no such run."""
        view = await self._read_view(tenant_id, run_id)
        view.waiting_reason = await self.waiting_reason(tenant_id, view)
        return view

    async def result(self, tenant_id: uuid.UUID, run_id: uuid.UUID, timeout: float) -> RunView:
        """The run's view once it has finished, or after `timeout` seconds as it is then."""
        finished = self.actors.waiters.watch(tenant_id, [run_id])
        try:
            view = await self._read_view(tenant_id, run_id)
            if not view.status.terminal and timeout > 0:
                await asyncio.wait(finished.values(), timeout=timeout)
                if finished[run_id].done():
                    view = await self._read_view(tenant_id, run_id)
        finally:
            self.actors.waiters.unwatch(tenant_id, finished)
        view.waiting_reason = await self.waiting_reason(tenant_id, view)
        return view

    def watch(self, tenant_id: uuid.UUID) -> contextlib.AbstractContextManager[asyncio.Event]:
        """For the block's duration, an event set whenever a change of the tenant's runs has
        committed (live pages; nobody watching costs the queues nothing)."""
        return self.actors.changes.watch(tenant_id)

    @contextlib.asynccontextmanager
    async def streamed(
        self, tenant_id: uuid.UUID, run_id: uuid.UUID
    ) -> AsyncIterator[AsyncIterator[Any]]:
        """The chunks the run's task streams (`ctx.stream`) from now until the run ends, for
        the block's duration (none for a run that has ended). Not found: NotFound, before the
        block."""
        actors = self.actors
        subscribed = actors.streams.subscribe(tenant_id, run_id)
        finished = actors.waiters.watch(tenant_id, [run_id])
        try:
            statuses = await self.repository.run_statuses(tenant_id, [run_id])
            if run_id not in statuses:
                raise no_such_run(run_id)
            yield _until_end(subscribed, finished[run_id], statuses[run_id].terminal)
        finally:
            actors.streams.unsubscribe(tenant_id, run_id, subscribed)
            actors.waiters.unwatch(tenant_id, finished)

    async def _read_view(self, tenant_id: uuid.UUID, run_id: uuid.UUID) -> RunView:
        view = await self.repository.get_run(tenant_id, run_id)
        if view is None:
            raise no_such_run(run_id)
        return view


async def _until_end(
    chunks: asyncio.Queue[Any], finished: asyncio.Future[RunEnd], ended: bool
) -> AsyncIterator[Any]:
    """Each chunk as it comes, until the run ends (and what arrived just before its end)."""
    while not ended:
        next_chunk = asyncio.ensure_future(chunks.get())
        await asyncio.wait([next_chunk, finished], return_when=asyncio.FIRST_COMPLETED)
        if not next_chunk.done():
            next_chunk.cancel()
            break
        yield next_chunk.result()
    while not chunks.empty():
        yield chunks.get_nowait()


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _ended(document: dict[str, Any], end: RunEnd) -> None:
    """A run's document, read before it ended, brought up to its committed end."""
    document.update(
        status=end.status.value,
        attempt=end.attempt,
        finished_at=_utc(end.finished_at),
        started_at=_utc(end.started_at) if end.started_at is not None else None,
        output=orjson.Fragment(end.output_json) if end.output_json is not None else None,
        error=orjson.Fragment(end.error_json) if end.error_json is not None else None,
    )
