"""A tenant's rate limits as the engine shares them: one `RateLimiter` per tenant, loaded from
Postgres by the first actor that needs it.

Shared on purpose, without a mailbox of its own: every queue actor of the tenant decides with it
when it assigns, and the services change its configuration. Each of its methods runs to
completion without awaiting, so a decision and the units it takes are one step no other actor can
interleave, and an actor hop per assignment (the hot path) is saved. docs/architecture.md says why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from taskyard.domain.rate_limits import RateLimiter, Usage


class SharedRateLimiter(RateLimiter):
    def __init__(
        self, load: Callable[[], Awaitable[list[Usage]]], clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(clock)
        self._load = load
        self._loaded: asyncio.Future[None] | None = None

    async def ready(self) -> None:
        """Load the stored limits and usage, once: the first caller loads, the others wait (and
        after a failure the next caller tries again)."""
        if self._loaded is None:
            self._loaded = asyncio.ensure_future(self._restore_all())
        try:
            await asyncio.shield(self._loaded)
        except Exception:
            self._loaded = None
            raise

    async def _restore_all(self) -> None:
        for usage in await self._load():
            self.restore(usage)
