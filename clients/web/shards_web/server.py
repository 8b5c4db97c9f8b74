"""Running the GUI server: listen (HTTPS with a certificate), say where, stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiohttp import web

from shards._logging import register_secret
from shards._metrics import MetricsServer, registry_of, start_metrics
from shards_web import metrics
from shards_web.app import make_app
from shards_web.config import WebConfig, parse_listen
from shards_web.sse import HUB

log = logging.getLogger(__name__)


class WebServer:
    """``await start()``, ``url``, ``await stop()``; the app is in ``app``."""

    def __init__(self, config: WebConfig) -> None:
        config.check()
        register_secret(config.token)  # never in a log line
        self.config = config
        self.metrics = metrics.WebMetrics()
        self.app = make_app(config, self.metrics)
        self.registry = registry_of(lambda: metrics.collect(self.metrics, self._gauges))
        self.metrics_server: MetricsServer | None = None
        # handler_cancellation: a browser that hangs up ends its event stream at once.
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=2.0, handler_cancellation=True
        )
        self.port = 0

    @property
    def url(self) -> str:
        host, _ = parse_listen(self.config.listen)
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.config.tls else 'http'}://{shown}:{self.port}/"

    def _gauges(self) -> metrics.WebGauges:
        feeds = self.app[HUB].feeds
        return metrics.WebGauges(sum(len(f.subscribers) for f in feeds), len(feeds))

    async def start(self) -> None:
        self.metrics_server = await start_metrics(self.registry, self.config.metrics_listen)
        await self._runner.setup()
        host, port = parse_listen(self.config.listen)
        context = None
        if self.config.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        # backlog: a thousand browsers (re)connecting at once, as after a restart of this server
        site = web.TCPSite(self._runner, host, port, ssl_context=context, backlog=1024)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        if self.config.insecure_warning:
            log.warning(self.config.insecure_warning)

    async def stop(self) -> None:
        await self._runner.cleanup()
        if self.metrics_server is not None:
            await self.metrics_server.stop()


async def serve(config: WebConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled."""
    server = WebServer(config)
    await server.start()
    controllers = ",".join(config.controller)
    log.info("web GUI ready: %s (controller %s)", server.url, controllers)
    print(f"web GUI ready: open {server.url} (controller {controllers})", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
