"""Unit: the life cycle table and the transition functions."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from shards.models import ProcessRecord, Progress, Run
from shards.states import (
    ACTIVE_STATES,
    END_STATES,
    TRANSITIONS,
    IllegalTransition,
    ProcessState,
    can_transition,
    check_transition,
)
from shards_controller import transitions

S = ProcessState

LEGAL = {
    (S.IDLE, S.SCHEDULED),
    (S.SCHEDULED, S.RUNNING),
    (S.SCHEDULED, S.STOPPED),
    (S.SCHEDULED, S.FAILED),
    (S.RUNNING, S.DONE),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.STOP_REQUESTED),
    (S.RUNNING, S.STOPPED),
    (S.RUNNING, S.LOST),
    (S.RUNNING, S.SCHEDULED),
    (S.STOP_REQUESTED, S.STOPPING),
    (S.STOP_REQUESTED, S.STOPPED),
    (S.STOP_REQUESTED, S.FAILED),
    (S.STOP_REQUESTED, S.LOST),
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.FAILED),
    (S.STOPPING, S.LOST),
    (S.DONE, S.SCHEDULED),
    (S.FAILED, S.SCHEDULED),
    (S.STOPPED, S.SCHEDULED),
    (S.LOST, S.SCHEDULED),
    # a dismiss returns an ended process to idle (the original's dismissProcessMessages)
    (S.DONE, S.IDLE),
    (S.FAILED, S.IDLE),
    (S.STOPPED, S.IDLE),
    (S.LOST, S.IDLE),
}


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL))
def test_every_legal_transition_is_allowed(old: ProcessState, new: ProcessState) -> None:
    assert can_transition(old, new)
    check_transition(old, new)


ILLEGAL = sorted(set(itertools.product(S, S)) - LEGAL)


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_every_other_transition_is_refused(old: ProcessState, new: ProcessState) -> None:
    assert not can_transition(old, new)
    with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
        check_transition(old, new)


def test_the_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == set(S)
    assert {pair for old, news in TRANSITIONS.items() for pair in ((old, n) for n in news)} == LEGAL


def test_active_and_end_states() -> None:
    assert {S.SCHEDULED, S.RUNNING, S.STOP_REQUESTED, S.STOPPING} == ACTIVE_STATES
    assert {S.DONE, S.FAILED, S.STOPPED, S.LOST} == END_STATES
    assert all(s.is_active for s in ACTIVE_STATES) and not any(s.is_active for s in END_STATES)
    # an end state can only go back to scheduled (a relaunch) or to idle (a dismiss)
    assert all(TRANSITIONS[s] == {S.SCHEDULED, S.IDLE} for s in END_STATES)


def test_proto_numbers_round_trip_and_unknown_numbers_are_refused() -> None:
    assert [ProcessState.from_proto(s.proto_value) for s in S] == list(S)
    with pytest.raises(ValueError, match="unknown process state number 42"):
        ProcessState.from_proto(42)


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _scheduled() -> tuple[ProcessRecord, Run]:
    record = ProcessRecord("scope", "p", name="P", error="old error", progress=Progress("old", 0.9))
    run = Run("run-1", "scope", "p", created_at=T0)
    return transitions.schedule(record, run), run


def test_schedule_clears_the_previous_run_messages() -> None:
    record, _run = _scheduled()
    assert record.state is S.SCHEDULED
    assert record.run_id == "run-1"
    assert record.error == "" and record.progress == Progress()


def test_a_relaunch_clears_the_previous_runs_status_as_the_original_does() -> None:
    for state in (S.DONE, S.FAILED, S.STOPPED, S.LOST):
        record, run = _scheduled()
        record, run = transitions.start(record, run, "w1", T0)
        record, run = transitions.end(record, run, state, T0 + timedelta(seconds=5), error="boom")
        assert record.duration is not None
        again = transitions.schedule(record, Run("run-2", "scope", "p", created_at=T0))
        assert (again.done_at, again.stopped_at, again.failed_at, again.duration) == (None,) * 4
        assert again.error == "" and again.run_id == "run-2"
        assert again.running_since == T0  # kept until the new run starts (ours: kept after the end)


def test_progress_is_starting_at_start_and_complete_at_success() -> None:
    record, run = _scheduled()
    record, run = transitions.start(record, run, "w1", T0)
    assert record.progress == run.progress == Progress("Starting…", 0.0)
    done, ended = transitions.end(record, run, S.DONE, T0, progress=Progress("counted", 0.4))
    assert done.progress == ended.progress == Progress("counted", 1.0)  # the code's last word, at 100 %
    silent, _ = transitions.end(record, run, S.DONE, T0)
    assert silent.progress == Progress("All done", 1.0)  # the code reported nothing
    for state in (S.FAILED, S.STOPPED, S.LOST):
        kept, _ = transitions.end(record, run, state, T0, progress=Progress("half", 0.5))
        assert kept.progress == Progress("half", 0.5)


def test_dismiss_returns_an_ended_process_to_idle_and_clears_its_status() -> None:
    for state in (S.DONE, S.FAILED, S.STOPPED, S.LOST):
        record, run = _scheduled()
        record, run = transitions.start(record, run, "w1", T0)
        record, run = transitions.end(record, run, state, T0 + timedelta(seconds=1), error="boom")
        dismissed = transitions.dismiss(record)
        assert dismissed.state is S.IDLE and dismissed.error == "" and dismissed.progress == Progress()
        assert (dismissed.done_at, dismissed.stopped_at, dismissed.failed_at, dismissed.duration) == (
            None,
        ) * 4
        assert dismissed.run_id == "run-1" and dismissed.running_since == T0
    active, _ = _scheduled()
    with pytest.raises(IllegalTransition):
        transitions.dismiss(active)


def test_a_run_through_its_life_stamps_the_seeds_timestamps() -> None:
    record, run = _scheduled()
    record, run = transitions.start(record, run, "w1", T0)
    assert record.running_since == T0 and run.started_at == T0 and record.worker_id == "w1"
    record, run = transitions.end(
        record, run, S.DONE, T0 + timedelta(seconds=3), progress=Progress("ok", 1.0)
    )
    assert record.state is S.DONE and run.state is S.DONE
    assert record.done_at == T0 + timedelta(seconds=3)
    assert record.duration == timedelta(seconds=3)
    assert record.progress == Progress("ok", 1.0) and run.ended_at == record.done_at


def test_failure_and_loss_stamp_failed_at_with_the_error() -> None:
    for state in (S.FAILED, S.LOST):
        record, run = _scheduled()
        record, run = transitions.start(record, run, "w1", T0)
        record, run = transitions.end(record, run, state, T0 + timedelta(seconds=1), error="boom")
        assert record.state is state and record.failed_at is not None and record.error == "boom"
        assert record.done_at is None


def test_a_normal_return_after_a_stop_request_ends_stopped() -> None:
    record, run = _scheduled()
    record, run = transitions.start(record, run, "w1", T0)
    record, run = transitions.request_stop(record, run)
    record, run = transitions.stopping(record, run)
    record, run = transitions.end(record, run, S.DONE, T0 + timedelta(seconds=2))
    assert record.state is S.STOPPED and record.stopped_at is not None and run.state is S.STOPPED


def test_an_illegal_move_raises_and_changes_nothing() -> None:
    record, run = _scheduled()
    with pytest.raises(IllegalTransition):
        transitions.request_stop(record, run)  # scheduled -> stop_requested is not a move
    assert record.state is S.SCHEDULED
