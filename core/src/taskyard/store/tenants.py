"""Tenants and their API tokens in Postgres: created, looked up, listed and revoked. A token's
secret is never stored, only its hash; revoking one notifies every engine (`REVOKED_CHANNEL`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from taskyard.domain.auth import Principal, Role, hash_token, new_token
from taskyard.errors import Conflict
from taskyard.store.leases import CHANNEL as LEASES_CHANNEL


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


REVOKED_CHANNEL = "taskyard_token_revoked"  # NOTIFY payload: the revoked token's id


class TenantExists(Exception):
    """A tenant with this name already exists."""


class TenantRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    # -- tenants ---------------------------------------------------------------------------------

    async def create_tenant(self, name: str) -> Tenant:
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO tenants (tenant_id, name) VALUES ($1, $2) "
                "RETURNING tenant_id, name, created_at",
                uuid.uuid4(),
                name,
            )
        except asyncpg.UniqueViolationError:
            raise TenantExists(f"a tenant named {name!r} already exists") from None
        assert row is not None
        # The engine nodes take the new tenant at once, not at their next lease renewal.
        await self.pool.execute("SELECT pg_notify($1, 'tenant created')", LEASES_CHANNEL)
        return Tenant(**dict(row))

    async def tenant_named(self, name: str) -> Tenant | None:
        row = await self.pool.fetchrow(
            "SELECT tenant_id, name, created_at FROM tenants WHERE name = $1", name
        )
        return Tenant(**dict(row)) if row else None

    async def get_tenant(self, tenant_id: uuid.UUID) -> Tenant | None:
        row = await self.pool.fetchrow(
            "SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = $1", tenant_id
        )
        return Tenant(**dict(row)) if row else None

    async def set_retention(self, tenant_id: uuid.UUID, days: float | None) -> bool:
        """The tenant's own retention in days (None: the engine's); whether the tenant exists."""
        result: str = await self.pool.execute(
            "UPDATE tenants SET retention_days = $2 WHERE tenant_id = $1", tenant_id, days
        )
        return result == "UPDATE 1"

    async def names(self, tenant_ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
        rows = await self.pool.fetch(
            "SELECT tenant_id, name FROM tenants WHERE tenant_id = ANY($1::uuid[])", tenant_ids
        )
        return {row["tenant_id"]: row["name"] for row in rows}

    async def count_tenants(self) -> int:
        count = await self.pool.fetchval("SELECT count(*) FROM tenants")
        return int(count)

    # -- tokens ----------------------------------------------------------------------------------

    async def create_token(
        self, tenant_id: uuid.UUID, role: Role, name: str = ""
    ) -> tuple[TokenInfo, str]:
        """A new token for the tenant; returns its record and the secret, which is never stored."""
        secret = new_token()
        row = await self.pool.fetchrow(
            "INSERT INTO api_tokens (tenant_id, token_id, name, role, token_hash) "
            "VALUES ($1, $2, $3, $4, $5) "
            "RETURNING token_id, tenant_id, name, role, created_at, revoked_at",
            tenant_id,
            uuid.uuid4(),
            name,
            role.value,
            hash_token(secret),
        )
        assert row is not None
        return _token_info(row), secret

    async def authenticate_hash(self, token_hash: bytes) -> Principal | None:
        """The principal of a live token, by the hash of its secret (see store/token_cache.py)."""
        row = await self.pool.fetchrow(
            "SELECT t.tenant_id, n.name AS tenant_name, t.token_id, t.role "
            "FROM api_tokens t JOIN tenants n USING (tenant_id) "
            "WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
            token_hash,
        )
        if row is None:
            return None
        # Ids as the standard library's UUIDs: they go into every row a tenant writes, and the
        # JSON encoder knows those natively.
        return Principal(
            uuid.UUID(bytes=row["tenant_id"].bytes),
            row["tenant_name"],
            uuid.UUID(bytes=row["token_id"].bytes),
            Role(row["role"]),
        )

    async def list_tokens(self, tenant_id: uuid.UUID) -> list[TokenInfo]:
        rows = await self.pool.fetch(
            "SELECT token_id, tenant_id, name, role, created_at, revoked_at FROM api_tokens "
            "WHERE tenant_id = $1 ORDER BY created_at, token_id",
            tenant_id,
        )
        return [_token_info(row) for row in rows]

    async def revoke_token(
        self,
        token_id: uuid.UUID,
        tenant_id: uuid.UUID | None = None,
        *,
        keep_an_admin: bool = False,
    ) -> TokenInfo | None:
        """Revoke a token (of one tenant when given); None when there is no such token. Every
        engine listening on REVOKED_CHANNEL is told when the revocation commits.
        `keep_an_admin`: refuse (409) to revoke the tenant's last admin token, which would
        leave it with no way to manage itself but the CLI."""
        async with self.pool.acquire() as conn, conn.transaction():
            if keep_an_admin:
                # The tenant's row serialises its revocations: two at once cannot both see
                # another admin token left.
                await conn.execute(
                    "SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_id
                )
                last = await conn.fetchval(
                    "SELECT count(*) = 1 FROM api_tokens WHERE tenant_id = $2 AND role = "
                    "'admin' AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM api_tokens WHERE "
                    "token_id = $1 AND tenant_id = $2 AND role = 'admin' AND revoked_at IS NULL)",
                    token_id,
                    tenant_id,
                )
                if last:
                    raise Conflict(
                        f"token {token_id} is the tenant's last admin token; create "
                        f"another admin token before revoking it"
                    )
            row = await conn.fetchrow(
                "WITH revoked AS (UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) "
                "WHERE token_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) "
                "RETURNING token_id, tenant_id, name, role, created_at, revoked_at) "
                "SELECT revoked.*, pg_notify($3, token_id::text) FROM revoked",
                token_id,
                tenant_id,
                REVOKED_CHANNEL,
            )
        return _token_info(row) if row else None

    async def revoked_among(self, token_ids: list[uuid.UUID]) -> list[uuid.UUID]:
        """Which of these tokens are revoked."""
        if not token_ids:
            return []
        rows = await self.pool.fetch(
            "SELECT token_id FROM api_tokens WHERE token_id = ANY($1) AND revoked_at IS NOT NULL",
            token_ids,
        )
        return [row["token_id"] for row in rows]


def _token_info(row: asyncpg.Record) -> TokenInfo:
    return TokenInfo(
        row["token_id"],
        row["tenant_id"],
        row["name"],
        Role(row["role"]),
        row["created_at"],
        row["revoked_at"],
    )
