"""The dashboard: pages rendered on the server from the templates in `taskyard/dashboard`, made
live by htmx, which fetches a page's parts again when `/dashboard/live` (server-sent events)
says that the tenant's runs changed. Why this stack: docs/dashboard.md.

Signing in takes an API token, kept in an HttpOnly, SameSite=Strict cookie (`page.py`). A
tenant's pages show that tenant only: every read goes through the services with the session's
tenant. A viewer token sees every page and changes nothing (its pages have no buttons, and its
forms are refused). Each module serves one part of the dashboard and adds its own routes.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from taskyard.http.dashboard import (
    alerts,
    definitions,
    events,
    fleet,
    live,
    pauses,
    runs,
    schedules,
    signing_in,
    tokens,
)
from taskyard.http.dashboard.page import ROOT, TEMPLATES, templates
from taskyard.http.dashboard.signing_in import sign_in_link

__all__ = ["ROOT", "install", "sign_in_link"]


def install(app: web.Application) -> None:
    app[TEMPLATES] = templates()
    routes = app.router
    for part in (
        signing_in,
        runs,
        definitions,
        fleet,
        pauses,
        schedules,
        events,
        alerts,
        tokens,
        live,
    ):
        part.add_routes(routes)
    static = resources.files("taskyard") / "dashboard" / "static"
    routes.add_static(f"{ROOT}/static", str(static))
