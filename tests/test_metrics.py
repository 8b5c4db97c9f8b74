"""Prometheus metrics: every service's /metrics, scraped over HTTP and parsed with the client's parser."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shards import FailedPrecondition, NotFound, ProcessState
from shards._metrics import parse_listen
from shards.cli.parser import build_parser
from tests.support.apps import gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.processes import Service, free_port
from tests.support.waiting import assert_eventually

S = ProcessState
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of ``url``'s /metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(embedded_uri(tmp_path), metrics_listen="127.0.0.1:0")
    try:
        cluster.start_controller()
        yield cluster
    finally:
        cluster.close()


def _url(server: object) -> str:
    metrics_server = getattr(server, "metrics_server", None)
    assert metrics_server is not None, "metrics are on"
    return str(metrics_server.url)


def test_the_controllers_and_workers_counters_move_after_a_launch(metered: Cluster) -> None:
    worker = metered.start_worker(metrics_listen=":0")
    controller_url, worker_url = _url(metered.controller), _url(worker)
    assert controller_url.startswith("http://127.0.0.1:") and worker_url.startswith("http://127.0.0.1:")
    before = scrape(controller_url)
    assert value(before, "shards_leader") == 1 and value(before, "shards_leader_term") >= 1
    assert value(before, "shards_takeovers_total") == 1
    assert value(before, "shards_workers", status="live") == 1
    assert value(before, "shards_fleet_slots", status="free") == 4

    client = metered.client
    launched = client.launch_process("metrics", "quick")
    assert client.wait_run(launched.run_id).state is S.DONE
    with pytest.raises(FailedPrecondition):
        client.launch_process("metrics", "gated")
        client.launch_process("metrics", "gated")  # already active: refused
    gate("metrics").set()

    def moved() -> Samples:
        after = scrape(controller_url)
        assert value(after, "shards_launches_total", result="accepted") == 2
        assert value(after, "shards_launches_refused_total", code="FAILED_PRECONDITION") == 1
        assert value(after, "shards_run_ends_total", state="done") == 2
        return after

    after = assert_eventually(moved)
    assert value(after, "shards_run_duration_seconds_count", state="done") == 2
    assert value(after, "shards_run_queue_wait_seconds_count") == 2
    assert value(after, "shards_commit_duration_seconds_count") > value(
        before, "shards_commit_duration_seconds_count"
    )
    assert value(after, "shards_commit_batch_size_sum") >= 4  # each run: scheduled+running, then its end
    # Per RPC (the client's launches share one LaunchProcesses stream, still open: timed when it ends).
    rpc = "shards_rpc_duration_seconds_count"
    assert value(after, rpc, method="WorkerRegistry/RegisterWorker", code="OK") == 1
    assert value(after, rpc, method="ProcessController/GetRun", code="OK") >= 1
    with pytest.raises(NotFound):
        client.get_run("no-such-run")
    assert value(scrape(controller_url), rpc, method="ProcessController/GetRun", code="NOT_FOUND") == 1
    assert value(after, "shards_runs", state="running") == 0
    assert value(after, "shards_lost_runs_total", cause="worker_silent") == 0  # preset at zero
    assert value(after, "process_cpu_seconds_total") > 0

    on_worker = scrape(worker_url)
    _every_metric_of_the_dashboard_exists({name for name, _ in (*after, *on_worker)})
    assert value(on_worker, "shards_worker_slots", status="free") == 4
    assert value(on_worker, "shards_worker_runs", kind="top_level") == 0
    assert (
        value(on_worker, "shards_rpc_duration_seconds_count", method="Worker/DescribeScope", code="OK") >= 1
    )


def test_a_running_process_ships_its_progress_in_batches(metered: Cluster) -> None:
    # A run that ends at once may hand its progress over with its end, in no batch: this one runs on.
    worker = metered.start_worker(metrics_listen=":0")
    client = metered.client
    launched = client.launch_process("batches", "until-stopped")
    url = _url(worker)
    assert_eventually(lambda: value(scrape(url), "shards_worker_progress_batches_shipped_total") >= 1)
    client.stop_process("batches", "until-stopped")
    assert client.wait_run(launched.run_id).state is S.STOPPED


def test_gauges_are_read_at_scrape_time(metered: Cluster) -> None:
    metered.start_worker(capacity=2)
    client = metered.client
    client.launch_process("gauges", "gated")
    url = _url(metered.controller)
    events = client.watch_processes("gauges")
    try:
        next(events)

        def running() -> bool:
            now = scrape(url)
            assert value(now, "shards_runs", state="running") == 1
            assert value(now, "shards_fleet_slots", status="used") == 1
            assert value(now, "shards_fleet_slots", status="free") == 1
            assert value(now, "shards_watch_streams") == 1
            assert value(now, "shards_watch_messages_sent_total") >= 1
            return True

        assert_eventually(running)
    finally:
        events.close()
    gate("gauges").set()
    assert_eventually(lambda: value(scrape(url), "shards_runs", state="running") == 0)


def test_no_scope_process_or_run_id_is_a_label(metered: Cluster) -> None:
    metered.start_worker()
    client = metered.client
    for n in range(3):
        run = client.launch_process(f"scope-{n}", "quick")
        client.wait_run(run.run_id)
    labels = {value for _, pairs in scrape(_url(metered.controller)) for _, value in pairs}
    assert not any(label.startswith("scope-") or label == run.run_id for label in labels), labels
    assert not any(label == "quick" for label in labels)


def test_metrics_are_off_by_default_and_listen_on_loopback_when_only_a_port_is_given(tmp_path: Path) -> None:
    cluster = Cluster(embedded_uri(tmp_path))
    try:
        cluster.start_controller()
        assert cluster.controller is not None and cluster.controller.metrics_server is None
    finally:
        cluster.close()
    assert parse_listen("9100") == ("127.0.0.1", 9100)
    assert parse_listen(":9100") == ("127.0.0.1", 9100)
    assert parse_listen("0.0.0.0:9100") == ("0.0.0.0", 9100)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("host:port")
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["controller", "--metrics-listen", "nope:x"])
    assert exited.value.code == 2


@pytest.mark.e2e
def test_a_worker_killed_mid_run_moves_the_lost_run_counter(tmp_path: Path) -> None:
    metrics_port = free_port()
    controller = Service(
        [
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--store",
            str(tmp_path / "shards.db"),
            "--metrics-listen",
            str(metrics_port),
        ],
        tmp_path / "controller.log",
        env={
            "SHARDS_WORKER_TIMEOUT_S": "1",
            "SHARDS_HEARTBEAT_INTERVAL_S": "0.2",
            "SHARDS_SWEEP_INTERVAL_S": "0.1",
        },
    )
    worker: Service | None = None
    try:
        address = controller.wait_for(re.compile(r"controller ready: listening on (\S+)")).group(1)
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        worker_port = free_port()
        worker = Service(
            [
                "worker",
                "tests.support.apps:APP",
                "--controller",
                address,
                "--metrics-listen",
                f"127.0.0.1:{worker_port}",
            ],
            tmp_path / "worker.log",
        )
        assert_eventually(lambda: value(scrape(url), "shards_workers", status="live") == 1, timeout_s=60)
        from shards import Client

        with Client(address) as client:
            client.launch_process("e2e", "until-stopped")
            assert_eventually(lambda: client.get_process("e2e", "until-stopped").progress.rate > 0)
            worker_url = f"http://127.0.0.1:{worker_port}/metrics"
            assert value(scrape(worker_url), "shards_worker_runs", kind="top_level") == 1
            worker.popen.send_signal(signal.SIGKILL)
            worker.popen.wait(5)

            def lost() -> bool:
                now = scrape(url)
                assert value(now, "shards_lost_runs_total", cause="worker_silent") == 1
                assert value(now, "shards_run_ends_total", state="lost") == 1
                assert value(now, "shards_workers_lost_total") == 1
                assert value(now, "shards_workers", status="live") == 0
                return True

            assert_eventually(lost, timeout_s=10)
            assert client.get_process("e2e", "until-stopped").state is S.LOST
    finally:
        if worker is not None:
            worker.stop()
        controller.stop()


DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"


def _every_metric_of_the_dashboard_exists(served: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in expressions for name in re.findall(r"\b((?:shards|process)_[a-z_]+)", expr)}
    used = {name for name in used if not name.startswith("shards_web_")}  # the GUI's: its own test
    assert len(used) > 20
    missing = sorted(used - served)
    assert not missing, f"the dashboard uses metrics no service serves: {missing}"


def test_the_gui_servers_requests_sse_clients_and_upstream_watches(metered: Cluster) -> None:
    from tests.support.web import WEB_APP, SseReader, Web

    metered.start_worker(WEB_APP)
    metered.client.define_processes("farm")
    web = Web(metered, metrics_listen="127.0.0.1:0")
    try:
        assert web.server.metrics_server is not None
        url = web.server.metrics_server.url
        assert web.get("/api/processes?scope=farm").status == 200
        assert web.get("/no/such/page").status == 404
        for n in range(3):
            assert web.get(f"/random-{n}").status == 404  # one "unmatched" series, not one per path
        readers = [SseReader(web, "farm") for _ in range(2)]
        try:
            assert_eventually(lambda: all(r.of("snapshot") for r in readers))

            def streaming() -> Samples:
                now = scrape(url)
                assert value(now, "shards_web_sse_clients") == 2
                assert value(now, "shards_web_upstream_watches") == 1
                return now

            now = assert_eventually(streaming)
        finally:
            for reader in readers:
                reader.close()
        requests = "shards_web_http_requests_total"
        assert value(now, requests, route="/api/processes", method="GET", status="200") == 1
        assert value(now, requests, route="unmatched", method="GET", status="404") == 4
        routes = {dict(labels).get("route") for name, labels in now if name == requests}
        assert not any(str(route).startswith("/random") for route in routes), routes
        assert_eventually(lambda: value(scrape(url), "shards_web_sse_clients") == 0)
        after = scrape(url)
        assert value(after, requests, route="/api/events", method="GET", status="499") == 2
        assert value(after, "shards_web_http_request_duration_seconds_count", route="/api/events") == 2
        dashboard = DASHBOARD.read_text()
        used = set(re.findall(r"\b(shards_web_[a-z_]+)", dashboard))
        assert len(used) >= 3 and used <= {name for name, _ in after}, used
    finally:
        web.close()
