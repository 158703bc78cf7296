"""A worker's connection to the engine: connect (registering its workflows first), say hello with
what it runs and what it still holds, reconnect with a short back-off, beat, and hand what the
engine sends to the attempts and the outbox.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import TYPE_CHECKING, Any

import aiohttp
from pydantic import ValidationError

from taskyard_sdk import protocol
from taskyard_sdk._errors import (
    ApiError,
    AuthenticationError,
    ConnectionLost,
    EngineUnreachable,
    InvalidRequest,
    PermissionDenied,
    TaskyardError,
)

if TYPE_CHECKING:
    from taskyard_sdk._worker.attempts import Attempts
    from taskyard_sdk._worker.outbox import AttemptKey, Outbox
    from taskyard_sdk._worker.worker import Worker

log = logging.getLogger("taskyard.worker")

_CLOSE_FATAL = {  # reconnecting would not help
    protocol.CLOSE_PROTOCOL_ERROR: "a protocol error",
    protocol.CLOSE_TOKEN_REVOKED: "its token was revoked",
}
_RESEND_EVERY_BEATS = 3  # a result unacknowledged for this many heartbeats is sent again


class WorkerStopped(TaskyardError):
    """The worker could not run: the engine refused it (e.g. a bad token)."""


class _Moved(Exception):
    """The engine node said the worker's tenant is owned by another node: connect again."""


class Connection:
    """Reads the worker's identity and definitions; owns only the socket and its timing."""

    def __init__(self, worker: Worker, attempts: Attempts, outbox: Outbox) -> None:
        self.worker = worker
        self.attempts = attempts
        self.outbox = outbox
        self.connected = asyncio.Event()  # set while connected (Events bind no loop)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._heartbeat_interval = 5.0
        # The node that owns this worker's tenant, as an engine node said (`moved`): the next
        # connection goes there, not to the client's URL.
        self._owner: str | None = None
        self._moved_to: protocol.Moved | None = None

    async def stay_connected(self) -> None:
        delay = 0.1
        while True:
            url = self._url
            try:
                await self._session(url)
                delay = 0.1
            except _Moved:
                continue  # at once, to the owner
            except Exception as exc:
                if not _passing(exc):
                    raise  # a refusal for good (a revoked token, a workflow refused): stop
                if url == self._owner:
                    self._owner = None  # gone: back to the nodes the worker was given
                elif isinstance(
                    exc, aiohttp.ClientConnectorError | EngineUnreachable | TimeoutError
                ):
                    self.worker.client.transport.fail_over(url)
                log.warning(
                    "worker %s: connection to %s failed (%s); retrying in %.1fs",
                    self.worker.name,
                    url,
                    exc,
                    delay,
                )
            self.connected.clear()
            await asyncio.sleep(delay * (0.5 + random.random()))
            # At most 0.75 s between tries: a restarted engine holds its recovered runs for
            # `recovery_hold` (1 s) for their workers to claim; one that came back later found
            # its attempt given to another worker, and the work ran twice.
            delay = min(delay * 2, 0.5)

    @property
    def _url(self) -> str:
        return self._owner or self.worker.client.url

    def _moved(self, message: protocol.Moved) -> _Moved:
        self._owner = message.url.rstrip("/") if message.url else None
        log.info(
            "worker %s: its tenant is owned by another engine node; connecting to %s",
            self.worker.name,
            self._url,
        )
        return _Moved()

    async def _session(self, base: str) -> None:
        self._moved_to = None
        for workflow in self.worker.workflows:  # on every connect: the engine may be a new one
            try:
                info = await workflow.aio_register()
            except InvalidRequest as exc:
                raise WorkerStopped(
                    f"the engine refused workflow {workflow.name!r}: {exc}"
                ) from exc
            log.info(
                "worker %s registered workflow %r (version %d)",
                self.worker.name,
                workflow.name,
                info.version,
            )
        headers = self.worker.client.transport.headers
        session = self.worker.client.transport.session()
        url = base + "/api/v1/workers/connect"
        try:
            async with asyncio.timeout(protocol.HANDSHAKE_TIMEOUT):
                ws = await session.ws_connect(
                    url, headers=headers, heartbeat=protocol.PING_EVERY, max_msg_size=0
                )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise AuthenticationError(
                    401,
                    "unauthorized",
                    f"the engine refused worker {self.worker.name}'s token: check TASKYARD_TOKEN",
                ) from exc
            if exc.status == 403:
                raise PermissionDenied(
                    403, "forbidden", "workers need a token with role worker or admin"
                ) from exc
            raise
        self.ws = ws
        self.outbox.attach()
        writer: asyncio.Task[None] | None = None
        heartbeats: asyncio.Task[None] | None = None
        try:
            await ws.send_str(
                protocol.Hello(
                    protocol=protocol.PROTOCOL_VERSION,
                    worker_id=self.worker.worker_id,
                    name=self.worker.name,
                    queue=self.worker.queue,
                    slots=self.worker.slots,
                    labels=self.worker.labels,
                    tasks=[
                        protocol.TaskDefinition(
                            name=t.name,
                            options=t.options,
                            crons=t.crons,
                            input_schema=t.input_schema,
                        )
                        for t in self.worker.tasks.values()
                    ],
                    # Running attempts, and finished ones whose result is not acknowledged yet:
                    # the engine keeps both assigned to this worker instead of retrying them.
                    in_flight=[
                        protocol.AttemptRef(run_id=r, attempt=a)
                        for r, a in dict.fromkeys([*self.attempts.keys(), *self.outbox.results])
                    ],
                ).model_dump_json()
            )
            welcome = await self._welcome(ws)
            self._heartbeat_interval = welcome.heartbeat_interval
            self.attempts.welcome = welcome
            writer = asyncio.create_task(self.outbox.write(ws))
            self.outbox.resend()  # results, durable entries, logs the engine may not have
            heartbeats = asyncio.create_task(self._heartbeat())
            self.connected.set()
            log.info(
                "worker %s connected to %s: queue %r, %d slots, tasks %s",
                self.worker.name,
                base,
                self.worker.queue,
                self.worker.slots,
                ", ".join(self.worker.tasks),
            )
            async for message in ws:
                if message.type is aiohttp.WSMsgType.TEXT:
                    self._on_frame(message.data)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    break
            if isinstance(ws.exception(), TimeoutError):
                raise TimeoutError(f"{base} answered no ping for {protocol.PING_EVERY / 2:g}s")
            if ws.close_code == protocol.CLOSE_MOVED:
                raise self._moved(self._moved_to or protocol.Moved())
            if ws.close_code in _CLOSE_FATAL:
                raise WorkerStopped(
                    f"the engine closed worker {self.worker.name}'s connection: "
                    f"{_CLOSE_FATAL[ws.close_code]} ({ws.close_code})"
                )
        finally:
            self.ws = None
            self.outbox.detach()
            for task in (writer, heartbeats):
                if task is not None:
                    task.cancel()
            await asyncio.gather(*(t for t in (writer, heartbeats) if t), return_exceptions=True)
            await ws.close()

    async def _welcome(self, ws: aiohttp.ClientWebSocketResponse) -> protocol.Welcome:
        first = await ws.receive(timeout=15)
        if first.type is not aiohttp.WSMsgType.TEXT:
            raise aiohttp.ClientError(f"connection closed during handshake ({first.type.name})")
        message = protocol.engine_message.validate_json(first.data)
        if isinstance(message, protocol.Moved):
            raise self._moved(message)
        if isinstance(message, protocol.Error):
            raise WorkerStopped(f"the engine refused worker {self.worker.name}: {message.message}")
        if not isinstance(message, protocol.Welcome):
            raise aiohttp.ClientError(f"expected welcome, got {message.type}")
        return message

    async def _heartbeat(self) -> None:
        """Heartbeats, and results still unacknowledged a while later sent again (the engine
        acks only what it has committed; a result it could not write is re-sent)."""
        unacked: set[AttemptKey] = set()
        beats = 0
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            self.outbox.send(protocol.Heartbeat())
            beats += 1
            if beats % _RESEND_EVERY_BEATS == 0:
                results = self.outbox.results
                for key in unacked & results.keys():
                    self.outbox.send(results[key])
                unacked = set(results)

    def _on_frame(self, data: str) -> None:
        try:
            messages = protocol.decode_engine_frame(data)
        except ValueError:
            messages = self._each_message(data)
        for message in messages:
            if isinstance(message, protocol.Assign):
                self.attempts.assign(message)
            elif isinstance(message, protocol.AssignBatch):
                self.attempts.assign_batch(message)
            elif isinstance(message, protocol.Cancel):
                self.attempts.cancel(message)
            elif isinstance(message, protocol.Ack):
                self.outbox.acked(message)
            elif isinstance(message, protocol.Moved):
                self._moved_to = message  # the close that follows reconnects
            elif isinstance(message, protocol.Recorded):
                self.outbox.recorded(message)
            elif isinstance(message, protocol.Error):
                self.outbox.refused(message)
                log.warning(
                    "worker %s: the engine reported %s: %s",
                    self.worker.name,
                    message.code,
                    message.message,
                )

    def _each_message(self, data: str) -> list[Any]:
        """A frame that did not parse as a whole: what can be read of it, one message at a
        time, each problem logged."""
        try:
            parsed = json.loads(data)
        except ValueError:
            log.error("worker %s: the engine sent a frame that is not JSON", self.worker.name)
            return []
        messages = []
        for item in parsed if isinstance(parsed, list) else [parsed]:
            try:
                messages.append(protocol.engine_message.validate_python(item))
            except ValidationError as exc:
                log.error(
                    "worker %s: cannot read a message from the engine: %s", self.worker.name, exc
                )
        return messages


def _passing(exc: Exception) -> bool:
    """A failure of this connection, not of the worker: connect again. The engine's own
    trouble (5xx: a node lost with a call in flight, its database away) passes too."""
    if isinstance(exc, ApiError):
        return exc.status >= 500
    return isinstance(
        exc, aiohttp.ClientError | OSError | TimeoutError | EngineUnreachable | ConnectionLost
    )
