"""Reads and direct writes against PostgreSQL, by noun. With the persister, the only code that talks
to the database; every query here is scoped by tenant_id where the table has one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from taskyard.auth import Principal, Role, hash_token, new_token


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenInfo:
    token_id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


class TenantExists(Exception):
    """A tenant with this name already exists."""


class Repository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- tenants ---------------------------------------------------------------------------------

    async def create_tenant(self, name: str) -> Tenant:
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) "
                "RETURNING tenant_id, name, created_at", uuid.uuid4(), name)
        except asyncpg.UniqueViolationError:
            raise TenantExists(f"a tenant named {name!r} already exists") from None
        assert row is not None
        return Tenant(**dict(row))

    async def get_tenant(self, tenant_id: uuid.UUID) -> Tenant | None:
        row = await self.pool.fetchrow(
            "SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = $1", tenant_id)
        return Tenant(**dict(row)) if row else None

    async def count_tenants(self) -> int:
        count = await self.pool.fetchval("SELECT count(*) FROM tenants")
        return int(count)

    # -- tokens ----------------------------------------------------------------------------------

    async def create_token(self, tenant_id: uuid.UUID, role: Role,
                           name: str = "") -> tuple[TokenInfo, str]:
        """A new token for the tenant; returns its record and the secret, which is never stored."""
        secret = new_token()
        row = await self.pool.fetchrow(
            "INSERT INTO api_tokens (tenant_id, token_id, name, role, token_hash) "
            "VALUES ($1, $2, $3, $4, $5) "
            "RETURNING token_id, tenant_id, name, role, created_at, revoked_at",
            tenant_id, uuid.uuid4(), name, role.value, hash_token(secret))
        assert row is not None
        return _token_info(row), secret

    async def authenticate(self, secret: str) -> Principal | None:
        row = await self.pool.fetchrow(
            "SELECT t.tenant_id, n.name AS tenant_name, t.token_id, t.role "
            "FROM api_tokens t JOIN tenants n USING (tenant_id) "
            "WHERE t.token_hash = $1 AND t.revoked_at IS NULL", hash_token(secret))
        if row is None:
            return None
        return Principal(row["tenant_id"], row["tenant_name"], row["token_id"], Role(row["role"]))

    async def list_tokens(self, tenant_id: uuid.UUID) -> list[TokenInfo]:
        rows = await self.pool.fetch(
            "SELECT token_id, tenant_id, name, role, created_at, revoked_at FROM api_tokens "
            "WHERE tenant_id = $1 ORDER BY created_at, token_id", tenant_id)
        return [_token_info(row) for row in rows]

    async def revoke_token(self, token_id: uuid.UUID,
                           tenant_id: uuid.UUID | None = None) -> TokenInfo | None:
        """Revoke a token (of one tenant when given); None when there is no such token."""
        row = await self.pool.fetchrow(
            "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE token_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) "
            "RETURNING token_id, tenant_id, name, role, created_at, revoked_at",
            token_id, tenant_id)
        return _token_info(row) if row else None


def _token_info(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(row["token_id"], row["tenant_id"], row["name"], Role(row["role"]),
                     row["created_at"], row["revoked_at"])
