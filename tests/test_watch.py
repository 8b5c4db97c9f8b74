"""Integration: WatchProcesses sends a snapshot, then every change in order, and resumes exactly."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import cast

from shards import ProcessState, WatchEvent, WatchEventType
from shards.models import ProcessFilter, ProcessInfo, ProcessRecord
from shards_controller.controller import LaunchRequest
from shards_controller.watch import Change
from tests.support.cluster import Cluster
from tests.support.leading import leading_controller
from tests.support.waiting import assert_eventually

S = ProcessState
T = WatchEventType


class Recorder:
    """Consumes a watch on a thread and keeps every event."""

    def __init__(self, events: Iterator[WatchEvent]) -> None:
        self.events: list[WatchEvent] = []
        self._stream = events
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        try:
            for event in self._stream:
                self.events.append(event)
        except Exception as error:  # pragma: no cover - shown by assertions
            self.events.append(WatchEvent(T.RESET, -1, None))
            raise error

    def states_of(self, process_id: str) -> list[ProcessState]:
        return _state_sequence(self.events, process_id)

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            with contextlib.suppress(ValueError):
                close()


def test_snapshot_then_every_state_change_in_order(cluster: Cluster) -> None:
    client = cluster.client
    defined = list(client.define_processes("farm").processes)
    recorder = Recorder(client.watch_processes("farm"))
    assert_eventually(lambda: any(e.type is T.SYNCED for e in recorder.events))
    snapshot = [e for e in recorder.events if e.type is T.SNAPSHOT]
    assert [e.process for e in snapshot] == _by_revision(defined)
    run = client.launch_process("farm", "quick")
    client.wait_run(run.run_id, 10)
    stopped = client.launch_process("farm", "until-stopped")
    assert_eventually(lambda: client.get_process("farm", "until-stopped").state is S.RUNNING)
    client.stop_process("farm", "until-stopped")
    client.wait_run(stopped.run_id, 10)
    assert_eventually(lambda: recorder.states_of("until-stopped")[-1:] == [S.STOPPED])
    assert recorder.states_of("quick") == [S.IDLE, S.SCHEDULED, S.RUNNING, S.DONE]
    assert recorder.states_of("until-stopped") == [
        S.IDLE,
        S.SCHEDULED,
        S.RUNNING,
        S.STOP_REQUESTED,
        S.STOPPING,
        S.STOPPED,
    ]
    revisions = [e.revision for e in recorder.events if e.type is T.CHANGED]
    assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
    recorder.close()


def test_progress_reaches_the_watcher(cluster: Cluster) -> None:
    client = cluster.client
    recorder = Recorder(client.watch_processes("farm"))
    run = client.launch_process("farm", "until-stopped")
    assert_eventually(
        lambda: any(e.process and e.process.progress.message.startswith("tick") for e in recorder.events)
    )
    client.stop_process("farm", "until-stopped")
    client.wait_run(run.run_id, 10)
    recorder.close()


def _changes_after(cluster: Cluster, revision: int) -> list[WatchEvent]:
    """Watch from ``revision`` until SYNCED, without resuming."""
    events: list[WatchEvent] = []
    for event in cluster.client.watch_processes("farm", from_revision=revision, resume=False):
        if event.type is T.SYNCED:
            return events
        events.append(event)
    raise AssertionError("stream ended before SYNCED")


def _state_sequence(events: list[WatchEvent], process_id: str) -> list[ProcessState]:
    """The states ``process_id`` went through (progress-only events collapse)."""
    return _dedupe(
        [e.process.state for e in events if e.process is not None and e.process.process_id == process_id]
    )


def test_resuming_from_a_revision_replays_every_change_after_it(cluster: Cluster) -> None:
    client = cluster.client
    client.define_processes("farm")
    recorder = Recorder(client.watch_processes("farm"))
    for process_id in ("quick", "failing", "quick"):
        client.wait_run(client.launch_process("farm", process_id).run_id, 10)
    assert_eventually(lambda: recorder.states_of("quick").count(S.DONE) == 2)
    live = [e for e in recorder.events if e.type is T.CHANGED]
    recorder.close()
    middle = live[len(live) // 3].revision
    replayed = _changes_after(cluster, middle)
    live_after = [e for e in live if e.revision > middle]
    assert replayed[0].revision == live_after[0].revision
    for process_id in ("quick", "failing"):
        assert _state_sequence(replayed, process_id) == _state_sequence(live_after, process_id)
    assert [e.revision for e in replayed] == sorted({e.revision for e in replayed})


def _by_revision(records: Iterable[ProcessRecord]) -> list[ProcessRecord]:
    """The order a watch's snapshot comes in: each snapshot event is a position to resume from."""
    return sorted(records, key=lambda record: record.revision)


def test_a_stream_broken_mid_snapshot_resumes_from_its_last_record_and_misses_no_change(
    cluster: Cluster,
) -> None:
    client = cluster.client
    client.define_processes("farm")
    client.wait_run(client.launch_process("farm", "quick").run_id, 10)
    stream = client.watch_processes("farm", resume=False)
    received = [next(stream), next(stream)]  # the stream breaks here, two records into the snapshot
    stream.close()
    assert all(e.type is T.SNAPSHOT for e in received)
    # Meanwhile another run of quick: every one of its state changes must reach the resumed watch.
    client.wait_run(client.launch_process("farm", "quick").run_id, 10)
    resumed = _changes_after(cluster, received[-1].revision)
    held = {e.process.process_id: e.process for e in received + resumed if e.process is not None}
    assert held == {r.process_id: r for r in client.list_processes("farm")}  # the whole scope, as it is now
    quick = [e.process.state for e in resumed if e.process is not None and e.process.process_id == "quick"]
    # Both runs of quick came after the last record received: every state of each, none skipped.
    assert _dedupe(quick) == [S.SCHEDULED, S.RUNNING, S.DONE] * 2


def test_resuming_from_before_a_restart_replays_from_the_store_journal(cluster: Cluster) -> None:
    client = cluster.client
    client.define_processes("farm")
    start = client.watch_processes("farm", resume=False)
    synced = next(e for e in start if e.type is T.SYNCED)
    start.close()
    client.wait_run(client.launch_process("farm", "quick").run_id, 10)
    client.wait_run(client.launch_process("farm", "failing").run_id, 10)
    port = cluster.address.rsplit(":", 1)[1]
    cluster.stop_controller()
    client.close()
    cluster._client = None
    cluster.start_controller(listen=f"127.0.0.1:{port}")  # an empty in-memory log: the journal answers
    replayed = _changes_after(cluster, synced.revision)
    seen = [(e.process.process_id, e.process.state) for e in replayed if e.process]
    assert [s for p, s in seen if p == "quick"] == [S.SCHEDULED, S.RUNNING, S.DONE]
    assert [s for p, s in seen if p == "failing"] == [S.SCHEDULED, S.RUNNING, S.FAILED]
    assert [e.revision for e in replayed] == sorted(e.revision for e in replayed)


def test_a_revision_from_the_future_starts_over_with_reset_and_snapshot(cluster: Cluster) -> None:
    client = cluster.client
    defined = list(client.define_processes("farm").processes)
    stream = client.watch_processes("farm", from_revision=10**9, resume=False)
    first = next(stream)
    assert first.type is T.RESET
    snapshot = []
    for event in stream:
        if event.type is T.SYNCED:
            break
        snapshot.append(event.process)
    assert snapshot == _by_revision(defined)
    stream.close()


def test_a_slow_watcher_is_bounded_and_resumes_without_missing_a_state_change(tmp_path) -> None:
    import grpc

    from shards.convert import watch_event_from_proto
    from shards.processmanager.v1 import processmanager_pb2 as pb
    from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
    from tests.support.cluster import embedded_uri

    runs = 300  # enough messages to fill a 64 KB HTTP/2 window several times
    small = Cluster(embedded_uri(tmp_path), watcher_max_pending_states=8)
    try:
        small.start_controller()
        small.start_worker(capacity=8)
        client = small.client
        client.define_processes("farm")
        assert small.controller is not None
        hub = small.controller.controller.hub
        # No BDP probing: the window stays at 64 KB instead of growing to hold every message.
        with grpc.insecure_channel(small.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
            # A raw stream that we stop reading: transport buffers fill, then the controller's.
            stream = pb_grpc.ProcessControllerStub(channel).WatchProcesses(
                pb.WatchProcessesRequest(scope_id="farm")
            )
            assert watch_event_from_proto(next(iter(stream))).type is T.SNAPSHOT
            peak = 0
            for _ in range(runs):
                client.wait_run(client.launch_process("farm", "quick").run_id, 10)
                peak = max([peak, *(w.pending_count for ws in hub._by_scope.values() for w in ws)])
            assert peak <= 8 + 20  # 8 state changes + at most one progress entry per process
            received: list[WatchEvent] = []
            try:
                for message in stream:
                    received.append(watch_event_from_proto(message))
                raise AssertionError("the slow watcher was never cut off")
            except grpc.RpcError as error:
                assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                details = error.details() or ""
                assert "resume from revision" in details
                resume_from = int(details.rsplit(" ", 1)[1])
        assert resume_from == max(e.revision for e in received if e.type is not T.SNAPSHOT)
        resumed = _changes_after(small, resume_from)
        seen = [e for e in received if e.type is T.CHANGED] + resumed
        quick_states = [e.process.state for e in seen if e.process and e.process.process_id == "quick"]
        assert _dedupe(quick_states) == [S.SCHEDULED, S.RUNNING, S.DONE] * runs
    finally:
        small.close()


def _dedupe(states: list[ProcessState]) -> list[ProcessState]:
    out: list[ProcessState] = []
    for state in states:
        if not out or out[-1] is not state:
            out.append(state)
    return out


def test_a_watch_from_before_the_pruned_journal_starts_over(tmp_path) -> None:
    from tests.support.cluster import embedded_uri

    small = Cluster(embedded_uri(tmp_path), journal_keep=3, journal_prune_interval_s=0.05)
    try:
        small.start_controller()
        small.start_worker()
        client = small.client
        client.define_processes("farm")  # 15 journal entries, of which 3 are kept
        client.wait_run(client.launch_process("farm", "quick").run_id, 10)

        def first_event_from_revision_1() -> WatchEventType:
            stream = client.watch_processes("farm", from_revision=1, resume=False)
            try:
                return next(stream).type
            finally:
                stream.close()

        assert_eventually(lambda: first_event_from_revision_1() is T.RESET)
        store = small.make_store()
        small.run(store.open())
        try:
            # The pruner runs every 50 ms: the run's last entries may be newer than its last round.
            assert_eventually(lambda: len(small.run(store.journal_since(0, 100))) == 3)
        finally:
            small.run(store.close())
    finally:
        small.close()


def test_a_watch_that_starts_before_the_watchers_hear_of_a_commit_gets_it_once() -> None:
    """The committed view moves at once; the watchers hear on the loop's next turn (after the callers)."""

    async def scenario() -> None:
        async with leading_controller() as controller:
            fanned_out: list[int] = []
            fan_out = controller.hub.fan_out

            def recorded_fan_out(changes: Iterable[Change]) -> None:
                changes = list(changes)
                fanned_out.extend(c.revision for c in changes)
                fan_out(changes)

            controller.hub.fan_out = recorded_fan_out  # type: ignore[method-assign]
            first = await controller.launch(LaunchRequest("s", "p1", definition=ProcessInfo("p1")))
            watch = controller.watch(ProcessFilter("s"), 0)
            opening = [await watch.__anext__(), await watch.__anext__()]
            assert first.process.revision not in fanned_out  # the watch began in between
            assert [(e.type, e.process and e.process.process_id) for e in opening] == [
                (T.SNAPSHOT, "p1"),
                (T.SYNCED, None),
            ]
            second = await controller.launch(LaunchRequest("s", "p2", definition=ProcessInfo("p2")))
            event = await asyncio.wait_for(watch.__anext__(), 5)
            assert (event.type, event.revision) == (T.CHANGED, second.process.revision)
            assert event.process is not None and event.process.process_id == "p2"
            assert first.process.revision in fanned_out
            await cast(AsyncGenerator[WatchEvent, None], watch).aclose()

    asyncio.run(scenario())
