"""Connected workers: one session per websocket, and the registry that tracks their liveness.

A session belongs to its connection handler, which creates and closes it; anyone may `send` to it
(messages are queued and written by the session's own writer task, many to a frame under load).
The WorkerRegistry knows every connected session, keyed by tenant and worker id (a worker id is
never taken over across tenants), hands joins, departures and silence to the worker's QueueActor,
and closes workers that stop sending heartbeats or whose token is revoked.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from taskyard.actors.base import Actor
from taskyard.actors.frames import FrameWriter
from taskyard_sdk import protocol

if TYPE_CHECKING:
    from taskyard.actors.queue import QueueActor

log = logging.getLogger(__name__)

SessionKey = tuple[uuid.UUID, uuid.UUID]  # (tenant id, worker id)


class WorkerSession:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        tenant_id: uuid.UUID,
        token_id: uuid.UUID,
        hello: protocol.Hello,
        sent: Callable[[], None] | None = None,
    ) -> None:
        self.ws = ws
        self.tenant_id = tenant_id
        self.token_id = token_id  # the token it connected with: revoking it closes the session
        self.worker_id = hello.worker_id
        self.name = hello.name
        self.queue = hello.queue
        self.slots = hello.slots
        self.labels = hello.labels
        self.definitions = hello.tasks
        self.task_names = [task.name for task in hello.tasks]
        self.draining = False  # set by the registry when the worker says it drains
        self.connected_at = time.time()
        self.last_seen = time.monotonic()
        self.revoked = False  # set when its token is revoked: frames still in flight are dropped
        self._writer = FrameWriter(ws, f"worker:{self.name}", sent)
        self.send = self._writer.send
        self.send_many = self._writer.send_many

    @property
    def key(self) -> SessionKey:
        return self.tenant_id, self.worker_id

    def start(self) -> None:
        self._writer.start()

    async def close(self, code: int = 1000, message: str = "") -> None:
        await self._writer.stop()
        if not self.ws.closed:
            await self.ws.close(code=code, message=message.encode())

    def describe(self) -> dict[str, Any]:
        return {
            "worker_id": str(self.worker_id),
            "name": self.name,
            "queue": self.queue,
            "slots": self.slots,
            "labels": self.labels,
            "tasks": self.task_names,
            "connected_at": self.connected_at,
            "draining": self.draining,
            "last_heard_at": time.time() - (time.monotonic() - self.last_seen),
        }


class WorkerRegistry(Actor):
    def __init__(
        self,
        *,
        queue_for: Callable[[uuid.UUID, str], QueueActor],
        register_tasks: Callable[[uuid.UUID, list[protocol.TaskDefinition]], None],
        heartbeat_interval: float,
        heartbeat_timeout: float,
    ) -> None:
        super().__init__("workers")
        self.queue_for = queue_for
        self.register_tasks = register_tasks
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.sessions: dict[SessionKey, WorkerSession] = {}
        self._monitor: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        if self._monitor is None:
            self._monitor = asyncio.create_task(self._watch_heartbeats(), name="heartbeats")

    async def on_stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        for session in list(self.sessions.values()):
            self._close_later(session, 1001, "engine shutting down")
        await self.side_tasks.wait()

    def of_queue(self, tenant_id: uuid.UUID, queue: str) -> list[WorkerSession]:
        """The sessions a (re)starting queue actor takes its workers from."""
        return [s for s in self.sessions.values() if s.tenant_id == tenant_id and s.queue == queue]

    def of_tenant(self, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
        """The tenant's connected workers, described (asked by the services)."""
        return [s.describe() for s in self.sessions.values() if s.tenant_id == tenant_id]

    def connect(self, session: WorkerSession, in_flight: list[protocol.AttemptRef]) -> None:
        previous = self.sessions.get(session.key)
        if previous is not None and previous is not session:
            # The same worker reconnected before its old connection was noticed as gone.
            old_queue = self.queue_for(previous.tenant_id, previous.queue)
            old_queue.tell(old_queue.worker_disconnected, previous)
            self._close_later(previous, 4000, "replaced by a newer connection of the same worker")
        self.sessions[session.key] = session
        self.register_tasks(session.tenant_id, session.definitions)
        queue = self.queue_for(session.tenant_id, session.queue)
        queue.tell(queue.worker_joined, session, in_flight)
        log.info(
            "worker %s (%s) connected: %d slots, tasks %s",
            session.name,
            session.worker_id,
            session.slots,
            ", ".join(session.task_names),
        )

    def disconnect(self, session: WorkerSession) -> None:
        if self.sessions.get(session.key) is not session:
            return
        del self.sessions[session.key]
        queue = self.queue_for(session.tenant_id, session.queue)
        queue.tell(queue.worker_disconnected, session)
        log.info("worker %s (%s) disconnected", session.name, session.worker_id)

    def draining(self, session: WorkerSession) -> None:
        session.draining = True
        queue = self.queue_for(session.tenant_id, session.queue)
        queue.tell(queue.worker_draining, session.worker_id)

    async def _watch_heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            self.tell(self._check_heartbeats)

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if now - session.last_seen > self.heartbeat_timeout:
                log.warning(
                    "worker %s (%s) silent for %.1fs: declaring it lost",
                    session.name,
                    session.worker_id,
                    now - session.last_seen,
                )
                del self.sessions[session.key]
                queue = self.queue_for(session.tenant_id, session.queue)
                queue.tell(
                    queue.worker_lost,
                    session.worker_id,
                    f"{session.name} sent no heartbeat for {self.heartbeat_timeout:g}s",
                )
                self._close_later(session, 4001, "no heartbeat")

    def token_ids(self) -> set[uuid.UUID]:
        """The tokens connected workers use."""
        return {session.token_id for session in self.sessions.values()}

    def token_revoked(self, token_id: uuid.UUID) -> None:
        """Cut off every worker connected with a revoked token: no assignment reaches it and
        nothing it sends is taken from now on; its attempts are lost at once (retried as for
        a worker that died), since it cannot reconnect to report them."""
        for session in [s for s in self.sessions.values() if s.token_id == token_id]:
            log.warning(
                "worker %s (%s): its token was revoked; closing the connection",
                session.name,
                session.worker_id,
            )
            session.revoked = True
            del self.sessions[session.key]
            queue = self.queue_for(session.tenant_id, session.queue)
            queue.tell(queue.worker_lost, session.worker_id, f"{session.name}'s token was revoked")
            self._close_later(session, protocol.CLOSE_TOKEN_REVOKED, "token revoked")

    def tenant_moved(self, tenant_id: uuid.UUID) -> None:
        """The tenant is owned by another node now: its workers are told to connect there
        (they reconnect with what they hold, and the new owner re-attaches it). Frames still
        in flight on their connections are dropped: the new owner takes them when re-sent."""
        for session in [s for s in self.sessions.values() if s.tenant_id == tenant_id]:
            session.revoked = True
            del self.sessions[session.key]
            session.send(protocol.Moved())
            self._close_later(session, protocol.CLOSE_MOVED, "tenant moved to another node")

    def _close_later(self, session: WorkerSession, code: int, reason: str) -> None:
        """Close outside the mailbox: closing waits for the peer (up to seconds when it is
        silent), and the registry must keep serving others meanwhile."""
        self.side_tasks.spawn(session.close(code, reason), name=f"close:{session.name}")
