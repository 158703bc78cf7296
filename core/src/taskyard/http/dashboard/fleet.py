"""What the engine does with the work now: connected workers, the queues, the rate limits."""

from __future__ import annotations

from aiohttp import web

from taskyard.domain.auth import Principal
from taskyard.http.dashboard.page import ROOT, page, partial, render
from taskyard.http.keys import ENGINE
from taskyard.http.rate_limits import rate_limit_view
from taskyard.services.views import QueueInfo


def add_routes(routes: web.UrlDispatcher) -> None:
    routes.add_get(f"{ROOT}/workers", page(_workers))
    routes.add_get(f"{ROOT}/queues", page(_queues))
    routes.add_get(f"{ROOT}/rate-limits", page(_rate_limits))


async def _workers(request: web.Request, principal: Principal) -> web.StreamResponse:
    workers = await request.app[ENGINE].services.workers.connected(principal.tenant_id)
    template = partial(request, "workers.html", "workers_table.html")
    return render(request, template, workers=workers, table_url=f"{ROOT}/workers")


async def _queues(request: web.Request, principal: Principal) -> web.StreamResponse:
    queues = await request.app[ENGINE].services.queues.overview(principal.tenant_id)
    charts = {queue.queue: _chart(queue) for queue in queues}
    template = partial(request, "queues.html", "queues_table.html")
    return render(request, template, queues=queues, charts=charts, table_url=f"{ROOT}/queues")


def _chart(queue: QueueInfo) -> dict[str, list[float]]:
    """A queue's last hour as the chart's columns: the minutes, then one column per line."""
    return {
        "at": [minute.at for minute in queue.minutes],
        "started": [minute.started for minute in queue.minutes],
        "succeeded": [minute.succeeded for minute in queue.minutes],
        "failed": [minute.failed for minute in queue.minutes],
    }


async def _rate_limits(request: web.Request, principal: Principal) -> web.StreamResponse:
    usage = await request.app[ENGINE].services.rate_limits.usage(principal.tenant_id)
    limits = sorted((rate_limit_view(u) for u in usage), key=lambda view: view.key)
    template = partial(request, "rate_limits.html", "rate_limits_table.html")
    return render(request, template, limits=limits, table_url=f"{ROOT}/rate-limits")
