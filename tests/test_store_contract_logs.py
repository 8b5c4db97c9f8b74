"""The store contract for whole run logs and run retention, on every store (see test_store_contract).

Log chunks are keyed by run and chunk number; a chunk written again replaces
the one stored; dropped chunks go; every write is fenced like the others.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from shards.states import ProcessState
from shards_controller.store import LOG_CHUNK_LINES, LogChunk, LogMeta, LogWrite, StaleTerm, Store, WriteBatch
from tests.test_store_contract import T0, OpenStore, open_store, run, store
from tests.test_store_contract_leadership import deposed_leader

__all__ = ["open_store", "store"]  # the fixtures, shared with test_store_contract

C = LOG_CHUNK_LINES


def lines(first: int, count: int) -> tuple[str, ...]:
    return tuple(f"line {n}" for n in range(first, first + count))


async def _leader(store: Store) -> int:
    lease = await store.acquire_lease("a", "a:1", timedelta(seconds=30))
    assert lease is not None
    return lease.term


async def test_log_chunks_and_meta_round_trip(store: Store) -> None:
    term = await _leader(store)
    assert await store.get_log_meta("r1") is None
    assert await store.read_log_chunks("r1", [0, 1]) == []
    meta = LogMeta("r1", C + 10, 0, (2000, 120))
    await store.write_logs(
        LogWrite(chunks=[LogChunk("r1", 0, lines(0, C)), LogChunk("r1", 1, lines(C, 10))], metas=[meta]), term
    )
    assert await store.get_log_meta("r1") == meta
    assert await store.read_log_chunks("r1", [1, 0, 7]) == [
        LogChunk("r1", 1, lines(C, 10)),
        LogChunk("r1", 0, lines(0, C)),
    ]
    # The partial last chunk, written again as it fills, replaces the one stored.
    grown = LogMeta("r1", C + 20, 0, (2000, 240))
    await store.write_logs(LogWrite(chunks=[LogChunk("r1", 1, lines(C, 20))], metas=[grown]), term)
    assert await store.read_log_chunks("r1", [1]) == [LogChunk("r1", 1, lines(C, 20))]
    assert await store.get_log_meta("r1") == grown
    assert grown.bytes == 2240
    # Another run's log is its own.
    assert await store.get_log_meta("r2") is None
    assert await store.read_log_chunks("r2", [0]) == []


async def test_log_chunks_dropped_past_the_cap_are_deleted(store: Store) -> None:
    term = await _leader(store)
    chunks = [LogChunk("r1", n, lines(n * C, C)) for n in range(3)]
    await store.write_logs(LogWrite(chunks=chunks, metas=[LogMeta("r1", 3 * C, 0, (1, 1, 1))]), term)
    dropped = LogMeta("r1", 3 * C, 2 * C, (1,))
    await store.write_logs(LogWrite(metas=[dropped], dropped=[("r1", 0), ("r1", 1)]), term)
    assert await store.read_log_chunks("r1", [0, 1, 2]) == [chunks[2]]
    assert await store.get_log_meta("r1") == dropped


async def test_fencing_run_logs(open_store: OpenStore) -> None:
    a, b, old, new = await deposed_leader(open_store)
    await b.write_logs(
        LogWrite(chunks=[LogChunk("r1", 0, ("new",))], metas=[LogMeta("r1", 1, 0, (4,))]), new.term
    )
    with pytest.raises(StaleTerm):
        await a.write_logs(
            LogWrite(chunks=[LogChunk("r1", 0, ("old",))], metas=[LogMeta("r1", 1, 0, (4,))]), old.term
        )
    with pytest.raises(StaleTerm):
        await a.write_logs(LogWrite(dropped=[("r1", 0)]), old.term)
    assert await a.read_log_chunks("r1", [0]) == [LogChunk("r1", 0, ("new",))]
    assert await a.get_log_meta("r1") == LogMeta("r1", 1, 0, (4,))


async def test_ended_runs_before_and_delete_runs_with_their_logs_and_keys(store: Store) -> None:
    term = await _leader(store)
    old_done = run("r1", state=ProcessState.DONE, idempotency_key="k1", ended_at=T0)
    old_active = run("r2", state=ProcessState.RUNNING, process_id="p2")
    new_done = run("r3", state=ProcessState.DONE, created_at=T0 + timedelta(days=2), ended_at=T0)
    await store.write(WriteBatch(runs=[old_done, old_active, new_done]), term)
    for run_id in ("r1", "r2", "r3"):
        chunk = LogChunk(run_id, 0, ("a", "b"))
        await store.write_logs(LogWrite(chunks=[chunk], metas=[LogMeta(run_id, 2, 0, (4,))]), term)

    cutoff = T0 + timedelta(days=1)
    assert [r.run_id for r in await store.ended_runs_before(cutoff, 10)] == ["r1"]
    assert await store.ended_runs_before(cutoff, 0) == []
    assert await store.ended_runs_before(cutoff, 10, after="r1") == []

    await store.delete_runs([old_done], term)
    assert await store.get_run("r1") is None
    assert await store.find_run_by_idempotency_key("k1") is None
    assert await store.get_log_meta("r1") is None
    assert await store.read_log_chunks("r1", [0]) == []
    assert await store.ended_runs_before(cutoff, 10) == []
    # The others, and their logs, are untouched.
    assert await store.get_run("r2") == old_active
    assert await store.get_run("r3") == new_done
    assert await store.read_log_chunks("r3", [0]) == [LogChunk("r3", 0, ("a", "b"))]


async def test_ended_runs_before_pages_by_run_id(store: Store) -> None:
    term = await _leader(store)
    runs = [run(f"r{n}", process_id=f"p{n}", state=ProcessState.DONE, ended_at=T0) for n in (3, 1, 4, 2)]
    await store.write(WriteBatch(runs=runs), term)
    cutoff = T0 + timedelta(days=1)
    first = await store.ended_runs_before(cutoff, 3)
    assert [r.run_id for r in first] == ["r1", "r2", "r3"]
    assert [r.run_id for r in await store.ended_runs_before(cutoff, 3, after="r3")] == ["r4"]


async def test_a_runs_log_counts_round_trip(store: Store) -> None:
    term = await _leader(store)
    ended = run("r1", state=ProcessState.DONE, ended_at=T0, log_lines=3000, log_dropped=2048)
    await store.write(WriteBatch(runs=[ended]), term)
    assert await store.get_run("r1") == ended


async def test_delete_runs_never_deletes_an_active_run(store: Store) -> None:
    term = await _leader(store)
    active = run("r1", state=ProcessState.RUNNING)
    await store.write(WriteBatch(runs=[active]), term)
    await store.delete_runs([active], term)
    assert await store.get_run("r1") == active


async def test_fencing_delete_runs(open_store: OpenStore) -> None:
    a, b, old, new = await deposed_leader(open_store)
    done = run("r1", state=ProcessState.DONE, ended_at=T0)
    await b.write(WriteBatch(runs=[done]), new.term)
    with pytest.raises(StaleTerm):
        await a.delete_runs([done], old.term)
    assert await a.get_run("r1") == done
