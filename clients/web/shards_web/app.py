"""The aiohttp application: the page, its files, the JSON API and the event streams."""

from __future__ import annotations

from aiohttp import web

from shards_web import api, sse, static
from shards_web.clients import ClientPool
from shards_web.config import WebConfig
from shards_web.feed import FeedHub
from shards_web.metrics import WebMetrics, make_metrics_middleware
from shards_web.security import add_headers, make_middleware

#: The page's own paths (the page picks the view from the query string).
PAGES = ("/", "/index.html")
FILES: web.AppKey[dict[str, static.StaticFile]] = web.AppKey("files", dict)


async def page(request: web.Request) -> web.Response:
    return static.response(request, request.app[FILES]["index.html"])


async def asset(request: web.Request) -> web.Response:
    file = request.app[FILES].get(request.match_info["name"])
    if file is None or file.content_type.startswith("text/html"):
        raise web.HTTPNotFound(reason="no such file")
    return static.response(request, file)


def make_app(config: WebConfig, metrics: WebMetrics | None = None) -> web.Application:
    measure = make_metrics_middleware(metrics if metrics is not None else WebMetrics())
    # Metrics outermost: every answer is counted, the guard's refusals included.
    app = web.Application(middlewares=[measure, make_middleware()], client_max_size=api.MAX_BODY)
    app[api.CONFIG] = config
    app[api.POOL] = ClientPool(config)
    app[sse.HUB] = FeedHub(config.idle_watch_s)
    app[FILES] = static.load()
    for path in PAGES:
        app.router.add_get(path, page)
    app.router.add_get("/static/{name:.+}", asset)
    app.router.add_get("/api/events", sse.events)
    api.add_routes(app)
    app.on_response_prepare.append(add_headers(config.tls))

    async def close(app: web.Application) -> None:
        await app[sse.HUB].close()
        await app[api.POOL].close()

    app.on_shutdown.append(close)
    return app
