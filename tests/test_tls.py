"""TLS and mutual TLS end to end: client -> controller -> worker -> controller.

The tests make their own CA and certificates (tests/support/certs.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shards import ProcessState, Unavailable
from shards._grpc.credentials import TlsConfig, make_channel
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_worker.server import WorkerSecurity
from tests.support.certs import Certs, make_certs
from tests.support.cluster import Cluster, embedded_uri

S = ProcessState
TOKEN, WORKER_TOKEN = "tls-admin-token", "tls-worker-token"
POLICY = f"""
[clients.admin]
token = "{TOKEN}"
grants = [{{ scopes = ["*"], actions = ["*"] }}]
[workers.w1]
token = "{WORKER_TOKEN}"
"""


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


def _cluster(tmp_path: Path, certs: Certs, *, mutual: bool, client_tls: TlsConfig, **config: Any) -> Cluster:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    return Cluster(
        embedded_uri(tmp_path),
        client_token=TOKEN,
        client_tls=client_tls,
        worker_security=WorkerSecurity(
            token=WORKER_TOKEN,
            controller_tls=certs.dial(certs.worker if mutual else None),
            server_tls=certs.server(certs.worker, mutual=mutual),
            controller_names=("shards-controller",) if mutual else (),
        ),
        auth_policy=str(policy),
        tls_cert=str(certs.controller.cert),
        tls_key=str(certs.controller.key),
        tls_client_ca=str(certs.ca) if mutual else "",
        worker_tls_ca=str(certs.ca),
        worker_tls_cert=str(certs.controller.cert) if mutual else "",
        worker_tls_key=str(certs.controller.key) if mutual else "",
        **config,
    )


@pytest.fixture
def tls_cluster(tmp_path: Path, certs: Certs) -> Iterator[Cluster]:
    cluster = _cluster(tmp_path, certs, mutual=False, client_tls=certs.dial())
    try:
        cluster.start_controller()
        cluster.start_worker(worker_id="w1")
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def mtls_cluster(tmp_path: Path, certs: Certs) -> Iterator[Cluster]:
    cluster = _cluster(tmp_path, certs, mutual=True, client_tls=certs.dial(certs.client))
    try:
        cluster.start_controller()
        cluster.start_worker(worker_id="w1")
        yield cluster
    finally:
        cluster.close()


def _runs_to_done(cluster: Cluster) -> None:
    client = cluster.client
    for process in ("quick", "adhoc-parent"):  # a child too: worker -> controller again
        run = client.launch_process("tls", process)
        assert client.wait_run(run.run_id, 10).state is S.DONE, process
    record = client.get_process("tls", "quick")
    assert record.progress.message == "all"  # the progress stream made it over TLS
    assert [w.worker_id for w in client.list_workers()] == ["w1"]


def test_tls_end_to_end(tls_cluster: Cluster) -> None:
    _runs_to_done(tls_cluster)


def test_a_plaintext_client_cannot_talk_to_a_tls_controller(tls_cluster: Cluster) -> None:
    plain = tls_cluster.make_client(TOKEN, retry_deadline_s=0.5, timeout_s=2)
    with pytest.raises(Unavailable):
        plain.list_processes("tls")


def test_a_client_that_does_not_trust_the_controllers_certificate_is_refused(
    tls_cluster: Cluster, certs: Certs
) -> None:
    wrong_ca = tls_cluster.make_client(
        TOKEN, tls=TlsConfig(certs.rogue_ca), retry_deadline_s=0.5, timeout_s=2
    )
    with pytest.raises(Unavailable):
        wrong_ca.list_processes("tls")
    # the server name must match too
    wrong_name = tls_cluster.make_client(
        TOKEN, tls=TlsConfig(certs.ca, server_name="elsewhere.example"), retry_deadline_s=0.5, timeout_s=2
    )
    with pytest.raises(Unavailable):
        wrong_name.list_processes("tls")


def test_mutual_tls_end_to_end(mtls_cluster: Cluster) -> None:
    _runs_to_done(mtls_cluster)


@pytest.mark.parametrize("who", ["no certificate", "rogue certificate"])
def test_mutual_tls_refuses_a_client_without_a_good_certificate(
    mtls_cluster: Cluster, certs: Certs, who: str
) -> None:
    tls = certs.dial() if who == "no certificate" else TlsConfig(certs.ca, certs.rogue.cert, certs.rogue.key)
    client = mtls_cluster.make_client(TOKEN, tls=tls, retry_deadline_s=0.5, timeout_s=2)
    with pytest.raises(Unavailable):
        client.list_processes("tls")
    # and the right token does not make up for it; the good client still works
    assert not any(r.run_id for r in mtls_cluster.client.list_processes("tls"))


def _direct_to_worker(cluster: Cluster, tls: TlsConfig | None, token: str = "") -> grpc.StatusCode:
    """Call the worker's ExecuteProcess directly, as someone who is not the controller."""
    address = cluster.workers[0].address

    async def call() -> grpc.StatusCode:
        channel = make_channel(address, tls=tls, token=token)
        # The stream is refused as it opens, before any request is read.
        # Nothing is written, not even the end of the requests: a write (or
        # half-close) racing the refusal fails inside gRPC, which then cancels
        # the call locally and hides the status under test.
        # The reader/writer style (no request iterator): nothing is ever written.
        call = pb_grpc.WorkerStub(channel).ExecuteProcess(timeout=3)  # type: ignore[call-arg]
        try:
            await call.read()
            return await call.code()
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            call.cancel()
            await channel.close(None)

    return cluster.run(call())


def test_a_worker_with_mutual_tls_takes_calls_from_its_controller_only(
    mtls_cluster: Cluster, certs: Certs
) -> None:
    # a certificate from the right CA, but not the controller's: refused by name
    assert _direct_to_worker(mtls_cluster, certs.dial(certs.client)) is grpc.StatusCode.PERMISSION_DENIED
    # no certificate, or one from another CA: no connection at all
    assert _direct_to_worker(mtls_cluster, certs.dial()) is grpc.StatusCode.UNAVAILABLE
    rogue = TlsConfig(certs.ca, certs.rogue.cert, certs.rogue.key)
    assert _direct_to_worker(mtls_cluster, rogue) is grpc.StatusCode.UNAVAILABLE
    _runs_to_done(mtls_cluster)  # while the controller's calls go through


def test_a_worker_with_a_shared_secret_takes_calls_from_its_controller_only(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    cluster = Cluster(
        embedded_uri(tmp_path),
        client_token=TOKEN,
        worker_security=WorkerSecurity(token=WORKER_TOKEN, controller_secret="between-us"),
        auth_policy=str(policy),
        worker_secret="between-us",
    )
    try:
        cluster.start_controller()
        cluster.start_worker(worker_id="w1")
        assert _direct_to_worker(cluster, None) is grpc.StatusCode.UNAUTHENTICATED
        assert _direct_to_worker(cluster, None, "guessed") is grpc.StatusCode.UNAUTHENTICATED
        assert _direct_to_worker(cluster, None, TOKEN) is grpc.StatusCode.UNAUTHENTICATED  # a client token
        _runs_to_done(cluster)
    finally:
        cluster.close()


def test_worker_security_from_env(certs: Certs, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("between-us\n")
    security = WorkerSecurity.from_env(
        {
            "SHARDS_WORKER_TOKEN": WORKER_TOKEN,
            "SHARDS_TLS_CA": str(certs.ca),
            "SHARDS_TLS_CERT": str(certs.worker.cert),
            "SHARDS_TLS_KEY": str(certs.worker.key),
            "SHARDS_WORKER_TLS_CERT": str(certs.worker.cert),
            "SHARDS_WORKER_TLS_KEY": str(certs.worker.key),
            "SHARDS_WORKER_TLS_CLIENT_CA": str(certs.ca),
            "SHARDS_WORKER_SECRET_FILE": str(secret_file),
            "SHARDS_WORKER_CONTROLLER_NAMES": "shards-controller, other",
        }
    )
    assert security.token == WORKER_TOKEN and security.controller_secret == "between-us"
    assert security.controller_tls == TlsConfig(str(certs.ca), str(certs.worker.cert), str(certs.worker.key))
    assert security.server_tls is not None and security.server_tls.mutual and security.guarded
    assert security.controller_names == ("shards-controller", "other")
    assert WorkerSecurity.from_env({}) == WorkerSecurity()
    with pytest.raises(ValueError, match="both"):
        WorkerSecurity.from_env({"SHARDS_WORKER_TLS_CERT": "x"})
