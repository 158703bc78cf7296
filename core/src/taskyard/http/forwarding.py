"""Calls for a tenant another node owns, forwarded to that node (see docs/cluster.md).

Any node accepts any call. Once the caller is known (its token names its tenant), a call for a
tenant this node does not own is sent on to the owner, as it came (method, path, query, body and
the caller's own Authorization), and the owner's answer is given back: statuses, bodies and
errors are the owner's, a stream is relayed as it comes. Forwarding rather than redirecting, so
every client works unchanged behind any load balancer (curl, the dashboard, an old SDK); the
SDK's channel and workers avoid the hop by connecting to the owner (see `Moved`).

While a tenant's lease moves, calls wait for the new owner (up to `wait` seconds). A call that
was forwarded once is never forwarded again: two nodes that disagree for a moment about who owns
a tenant answer 503 (try again) instead of passing it back and forth.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from taskyard.errors import ApiError, TenantMoved, Unavailable

if TYPE_CHECKING:
    from taskyard.services.cluster import Cluster

FORWARDED = "Taskyard-Forwarded"  # the header a forwarded call carries: the node it came from
_HOP_HEADERS = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}
)


class Forwarder:
    def __init__(self, cluster: Cluster, *, wait: float = 10.0) -> None:
        self.cluster = cluster
        self.wait = wait
        self.forwarded = 0  # calls sent on to another node, for /metrics
        self._session: aiohttp.ClientSession | None = None

    async def owner_elsewhere(self, tenant_id: uuid.UUID, *, forwarded: bool) -> str | None:
        """The URL of the node that owns the tenant, when it is not this one; None: serve it
        here. 503 when no node owns it in time, or when the call was forwarded here already."""
        if self.cluster.lease_of(tenant_id) is not None:
            return None
        owner = await self.cluster.owner(tenant_id, wait=0.0 if forwarded else self.wait)
        if owner is None:
            if self.cluster.lease_of(tenant_id) is not None:
                return None
            raise TenantMoved(
                f"no engine node has taken tenant {tenant_id} yet (its lease is moving); try again"
            )
        if forwarded or owner.url is None:
            raise TenantMoved(f"tenant {tenant_id} is owned by another engine node; try again")
        return owner.url

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                connector=aiohttp.TCPConnector(limit=256),
                auto_decompress=False,
            )
        return self._session

    def _headers(self, headers: dict[str, str]) -> dict[str, str]:
        sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        sent[FORWARDED] = str(self.cluster.node_id)
        return sent

    async def call(
        self,
        url: str,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        body: bytes | None,
        authorization: str | None,
    ) -> tuple[int, bytes]:
        """A client channel's call, made over HTTP to the owner: its status and body."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if authorization is not None:
            headers["Authorization"] = authorization
        self.forwarded += 1
        try:
            async with self.session().request(
                method, url + path, params=list(query), data=body, headers=self._headers(headers)
            ) as answer:
                return answer.status, await answer.read()
        except (aiohttp.ClientError, OSError) as exc:
            raise _lost(url, method, exc) from None

    async def relay(self, request: web.Request, url: str) -> web.StreamResponse:
        """An HTTP request sent on to the owner, its answer streamed back as it comes."""
        self.forwarded += 1
        body = await request.read() if request.body_exists else None
        try:
            async with self.session().request(
                request.method,
                url + request.path_qs,
                data=body,
                headers=self._headers(dict(request.headers)),
                allow_redirects=False,
            ) as answer:
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for name, value in answer.headers.items():
                    if name.lower() not in _HOP_HEADERS:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError) as exc:
            raise _lost(url, request.method, exc) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _lost(url: str, method: str, exc: BaseException) -> ApiError:
    """503 (nothing happened: try again) when the owner could not be reached; 502 when it was
    lost with the call in flight, which may then have been applied (unless it only reads)."""
    if isinstance(exc, aiohttp.ClientConnectorError) or method == "GET":
        return Unavailable(
            f"the engine node that owns this tenant ({url}) cannot be reached ({exc}); "
            f"another node takes its tenants over within seconds: try again"
        )
    return ApiError(
        f"the engine node that owns this tenant ({url}) was lost with the call in flight "
        f"({exc}); it may or may not have been applied",
        status=502,
        code="owner_lost",
    )


FORWARDER: web.AppKey[Forwarder] = web.AppKey("forwarder")
