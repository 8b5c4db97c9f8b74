"""Prometheus metrics shared by every service: cheap primitives, a scrape-time collector, ``/metrics``.

The hot paths only add to plain numbers (``Histogram.observe``, ``Counts.inc``:
no lock, no label lookup in ``prometheus_client``): every service changes them
on its own event loop, and ``/metrics`` is served on that same loop (aiohttp),
so a scrape reads a consistent view without locks. Gauges are not kept up to
date at all: a service's collector computes them when it is scraped.

``--metrics-listen`` is off by default; ``PORT`` or ``:PORT`` alone listens on
127.0.0.1 (loopback); another host must be named.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: from a fraction of a millisecond (a launch's write) to ten minutes (a run).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class Histogram:
    """Bucket counts and a sum: ``observe`` is a bisect and three additions."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative, as Prometheus has them (``le`` includes its bound)."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append((_bound_text(bound), total))
        out.append(("+Inf", self.count))
        return out


def _bound_text(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


class LabeledHistograms:
    """One ``Histogram`` per combination of label values (created on first use)."""

    __slots__ = ("bounds", "by_labels")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.by_labels: dict[tuple[str, ...], Histogram] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        histogram = self.by_labels.get(labels)
        if histogram is None:
            histogram = self.by_labels[labels] = Histogram(self.bounds)
        histogram.observe(value)


class Counts:
    """Counters by label values: ``inc(("OK",))``."""

    __slots__ = ("by_labels",)

    def __init__(self, *preset: tuple[str, ...]) -> None:
        # Preset label values show as 0 before they first happen (a rate() needs the zero).
        self.by_labels: dict[tuple[str, ...], float] = dict.fromkeys(preset, 0.0)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.by_labels[labels] = self.by_labels.get(labels, 0.0) + amount


# ---------------------------------------------------------------- families


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """``name`` without ``_total`` (the family adds it)."""
    return CounterMetricFamily(name, documentation, value=value)


def counters(name: str, documentation: str, labels: Sequence[str], counts: Counts) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=labels)
    for values, value in sorted(counts.by_labels.items()):
        family.add_metric(list(values), value)
    return family


def histogram(name: str, documentation: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=h.buckets(), sum_value=h.sum)


def histograms(
    name: str, documentation: str, labels: Sequence[str], hs: LabeledHistograms
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, h in sorted(hs.by_labels.items()):
        family.add_metric(list(values), h.buckets(), h.sum)
    return family


class FunctionCollector(Collector):
    """A collector whose metrics a function makes at each scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


def registry_of(*collect: Callable[[], Iterable[Metric]], process: bool = True) -> CollectorRegistry:
    """A registry of its own (so two services in one test process never collide)."""
    registry = CollectorRegistry(auto_describe=False)
    for function in collect:
        registry.register(FunctionCollector(function))
    if process:
        # CPU seconds, memory, open files of this process: process_* (unprefixed, as every exporter has them).
        ProcessCollector(registry=registry)
    return registry


# ---------------------------------------------------------------- /metrics over HTTP


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` -> (host, port); the host defaults to 127.0.0.1."""
    text = value.strip()
    host, _, port_text = text.rpartition(":") if ":" in text else ("", "", text)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--metrics-listen takes HOST:PORT, :PORT or PORT, not {value!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--metrics-listen: port {port} is not within 0..65535")
    return host or "127.0.0.1", port


class MetricsServer:
    """``GET /metrics`` (Prometheus text format) on the service's own event loop."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        self.registry = registry
        self.host, self._port = parse_listen(listen)
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    async def start(self) -> None:
        # aiohttp (8 MB of a service's memory) is imported only when metrics are on.
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(f"cannot serve metrics on {self.host}:{self._port}: {error.strerror}") from None
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        log.info("metrics served on %s", self.url)

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def start_metrics(registry: CollectorRegistry, listen: str) -> MetricsServer | None:
    """A started ``MetricsServer`` when ``listen`` is set, else None (metrics are off by default)."""
    if not listen:
        return None
    server = MetricsServer(registry, listen)
    await server.start()
    return server
