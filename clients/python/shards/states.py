"""The life cycle of a process: its states and the transitions between them.

One table says which transitions are legal; the controller consults it before
every change, so an illegal change is a bug caught at the source rather than a
corrupt record found later.
"""

from __future__ import annotations

import enum


class ProcessState(enum.StrEnum):
    """The state of a process record or a run (the seeds' states, plus ``lost``)."""

    IDLE = "idle"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    FAILED = "failed"
    STOP_REQUESTED = "stop_requested"
    STOPPING = "stopping"
    STOPPED = "stopped"
    DONE = "done"
    LOST = "lost"

    @property
    def is_active(self) -> bool:
        """True while a run is under way (launch and purge are refused)."""
        return self in ACTIVE_STATES

    @property
    def is_end(self) -> bool:
        """True for the states a run ends in."""
        return self in END_STATES

    @property
    def proto_value(self) -> int:
        """The ``ProcessState`` enum number on the wire."""
        return _PROTO_NUMBERS[self]

    @classmethod
    def from_proto(cls, number: int) -> ProcessState:
        """The state for a wire enum number; ValueError for unknown numbers."""
        try:
            return _FROM_PROTO[number]
        except KeyError:
            raise ValueError(f"unknown process state number {number}") from None


ACTIVE_STATES = frozenset(
    {ProcessState.SCHEDULED, ProcessState.RUNNING, ProcessState.STOP_REQUESTED, ProcessState.STOPPING}
)
END_STATES = frozenset({ProcessState.FAILED, ProcessState.STOPPED, ProcessState.DONE, ProcessState.LOST})

_PROTO_NUMBERS = {
    ProcessState.IDLE: 1,
    ProcessState.SCHEDULED: 2,
    ProcessState.RUNNING: 3,
    ProcessState.FAILED: 4,
    ProcessState.STOP_REQUESTED: 5,
    ProcessState.STOPPING: 6,
    ProcessState.STOPPED: 7,
    ProcessState.DONE: 8,
    ProcessState.LOST: 9,
}
_FROM_PROTO = {number: state for state, number in _PROTO_NUMBERS.items()}

_S = ProcessState
# After a stop was requested a normal return means "stopped", never "done":
# the user asked for a stop and the code honoured it. An exception is still a
# failure, so its error is not hidden.
TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    _S.IDLE: frozenset({_S.SCHEDULED}),
    # scheduled -> stopped: stopped before any worker took it;
    # scheduled -> failed: no worker knows the process.
    _S.SCHEDULED: frozenset({_S.RUNNING, _S.STOPPED, _S.FAILED}),
    # running -> scheduled: the worker refused the run before starting it
    # (full, shutting down), so it goes back to the queue.
    # running -> stopped: the code gave up because a child it waited for was
    # stopped (run_process without survive_stopping).
    _S.RUNNING: frozenset({_S.DONE, _S.FAILED, _S.STOP_REQUESTED, _S.STOPPED, _S.LOST, _S.SCHEDULED}),
    _S.STOP_REQUESTED: frozenset({_S.STOPPING, _S.STOPPED, _S.FAILED, _S.LOST}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED, _S.LOST}),
    # an end state goes back to scheduled (a relaunch) or to idle (a dismiss,
    # as the original's dismissProcessMessages does).
    _S.DONE: frozenset({_S.SCHEDULED, _S.IDLE}),
    _S.FAILED: frozenset({_S.SCHEDULED, _S.IDLE}),
    _S.STOPPED: frozenset({_S.SCHEDULED, _S.IDLE}),
    _S.LOST: frozenset({_S.SCHEDULED, _S.IDLE}),
}


class IllegalTransition(ValueError):
    """A state change that the life cycle does not allow."""

    def __init__(self, old: ProcessState, new: ProcessState) -> None:
        super().__init__(f"illegal transition {old} -> {new}")
        self.old = old
        self.new = new


def can_transition(old: ProcessState, new: ProcessState) -> bool:
    """Whether ``old -> new`` is a legal change."""
    return new in TRANSITIONS[old]


def check_transition(old: ProcessState, new: ProcessState) -> None:
    """Raise IllegalTransition unless ``old -> new`` is legal."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(old, new)
