"""Integration: an application's own users through the authenticate hook, alone or with the authorize hook.

The hooks below are the application's: ``authenticate(token)`` knows a few
tokens (one of them a worker's), ``authorize(principal, scope_id, action)``
lets ``dave`` list the ``hooked-*`` scopes and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from shards import PermissionDenied, ProcessState, Unauthenticated
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller.auth import Action, Authorizer, Kind, Principal
from shards_worker.server import WorkerSecurity
from tests.support.cluster import Cluster, embedded_uri
from tests.test_auth import ADMIN, write_policy

S = ProcessState
CAROL, DAVE, WORKER, BROKEN = "carol-secret", "dave-secret", "hook-worker-secret", "breaks-the-hook"
ASKED: list[str] = []  # the names the hook was asked about (never the tokens)


def authenticate(token: str) -> Principal | str | None:
    if token == BROKEN:
        raise RuntimeError("the user database is down")
    if token == WORKER:
        return Principal("hook-worker", Kind.WORKER, worker_ids=("hook-w*",), serves=("*",))
    name = {CAROL: "carol", DAVE: "dave"}.get(token)
    if name is not None:
        ASKED.append(name)
    return name


async def async_authenticate(token: str) -> Principal | str | None:
    return authenticate(token)


def authorize(principal: Principal, scope_id: str, action: Action) -> bool:
    return principal.name == "dave" and scope_id.startswith("hooked-") and action is Action.LIST


def hooked_cluster(tmp_path: Path, **config: Any) -> Cluster:
    cluster = Cluster(
        embedded_uri(tmp_path), client_token=CAROL, worker_security=WorkerSecurity(token=WORKER), **config
    )
    cluster.start_controller()
    cluster.start_worker(worker_id="hook-w1")
    return cluster


@pytest.fixture(params=["tests.test_auth_hooks:authenticate", "tests.test_auth_hooks:async_authenticate"])
def alone(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    cluster = hooked_cluster(tmp_path, authenticate_hook=request.param)
    try:
        yield cluster
    finally:
        cluster.close()


def test_the_authenticate_hook_alone_lets_its_users_in_and_no_one_else(
    alone: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    carol = alone.client
    assert carol.who_am_i("farm").principal == "carol"
    # a name the hook gives, with no authorize hook, may do everything (as the original with no auth)
    run = carol.launch_process("farm", "quick")
    assert carol.wait_run(run.run_id, 10).state is S.DONE  # the worker got in through the hook too
    assert carol.get_process("farm", "quick").state is S.DONE
    for token in ("not-a-user", ""):
        with pytest.raises(Unauthenticated):
            alone.make_client(token).list_processes("farm")
    caplog.set_level(logging.INFO)
    with pytest.raises(Unauthenticated, match="authenticate hook failed"):
        alone.make_client(BROKEN).list_processes("farm")  # a hook that raises refuses
    assert BROKEN not in caplog.text and CAROL not in caplog.text
    assert "carol" in ASKED


def test_the_authenticate_hook_with_the_authorize_hook(tmp_path: Path) -> None:
    cluster = hooked_cluster(
        tmp_path,
        authenticate_hook="tests.test_auth_hooks:authenticate",
        authorize_hook="tests.test_auth_hooks:authorize",
    )
    try:
        dave = cluster.make_client(DAVE)
        assert dave.who_am_i().principal == "dave"
        dave.list_processes("hooked-1")  # the authorize hook allows it
        with pytest.raises(PermissionDenied, match="dave may not launch"):
            dave.launch_process("hooked-1", "quick")
        with pytest.raises(PermissionDenied):
            dave.list_processes("farm")
        with pytest.raises(PermissionDenied):  # carol is a name now, and the authorize hook says no
            cluster.client.list_processes("hooked-1")
    finally:
        cluster.close()


def test_the_policy_comes_first_and_the_hook_knows_the_rest(tmp_path: Path) -> None:
    cluster = hooked_cluster(
        tmp_path,
        auth_policy=str(write_policy(tmp_path)),
        authenticate_hook="tests.test_auth_hooks:authenticate",
    )
    try:
        assert cluster.make_client(ADMIN).who_am_i().principal == "admin"  # from the policy file
        assert cluster.client.who_am_i().principal == "carol"  # from the hook
        with grpc.insecure_channel(cluster.address) as channel, pytest.raises(grpc.RpcError) as refused:
            pb_grpc.ProcessControllerStub(channel).ListProcesses(
                pb.ListProcessesRequest(scope_id="farm"), metadata=(("authorization", "Bearer nobody"),)
            )
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        cluster.close()


def test_an_authorize_hook_alone_is_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="policy file or an authenticate hook"):
        Authorizer.from_settings("", "tests.test_auth_hooks:authorize")
    with pytest.raises(ValueError, match="authenticate_hook must read 'module:function'"):
        Authorizer.from_settings("", "", "no-colon")
