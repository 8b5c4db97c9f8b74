"""The web GUI's HTTP side: every endpoint, its refusals (JSON, documented statuses), CSRF,
the token cookie, security headers, and the event stream's fan-out and resume."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shards import ProcessState
from shards_web import subscriber
from shards_web.config import ConfigError, WebConfig
from shards_web.feed import FeedHub
from shards_web.sse import HUB
from shards_worker.server import WorkerSecurity
from tests.support.apps import GATES, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.waiting import assert_eventually
from tests.support.web import PATIENT, WEB_APP, SseReader, Web
from tests.test_auth import ADMIN, ALICE, BOB, W1, write_policy

S = ProcessState
SCOPE = "farm"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    cluster = Cluster(embedded_uri(tmp_path), **PATIENT)
    cluster.start_controller()
    cluster.start_worker(WEB_APP)
    cluster.client.define_processes(SCOPE)
    served = Web(cluster)
    try:
        yield served
    finally:
        GATES.clear()
        served.close()
        cluster.close()


@pytest.fixture
def secured_web(tmp_path: Path) -> Iterator[Web]:
    cluster = Cluster(
        embedded_uri(tmp_path),
        **PATIENT,
        auth_policy=str(write_policy(tmp_path)),
        client_token=ADMIN,
        worker_security=WorkerSecurity(token=W1),
    )
    cluster.start_controller()
    cluster.start_worker(WEB_APP, worker_id="w1")
    cluster.client.define_processes("tenant-a")
    cluster.client.define_processes("tenant-b")
    served = Web(cluster)
    try:
        yield served
    finally:
        served.close()
        cluster.close()


def error_of(reply) -> tuple[int, str]:
    assert reply.headers["Content-Type"].startswith("application/json"), reply.body[:200]
    assert b"Traceback" not in reply.body
    return reply.status, reply.data["error"]["code"]


def state_of(web: Web, process_id: str, scope: str = SCOPE) -> S:
    return web.cluster.client.get_process(scope, process_id).state


# ---------------------------------------------------------------- the page


def test_the_page_and_its_files_carry_the_security_headers(web: Web) -> None:
    page = web.get("/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert b'<script type="module" src="/static/app.js">' in page.body
    assert b"<script>" not in page.body  # no inline script
    for name in ("app.js", "vendor/preact.mjs", "vendor/hooks.mjs", "vendor/htm.mjs"):
        reply = web.get(f"/static/{name}")
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/javascript"), name
        assert b"https://" not in reply.body or name.startswith("vendor/"), name
    assert b'from"./preact.mjs"' in web.get("/static/vendor/hooks.mjs").body
    for name in ("vendor/LICENSE-preact", "vendor/LICENSE-htm", "vendor/VERSIONS"):
        assert web.get(f"/static/{name}").status == 200, name
    again = web.get("/static/app.js", headers={"If-None-Match": web.get("/static/app.js").headers["ETag"]})
    assert again.status == 304


def test_unknown_paths_are_json_404s(web: Web) -> None:
    for path in ("/static/nope.js", "/static/../config.py", "/api/nothing", "/static/index.html"):
        assert error_of(web.get(path)) == (404, "NOT_FOUND"), path


# ---------------------------------------------------------------- reads


def test_the_read_endpoints_answer_json(web: Web) -> None:
    assert web.get("/api/session").data == {
        "principal": "anonymous",
        "auth_enabled": False,
        "kind": "anonymous",
        "scope_id": "",
        "actions": [],
    }
    scopes = web.get("/api/scopes").data
    assert [s["scope_id"] for s in scopes] == [SCOPE] and scopes[0]["counts"] == {
        "idle": scopes[0]["processes"]
    }
    assert set(web.get(f"/api/me?scope={SCOPE}").data["actions"]) >= {"launch", "stop", "dismiss", "purge"}
    records = web.get(f"/api/processes?scope={SCOPE}").data
    assert {"count-sheep", "debug-dump", "steps"} <= {r["process_id"] for r in records}
    debug = next(r for r in records if r["process_id"] == "debug-dump")
    assert debug["special"] is True and debug["state"] == "idle"
    workers = web.get("/api/workers").data
    assert len(workers) == 1 and workers[0]["alive"] and workers[0]["runs"] == []
    assert web.get(f"/api/runs?scope={SCOPE}&process_id=count-sheep").data == []


def test_runs_show_children_under_the_run_that_launched_them_with_their_log(web: Web) -> None:
    launched = web.post("/api/launch", {"scope_id": SCOPE, "process_id": "breed-sheep"})
    assert launched.status == 200, launched.data
    run_id = launched.data["run_id"]
    web.cluster.client.wait_run(run_id, timeout_s=30)
    runs = web.get(f"/api/runs?scope={SCOPE}&process_id=breed-sheep").data
    assert [r["run_id"] for r in runs] == [run_id]
    children = runs[0]["children"]
    assert [c["process_id"] for c in children] == [f"count-sheep-in-field-{n}" for n in (1, 2, 3)]
    wolf = children[2]
    assert wolf["state"] == "failed" and "wolf" in wolf["error"]

    def wolf_log() -> list[str]:
        runs = web.get(f"/api/runs?scope={SCOPE}&process_id=breed-sheep").data
        return list(runs[0]["children"][2]["log_tail"])

    # the traceback is in the log tail (which may be stored a moment after the end)
    assert_eventually(lambda: any("RuntimeError" in line for line in wolf_log()))


def test_workers_show_the_runs_they_hold(web: Web) -> None:
    web.post("/api/launch", {"scope_id": SCOPE, "process_id": "until-stopped"})
    assert_eventually(lambda: state_of(web, "until-stopped") is S.RUNNING)
    (worker,) = web.get("/api/workers").data
    assert [(r["process_id"], r["state"]) for r in worker["runs"]] == [("until-stopped", "running")]
    assert worker["running"] == 1
    web.post("/api/stop", {"scope_id": SCOPE, "process_id": "until-stopped"})


# ---------------------------------------------------------------- changes


def test_launch_stop_dismiss_and_their_refusals(web: Web) -> None:
    key = {"scope_id": SCOPE, "process_id": "until-stopped"}
    launched = web.post("/api/launch", key)
    assert launched.status == 200 and launched.data["run_id"]
    again = web.post("/api/launch", key)
    assert error_of(again) == (409, "FAILED_PRECONDITION") and "already" in again.data["error"]["message"]
    assert web.post("/api/stop", key).status == 200
    web.cluster.client.wait_run(launched.data["run_id"], timeout_s=10)
    assert error_of(web.post("/api/stop", key)) == (409, "FAILED_PRECONDITION")
    failing = web.post("/api/launch", {"scope_id": SCOPE, "process_id": "shear-sheep"})
    assert web.cluster.client.wait_run(failing.data["run_id"], timeout_s=15).state is S.FAILED
    dismissed = web.post("/api/dismiss", {"scope_id": SCOPE, "process_id": "shear-sheep"})
    assert dismissed.status == 200 and dismissed.data["process"].get("error", "") == ""
    assert error_of(web.post("/api/launch", {"scope_id": SCOPE, "process_id": "no-such"})) == (
        404,
        "NOT_FOUND",
    )


def test_reset_is_refused_while_a_process_is_active_and_changes_nothing(web: Web) -> None:
    web.post("/api/launch", {"scope_id": SCOPE, "process_id": "gated"})
    before = web.cluster.client.list_processes(SCOPE)
    refused = web.post("/api/reset", {"scope_id": SCOPE})
    assert error_of(refused) == (409, "FAILED_PRECONDITION")
    assert [r.process_id for r in web.cluster.client.list_processes(SCOPE)] == [r.process_id for r in before]
    gate(SCOPE).set()
    assert_eventually(lambda: state_of(web, "gated") is S.DONE)
    reset = web.post("/api/reset", {"scope_id": SCOPE})
    assert reset.status == 200
    after = web.cluster.client.list_processes(SCOPE)
    assert {r.process_id for r in after} == {r.process_id for r in before}
    assert all(r.state is S.IDLE and not r.run_id for r in after)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/api/launch", {"scope_id": "bad scope!", "process_id": "count-sheep"}, 400, "INVALID_ARGUMENT"),
        ("/api/launch", {"scope_id": SCOPE, "process_id": "x" * 200}, 400, "INVALID_ARGUMENT"),
        ("/api/launch", {"scope_id": SCOPE}, 400, "INVALID_ARGUMENT"),
        ("/api/launch", {"scope_id": SCOPE, "process_id": 7}, 400, "INVALID_ARGUMENT"),
        (
            "/api/launch",
            {"scope_id": SCOPE, "process_id": "count-sheep", "extra": "1"},
            400,
            "INVALID_ARGUMENT",
        ),
        ("/api/launch", ["not", "an", "object"], 400, "INVALID_ARGUMENT"),
        ("/api/stop", {"scope_id": "unknown-scope", "process_id": "count-sheep"}, 404, "NOT_FOUND"),
        ("/api/dismiss", {"scope_id": SCOPE, "process_id": "no-such"}, 404, "NOT_FOUND"),
        ("/api/reset", {"scope_id": ""}, 400, "INVALID_ARGUMENT"),
        ("/api/login", {"token": "has spaces in it"}, 400, "INVALID_ARGUMENT"),
    ],
)
def test_bad_bodies_get_a_documented_4xx_and_change_nothing(web: Web, path, body, status, code) -> None:
    before = web.cluster.client.list_processes(SCOPE)
    assert error_of(web.post(path, body)) == (status, code)
    assert web.cluster.client.list_processes(SCOPE) == before


def test_malformed_bodies_and_queries(web: Web) -> None:
    assert error_of(web.post("/api/launch", raw=b"{not json")) == (400, "INVALID_ARGUMENT")
    too_big = b'{"scope_id": "' + b"a" * 100_000 + b'"}'
    assert error_of(web.post("/api/launch", raw=too_big)) == (413, "REQUEST_TOO_LARGE")
    plain = web.post(
        "/api/launch", raw=b"scope_id=farm", headers={"X-Shards-Request": "1", "Content-Type": "text/plain"}
    )
    assert error_of(plain) == (415, "UNSUPPORTED_MEDIA_TYPE")
    for path in (
        "/api/processes",
        "/api/processes?scope=bad%20scope",
        f"/api/runs?scope={SCOPE}&process_id=",
        f"/api/runs?scope={SCOPE}&process_id=count-sheep&limit=0",
        f"/api/runs?scope={SCOPE}&process_id=count-sheep&limit=lots",
        "/api/me?scope=" + "s" * 300,
        "/api/events?scope=",
    ):
        assert error_of(web.get(path)) == (400, "INVALID_ARGUMENT"), path
    assert error_of(web.request("PUT", "/api/launch", {"scope_id": SCOPE})) == (405, "METHOD_NOT_ALLOWED")
    assert error_of(web.request("DELETE", "/api/scopes")) == (405, "METHOD_NOT_ALLOWED")


def test_a_changing_request_without_the_csrf_header_or_from_another_origin_is_refused(web: Web) -> None:
    key = {"scope_id": SCOPE, "process_id": "count-sheep"}
    json_only = {"Content-Type": "application/json"}
    refusals = [
        json_only,
        {**json_only, "X-Shards-Request": "0"},
        {**json_only, "X-Shards-Request": "1", "Origin": "http://evil.example"},
        {**json_only, "X-Shards-Request": "1", "Origin": "null"},
        {**json_only, "X-Shards-Request": "1", "Sec-Fetch-Site": "cross-site"},
    ]
    for headers in refusals:
        assert error_of(web.post("/api/launch", key, headers=headers)) == (403, "CSRF_REFUSED"), headers
        assert error_of(web.post("/api/reset", {"scope_id": SCOPE}, headers=headers)) == (403, "CSRF_REFUSED")
    assert state_of(web, "count-sheep") is S.IDLE  # nothing was launched
    same = {**json_only, "X-Shards-Request": "1", "Origin": web.url, "Sec-Fetch-Site": "same-origin"}
    assert web.post("/api/launch", key, headers=same).status == 200


# ---------------------------------------------------------------- auth


def test_without_a_token_every_api_call_is_401(secured_web: Web) -> None:
    web = secured_web
    for path in (
        "/api/session",
        "/api/scopes",
        "/api/me?scope=tenant-a",
        "/api/processes?scope=tenant-a",
        "/api/workers",
        "/api/events?scope=tenant-a",
        "/api/runs?scope=tenant-a&process_id=steps",
    ):
        assert error_of(web.get(path)) == (401, "UNAUTHENTICATED"), path
    assert error_of(web.post("/api/launch", {"scope_id": "tenant-a", "process_id": "steps"})) == (
        401,
        "UNAUTHENTICATED",
    )
    assert error_of(web.get("/api/session", token="not-a-token")) == (401, "UNAUTHENTICATED")
    assert state_of(web, "steps", "tenant-a") is S.IDLE


def test_login_sets_an_http_only_strict_cookie_and_logout_clears_it(secured_web: Web) -> None:
    web = secured_web
    assert error_of(web.post("/api/login", {"token": "wrong"})) == (401, "UNAUTHENTICATED")
    logged = web.post("/api/login", {"token": ALICE})
    assert logged.status == 200 and logged.data["principal"] == "alice"
    cookie = logged.headers["Set-Cookie"]
    assert cookie.startswith(f"shards_token={ALICE};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert web.get("/api/session", token=ALICE).data["principal"] == "alice"
    out = web.post("/api/logout", token=ALICE)
    assert out.status == 200 and 'shards_token=""' in out.headers["Set-Cookie"]


def test_a_token_sees_only_its_scopes_and_gets_403_elsewhere(secured_web: Web) -> None:
    web = secured_web
    assert [s["scope_id"] for s in web.get("/api/scopes", token=ALICE).data] == ["tenant-a"]
    assert [s["scope_id"] for s in web.get("/api/scopes", token=BOB).data] == ["tenant-b"]
    assert web.get("/api/me?scope=tenant-b", token=BOB).data["actions"] == ["list"]
    for path in (
        "/api/processes?scope=tenant-b",
        "/api/events?scope=tenant-b",
        "/api/runs?scope=tenant-b&process_id=steps",
    ):
        assert error_of(web.get(path, token=ALICE)) == (403, "PERMISSION_DENIED"), path
    launch = {"scope_id": "tenant-b", "process_id": "steps"}
    assert error_of(web.post("/api/launch", launch, token=ALICE)) == (403, "PERMISSION_DENIED")
    assert error_of(web.post("/api/launch", launch, token=BOB)) == (403, "PERMISSION_DENIED")  # list only
    assert error_of(web.post("/api/reset", {"scope_id": "tenant-b"}, token=ALICE)) == (
        403,
        "PERMISSION_DENIED",
    )
    assert state_of(web, "steps", "tenant-b") is S.IDLE
    assert (
        web.post("/api/launch", {"scope_id": "tenant-a", "process_id": "debug-dump"}, token=ALICE).status
        == 200
    )


def test_the_gui_server_logs_no_token(secured_web: Web, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    web = secured_web
    web.post("/api/login", {"token": ALICE})
    web.get("/api/scopes", token=ALICE)
    web.get("/api/processes?scope=tenant-b", token=ALICE)
    assert ALICE not in caplog.text and ADMIN not in caplog.text


# ---------------------------------------------------------------- the event stream


def test_events_send_a_snapshot_then_changes_with_revisions_as_ids(web: Web) -> None:
    reader = SseReader(web, SCOPE)
    try:
        snapshot = assert_eventually(lambda: reader.of("snapshot"))[0]
        assert snapshot[1] == snapshot[2]["revision"]
        assert "count-sheep" in {r["process_id"] for r in snapshot[2]["processes"]}
        assert assert_eventually(lambda: [e for e in reader.of("status") if e[2]["upstream"] == "live"])
        web.post("/api/launch", {"scope_id": SCOPE, "process_id": "steps"})
        assert_eventually(
            lambda: reader.records()["steps"].get("progress", {}).get("message", "").startswith("step")
        )
        ids = [e[1] or 0 for e in reader.events if e[0] in ("snapshot", "changes")]
        assert ids == sorted(ids) and ids[-1] > (snapshot[1] or 0)
    finally:
        gate(SCOPE).set()
        reader.close()


def controller_watches(web: Web) -> int:
    assert web.cluster.controller is not None
    return web.cluster.controller.controller.hub.watcher_count


def test_many_browsers_share_one_upstream_watch(web: Web) -> None:
    watchers_before = controller_watches(web)
    readers = [SseReader(web, SCOPE) for _ in range(5)]
    try:
        assert_eventually(lambda: all(r.of("snapshot") for r in readers))
        assert web.feeds == 1
        assert controller_watches(web) == watchers_before + 1
        web.post("/api/launch", {"scope_id": SCOPE, "process_id": "debug-dump"})
        assert_eventually(lambda: all(r.records()["debug-dump"]["state"] == "done" for r in readers))
    finally:
        for reader in readers:
            reader.close()
    # the last browser gone, the upstream watch closes (after idle_watch_s)
    assert_eventually(lambda: web.feeds == 0, timeout_s=10)


def test_a_browser_that_cannot_keep_up_is_skipped_then_sent_the_newest_state(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is queued for a browser whose socket buffer is full: it is skipped, and once it
    reads again it is sent what changed meanwhile in one event (not every event it missed)."""
    monkeypatch.setattr(subscriber, "HIGH_WATER", 1024)
    scope = "many-2000"  # a snapshot of ~170 kB: more than the small socket buffers below take
    web.cluster.client.define_processes(scope)
    live = SseReader(web, scope)
    assert_eventually(lambda: live.of("snapshot"))
    reading = threading.Event()
    slow = SseReader(web, scope, paused=reading, rcvbuf=4096)
    try:
        (feed,) = hub_of(web).feeds
        assert_eventually(lambda: len(feed.subscribers) == 2)
        port = slow.local_port
        (theirs,) = [s for s in feed.subscribers if s.transport.get_extra_info("peername")[1] == port]
        # the kernel would take megabytes for it otherwise (send buffers grow by themselves)
        theirs.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        launched: list[str] = []

        def run_one() -> None:  # one at a time: an event or two each for the live browser
            process_id = f"item-{len(launched):05d}"
            run_id = web.post("/api/launch", {"scope_id": scope, "process_id": process_id}).data["run_id"]
            web.cluster.client.wait_run(run_id, timeout_s=10)
            assert_eventually(lambda: live.records()[process_id]["state"] == "done")
            launched.append(process_id)

        while not theirs.behind and len(launched) < 50:
            run_one()
        assert theirs.behind
        behind_at = len(live.of("changes"))
        for _ in range(5):
            run_one()
        assert len(live.of("changes")) >= behind_at + 5
        reading.set()
        # 30 s: the paused reader has a 4 kB receive buffer and a 170 kB snapshot to read first
        assert_eventually(
            lambda: all(slow.records().get(p, {}).get("state") == "done" for p in launched), timeout_s=30
        )
        assert slow.records() == live.records()
        assert len(slow.of("snapshot")) == 1
        # caught up in one event, not the five or more it missed replayed
        assert len(slow.of("changes")) <= behind_at + 1 < len(live.of("changes"))
    finally:
        reading.set()
        slow.close()
        live.close()


def hub_of(web: Web) -> FeedHub:
    return web.server.app[HUB]


def test_a_browser_resuming_with_last_event_id_gets_only_what_it_missed(web: Web) -> None:
    first = SseReader(web, SCOPE)
    try:
        seen = assert_eventually(lambda: first.of("snapshot"))[0][1]
    finally:
        first.close()
    launched = web.post("/api/launch", {"scope_id": SCOPE, "process_id": "debug-dump"})
    web.cluster.client.wait_run(launched.data["run_id"], timeout_s=10)
    assert_eventually(lambda: web.get(f"/api/processes?scope={SCOPE}").data is not None)
    resumed = SseReader(web, SCOPE, last_event_id=seen)
    try:
        changes = assert_eventually(
            lambda: [e for e in resumed.of("changes") if any(r["state"] == "done" for r in e[2]["processes"])]
        )
        assert not resumed.of("snapshot")
        assert {r["process_id"] for r in changes[0][2]["processes"]} == {"debug-dump"}
    finally:
        resumed.close()
    stale = SseReader(web, SCOPE, last_event_id=10**12)  # a revision this feed never had: a snapshot
    try:
        assert assert_eventually(lambda: stale.of("snapshot"))
    finally:
        stale.close()


# ---------------------------------------------------------------- settings


def test_a_non_loopback_address_needs_tls_or_the_insecure_flag() -> None:
    with pytest.raises(ConfigError, match="without HTTPS"):
        WebConfig(listen="0.0.0.0:8080").check()
    loud = WebConfig(listen="0.0.0.0:8080", allow_insecure=True)
    loud.check()
    assert "PLAIN HTTP" in loud.insecure_warning
    assert WebConfig(listen="127.0.0.1:8080").insecure_warning == ""
    with pytest.raises(ConfigError, match="both"):
        WebConfig(tls_cert="cert.pem").check()
    with pytest.raises(ConfigError, match="HOST:PORT"):
        WebConfig(listen="nowhere").check()
