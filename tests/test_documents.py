"""Models <-> store documents (``store.documents``), a pure unit test: a record's and a run's
documents leave out the fields at their default and read back the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shards.models import ProcessRecord, Progress, RetryPolicy, Run
from shards.states import ProcessState
from shards_controller.store.documents import (
    _full_record_doc,
    record_from_doc,
    record_to_doc,
    run_from_doc,
    run_to_doc,
)

T0 = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


def test_a_records_document_leaves_out_its_defaults() -> None:
    defined = ProcessRecord(scope_id="s1", process_id="p1", revision=7)
    assert record_to_doc(defined) == {"scope_id": "s1", "process_id": "p1", "state": "idle", "revision": 7}
    assert record_from_doc(record_to_doc(defined)) == defined


def test_a_value_that_only_looks_like_a_default_is_kept() -> None:
    # 0.0 s is a duration (not "none"); 0 tries, a detail level of 0 and a rate of 0 with a message too.
    record = ProcessRecord(
        scope_id="s1",
        process_id="p1",
        state=ProcessState.DONE,
        duration=timedelta(0),
        detail_level=0,
        progress=Progress("halfway", 0.0),
        done_at=T0,
        retry=RetryPolicy(max_attempts=2),
        revision=3,
    )
    doc = record_to_doc(record)
    assert doc["duration_s"] == 0.0 and doc["detail_level"] == 0 and doc["progress"]["message"] == "halfway"
    assert record_from_doc(doc) == record


def test_an_earlier_versions_full_document_reads_the_same() -> None:
    record = ProcessRecord(scope_id="s1", process_id="p1", name="P", run_id="r1", revision=2)
    full = _full_record_doc(record)  # every field, as earlier versions wrote it
    assert len(full) > len(record_to_doc(record)) + 20
    assert record_from_doc(full) == record


def test_a_runs_document_leaves_out_its_defaults_and_reads_back_the_same() -> None:
    launched = Run(run_id="r1", scope_id="s1", process_id="p1", idempotency_key="k", created_at=T0)
    doc = run_to_doc(launched)
    assert set(doc) == {"run_id", "scope_id", "process_id", "state", "idempotency_key", "created_at"}
    assert run_from_doc(doc) == launched
    ended = Run(
        run_id="r2",
        scope_id="s1",
        process_id="p1",
        state=ProcessState.FAILED,
        error="boom",
        attempt=0,
        log_tail=("a", "b"),
        timeout_s=0.0,
        created_at=T0,
        ended_at=T0,
    )
    assert run_from_doc(run_to_doc(ended)) == ended
