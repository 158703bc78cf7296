"""The engine's ids: the SDK's time-ordered UUIDv7 (see taskyard_sdk.ids), of asyncpg's UUID
type, and ids that keep another id's time.

History tables are partitioned by the time in their ids (migrations/0014_history_partitions.sql),
so a run's whole tree (a workflow run's steps, a run's children and theirs) takes its root's
48-bit millisecond: the tree lives in one partition and expires with it."""

from __future__ import annotations

import hashlib
import uuid

from asyncpg.pgproto.pgproto import UUID as _FastUUID

from taskyard_sdk.ids import uuid7_bytes

_TIME_BYTES = 6  # UUIDv7: the first 48 bits are Unix milliseconds


def new_id() -> uuid.UUID:
    """A new id, of asyncpg's uuid.UUID subclass: it hashes in C and keeps its hash, and a run's
    id is hashed some forty times on its way through the engine's dictionaries."""
    fast: uuid.UUID = _FastUUID(uuid7_bytes())
    return fast


def new_run_id(parent_run_id: uuid.UUID | None) -> uuid.UUID:
    """A new run's id: a child takes its parent's time, so a tree of runs shares a history
    partition."""
    return new_id() if parent_run_id is None else id_at_time_of(parent_run_id)


def id_at_time_of(origin: uuid.UUID, name: str | None = None) -> uuid.UUID:
    """A UUIDv7 with `origin`'s millisecond. Given a name, the rest is a hash of origin and name
    (the same pair gives the same id: a workflow step decided again after a crash is the same
    row); without one it is random (a child run)."""
    rest = (
        hashlib.sha1(origin.bytes + name.encode()).digest() if name is not None else uuid7_bytes()
    )
    value = bytearray(origin.bytes[:_TIME_BYTES] + rest[_TIME_BYTES:16])
    value[6] = 0x70 | (value[6] & 0x0F)  # version 7
    value[8] = 0x80 | (value[8] & 0x3F)  # RFC 9562 variant
    fast: uuid.UUID = _FastUUID(bytes(value))
    return fast
