"""The engine's websocket protocols: one typed model per message, shared by both sides.

Workers (`/api/v1/workers/connect`): every frame is a JSON object `{"type": ..., ...}` or a JSON
array of such objects (many assignments or results in one frame under load). `hello` carries
PROTOCOL_VERSION.

Clients (`/api/v1/clients/connect`, the SDK's channel): the REST API over one connection. The
engine says `welcome`; then each `ClientCall` is an HTTP call as a frame, answered by a
`ClientAnswer` with the same id, the REST status and the REST body, in the order calls finish.
Answers may arrive several to a frame (a JSON array).

Over 400 lines on purpose: it is the protocol's one document, every message of both channels,
their frames, the error envelope and the limits both sides enforce, read side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from taskyard_sdk.models import NAME_PATTERN, ErrorInfo, LabelValue, StepContext, TaskOptions

PROTOCOL_VERSION = 1
CLOSE_PROTOCOL_ERROR = 4002  # websocket close codes the engine uses; reconnecting would not help
CLOSE_TOKEN_REVOKED = 4003
CLOSE_MOVED = 4004  # the tenant is owned by another engine node: connect again (see Moved)
# Both sockets ping the engine this often; one that answers no ping within half of it (frozen,
# or cut off by a partition that leaves the socket open) is left for the cluster's other nodes,
# as is one that takes the connection and never answers the handshake.
PING_EVERY = 5.0
HANDSHAKE_TIMEOUT = 10.0
# The error code of a 404 for a workflow no worker has registered yet: the SDK registers the
# caller's definition and triggers again.
WORKFLOW_NOT_REGISTERED = "workflow_not_registered"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskDefinition(_Message):
    name: str = Field(pattern=NAME_PATTERN)
    options: TaskOptions = Field(default_factory=TaskOptions)
    crons: list[str] = Field(
        default_factory=list,
        max_length=20,
        description="on_crons: UTC cron expressions that run it.",
    )
    input_schema: dict[str, Any] | None = Field(
        default=None,
        description="The input's JSON Schema, when the SDK can tell it: forms that trigger "
        "the task (the dashboard's) check an input against it.",
    )


class AttemptRef(_Message):
    run_id: UUID
    attempt: int = Field(ge=1)


# -- worker -> engine ----------------------------------------------------------------------------


class Hello(_Message):
    type: Literal["hello"] = "hello"
    protocol: int
    worker_id: UUID
    name: str = Field(min_length=1, max_length=200)
    queue: str = Field(default="default", pattern=NAME_PATTERN)
    slots: int = Field(ge=1, le=100_000)
    labels: dict[str, LabelValue] = Field(default_factory=dict)
    tasks: list[TaskDefinition] = Field(min_length=1)
    in_flight: list[AttemptRef] = Field(
        default_factory=list, description="Attempts still running on this worker."
    )


class Heartbeat(_Message):
    type: Literal["heartbeat"] = "heartbeat"


class Started(AttemptRef):
    type: Literal["started"] = "started"


class Completed(AttemptRef):
    type: Literal["completed"] = "completed"
    output: Any = None


class Failed(AttemptRef):
    type: Literal["failed"] = "failed"
    error: ErrorInfo
    retryable: bool = True
    retry_after: float | None = Field(default=None, ge=0)
    cancelled: bool = False


class Log(AttemptRef):
    type: Literal["log"] = "log"
    message: str  # the engine keeps up to Welcome.max_log_line_bytes of it
    level: Literal["debug", "info", "warning", "error"] = "info"


class Stream(AttemptRef):
    """A chunk for live subscribers of the run (not stored)."""

    type: Literal["stream"] = "stream"
    data: Any = None


class RefreshTimeout(AttemptRef):
    type: Literal["refresh_timeout"] = "refresh_timeout"
    seconds: float = Field(gt=0)


class Drain(_Message):
    """The worker is shutting down: assign it nothing new."""

    type: Literal["drain"] = "drain"


# -- durable tasks ---------------------------------------------------------------------------------


class DurableEntry(_Message):
    """One entry of a durable run's log, by position: a memoised step, children spawned, or a
    wait. A replay returns `result` for every entry that is `done`."""

    position: int = Field(ge=0)
    kind: Literal["memo", "spawn", "wait"]
    call: str = Field(max_length=12_000, description="What was called, for the replay check.")
    done: bool = True
    result: Any = None


class EventWait(_Message):
    key: str = Field(max_length=200)
    filter: str | None = Field(default=None, max_length=10_000)


class WaitSpec(_Message):
    """What a suspended durable run waits for. Times are absolute (epoch seconds): a sleep
    started before a crash ends when it would have."""

    since: float = Field(description="When the wait began: events pushed from then on count.")
    until: float | None = Field(default=None, description="A sleep ends at this time.")
    events: list[EventWait] = Field(default_factory=list, max_length=20)
    mode: Literal["any", "all"] = "any"
    deadline: float | None = Field(default=None, description="Give up (timed out) at this time.")
    children: list[UUID] = Field(default_factory=list, max_length=10_000)
    input: Any = Field(default=None, description="The run's input, for filters that read it.")


class Record(AttemptRef):
    """A durable entry that is complete (a memoised result, children spawned): the engine
    stores it and answers `recorded` once it is committed."""

    type: Literal["record"] = "record"
    entry: DurableEntry


class Suspend(AttemptRef):
    """The durable run waits: its attempt stops here and its slot is free. It is assigned again,
    with its log, once the wait is over."""

    type: Literal["suspend"] = "suspend"
    position: int = Field(ge=0)
    call: str = Field(max_length=12_000)
    wait: WaitSpec


WorkerMessage = Annotated[
    Heartbeat
    | Started
    | Completed
    | Failed
    | Log
    | Stream
    | RefreshTimeout
    | Drain
    | Hello
    | Record
    | Suspend,
    Field(discriminator="type"),
]
worker_message = TypeAdapter(WorkerMessage)
_worker_frame = TypeAdapter(list[WorkerMessage])

# -- engine -> worker ----------------------------------------------------------------------------


class Welcome(_Message):
    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    worker_id: UUID
    heartbeat_interval: float
    max_message_bytes: int
    max_output_bytes: int = 1024 * 1024  # of a result, durable step result or stream chunk
    max_log_line_bytes: int = 64 * 1024  # longer lines are cut, noted
    tenant: str | None = None  # the tenant's name, for the worker's log lines


class Moved(_Message):
    """Instead of `welcome`, or before the engine closes a connection: the worker's tenant is
    owned by another engine node of the cluster. The worker connects to `url` (when given,
    else to its engine URLs again) with what it holds."""

    type: Literal["moved"] = "moved"
    url: str | None = None


class Assign(AttemptRef):
    type: Literal["assign"] = "assign"
    task: str
    input: Any = None
    metadata: dict[str, str] = Field(default_factory=dict)
    execution_timeout: float
    context: StepContext | None = Field(default=None, description="For a workflow's step.")
    history: list[DurableEntry] | None = Field(
        default=None, description="For a durable task: its log so far, by position."
    )


class BatchRun(AttemptRef):
    input: Any = None
    metadata: dict[str, str] = Field(default_factory=dict)


class AssignBatch(_Message):
    """Runs of a batch task, for one call of its function with their inputs as a list. Each
    run is reported on its own (`started`, `completed`, `failed`), and each may be cancelled."""

    type: Literal["assign_batch"] = "assign_batch"
    batch_id: UUID = Field(description="Its first run's id.")
    task: str
    execution_timeout: float
    runs: list[BatchRun] = Field(min_length=1)


class Cancel(AttemptRef):
    type: Literal["cancel"] = "cancel"
    reason: str


class Ack(_Message):
    """These results are committed: the worker may forget them."""

    type: Literal["ack"] = "ack"
    results: list[AttemptRef]


class Recorded(AttemptRef):
    """The durable entry at `position` is committed."""

    type: Literal["recorded"] = "recorded"
    position: int


class Error(_Message):
    type: Literal["error"] = "error"
    code: str
    message: str
    ref: AttemptRef | None = Field(default=None, description="The attempt the error is about.")


# -- the REST API's errors ------------------------------------------------------------------------


class ApiErrorBody(BaseModel):
    code: str = Field(description="What went wrong, for programs: not_found, invalid_request...")
    message: str = Field(description="What went wrong and where, for people.")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="One entry per problem, when a request had several."
    )


class ErrorEnvelope(BaseModel):
    """The body of every error the REST API (and the client channel) answers with. Read
    tolerantly (fields a newer engine adds are ignored); written without empty `details`."""

    error: ApiErrorBody

    @classmethod
    def of(cls, code: str, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
        """The encoded body of an error response."""
        body = ApiErrorBody(code=code, message=message, details=details or None)
        return cls(error=body).model_dump_json(exclude_none=True).encode()

    @classmethod
    def read(cls, body: Any) -> ApiErrorBody | None:
        """The error in a decoded response body, or None if the body is not an envelope (a
        proxy's page, say)."""
        try:
            return cls.model_validate(body).error
        except ValueError:
            return None


# -- client channel --------------------------------------------------------------------------------


class ClientWelcome(_Message):
    """The engine's first frame on a client channel."""

    type: Literal["welcome"] = "welcome"
    protocol: int = PROTOCOL_VERSION
    max_message_bytes: int = Field(description="Larger calls must go over HTTP.")


class ClientCall(_Message):
    """A REST call: `id` is the caller's, echoed by its answer."""

    id: int
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: str = Field(max_length=2000, description="As in the REST API, without a query.")
    body: Any = None
    query: list[tuple[str, str]] = Field(default_factory=list)


class ClientAnswer(_Message):
    id: int | None = Field(description="The call's; None when the frame was not a call.")
    status: int
    body: Any = None


EngineMessage = Annotated[
    Welcome | Moved | Assign | AssignBatch | Cancel | Ack | Recorded | Error,
    Field(discriminator="type"),
]
engine_message = TypeAdapter(EngineMessage)
_engine_frame = TypeAdapter(list[EngineMessage])
MAX_FRAME_MESSAGES = 1000  # messages sent in one frame at most, by either side


def encode(message: BaseModel | bytes) -> bytes:
    """A message as JSON (one already encoded is passed through)."""
    if isinstance(message, bytes):
        return message
    return message.__pydantic_serializer__.to_json(message)


def encode_frame(messages: Sequence[BaseModel | bytes]) -> bytes:
    """The frame of one message, or of several (a JSON array)."""
    if len(messages) == 1:
        return encode(messages[0])
    return b"[" + b",".join(encode(message) for message in messages) + b"]"


def decode_engine_frame(data: str | bytes) -> list[EngineMessage]:
    """The messages of a frame from the engine (one message, or a list of them), validated in
    one pass; raises ValueError (a pydantic ValidationError) if anything in it is off."""
    return _decode(data, engine_message, _engine_frame)


def decode_worker_frame(data: str | bytes) -> list[WorkerMessage]:
    """The messages of a frame from a worker, as `decode_engine_frame` reads the engine's."""
    return _decode(data, worker_message, _worker_frame)


M = TypeVar("M")


def _decode(data: str | bytes, one: TypeAdapter[M], many: TypeAdapter[list[M]]) -> list[M]:
    if data.lstrip()[:1] in ("[", b"["):  # lstrip returns the frame itself when it can
        return many.validate_json(data)
    return [one.validate_json(data)]


MAX_JSON_DEPTH = 100
"""How deep any JSON document sent to the engine may nest (a REST body, a worker frame, an input,
output or payload inside them). The engine refuses deeper ones at the edge: its JSON encoder
stops at 254 levels, and a document it accepted must be one it can write back."""


def too_deep(text: str | bytes, value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Where `value` (parsed from `text`) nests deeper than `limit`, as a path such as
    `input.a[0].b` (shortened), or None. The text's bracket count rules most documents out
    without walking them (batches always have more brackets than the limit: `deeper_than`)."""
    brackets = (
        text.count(b"{") + text.count(b"[")
        if isinstance(text, bytes)
        else text.count("{") + text.count("[")
    )
    return None if brackets <= limit else deeper_than(value, limit)


def nests_within(value: Any, levels: int = MAX_JSON_DEPTH) -> bool:
    """Whether a JSON value nests at most `levels` deep (a container is one level): the check
    alone, keeping no path, a sixth of the cost of finding where (2 µs a run in a batch of 1000
    small runs, against 13)."""
    items = value.values() if type(value) is dict else value if type(value) is list else ()
    levels -= 1
    for item in items:
        kind = type(item)
        if (kind is dict or kind is list) and (levels == 0 or not nests_within(item, levels)):
            return False
    return True


def deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """Where a parsed JSON value nests deeper than `limit`, as a path, or None. The path is
    looked for only in a value the cheaper check has found too deep."""
    if nests_within(value, limit):
        return None
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict):
            children: Any = item.items()
        elif isinstance(item, list):
            children = enumerate(item)
        else:
            continue
        if depth > limit:
            return _path_text(path)
        stack.extend(
            (child, depth + 1, (*path, key))
            for key, child in children
            if isinstance(child, dict | list)
        )
    return None


def cut_line(line: str, limit: int) -> str:
    """A log line as kept: whole within `limit` bytes of UTF-8, else its head and a note of
    how much was cut, `limit` bytes in all (both sides cut, the worker to spare the wire, the
    engine to be sure: a line cut once is within the limit the second time)."""
    if len(line) * 4 <= limit:  # UTF-8 takes at most 4 bytes a character
        return line
    encoded = line.encode()
    if len(encoded) <= limit:
        return line
    note = f" … [cut to {limit:,} bytes from {len(encoded):,} (max_log_line_bytes)]"
    head = encoded[: max(limit - len(note.encode()), 0)].decode(errors="ignore")
    return head + note


NUL_REFUSAL = (
    "contains a NUL character (\\u0000), which Postgres cannot store; remove it or "
    "encode the data (e.g. base64)"
)


def nul_at(value: Any, where: str = "") -> str | None:
    """Where a JSON value holds a NUL character (U+0000), which Postgres cannot store in text
    or jsonb, as a path starting with `where`; None if nowhere."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if "\x00" in key:
                    return path
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
    return None


def _path_text(path: tuple[str | int, ...]) -> str:
    shown = path if len(path) <= 6 else (*path[:3], "…", *path[-2:])
    text = ""
    for part in shown:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += part if part == "…" or text.endswith("…") or not text else f".{part}"
    return text or "(top level)"
