"""A tenant's API tokens: listed, created, revoked. Revoking takes effect at once on every engine
(the token cache hears the NOTIFY) and cuts off the workers connected with the token."""

from __future__ import annotations

import uuid

from taskyard.domain.auth import Role
from taskyard.store.tenants import TenantRepository, TokenInfo
from taskyard.store.token_cache import TokenCache


class Tokens:
    def __init__(self, repository: TenantRepository, cache: TokenCache) -> None:
        self.repository = repository
        self.cache = cache  # forgetting a token there also cuts off its workers

    async def list(self, tenant_id: uuid.UUID) -> list[TokenInfo]:
        return await self.repository.list_tokens(tenant_id)

    async def create(self, tenant_id: uuid.UUID, role: Role, name: str) -> tuple[TokenInfo, str]:
        """The token and its secret, which is never shown again."""
        return await self.repository.create_token(tenant_id, role, name)

    async def revoke(self, tenant_id: uuid.UUID, token_id: uuid.UUID) -> TokenInfo | None:
        """Refused from the next request on, on every engine; workers connected with it are cut
        off. The tenant's last admin token is kept (409)."""
        info = await self.repository.revoke_token(token_id, tenant_id, keep_an_admin=True)
        if info is not None:
            self.cache.forget(token_id)
        return info
