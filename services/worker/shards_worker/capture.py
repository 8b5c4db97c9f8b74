"""A run's ``print`` and ``logging`` output, kept as lines of its log (``capture_output``).

``install()`` (once per process) puts a router in front of ``sys.stdout`` and
``sys.stderr`` and a handler on the root logger. Both send a line to the log
of the run whose code wrote it (``capturing(log)`` says which, in a context
variable: the run's thread or task; in an isolated run's own OS process, for
the whole process) and pass it on as before, so the worker's console still
shows it. Output of anything else (the worker itself) goes on as it did.
Lines are whole lines: a ``print`` without a newline waits for the next one
(or the end of the run).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TextIO, TypeVar

Log = Callable[[str], None]
T = TypeVar("T")

_CAPTURE: contextvars.ContextVar[Log | None] = contextvars.ContextVar("shards_capture", default=None)
_process_log: Log | None = None  # an isolated run: the whole process is the run
_lock = threading.Lock()
FORMAT = "%(levelname)s %(name)s: %(message)s"


def _current() -> Log | None:
    return _CAPTURE.get() or _process_log


class _Router(io.TextIOBase):
    """Stands for sys.stdout or sys.stderr: a capturing run's lines go to its log too."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._partial: dict[int, str] = {}  # by log: what was written after its last newline

    def write(self, text: str) -> int:
        log = _current()
        if log is not None and text:
            key = id(log)
            pending = self._partial.pop(key, "") + text
            *lines, rest = pending.split("\n")
            for line in lines:
                log(line)
            if rest:
                self._partial[key] = rest
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def end(self, log: Log) -> None:
        """The run is over: its unfinished line goes to its log."""
        rest = self._partial.pop(id(log), "")
        if rest:
            log(rest)

    def __getattr__(self, name: str) -> object:  # encoding, fileno, isatty...: the stream's own
        return getattr(self._stream, name)


class _Handler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        log = _current()
        if log is not None:
            with contextlib.suppress(Exception):
                log(self.format(record))


def install() -> None:
    """Idempotent; again after someone put other streams in place (a test harness)."""
    with _lock:
        if not isinstance(sys.stdout, _Router):
            sys.stdout = _Router(sys.stdout)
        if not isinstance(sys.stderr, _Router):
            sys.stderr = _Router(sys.stderr)
        root = logging.getLogger()
        if not any(isinstance(handler, _Handler) for handler in root.handlers):
            root.addHandler(_Handler())


@contextlib.contextmanager
def capturing(log: Log | None, whole_process: bool = False) -> Iterator[None]:
    """Within: what the code prints or logs is also a line of ``log`` (None: nothing captured)."""
    global _process_log
    if log is None:
        yield
        return
    install()
    token = _CAPTURE.set(log)
    if whole_process:
        _process_log = log
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if isinstance(stream, _Router):
                stream.end(log)
        _CAPTURE.reset(token)
        if whole_process:
            _process_log = None


async def captured(awaitable: Awaitable[T], log: Log | None) -> T:
    """``awaitable`` awaited with its output captured (an ``async def`` run: its task is its own)."""
    with capturing(log):
        return await awaitable
