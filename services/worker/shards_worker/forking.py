"""Starting an isolated run's OS process: a fork of multiprocessing's fork server.

The fork server is one clean, single-threaded process (no gRPC in use), started
once per worker with the child runtime and the app's module imported; each run
is a fork of it. Unlike multiprocessing's default, a run's process does not
import the worker's ``__main__`` again (the CLI, pytest, a script): the code
comes by reference from its own module, and a run starts in a few ms.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import threading
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import ForkServerContext, ForkServerProcess
from typing import Any

CONTEXT: ForkServerContext = multiprocessing.get_context("forkserver")
_lock = threading.Lock()
_preloaded = False
_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")


def warm_up(module: str = "") -> None:
    """Start the fork server if it is not running (blocking: a new interpreter starts).

    ``module`` (the app's) is imported in it ahead, if this is its first start.
    """
    global _preloaded
    with _lock:
        if not _preloaded:
            modules = ["shards_worker.isolated_child"]
            if module and module != "__main__":
                modules.append(module)
            CONTEXT.set_forkserver_preload(modules)
            _preloaded = True
        forkserver.ensure_running()


class _Popen(popen_forkserver.Popen):
    def _launch(self, process_obj: Any) -> None:
        # As multiprocessing's, minus the re-import of __main__ in the child.
        prep_data = spawn.get_preparation_data(process_obj._name)
        for key in _MAIN_KEYS:
            prep_data.pop(key, None)
        buf = io.BytesIO()
        popen_forkserver.set_spawning_popen(self)  # type: ignore[attr-defined]
        try:
            reduction.dump(prep_data, buf)
            reduction.dump(process_obj, buf)
        finally:
            popen_forkserver.set_spawning_popen(None)  # type: ignore[attr-defined]
        self.sentinel, w = forkserver.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        parent_w = os.dup(w)  # the child's sentinel of its parent, as in multiprocessing
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, self.sentinel))  # type: ignore[attr-defined]
        with open(w, "wb", closefd=True) as f:
            f.write(buf.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class RunProcess(ForkServerProcess):
    """A ``multiprocessing`` process forked from the fork server, without ``__main__``."""

    @staticmethod
    def _Popen(process_obj: Any) -> _Popen:
        return _Popen(process_obj)


def warm_up_quietly(module: str = "") -> None:
    """``warm_up`` ahead of need: a failure here shows again, clearly, when a run starts."""
    with contextlib.suppress(Exception):  # the run's start reports it
        warm_up(module)
