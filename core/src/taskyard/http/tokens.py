"""Token management for a tenant's admins."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from taskyard.domain.auth import Role
from taskyard.errors import NotFound
from taskyard.http.keys import ENGINE
from taskyard.http.routing import Call, Router
from taskyard.store.tenants import TokenInfo

router = Router(tags=("tokens",))


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    name: str = Field(default="", max_length=200)


class Token(BaseModel):
    token_id: uuid.UUID
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: TokenInfo) -> Token:
        return cls(
            token_id=info.token_id,
            name=info.name,
            role=info.role,
            created_at=info.created_at,
            revoked_at=info.revoked_at,
        )


class TokenCreated(Token):
    token: str = Field(description="The secret. Shown only in this response; store it now.")


@router.get("/api/v1/tokens", response=list[Token])
async def list_tokens(call: Call[None]) -> list[Token]:
    """List the tenant's tokens (never their secrets)."""
    infos = await call.request.app[ENGINE].services.tokens.list(call.principal.tenant_id)
    return [Token.of(info) for info in infos]


@router.post("/api/v1/tokens", body=TokenCreate, response=TokenCreated, status=201)
async def create_token(call: Call[TokenCreate]) -> TokenCreated:
    """Create a token; its secret is returned once."""
    info, secret = await call.request.app[ENGINE].services.tokens.create(
        call.principal.tenant_id, call.body.role, call.body.name
    )
    return TokenCreated(token=secret, **Token.of(info).model_dump())


@router.delete("/api/v1/tokens/{token_id}", response=Token)
async def revoke_token(call: Call[None]) -> Token:
    """Revoke a token; requests carrying it are refused from then on."""
    token_id = call.path_uuid("token_id")
    info = await call.request.app[ENGINE].services.tokens.revoke(call.principal.tenant_id, token_id)
    if info is None:
        raise NotFound(f"no token {token_id} in this tenant")
    return Token.of(info)
