"""Write and run process code: definitions, the context it gets, and the worker server.

    from shards_worker import ProcessDefinition, WorkerApp

    def count_sheep(context):
        for n in range(1, 101):
            if not context.should_continue():
                return
            context.report_progress(f"{n} sheep", n / 100)

    app = WorkerApp.of([ProcessDefinition("count-sheep", count_sheep, name="Count sheep")])

Run it with ``shards worker mymodule:app --controller localhost:50051``.
"""

from shards.models import RetryPolicy
from shards.states import ProcessState
from shards_worker.context import AsyncProcessContext, ChildProcessFailed, ProcessContext, ProcessStopped
from shards_worker.definition import ProcessDefinition, WorkerApp, process
from shards_worker.server import WorkerSecurity, WorkerServer, run_worker

__all__ = [
    "AsyncProcessContext",
    "ChildProcessFailed",
    "ProcessContext",
    "ProcessDefinition",
    "ProcessState",
    "ProcessStopped",
    "RetryPolicy",
    "WorkerApp",
    "WorkerSecurity",
    "WorkerServer",
    "process",
    "run_worker",
]
