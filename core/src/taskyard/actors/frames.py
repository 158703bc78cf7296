"""Writing JSON messages to a websocket: anyone queues, one task writes, and what was queued
meanwhile goes in one frame (a JSON array), sent as the UTF-8 JSON it already is. Also the two
messages the engine sends most, encoded by hand: assignments and result acks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable

import orjson
from aiohttp import WSMsgType, web
from pydantic import BaseModel

from taskyard.actors.base import Mailbox
from taskyard.domain.runs import Run
from taskyard_sdk.protocol import MAX_FRAME_MESSAGES, encode_frame


class FrameWriter:
    """Owned by a connection's handler, which starts and stops it; `send` never waits."""

    def __init__(
        self, ws: web.WebSocketResponse, name: str, sent: Callable[[], None] | None = None
    ) -> None:
        self.ws = ws
        self.name = name
        self.sent = sent  # told of each frame sent (the engine's meters)
        self._outbox: Mailbox[BaseModel | bytes] = Mailbox()
        self._task: asyncio.Task[None] | None = None

    def send(self, message: BaseModel | bytes) -> None:
        """Queue a message (a model, or one already encoded as JSON)."""
        self._outbox.put(message)

    def send_many(self, messages: Iterable[BaseModel | bytes]) -> None:
        self._outbox.put_many(messages)

    def start(self) -> None:
        self._task = asyncio.create_task(self._write(), name=f"writer:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _write(self) -> None:
        outbox = self._outbox
        while True:
            batch = [await outbox.get()]
            while not outbox.empty() and len(batch) < MAX_FRAME_MESSAGES:
                batch.append(outbox.get_nowait())
            try:
                await self.ws.send_frame(encode_frame(batch), WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return  # the connection's handler notices the close and cleans up
            if self.sent is not None:
                self.sent()


def assign_json(
    run: Run,
    input_json: bytes | None,
    context_json: bytes | None,
    history_json: bytes | None = None,
) -> bytes:
    """A `protocol.Assign` message, encoded directly: the payload is embedded as the JSON it
    already is (decoding and re-encoding it per assignment was the hot path's largest cost)."""
    return (
        b'{"type":"assign","run_id":"%s","attempt":%d,"task":%s,"input":%s,'
        b'"metadata":%s,"execution_timeout":%s%s%s}'
        % (
            str(run.run_id).encode(),
            run.attempt,
            orjson.dumps(run.task),
            input_json if input_json is not None else b"null",
            orjson.dumps(run.metadata),
            orjson.dumps(run.options.execution_timeout),
            b',"context":' + context_json if context_json is not None else b"",
            b',"history":' + history_json if history_json is not None else b"",
        )
    )


Assignment = tuple[Run, bytes | None, bytes | None, bytes | None]  # input, context, history


def assign_batch_json(batch: list[Assignment]) -> bytes:
    """A `protocol.AssignBatch` of a batch task's runs, encoded as `assign_json` is."""
    first = batch[0][0]
    runs = b",".join(
        b'{"run_id":"%s","attempt":%d,"input":%s,"metadata":%s}'
        % (
            str(run.run_id).encode(),
            run.attempt,
            input_json if input_json is not None else b"null",
            orjson.dumps(run.metadata),
        )
        for run, input_json, _, _ in batch
    )
    return (
        b'{"type":"assign_batch","batch_id":"%s","task":%s,"execution_timeout":%s,"runs":[%s]}'
        % (
            str(first.batch_id).encode(),
            orjson.dumps(first.task),
            orjson.dumps(first.options.execution_timeout),
            runs,
        )
    )


def ack_json(refs: list[tuple[uuid.UUID, int]]) -> bytes:
    """A `protocol.Ack` of (run, attempt) pairs, encoded directly (one per committed batch of
    results: building a model per result cost more than the rest of the ack)."""
    return orjson.dumps(
        {
            "type": "ack",
            "results": [{"run_id": run_id, "attempt": attempt} for run_id, attempt in refs],
        }
    )
