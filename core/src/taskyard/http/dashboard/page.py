"""What every dashboard page shares: the signed-in session (checked on every request exactly as
a bearer token is, so a revoked token is signed out at once), the CSRF check of forms that change
something, and rendering a template with the filters the pages use."""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from aiohttp import web

from taskyard.domain.auth import WRITERS, Principal
from taskyard.errors import ApiError, Forbidden, NotFound, Unauthorized
from taskyard.http.forwarding import FORWARDED, FORWARDER
from taskyard.http.keys import ENGINE
from taskyard.http.routing import metadata_filter

ROOT = "/dashboard"
COOKIE = "taskyard_session"
PAGE_SIZE = 50
TEMPLATES: web.AppKey[jinja2.Environment] = web.AppKey("dashboard_templates")
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("dashboard_principal")
CSRF: web.RequestKey[str] = web.RequestKey("dashboard_csrf")

Handler = Callable[[web.Request, Principal], Awaitable[web.StreamResponse]]


def templates() -> jinja2.Environment:
    """The pages' templates, shipped in the engine package, with the filters they use."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("taskyard", "dashboard/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["moment"] = _moment
    environment.filters["duration"] = _duration
    environment.filters["age"] = _age
    environment.filters["seconds"] = _seconds
    environment.filters["pretty_json"] = _pretty_json
    environment.filters["event_detail"] = _event_detail
    return environment


async def authenticate(request: web.Request, token: str) -> Principal:
    if not token:
        raise Unauthorized("paste an API token to sign in")
    return await request.app[ENGINE].authenticate(f"Bearer {token}")


def csrf_of(token: str) -> str:
    """The CSRF token of a session: only who holds the session's token can make it."""
    return hmac.new(token.encode(), b"taskyard dashboard csrf", hashlib.sha256).hexdigest()


def page(handler: Handler, *, changes: bool = False) -> Callable[..., Any]:
    """A dashboard handler for a signed-in session (others are sent to sign in); `changes`:
    a form that changes something, which must carry the session's CSRF token. An API error
    becomes a page that says what went wrong."""

    async def handle(request: web.Request) -> web.StreamResponse:
        token = request.cookies.get(COOKIE, "")
        try:
            principal = await authenticate(request, token)
        except Unauthorized:
            if request.method == "GET" and "HX-Request" not in request.headers:
                raise web.HTTPFound(
                    f"{ROOT}/sign-in?{urlencode({'next': request.path_qs})}"
                ) from None
            return web.Response(status=401, headers={"HX-Redirect": f"{ROOT}/sign-in"})
        request[PRINCIPAL] = principal
        request[CSRF] = csrf_of(token)
        try:
            forwarder = request.app[FORWARDER]
            owner = await forwarder.owner_elsewhere(
                principal.tenant_id, forwarded=FORWARDED in request.headers
            )
            if owner is not None:  # its pages are drawn by the node that owns the tenant
                return await forwarder.relay(request, owner)
            if changes:
                if principal.role not in WRITERS:
                    raise Forbidden(f"a {principal.role} token changes nothing; this needs another")
                form = await request.post()
                if not hmac.compare_digest(str(form.get("csrf", "")), request[CSRF]):
                    raise ApiError("this form is stale or did not come from the dashboard")
            return await handler(request, principal)
        except ApiError as exc:
            return render(
                request, "error.html", status=exc.status, title=exc.code, message=str(exc)
            )

    return handle


def path_id(request: web.Request, name: str) -> uuid.UUID:
    """The id in the page's address (`run_id`, `cron_id`...): not an id is no such page."""
    text = request.match_info[name]
    try:
        return uuid.UUID(text)
    except ValueError:
        raise NotFound(f"{text!r} is not a {name.replace('_id', '')} id") from None


def parse_metadata(text: str) -> dict[str, str]:
    """Metadata as the forms take it: `key=value` pairs separated by commas."""
    pairs = [pair.strip() for pair in text.split(",") if pair.strip()]
    return metadata_filter([pair.replace("=", ":", 1) for pair in pairs])


def partial(request: web.Request, whole: str, part: str) -> str:
    """The template to answer with: the page's live part when htmx asks for it again."""
    return part if "HX-Request" in request.headers else whole


# -- rendering -----------------------------------------------------------------------------------


def render(
    request: web.Request, template: str, *, status: int = 200, **context: Any
) -> web.Response:
    principal = request.get(PRINCIPAL)
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            root=ROOT,
            principal=principal,
            can_change=principal is not None and principal.role in WRITERS,
            csrf=request.get(CSRF, ""),
            path=request.path,
            **context,
        )
    )
    return web.Response(
        status=status,
        text=html,
        content_type="text/html",
        headers={
            # Everything the pages use is served from here; nothing may load from elsewhere.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
            "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
        },
    )


def _moment(value: datetime | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return _seconds((end - start).total_seconds())


def _age(moment: float | None) -> str:
    """How long ago a moment (seconds since the epoch) was."""
    return "" if moment is None else _seconds(max(0.0, time.time() - moment))


def _seconds(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _event_detail(detail: dict[str, Any]) -> str:
    """A timeline entry's detail on one line: an error as `Type: message` (its traceback is
    shown once, with the run's error), the rest as JSON."""
    rest = {key: value for key, value in detail.items() if key not in ("traceback", "type")}
    if "type" in detail and "message" in detail:
        rest.pop("message")
        error = f"{detail['type']}: {detail['message']}"
        return f"{error} {orjson.dumps(rest).decode()}" if rest else error
    return orjson.dumps(rest, default=str).decode()


def _pretty_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()
