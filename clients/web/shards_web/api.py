"""The JSON API the page uses; every call goes to the controller with the user's own token.

GET  /api/session                      who the token is (401: log in)
POST /api/login {token} /api/logout    the token cookie
GET  /api/scopes                       the scopes the user may list, with counts by state
GET  /api/me?scope=S                   the actions the user may take in S
GET  /api/processes?scope=S            the records of S (the page follows /api/events instead)
GET  /api/runs?scope=S&process_id=P    P's runs, newest first, each with the runs it launched
GET  /api/workers                      the workers, and the active runs each holds
POST /api/launch /api/stop /api/dismiss {scope_id, process_id}
POST /api/reset /api/define {scope_id}
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import orjson
from aiohttp import web

from shards import AsyncClient
from shards import validation as v
from shards.errors import InvalidArgument
from shards.models import Run
from shards_web import serialize
from shards_web.clients import ClientPool
from shards_web.config import WebConfig
from shards_web.errors import ApiError
from shards_web.security import clear_token_cookie, set_token_cookie, token_of

MAX_BODY = 16 * 1024
MAX_TOKEN = 4096
MAX_RUNS = 200
CHILD_RUNS = 1000
CHILD_DEPTH = 6
WORKER_SCOPES = 50
MAX_TAILS = 100  # runs whose log tail the history fetches

POOL: web.AppKey[ClientPool] = web.AppKey("pool", ClientPool)
CONFIG: web.AppKey[WebConfig] = web.AppKey("config", WebConfig)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def client_of(request: web.Request) -> AsyncClient:
    return request.app[POOL].get(token_of(request))


def scope_param(request: web.Request) -> str:
    return v.check_id(request.query.get("scope", ""), "scope")


async def body_of(request: web.Request, fields: dict[str, bool]) -> dict[str, str]:
    """A JSON object of string fields (``fields``: name -> required); anything else is a 400."""
    if request.content_type != "application/json":
        raise ApiError(415, "the body must be JSON (Content-Type: application/json)")
    raw = await request.read()
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError as error:
        raise InvalidArgument(f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidArgument("the body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InvalidArgument(f"unknown field(s): {', '.join(unknown)}")
    for name, required in fields.items():
        value = data.get(name, "")
        if not isinstance(value, str):
            raise InvalidArgument(f"{name} must be a string")
        if required and not value:
            raise InvalidArgument(f"{name} is required")
    return {name: data.get(name, "") for name in fields}


async def key_of(request: web.Request) -> tuple[str, str]:
    body = await body_of(request, {"scope_id": True, "process_id": True})
    return v.check_id(body["scope_id"], "scope_id"), v.check_id(body["process_id"], "process_id")


# ---------------------------------------------------------------- session


async def session(request: web.Request) -> web.Response:
    return ok(serialize.identity(await client_of(request).who_am_i()))


async def login(request: web.Request) -> web.Response:
    token = (await body_of(request, {"token": True}))["token"].strip()
    if len(token) > MAX_TOKEN or not token.isascii() or not token.isprintable() or " " in token:
        raise InvalidArgument("that is no token: a token is printable ASCII without spaces")
    me = await request.app[POOL].get(token).who_am_i()  # Unauthenticated (401) for an unknown token
    response = ok(serialize.identity(me))
    set_token_cookie(response, token, request.app[CONFIG].tls)
    return response


async def logout(request: web.Request) -> web.Response:
    response = ok({"logged_out": True})
    clear_token_cookie(response, request.app[CONFIG].tls)
    return response


# ---------------------------------------------------------------- reads


async def scopes(request: web.Request) -> web.Response:
    return ok([serialize.scope(s) for s in await client_of(request).list_scopes()])


async def me(request: web.Request) -> web.Response:
    return ok(serialize.identity(await client_of(request).who_am_i(scope_param(request))))


async def processes(request: web.Request) -> web.Response:
    records = await client_of(request).list_processes(scope_param(request))
    return ok([serialize.record(r) for r in records])


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_RUNS:
        raise InvalidArgument(f"limit must be a number within 1..{MAX_RUNS}, got {raw[:20]!r}")
    return int(raw)


def _with_children(run: Run, children: dict[str, list[Run]], depth: int = 0) -> dict[str, Any]:
    data = serialize.run(run)
    below = children.get(run.run_id, []) if depth < CHILD_DEPTH else []
    data["children"] = [_with_children(c, children, depth + 1) for c in reversed(below)]
    return data


async def runs(request: web.Request) -> web.Response:
    scope_id = scope_param(request)
    process_id = v.check_id(request.query.get("process_id", ""), "process_id")
    client = client_of(request)
    own = await client.list_runs(scope_id, process_id, limit=_limit(request))
    children: dict[str, list[Run]] = defaultdict(list)
    for run in await client.list_runs(scope_id, limit=CHILD_RUNS):
        if run.parent_run_id:
            children[run.parent_run_id].append(run)
    # ListRuns leaves the log tails out; each run shown gets its own from GetRun.
    shown = {r.run_id: r for r in own}
    for run in own:
        for child in children.get(run.run_id, []):
            shown[child.run_id] = child
    full = await asyncio.gather(*(client.get_run(run_id) for run_id in list(shown)[:MAX_TAILS]))
    tails = {r.run_id: r for r in full}
    own = [tails.get(r.run_id, r) for r in own]
    for parent, below in children.items():
        children[parent] = [tails.get(r.run_id, r) for r in below]
    return ok([_with_children(r, children) for r in own])


async def workers(request: web.Request) -> web.Response:
    client = client_of(request)
    listed = await client.list_workers()
    held: dict[str, list[dict[str, Any]]] = defaultdict(list)
    busy = [s for s in await client.list_scopes() if s.active][:WORKER_SCOPES]
    for summary in busy:
        for record in await client.list_processes(summary.scope_id):
            if record.state.is_active and record.worker_id:
                held[record.worker_id].append(
                    {
                        "scope_id": record.scope_id,
                        "process_id": record.process_id,
                        "name": record.name,
                        "run_id": record.run_id,
                        "state": str(record.state),
                    }
                )
    return ok([{**serialize.worker(w), "runs": held.get(w.worker_id, [])} for w in listed])


# ---------------------------------------------------------------- changes


async def launch(request: web.Request) -> web.Response:
    scope_id, process_id = await key_of(request)
    launched = await client_of(request).launch_process(scope_id, process_id)
    return ok({"run_id": launched.run_id, "process": serialize.record(launched.process)})


async def stop(request: web.Request) -> web.Response:
    scope_id, process_id = await key_of(request)
    return ok({"process": serialize.record(await client_of(request).stop_process(scope_id, process_id))})


async def dismiss(request: web.Request) -> web.Response:
    scope_id, process_id = await key_of(request)
    record = await client_of(request).dismiss_process_messages(scope_id, process_id)
    return ok({"process": serialize.record(record)})


async def _scope_body(request: web.Request) -> str:
    return v.check_id((await body_of(request, {"scope_id": True}))["scope_id"], "scope_id")


async def reset(request: web.Request) -> web.Response:
    """The original's "Reset processes": wipe the scope's records and define it again.

    One ResetProcesses call: refused, changing nothing, while a process is active.
    """
    scope_id = await _scope_body(request)
    records = (await client_of(request).reset_processes(scope_id)).processes
    return ok({"processes": [serialize.record(r) for r in records]})


async def define(request: web.Request) -> web.Response:
    scope_id = await _scope_body(request)
    records = (await client_of(request).define_processes(scope_id)).processes
    return ok({"processes": [serialize.record(r) for r in records]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/session", session)
    app.router.add_post("/api/login", login)
    app.router.add_post("/api/logout", logout)
    app.router.add_get("/api/scopes", scopes)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/processes", processes)
    app.router.add_get("/api/runs", runs)
    app.router.add_get("/api/workers", workers)
    app.router.add_post("/api/launch", launch)
    app.router.add_post("/api/stop", stop)
    app.router.add_post("/api/dismiss", dismiss)
    app.router.add_post("/api/reset", reset)
    app.router.add_post("/api/define", define)
