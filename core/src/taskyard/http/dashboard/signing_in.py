"""Signing in with an API token (pasted, or carried by the link the engine prints), and out."""

from __future__ import annotations

from aiohttp import web

from taskyard.errors import Unauthorized
from taskyard.http.dashboard.page import COOKIE, ROOT, authenticate, render


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get("/", _to_dashboard)
    routes.add_get(ROOT, _to_dashboard)
    routes.add_get(f"{ROOT}/sign-in", _sign_in_page)
    routes.add_post(f"{ROOT}/sign-in", _sign_in)
    routes.add_post(f"{ROOT}/sign-out", _sign_out)


def sign_in_link(base_url: str, token: str) -> str:
    """A link that signs the browser in with `token`: the token rides in the fragment, which
    browsers never send, and the page posts it to the engine and forgets it."""
    return f"{base_url}{ROOT}/sign-in#{token}"


async def _to_dashboard(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{ROOT}/runs")


async def _sign_in_page(request: web.Request) -> web.StreamResponse:
    return render(request, "sign_in.html", next=_local(request.query.get("next")), error=None)


async def _sign_in(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    token = str(form.get("token", "")).strip()
    target = _local(str(form.get("next", "")))
    try:
        await authenticate(request, token)
    except Unauthorized as exc:
        return render(request, "sign_in.html", status=401, next=target, error=str(exc))
    response = web.HTTPSeeOther(target)
    response.set_cookie(
        COOKIE,
        token,
        path=ROOT,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    raise response


async def _sign_out(request: web.Request) -> web.StreamResponse:
    response = web.HTTPSeeOther(f"{ROOT}/sign-in")
    response.del_cookie(COOKIE, path=ROOT)
    raise response


def _local(target: str | None) -> str:
    """Where to go after signing in: a dashboard page of this engine, never another site."""
    if target and target.startswith(f"{ROOT}/") and not target.startswith("//"):
        return target
    return f"{ROOT}/runs"
