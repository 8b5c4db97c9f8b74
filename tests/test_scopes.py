"""ListScopes and WhoAmI: the scopes a caller may see, with counts by state, and its rights in one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from shards import InvalidArgument, ProcessState, Unauthenticated
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from tests.support.apps import GATES, gate
from tests.support.cluster import Cluster
from tests.test_auth import ADMIN, ALICE, BOB, NOBODY, W1, secured_cluster

S = ProcessState


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Cluster]:
    GATES.clear()
    cluster = secured_cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
        GATES.clear()


def test_list_scopes_counts_records_by_state(cluster: Cluster) -> None:
    client = cluster.client
    client.define_processes("farm-b")
    client.define_processes("farm-a")
    launched = client.launch_process("farm-a", "gated")
    failed = client.launch_process("farm-a", "failing")
    assert client.wait_run(failed.run_id, timeout_s=10).state is S.FAILED
    try:
        scopes = client.list_scopes()
        assert [s.scope_id for s in scopes] == ["farm-a", "farm-b"]
        farm_a, farm_b = scopes
        defined = len(client.list_processes("farm-a"))
        assert farm_a.processes == farm_b.processes == defined
        assert farm_a.count(S.FAILED) == 1
        assert farm_a.active == 1 and farm_a.count(S.SCHEDULED) + farm_a.count(S.RUNNING) == 1
        assert farm_a.count(S.IDLE) == defined - 2
        assert farm_b.active == 0 and farm_b.count(S.IDLE) == defined
    finally:
        gate("farm-a").set()
        cluster.client.wait_run(launched.run_id, timeout_s=10)


def test_a_purged_scope_is_no_longer_listed(cluster: Cluster) -> None:
    cluster.client.define_processes("farm")
    cluster.client.purge_processes("farm")
    assert cluster.client.list_scopes() == []


def test_who_am_i_with_auth_off_is_anonymous_and_may_do_everything(cluster: Cluster) -> None:
    me = cluster.client.who_am_i("farm")
    assert (me.principal, me.auth_enabled, me.kind) == ("anonymous", False, "anonymous")
    assert me.actions == {"list", "launch", "stop", "dismiss", "define", "purge"}
    assert cluster.client.who_am_i().actions == frozenset()


def test_who_am_i_reports_the_policy_grants_per_scope(secured: Cluster) -> None:
    alice = secured.make_client(token=ALICE)
    me = alice.who_am_i("tenant-a")
    assert (me.principal, me.auth_enabled, me.kind) == ("alice", True, "client")
    assert me.actions == {"list", "launch", "stop", "dismiss", "define", "purge"}
    assert alice.who_am_i("tenant-b").actions == frozenset()
    assert secured.make_client(token=BOB).who_am_i("tenant-b").actions == {"list"}
    assert secured.make_client(token=NOBODY).who_am_i("tenant-a").actions == frozenset()


def test_who_am_i_refuses_a_malformed_scope_and_a_missing_token(secured: Cluster) -> None:
    with pytest.raises(InvalidArgument, match="scope_id"):
        secured.make_client(token=ADMIN).who_am_i("not a scope!")
    with pytest.raises(Unauthenticated):
        secured.make_client().who_am_i()


def test_list_scopes_shows_only_the_scopes_a_principal_may_list(secured: Cluster) -> None:
    admin = secured.client
    for scope in ("tenant-a", "tenant-a-x", "tenant-b", "other"):
        admin.define_processes(scope)
    assert [s.scope_id for s in admin.list_scopes()] == ["other", "tenant-a", "tenant-a-x", "tenant-b"]
    assert [s.scope_id for s in secured.make_client(token=ALICE).list_scopes()] == ["tenant-a", "tenant-a-x"]
    assert [s.scope_id for s in secured.make_client(token=BOB).list_scopes()] == ["tenant-b"]
    assert secured.make_client(token=NOBODY).list_scopes() == []


def test_a_worker_credential_may_not_list_scopes_and_has_no_rights(secured: Cluster) -> None:
    secured.client.define_processes("tenant-a")
    with grpc.insecure_channel(secured.address) as channel:
        stub = pb_grpc.ProcessControllerStub(channel)
        metadata = (("authorization", f"Bearer {W1}"),)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListScopes(pb.ListScopesRequest(), metadata=metadata)
        assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
        reply = stub.WhoAmI(pb.WhoAmIRequest(scope_id="tenant-a"), metadata=metadata)
        assert (reply.principal, reply.kind, list(reply.actions)) == ("w1", "worker", [])
