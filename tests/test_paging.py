"""Integration: a big scope stays listable (issue 10, item 2).

10,000 failed records whose names, warnings, progress messages and errors are
at their documented limits, and runs with full log tails, are written to a
real store; a real controller serves them over gRPC. Every list answer must
stay under the 4 MiB message limit, page through all of it, and keep bulky
fields out unless asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from shards import InvalidArgument, ProcessState
from shards import validation as v
from shards.models import ProcessRecord, Progress, Run, WatchEventType, sort_key
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards_controller.active_runs import LOG_TAIL_LINES
from shards_controller.store import WriteBatch, open_store
from tests.support.cluster import Cluster, embedded_uri

RECORDS = 10_000
RUNS = 60
LIMIT = 4 * 1024 * 1024
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _text(prefix: str, length: int) -> str:
    return (prefix + "x" * length)[:length]


def _record(n: int) -> ProcessRecord:
    process_id = _text(f"p{n:05d}-", v.MAX_ID_LENGTH)
    return ProcessRecord(
        scope_id="big",
        process_id=process_id,
        name=_text(f"Process {n:05d} ", v.MAX_NAME_LENGTH),
        detail_level=1 + n % 4,
        warning=_text("careful ", v.MAX_MESSAGE_LENGTH),
        state=ProcessState.FAILED,
        error=_text(f"RuntimeError: failure {n} ", v.MAX_ERROR_LENGTH),
        progress=Progress(_text("nearly ", v.MAX_MESSAGE_LENGTH), 0.9),
        failed_at=T0,
        run_id=f"run-{n:05d}" if n < RUNS else "",
        revision=n + 1,
    )


def _run(n: int) -> Run:
    return Run(
        run_id=f"run-{n:05d}",
        scope_id="big",
        process_id=_record(n).process_id,
        state=ProcessState.FAILED,
        error=_text(f"RuntimeError: failure {n} ", v.MAX_ERROR_LENGTH),
        created_at=T0 + timedelta(seconds=n),
        started_at=T0 + timedelta(seconds=n),
        ended_at=T0 + timedelta(seconds=n + 1),
        log_tail=tuple(_text(f"line {k} ", v.MAX_LOG_LINE_LENGTH) for k in range(LOG_TAIL_LINES)),
    )


async def _seed(uri: str) -> None:
    store = open_store(uri)
    await store.open()
    try:
        lease = await store.acquire_lease("seed", "", timedelta(seconds=30))
        assert lease is not None
        for start in range(0, RECORDS, 1000):
            batch = WriteBatch(records=[_record(n) for n in range(start, start + 1000)])
            await store.write(batch, lease.term)
        await store.write(WriteBatch(runs=[_run(n) for n in range(RUNS)]), lease.term)
        await store.release_lease("seed")
    finally:
        await store.close()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A controller over a store holding 10,000 records at the field limits (and a worker)."""
    uri = embedded_uri(tmp_path_factory.mktemp("big"))
    asyncio.run(_seed(uri))
    # A long lease: loading 290 MB of records blocks the controller's loop for
    # seconds, past the test's 1 s lease, and it would step down and start over.
    cluster = Cluster(uri, lease_ttl_s=120.0)
    try:
        cluster.start_controller(timeout_s=120)
        cluster.start_worker()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def stub(big: Cluster) -> Iterator[pb_grpc.ProcessControllerStub]:
    with grpc.insecure_channel(big.address) as channel:
        yield pb_grpc.ProcessControllerStub(channel)


def test_the_client_lists_all_10000_records_page_by_page_with_errors_cut(big: Cluster) -> None:
    started = time.monotonic()
    records = big.client.list_processes("big")
    assert len(records) == RECORDS and len({r.process_id for r in records}) == RECORDS
    assert [sort_key(r) for r in records] == sorted(sort_key(r) for r in records)
    assert all(len(r.error) == 256 and r.error.endswith("…") for r in records)
    assert all(len(r.progress.message) == 256 for r in records)
    assert all(r.warning == _record(0).warning for r in records)  # what a UI needs stays whole
    print(f"listed {RECORDS} records in {time.monotonic() - started:.2f} s")
    full = big.client.get_process("big", records[0].process_id)
    assert len(full.error) == v.MAX_ERROR_LENGTH


def test_every_page_stays_under_the_message_limit_in_either_view(
    stub: pb_grpc.ProcessControllerStub,
) -> None:
    summary = stub.ListProcesses(pb.ListProcessesRequest(scope_id="big"), timeout=30)
    assert 400 < len(summary.processes) <= 500 and summary.next_page_token  # the default page, or 2 MiB
    assert summary.ByteSize() < LIMIT
    assert all(len(p.progress.message) == 256 and len(p.error) == 256 for p in summary.processes)
    token, seen = "", 0
    for _ in range(3):  # the full view: pages cut by bytes, long before 1000 records
        reply = stub.ListProcesses(
            pb.ListProcessesRequest(scope_id="big", page_size=1000, page_token=token, view=pb.LIST_VIEW_FULL),
            timeout=30,
        )
        assert reply.ByteSize() < LIMIT and 0 < len(reply.processes) < 1000
        assert all(len(p.error) == v.MAX_ERROR_LENGTH for p in reply.processes)
        seen += len(reply.processes)
        token = reply.next_page_token
    listed = stub.ListProcesses(pb.ListProcessesRequest(scope_id="big", page_size=seen), timeout=30)
    assert [p.process_id for p in listed.processes][-1] == _sorted_ids()[seen - 1]


def _sorted_ids() -> list[str]:
    return [r.process_id for r in sorted((_record(n) for n in range(RECORDS)), key=sort_key)]


def test_runs_page_without_log_tails_unless_asked(big: Cluster, stub: pb_grpc.ProcessControllerStub) -> None:
    runs = big.client.list_runs("big", limit=RUNS)
    assert [r.run_id for r in runs] == [f"run-{n:05d}" for n in reversed(range(RUNS))]
    assert all(r.log_tail == () and len(r.error) == 256 for r in runs)
    detailed = big.client.list_runs("big", limit=RUNS, include_details=True)
    assert [r.run_id for r in detailed] == [r.run_id for r in runs]
    assert all(len(r.log_tail) == LOG_TAIL_LINES and len(r.error) == v.MAX_ERROR_LENGTH for r in detailed)
    reply = stub.ListRuns(
        pb.ListRunsRequest(scope_id="big", page_size=RUNS, view=pb.LIST_VIEW_FULL), timeout=30
    )
    assert reply.ByteSize() < LIMIT and 0 < len(reply.runs) < RUNS and reply.next_page_token


def test_a_watch_snapshot_of_10000_records_arrives_whole(big: Cluster) -> None:
    snapshot = []
    for event in big.client.watch_processes("big"):
        if event.type is WatchEventType.SYNCED:
            break
        snapshot.append(event.process)
    assert len(snapshot) == RECORDS
    assert all(p is not None and len(p.error) == v.MAX_ERROR_LENGTH for p in snapshot)


def test_define_of_a_big_scope_answers_every_record(big: Cluster) -> None:
    records = big.client.define_processes("big", only_if_missing=True).processes
    assert len(records) == RECORDS


def test_a_token_of_another_list_or_a_bad_page_size_is_invalid_argument(big: Cluster) -> None:
    client = big.client
    with pytest.raises(InvalidArgument, match=r"page_size must be within 0\.\.1000"):
        client.list_processes("big", page_size=1001)
    with grpc.insecure_channel(big.address) as channel:
        stub = pb_grpc.ProcessControllerStub(channel)
        token = stub.ListProcesses(pb.ListProcessesRequest(scope_id="big"), timeout=30).next_page_token
        for request in (
            pb.ListProcessesRequest(scope_id="other", page_token=token),
            pb.ListRunsRequest(scope_id="big", page_token=token),
            pb.ListProcessesRequest(scope_id="big", page_token="not-a-token!"),
        ):
            call = stub.ListRuns if isinstance(request, pb.ListRunsRequest) else stub.ListProcesses
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=30)  # type: ignore[arg-type]
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, request
            assert "page_token" in (refused.value.details() or "")
