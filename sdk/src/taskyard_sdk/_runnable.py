"""What tasks and workflows share as things one runs: the run API in its async and sync forms,
the handle of a triggered run, and the long-poll that waits for results. A subclass says how to
trigger (`aio_run_no_wait`, `aio_run_many_no_wait`) and how to read a finished run
(`_outcome`); the rest is written once, here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from uuid import UUID

from pydantic import BaseModel

from taskyard_sdk import outbox
from taskyard_sdk._errors import NotFound, ResultTimeout, TaskFailed
from taskyard_sdk._transport import run_sync
from taskyard_sdk.models import RunStatus, RunView, WaitResponse
from taskyard_sdk.otel import with_trace

if TYPE_CHECKING:
    from taskyard_sdk._client import Taskyard

In = TypeVar("In")
Out = TypeVar("Out")

_POLL = 60.0  # longest single long-poll; waits longer than this are several polls
_WAIT_CHUNK = 10_000


class Runnable(Generic[In, Out]):
    """A task or a workflow, as something to run through the engine."""

    client: Taskyard
    name: str

    async def aio_run_no_wait(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle[Out]:
        """Trigger a run; returns a handle whose `.aio_result()` waits for it."""
        raise NotImplementedError

    async def aio_run_many_no_wait(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Out]]:
        """Trigger many runs in as few requests as the engine's limits allow."""
        raise NotImplementedError

    def _outcome(self, view: RunView) -> Out:
        """A finished run's result; raises TaskFailed if it did not succeed."""
        raise NotImplementedError

    def encode_input(self, value: Any) -> Any:
        """Validate against the input model and turn into JSON-able data (before sending)."""
        raise NotImplementedError

    def _request(
        self, metadata: dict[str, str] | None, priority: int | None, idempotency_key: str | None
    ) -> dict[str, Any]:
        """A trigger without its input: what the runs of one call share."""
        raise NotImplementedError

    def _outbox_request(
        self, metadata: dict[str, str] | None, priority: int | None
    ) -> dict[str, Any]:
        """What the outbox rows of one call share."""
        return self._request(metadata, priority, None)

    _outbox_kind: ClassVar[outbox.Kind]
    _trigger_model: ClassVar[type[BaseModel]]  # what the REST API checks one trigger with

    def _outbox_rows(
        self, inputs: Sequence[In], metadata: dict[str, str] | None, priority: int | None
    ) -> list[outbox.OutboxRow]:
        """The triggers of runs as outbox rows (validated, their run ids chosen)."""
        common = self._outbox_request(with_trace(metadata), priority)
        values = [self.encode_input(value) for value in inputs]
        return outbox.new_rows(self._outbox_kind, self.name, self._trigger_model, common, values)

    # -- through the application's own transaction (see taskyard_sdk.outbox) ---------------------

    async def aio_run_in(
        self,
        conn: Any,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> RunHandle[Out]:
        """Enqueue a run in the transaction open on `conn` (asyncpg, psycopg AsyncConnection,
        SQLAlchemy AsyncSession or AsyncConnection): the run exists if and only if that
        transaction commits, and exactly once (no idempotency key is needed, or taken). Its id
        is known at once (store it in the same transaction); the engine need not be reachable.
        A bad input is refused here, as `aio_run_no_wait` would refuse it."""
        [handle] = await self.aio_run_many_in(conn, [input], metadata=metadata, priority=priority)
        return handle

    async def aio_run_many_in(
        self,
        conn: Any,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Out]]:
        """Enqueue many runs in the transaction open on `conn`, in one statement."""
        rows = self._outbox_rows(inputs, metadata, priority)
        await outbox.aio_write(conn, rows)
        return [RunHandle(self, row.id, enqueued=True) for row in rows]

    def run_in(
        self,
        conn: Any,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> RunHandle[Out]:
        """`aio_run_in` through a sync connection (psycopg Connection, SQLAlchemy Session or
        Connection)."""
        [handle] = self.run_many_in(conn, [input], metadata=metadata, priority=priority)
        return handle

    def run_many_in(
        self,
        conn: Any,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Out]]:
        """`aio_run_many_in` through a sync connection."""
        rows = self._outbox_rows(inputs, metadata, priority)
        outbox.write(conn, rows)
        return [RunHandle(self, row.id, enqueued=True) for row in rows]

    async def aio_run(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Out:
        """Trigger a run and wait for its result: a task's output, a workflow's outputs by step
        name (None for a skipped step). Raises TaskFailed if it does not succeed."""
        handle = await self.aio_run_no_wait(
            input, metadata=metadata, priority=priority, idempotency_key=idempotency_key
        )
        return await handle.aio_result(timeout=timeout)

    async def aio_run_many(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Out | TaskFailed]:
        """Run many, in one request; results in the order of `inputs`. The first failure is
        raised, unless `return_exceptions` puts each TaskFailed in its place instead."""
        handles = await self.aio_run_many_no_wait(inputs, metadata=metadata, priority=priority)
        views = await wait_for_runs(self.client, [h.run_id for h in handles], timeout)
        results: list[Out | TaskFailed] = []
        for handle in handles:
            try:
                results.append(self._outcome(views[handle.run_id]))
            except TaskFailed as failure:
                if not return_exceptions:
                    raise
                results.append(failure)
        return results

    # -- synchronous twins ------------------------------------------------------------------------

    def run(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> Out:
        """Trigger a run and wait for its result (raises TaskFailed if it does not succeed)."""
        return run_sync(
            self.aio_run(
                input,
                metadata=metadata,
                priority=priority,
                idempotency_key=idempotency_key,
                timeout=timeout,
            )
        )

    def run_no_wait(
        self,
        input: In,
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
    ) -> RunHandle[Out]:
        """Trigger a run; returns a handle whose `.result()` waits for it."""
        return run_sync(
            self.aio_run_no_wait(
                input, metadata=metadata, priority=priority, idempotency_key=idempotency_key
            )
        )

    def run_many(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
        timeout: float | None = None,
        return_exceptions: bool = False,
    ) -> list[Out | TaskFailed]:
        return run_sync(
            self.aio_run_many(
                inputs,
                metadata=metadata,
                priority=priority,
                timeout=timeout,
                return_exceptions=return_exceptions,
            )
        )

    def run_many_no_wait(
        self,
        inputs: Sequence[In],
        *,
        metadata: dict[str, str] | None = None,
        priority: int | None = None,
    ) -> list[RunHandle[Out]]:
        return run_sync(self.aio_run_many_no_wait(inputs, metadata=metadata, priority=priority))


class RunHandle(Generic[Out]):
    """A triggered run (of a task or a workflow). `result()` waits for its output.
    `enqueued`: written to an outbox, so the engine may not have created it yet."""

    def __init__(self, task: Runnable[Any, Out], run_id: UUID, *, enqueued: bool = False) -> None:
        self.task = task
        self.run_id = run_id
        self.enqueued = enqueued

    def __repr__(self) -> str:
        return f"<RunHandle {self.task.name} {self.run_id}>"

    async def aio_result(self, timeout: float | None = None) -> Out:
        views = await wait_for_runs(
            self.task.client, [self.run_id], timeout, appearing=self.enqueued
        )
        return self.task._outcome(views[self.run_id])

    def result(self, timeout: float | None = None) -> Out:
        return run_sync(self.aio_result(timeout))

    async def aio_get(self) -> RunView:
        return await self.task.client.runs.aio_get(self.run_id)

    async def aio_stream(self) -> AsyncIterator[Any]:
        """The chunks the task streams with `ctx.stream(...)`, live, until the run ends."""
        async for chunk in self.task.client.transport.events(f"/api/v1/runs/{self.run_id}/stream"):
            yield chunk

    def get(self) -> RunView:
        return run_sync(self.aio_get())

    async def aio_cancel(self) -> RunStatus:
        return await self.task.client.runs.aio_cancel(self.run_id)

    def cancel(self) -> RunStatus:
        return run_sync(self.aio_cancel())


async def wait_for_runs(
    client: Taskyard, run_ids: list[UUID], timeout: float | None, *, appearing: bool = False
) -> dict[UUID, RunView]:
    """Long-poll until every run has finished; raises ResultTimeout after `timeout` seconds.
    `appearing`: the runs were enqueued through an outbox, and until the engine has drained it
    an unknown run is waited for instead of refused."""
    deadline = None if timeout is None else time.monotonic() + timeout
    finished: dict[UUID, RunView] = {}
    pending = list(run_ids)
    retry = 0.01
    while pending:
        try:
            return await _wait_for_runs(client, pending, finished, deadline, timeout, len(run_ids))
        except NotFound:
            if not appearing:
                raise
            remaining = retry if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(
                    f"{len(pending)} of {len(run_ids)} runs enqueued through an outbox were not "
                    f"drained and finished within {timeout:g}s (first pending: {pending[0]})"
                ) from None
            await asyncio.sleep(min(retry, remaining))
            retry = min(retry * 2, 1.0)
    return finished


async def _wait_for_runs(
    client: Taskyard,
    pending: list[UUID],
    finished: dict[UUID, RunView],
    deadline: float | None,
    timeout: float | None,
    total: int,
) -> dict[UUID, RunView]:
    while pending:
        remaining = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
        if remaining <= 0:
            raise ResultTimeout(
                f"{len(pending)} of {total} runs did not finish within "
                f"{timeout:g}s (first pending: {pending[0]})"
            )
        chunks = [pending[i : i + _WAIT_CHUNK] for i in range(0, len(pending), _WAIT_CHUNK)]
        responses = await asyncio.gather(
            *(
                client.transport.request(
                    "POST",
                    "/api/v1/runs/wait",
                    json_body={"run_ids": [str(r) for r in chunk], "timeout": remaining},
                    idempotent=True,
                )
                for chunk in chunks
            )
        )
        pending[:] = []
        for raw in responses:
            response = WaitResponse.model_validate(raw)
            finished.update((view.run_id, view) for view in response.runs)
            pending += response.pending
    return finished
