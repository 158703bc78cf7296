"""The engine's ids: the SDK's time-ordered UUIDv7 (see taskyard_sdk.ids), of asyncpg's UUID
type."""

from __future__ import annotations

import uuid

from asyncpg.pgproto.pgproto import UUID as _FastUUID

from taskyard_sdk.ids import uuid7_bytes


def new_id() -> uuid.UUID:
    """A new id, of asyncpg's uuid.UUID subclass: it hashes in C and keeps its hash, and a run's
    id is hashed some forty times on its way through the engine's dictionaries."""
    fast: uuid.UUID = _FastUUID(uuid7_bytes())
    return fast
