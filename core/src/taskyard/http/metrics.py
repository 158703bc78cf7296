"""`GET /metrics`: the engine in Prometheus's text format (docs/observability.md lists every
metric). The engine's meters are plain counters its actors keep; a scrape asks them for copies
(`services/metrics.py`) and this module writes them as metric families through
prometheus_client, with the process's own metrics (CPU, memory, file descriptors) beside them.
HTTP requests and websocket frames are counted here, by a middleware and by the sockets.

Guarded by the engine's scrape token (`--metrics-token`) when one is set: a bearer token that
is not a tenant's, since the metrics name every tenant. Without one, only clients on the
engine's own machine (loopback) may scrape.
"""

from __future__ import annotations

import hmac
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import ip_address

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from taskyard.domain.meters import REQUEST_BUCKETS, Histogram
from taskyard.errors import Forbidden, Unauthorized
from taskyard.http.forwarding import FORWARDER
from taskyard.http.keys import ENGINE
from taskyard.services.metrics import EngineSample

PATH = "/metrics"
UNMATCHED = "unmatched"  # the route label of requests no route took (bounded, unlike paths)


@dataclass
class HttpMeters:
    """Requests by route, method and status, their durations by route, and websocket frames
    by socket and direction. Owned by the application; counted on the event loop."""

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    durations: dict[str, Histogram] = field(default_factory=dict)
    frames: Counter[tuple[str, str]] = field(default_factory=Counter)

    def request(self, route: str, method: str, status: int, seconds: float | None) -> None:
        self.requests[(route, method, status)] += 1
        if seconds is not None:
            histogram = self.durations.get(route)
            if histogram is None:
                histogram = self.durations[route] = Histogram(REQUEST_BUCKETS)
            histogram.observe(seconds)

    def frame(self, socket: str, direction: str, count: int = 1) -> None:
        self.frames[(socket, direction)] += count


METERS: web.AppKey[HttpMeters] = web.AppKey("http_meters")


def install(app: web.Application) -> None:
    app[METERS] = HttpMeters()
    app.router.add_get(PATH, _metrics)


def count_request(request: web.Request, status: int, began: float, *, timed: bool) -> None:
    """Count a request by its route's pattern (never its path: ids would make the series
    unbounded); `timed`: not a stream (websockets, server-sent events are counted only)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED
    seconds = time.perf_counter() - began if timed else None
    request.app[METERS].request(route, request.method, status, seconds)


async def _metrics(request: web.Request) -> web.StreamResponse:
    _check_scraper(request)
    sample = await request.app[ENGINE].metrics.sample()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(sample, request.app[METERS], request.app[FORWARDER].forwarded))
    ProcessCollector(registry=registry)
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def _check_scraper(request: web.Request) -> None:
    token = request.app[ENGINE].settings.metrics_token
    if token is None:
        remote = request.remote or ""
        try:
            local = ip_address(remote).is_loopback
        except ValueError:
            local = False
        if not local:
            raise Forbidden(
                "metrics are served to this machine only; set --metrics-token "
                "(TASKYARD_METRICS_TOKEN) to scrape from elsewhere with it as a bearer token"
            )
        return
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise Unauthorized(
            "send the engine's scrape token (--metrics-token) as 'Authorization: Bearer'"
        )


# The queue meters' counted events, as counters by tenant, queue and task.
_QUEUE_EVENTS = {
    "retried": ("taskyard_retries", "Attempts that failed and were retried."),
    "execution_timeout": (
        "taskyard_execution_timeouts",
        "Attempts that ran past their execution_timeout.",
    ),
    "schedule_timeout": (
        "taskyard_schedule_timeouts",
        "Runs not started within their schedule_timeout.",
    ),
    "rate_limit_refused": (
        "taskyard_rate_limit_refusals",
        "Runs failed because a rate limit could never grant their units.",
    ),
    "rate_limit_wait": (
        "taskyard_rate_limit_waits",
        "Times a ready run waited for a rate limit's units.",
    ),
    "concurrency_wait": (
        "taskyard_concurrency_waits",
        "Times a ready run found its concurrency key full.",
    ),
    "concurrency_cancelled": (
        "taskyard_concurrency_cancellations",
        "Runs cancelled by a concurrency strategy (cancel_newest, cancel_in_progress...).",
    ),
}


class _Families:
    """The sample as Prometheus metric families (a collector for one scrape)."""

    def __init__(self, sample: EngineSample, http: HttpMeters, forwarded: int) -> None:
        self.sample = sample
        self.http = http
        self.forwarded = forwarded

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._persister()
        yield from self._http()
        yield from self._engine()
        yield from self._cluster()

    def _queues(self) -> Iterator[Metric]:
        labels = ["tenant", "queue"]
        task_labels = [*labels, "task"]
        triggered = CounterMetricFamily(
            "taskyard_runs_triggered", "Runs queued for the first time.", labels=task_labels
        )
        finished = CounterMetricFamily(
            "taskyard_runs_finished",
            "Runs that reached a final status.",
            labels=[*task_labels, "status"],
        )
        events = {
            event: CounterMetricFamily(name, text, labels=task_labels)
            for event, (name, text) in _QUEUE_EVENTS.items()
        }
        waits = HistogramMetricFamily(
            "taskyard_queue_wait_seconds",
            "Trigger (or a retry's due time) to start of an attempt.",
            labels=task_labels,
        )
        runs = HistogramMetricFamily(
            "taskyard_attempt_duration_seconds", "Start to end of an attempt.", labels=task_labels
        )
        gauges = {
            "queued": ("taskyard_queue_depth", "Runs waiting to start (back-offs included)."),
            "running": ("taskyard_runs_running", "Runs assigned to a worker or running on one."),
            "suspended": ("taskyard_runs_suspended", "Durable runs suspended in a wait."),
            "oldest_queued_age": (
                "taskyard_queue_oldest_age_seconds",
                "How long the oldest queued run has waited.",
            ),
            "workers": ("taskyard_workers", "Workers connected to the queue."),
            "slots": ("taskyard_worker_slots", "Slots of the queue's connected workers."),
            "slots_used": ("taskyard_worker_slots_used", "Slots holding an attempt."),
        }
        gauge_families = {
            key: GaugeMetricFamily(name, text, labels=labels)
            for key, (name, text) in gauges.items()
        }
        for tenant, queue in self.sample.queues:
            where = [tenant, queue.queue]
            for key, gauge in gauge_families.items():
                gauge.add_metric(where, getattr(queue, key))
            for (event, task), count in queue.counts.items():
                if event == "triggered":
                    triggered.add_metric([*where, task], count)
                elif event in events:
                    events[event].add_metric([*where, task], count)
            for (task, status), count in queue.finished.items():
                finished.add_metric([*where, task, status], count)
            for timed, histograms in ((waits, queue.waits), (runs, queue.runs)):
                for task, histogram in histograms.items():
                    timed.add_metric([*where, task], _buckets(histogram), sum_value=histogram.total)
        yield triggered
        yield finished
        yield from events.values()
        yield waits
        yield runs
        yield from gauge_families.values()

    def _persister(self) -> Iterator[Metric]:
        persister = self.sample.persister
        yield CounterMetricFamily(
            "taskyard_persister_flushes", "Batches written to Postgres.", value=persister.flushes
        )
        yield CounterMetricFamily(
            "taskyard_persister_rows_written", "Rows committed.", value=persister.rows_written
        )
        yield GaugeMetricFamily(
            "taskyard_persister_pending_rows",
            "Rows handed over and not yet committed.",
            value=persister.pending,
        )
        sizes = HistogramMetricFamily(
            "taskyard_persister_batch_rows", "Rows in each batch written.", labels=["lane"]
        )
        flushes = HistogramMetricFamily(
            "taskyard_persister_flush_seconds",
            "Time to write a batch, retries included.",
            labels=["lane"],
        )
        errors = CounterMetricFamily(
            "taskyard_postgres_errors",
            "Failed writes: connection (lost, retried), refused (by Postgres) or fenced (for "
            "tenants whose lease had moved to another node).",
            labels=["lane", "kind"],
        )
        reconnects = CounterMetricFamily(
            "taskyard_postgres_reconnects",
            "Connections taken again after one was lost.",
            labels=["lane"],
        )
        for lane, figures in persister.lanes.items():
            sizes.add_metric(
                [lane], _buckets(figures.batch_rows), sum_value=figures.batch_rows.total
            )
            flushes.add_metric(
                [lane], _buckets(figures.flush_seconds), sum_value=figures.flush_seconds.total
            )
            for kind in ("connection", "conflict", "refused", "fenced"):
                errors.add_metric([lane, kind], figures.errors.get(kind, 0))
            reconnects.add_metric([lane], figures.reconnects)
        yield from (sizes, flushes, errors, reconnects)

    def _http(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "taskyard_http_requests",
            "HTTP requests answered.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in self.http.requests.items():
            requests.add_metric([route, method, str(status)], count)
        durations = HistogramMetricFamily(
            "taskyard_http_request_duration_seconds",
            "Time to answer a request (streams and websockets are not timed).",
            labels=["route"],
        )
        for route, histogram in self.http.durations.items():
            durations.add_metric([route], _buckets(histogram), sum_value=histogram.total)
        frames = CounterMetricFamily(
            "taskyard_websocket_frames",
            "Websocket frames, by socket (worker, client) and direction (in, out).",
            labels=["socket", "direction"],
        )
        for (socket, direction), count in self.http.frames.items():
            frames.add_metric([socket, direction], count)
        yield from (requests, durations, frames)

    def _engine(self) -> Iterator[Metric]:
        sample = self.sample
        yield _by_name(
            "taskyard_plugin_errors",
            "Plugin hook calls that raised.",
            "plugin",
            sample.plugin_errors,
        )
        yield _by_name(
            "taskyard_trigger_source_restarts",
            "Trigger sources restarted after raising.",
            "source",
            sample.source_failures,
        )
        yield _by_name(
            "taskyard_alert_deliveries_failed",
            "Alerts given up after their retries.",
            "channel",
            sample.failed_deliveries,
        )
        yield CounterMetricFamily(
            "taskyard_actor_restarts",
            "Actors restarted after a failure.",
            value=sample.actor_restarts,
        )

    def _cluster(self) -> Iterator[Metric]:
        cluster = self.sample.cluster
        yield GaugeMetricFamily(
            "taskyard_cluster_nodes", "Live engine nodes, this one included.", value=cluster.nodes
        )
        yield GaugeMetricFamily(
            "taskyard_cluster_leases", "Tenants this node owns.", value=cluster.leases
        )
        yield CounterMetricFamily(
            "taskyard_cluster_takeovers",
            "Tenant leases taken from a node that had not handed them back (it died).",
            value=cluster.takeovers,
        )
        yield CounterMetricFamily(
            "taskyard_cluster_handovers",
            "Tenant leases handed back to the cluster (rebalancing, stopping).",
            value=cluster.handovers,
        )
        yield CounterMetricFamily(
            "taskyard_cluster_leases_lost",
            "Tenant leases another node took while this one held them (it was frozen or cut off).",
            value=cluster.lost,
        )
        yield CounterMetricFamily(
            "taskyard_cluster_forwarded_calls",
            "Calls forwarded to the node that owns their tenant.",
            value=self.forwarded,
        )


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(bound, float(count)) for bound, count in histogram.cumulative()]


def _by_name(name: str, text: str, label: str, counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, text, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def frame_counter(app: web.Application, socket: str) -> Callable[[], None]:
    """What a socket's writer calls for each frame it sends."""
    meters = app[METERS]
    return lambda: meters.frame(socket, "out")
