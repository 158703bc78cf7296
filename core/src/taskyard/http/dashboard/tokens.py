"""The tokens page, for admins: list, create (the secret shown once) and revoke."""

from __future__ import annotations

from aiohttp import web

from taskyard.domain.auth import Principal, Role
from taskyard.errors import Forbidden, NotFound, Unprocessable
from taskyard.http.dashboard.page import ROOT, page, path_id, render
from taskyard.http.keys import ENGINE

NEW_TOKEN = "taskyard_new_token"  # a created token's secret, on its way to being shown once


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/tokens", page(_tokens))
    routes.add_post(f"{ROOT}/tokens", page(_create_token, changes=True))
    routes.add_post(f"{ROOT}/tokens/{{token_id}}/revoke", page(_revoke_token, changes=True))


def _admin(principal: Principal) -> None:
    if principal.role is not Role.ADMIN:
        raise Forbidden(f"tokens are managed with an admin token; this one is a {principal.role}")


async def _tokens(request: web.Request, principal: Principal) -> web.StreamResponse:
    _admin(principal)
    tokens = await request.app[ENGINE].services.tokens.list(principal.tenant_id)
    token_id, _, secret = request.cookies.get(NEW_TOKEN, "").partition(":")
    created = next((t for t in tokens if str(t.token_id) == token_id), None) if secret else None
    response = render(
        request,
        "tokens.html",
        tokens=tokens,
        roles=list(Role),
        created=(created, secret) if created else None,
    )
    response.del_cookie(NEW_TOKEN, path=f"{ROOT}/tokens")
    return response


async def _create_token(request: web.Request, principal: Principal) -> web.StreamResponse:
    """Create a token; the page it leads to shows its secret this once. The secret rides to it
    in a cookie of a minute's life, never in an address, and the page is a GET, so reloading
    it creates nothing."""
    _admin(principal)
    form = await request.post()
    try:
        role = Role(str(form.get("role", "")))
    except ValueError:
        raise Unprocessable(f"role must be one of {', '.join(Role)}") from None
    name = str(form.get("name", "")).strip()[:200]
    info, secret = await request.app[ENGINE].services.tokens.create(principal.tenant_id, role, name)
    response = web.HTTPSeeOther(f"{ROOT}/tokens")
    response.set_cookie(
        NEW_TOKEN,
        f"{info.token_id}:{secret}",
        path=f"{ROOT}/tokens",
        max_age=60,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def _revoke_token(request: web.Request, principal: Principal) -> web.StreamResponse:
    _admin(principal)
    token_id = path_id(request, "token_id")
    if await request.app[ENGINE].services.tokens.revoke(principal.tenant_id, token_id) is None:
        raise NotFound(f"no token {token_id} in this tenant")
    raise web.HTTPSeeOther(f"{ROOT}/tokens")
