"""API tokens: generation, hashing, roles, and turning a bearer token into a principal.

Tokens are 32 random bytes, shown once and stored only as their SHA-256 hash. A slow password hash
is not needed: the secret has 256 bits of entropy, so the hash cannot be reversed by guessing.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "ty_"


class Role(StrEnum):
    ADMIN = "admin"  # everything, including token management
    CLIENT = "client"  # trigger work, read runs and events
    WORKER = "worker"  # connect workers; trigger and read (tasks spawn children)
    VIEWER = "viewer"  # read everything of its tenant, change nothing (dashboards, auditors)


READERS = frozenset(Role)  # endpoints that only read: every token may call them
WRITERS = READERS - {Role.VIEWER}  # endpoints that change something


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the tenant the token belongs to, and its role."""

    tenant_id: uuid.UUID
    tenant_name: str
    token_id: uuid.UUID
    role: Role


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; raises ValueError saying why not."""
    if not header:
        raise ValueError("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ValueError("Authorization header must be 'Bearer <token>'")
    token = token.strip()
    if not token.startswith(TOKEN_PREFIX):
        raise ValueError(f"token is malformed: Taskyard tokens start with '{TOKEN_PREFIX}'")
    return token
