"""Events pushed by applications and plugins: stored, starting the workflows whose on_events
match, waking the workflow steps and durable runs that wait for them; and replayed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson

from taskyard.domain.events import PushedEvent
from taskyard.domain.limits import Limit
from taskyard.domain.workflows import CompiledWorkflow
from taskyard.ids import id_at_time_of, new_id
from taskyard.services.directory import ActorDirectory
from taskyard.services.history import History
from taskyard.services.workflows import Workflows, WorkflowStart
from taskyard.store.persister import Persister
from taskyard.store.rows import pushed_event_row
from taskyard_sdk.models import EventRequest, EventView


class Events:
    def __init__(
        self,
        actors: ActorDirectory,
        persister: Persister,
        workflows: Workflows,
        history: History,
        payload_limit: Limit,
    ) -> None:
        self.payload_limit = payload_limit
        self.actors = actors
        self.persister = persister
        self.workflows = workflows  # the workflows an event starts
        self.history = history  # the stored event a replay pushes again

    async def push(
        self,
        tenant_id: uuid.UUID,
        requests: list[EventRequest],
        replay_of: uuid.UUID | None = None,
        *,
        ids: Sequence[uuid.UUID] | None = None,
        from_outbox: bool = False,
    ) -> list[EventView]:
        """Store events, start the workflows they trigger, wake the steps waiting for them.
        Returns once all of it is committed. `ids`: the events' ids, when the caller chose them
        (an outbox's rows). Such an event that is stored already was pushed before (a row
        drained again after a crash) and is left out of the answer; one that was not, though the
        workflow runs it started were committed, starts none of them twice, since their ids
        follow from the event's. `from_outbox` as for `Runs.trigger`."""
        if ids is not None:
            stored = await self.history.existing_events(tenant_id, list(ids))
            if stored:
                kept = [i for i, event_id in enumerate(ids) if event_id not in stored]
                requests, ids = [requests[i] for i in kept], [ids[i] for i in kept]
                if not requests:
                    return []
        payloads = [orjson.dumps(request.payload) for request in requests]
        limit = self.payload_limit
        for index, payload_json in enumerate(payloads):
            if len(payload_json) > limit.bytes:
                where = f"body.events[{index}].payload" if len(requests) > 1 else "body.payload"
                raise limit.refusal(where, len(payload_json))
        await self.persister.capacity()
        now = time.time()
        events = [
            PushedEvent(
                new_id() if ids is None else ids[index],
                request.key,
                request.payload,
                request.metadata,
                now,
            )
            for index, request in enumerate(requests)
        ]
        tenant = self.actors.tenant(tenant_id)
        routed: list[list[CompiledWorkflow]] = await tenant.ask(tenant.route, events)
        started = [
            WorkflowStart(
                workflow,
                event.payload,
                event.metadata,
                run_id=None if ids is None else id_at_time_of(event.event_id, workflow.name),
            )
            for event, workflows in zip(events, routed, strict=True)
            for workflow in workflows
        ]
        refs = await self.workflows.start(tenant_id, started)
        views, position = [], 0
        rows = []
        for event, payload_json, workflows in zip(events, payloads, routed, strict=True):
            triggered = [ref.run_id for ref in refs[position : position + len(workflows)]]
            position += len(workflows)
            rows.append(
                pushed_event_row(
                    tenant_id=tenant_id,
                    event_id=event.event_id,
                    key=event.key,
                    payload_json=payload_json,
                    metadata=event.metadata,
                    created_at=now,
                    triggered=triggered,
                    replay_of=replay_of,
                )
            )
            views.append(
                EventView(
                    event_id=event.event_id,
                    key=event.key,
                    payload=event.payload,
                    metadata=event.metadata,
                    created_at=datetime.fromtimestamp(now, UTC),
                    triggered=triggered,
                    replay_of=replay_of,
                )
            )
        self.persister.pushed_events(rows, from_outbox=from_outbox)
        await self.persister.barrier(tenant_id)
        tenant.tell(tenant.events_committed, events)
        for queue in self.actors.queues_of(tenant_id):  # durable runs' waits
            queue.tell(queue.durable_events, events)
        return views

    async def replay(self, tenant_id: uuid.UUID, event_id: uuid.UUID) -> EventView:
        stored = await self.history.event(tenant_id, event_id)
        again = EventRequest(key=stored.key, payload=stored.payload, metadata=stored.metadata)
        [view] = await self.push(tenant_id, [again], replay_of=event_id)
        return view
