"""The GUI server's Prometheus metrics: HTTP requests by route and status, SSE clients, upstream watches.

Requests are counted by an outermost middleware (plain numbers, on the
server's loop); browsers on event streams and upstream watches are counted
from the feed hub when ``/metrics`` is scraped. ``/metrics`` is served on a
port of its own (``--metrics-listen``): the GUI's port may face users, the
metrics stay on loopback unless told otherwise.

Labels: ``route`` (the route's pattern, ``/api/launch``, ``/static/{name}``;
``unmatched`` for anything else, so a scan of random paths adds no series),
``method`` (GET, POST, other) and ``status`` (the HTTP status code; 499: the
browser hung up first, which is how an event stream ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.core import GaugeMetricFamily, Metric

from shards._metrics import LATENCY_BUCKETS, Counts, LabeledHistograms, counters, histograms

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = ("GET", "POST")
#: The status of a request whose client hung up before its answer ended (nginx's convention).
CLIENT_CLOSED = 499


@dataclass(slots=True)
class WebMetrics:
    requests: Counts = field(default_factory=Counts)
    latency: LabeledHistograms = field(default_factory=lambda: LabeledHistograms(LATENCY_BUCKETS))


def _route(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    return str(resource.canonical)


def make_metrics_middleware(metrics: WebMetrics) -> Middleware:
    clock = time.perf_counter

    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = clock()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        except asyncio.CancelledError:
            status = CLIENT_CLOSED  # the browser went away (how an event stream usually ends)
            raise
        finally:
            route = _route(request)
            method = request.method if request.method in METHODS else "other"
            metrics.requests.inc((route, method, str(status)))
            metrics.latency.observe((route,), clock() - started)

    return measure


@dataclass(frozen=True, slots=True)
class WebGauges:
    sse_clients: int
    upstream_watches: int


def collect(metrics: WebMetrics, gauges: Callable[[], WebGauges]) -> Iterable[Metric]:
    yield counters(
        "shards_web_http_requests",
        "HTTP requests answered, by route pattern, method and status",
        ["route", "method", "status"],
        metrics.requests,
    )
    yield histograms(
        "shards_web_http_request_duration_seconds",
        "From a request's arrival to its answer (event streams: how long they were open), by route",
        ["route"],
        metrics.latency,
    )
    now = gauges()
    yield GaugeMetricFamily(
        "shards_web_sse_clients", "Browsers on an event stream now", value=now.sse_clients
    )
    yield GaugeMetricFamily(
        "shards_web_upstream_watches",
        "Watches of the controller open now (one per scope and credential, however many browsers)",
        value=now.upstream_watches,
    )
