"""GET /api/events?scope=S: the scope's records as Server-Sent Events.

``snapshot`` (every record), then ``changes`` (the records that changed, the
ids removed); each with ``id:`` = the revision it brings the browser to, so a
browser reconnecting with ``Last-Event-ID`` is sent only what it missed.
``status`` says whether the upstream watch is live or reconnecting; ``refused``
(then the end of the stream) that the controller refused the watch.

The user's right to the scope is checked (WhoAmI, with the user's token)
before the stream opens, so a refusal is a plain 401/403 JSON answer.
"""

from __future__ import annotations

from aiohttp import web

from shards_web.api import CONFIG, POOL, client_of, scope_param
from shards_web.clients import token_key
from shards_web.errors import ApiError
from shards_web.feed import FeedHub
from shards_web.security import token_of

HUB: web.AppKey[FeedHub] = web.AppKey("hub", FeedHub)


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id", "")
    return int(raw) if raw.isdigit() and len(raw) < 20 else None


async def events(request: web.Request) -> web.StreamResponse:
    scope_id = scope_param(request)
    me = await client_of(request).who_am_i(scope_id)
    if "list" not in me.actions:
        raise ApiError(403, f"{me.principal} may not list in scope {scope_id!r}", "PERMISSION_DENIED")
    config = request.app[CONFIG]
    # The GUI server's own token, when it has one, serves every browser one watch per scope;
    # else each token has its own (the controller checks it when the watch opens).
    upstream = config.token or token_of(request)
    hub = request.app[HUB]
    feed = hub.feed(scope_id, token_key(upstream), request.app[POOL].get(upstream))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    transport = request.transport
    try:
        await response.write(b"retry: 1000\n\n")  # the headers go out with it
    except ConnectionError:  # the browser hung up already
        return response
    if transport is None or transport.is_closing():
        return response
    # From here the feed writes this browser's events straight to its transport (see subscriber).
    subscriber = feed.subscribe(transport, _last_event_id(request))
    try:
        await subscriber.done  # handler_cancellation: cancelled when the browser hangs up
    finally:
        hub.unsubscribe(feed, subscriber)
    return response
