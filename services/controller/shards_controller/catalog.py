"""The catalog: which processes a scope has (define, reset, purge, the first view) and dismiss.

Definitions come from a worker that serves the scope (``DescribeScope``).
As in the original, a define keeps the catalog true: records the workers no
longer list go. An active one goes once its run has ended (``retiring``,
which ``Ends`` consults). With ``clean`` every inactive record is wiped,
statuses too, before the scope is defined again. Defining writes only what
changed, in one commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace

import grpc

from shards.convert import info_from_proto
from shards.errors import FailedPrecondition, Unavailable
from shards.models import DefineResult, ProcessFilter, ProcessInfo, ProcessRecord, Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.validation import check_info
from shards_controller import transitions
from shards_controller.state import State
from shards_controller.watch import Change
from shards_controller.workers import WorkerPool

log = logging.getLogger(__name__)


class NoWorkerServes(FailedPrecondition):
    """No live worker serves the scope: its processes cannot be asked for."""


def _defined(record: ProcessRecord, info: ProcessInfo) -> ProcessRecord:
    return replace(
        record,
        name=info.name,
        detail_level=info.detail_level,
        warning=info.warning,
        special=info.special,
        timeout_s=info.timeout_s,
        retry=info.retry,
        schedule=info.schedule,
        schedule_timezone=info.schedule_timezone,
    )


class Catalog:
    def __init__(self, state: State, pool: WorkerPool) -> None:
        self._state = state
        self._pool = pool
        # (scope, process) of active records no workers list any more: removed when their run ends.
        self.retiring: set[tuple[str, str]] = set()
        self._retiring_term = 0  # a controller that led again forgets what it found in an earlier term
        self._first_views: dict[str, asyncio.Task[None]] = {}

    async def define_processes(self, scope_id: str, only_if_missing: bool, clean: bool) -> DefineResult:
        state = self._state
        state.require_leader()
        if only_if_missing and state.working.get(scope_id):
            return DefineResult(self._records(scope_id))
        infos = await self.describe_scope(scope_id)
        return await self.define(scope_id, infos, clean)

    async def reset_processes(self, scope_id: str) -> DefineResult:
        """Wipe every record of the scope and define it again (the original's "Reset processes")."""
        state = self._state
        state.require_leader()
        self._refuse_active(scope_id, "resetting")
        infos = await self.describe_scope(scope_id)
        self._refuse_active(scope_id, "resetting")  # a launch may have come while the worker answered
        return await self.define(scope_id, infos, clean=True)

    def _refuse_active(self, scope_id: str, doing: str) -> None:
        records = self._state.working.get(scope_id, {})
        active = sorted(pid for pid, record in records.items() if record.state.is_active)
        if active:
            more = f" and {len(active) - 5} more" if len(active) > 5 else ""
            raise FailedPrecondition(
                f"scope {scope_id!r} has active processes ({', '.join(active[:5])}{more}); "
                f"stop them or wait for them to end before {doing}"
            )

    def _records(self, scope_id: str) -> tuple[ProcessRecord, ...]:
        records, _ = self._state.list_processes(ProcessFilter(scope_id))
        return tuple(records)

    async def describe_scope(self, scope_id: str) -> list[ProcessInfo]:
        """The definitions of a scope, from the first live worker serving it that answers.

        When they cannot be known, says why: FailedPrecondition when no live
        worker serves the scope, or when the app's own callback raised (its
        exception type and message); Unavailable when every worker serving it
        failed to answer in time (the caller may retry).
        """
        entries = self._pool.any_serving(scope_id)
        if not entries and self._pool.reconnecting(scope_id):
            # Right after a take-over the workers known from the store have not
            # spoken to this leader yet: retryable, not a missing worker.
            raise Unavailable(
                f"the workers serving scope {scope_id!r} are still reconnecting to this controller "
                "after a take-over; retry in a moment"
            )
        if not entries:
            raise NoWorkerServes(
                f"no live worker serves scope {scope_id!r}, so its processes cannot be known "
                "(start a worker that serves it)"
            )
        timeout_s = self._state.config.dispatch_timeout_s
        failures: list[str] = []
        for entry in entries:
            try:
                reply = await entry.stub.DescribeScope(
                    pb.DescribeScopeRequest(scope_id=scope_id), timeout=timeout_s
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.FAILED_PRECONDITION:
                    # The app's answer (its get_scope_data or get_process_list raised).
                    raise FailedPrecondition(
                        f"scope {scope_id!r} cannot be described: {error.details()}"
                    ) from None
                if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                    failure = f"worker {entry.worker_id} did not answer within {timeout_s:g} s"
                else:
                    failure = f"worker {entry.worker_id} failed: {error.code().name}: {error.details()}"
                log.warning("could not describe scope %s: %s", scope_id, failure)
                failures.append(failure)
                continue
            infos = [info_from_proto(definition) for definition in reply.processes]
            for info in infos:  # a worker's definition that makes no sense defines nothing
                check_info(info, f"worker {entry.worker_id}'s definition of {info.process_id!r}")
            return infos
        raise Unavailable(f"the processes of scope {scope_id!r} cannot be known now: {'; '.join(failures)}")

    async def define(self, scope_id: str, infos: Iterable[ProcessInfo], clean: bool) -> DefineResult:
        """Make the scope's records those of ``infos``, in one commit; say what changed."""
        state = self._state
        current = dict(state.working.get(scope_id, {}))
        wanted = {info.process_id: info for info in infos}
        changes: list[tuple[Change, Run | None]] = []
        added: list[str] = []
        removed: list[str] = []
        kept: list[str] = []
        wiped = 0
        for process_id, stale in sorted(current.items()):
            if process_id in wanted:
                continue
            if stale.state.is_active:
                kept.append(process_id)
            else:
                removed.append(process_id)
                if clean:
                    wiped += 1
                changes.append((state.stage_removal(scope_id, process_id), None))
        for process_id, info in wanted.items():
            record = current.get(process_id)
            if record is None:
                added.append(process_id)
                changes.append((state.stage(_defined(ProcessRecord(scope_id, process_id), info)), None))
            elif clean and not record.state.is_active:
                wiped += 1  # statuses wiped: a fresh record, in one change rather than a removal and an add
                changes.append((state.stage(_defined(ProcessRecord(scope_id, process_id), info)), None))
            elif record.info != info:
                changes.append((state.stage(_defined(record, info)), None))
        if self._retiring_term != state.term:
            self.retiring, self._retiring_term = set(), state.term
        self.retiring = {key for key in self.retiring if key[0] != scope_id}
        self.retiring.update((scope_id, process_id) for process_id in kept)
        await state.commit_all(changes)
        return DefineResult(self._records(scope_id), tuple(sorted(added)), tuple(removed), tuple(kept), wiped)

    async def first_view(self, scope_id: str) -> None:
        """The original's publication defines a scope (only if missing) before it shows it: so do we.

        Only for a scope with no records that a live worker serves; concurrent
        first views share one define; a failure leaves the scope as it was
        (the view answers empty, and the next one tries again).
        """
        state = self._state
        if state.working.get(scope_id):
            if not state.committed.get(scope_id):
                # Staged by a define (another first view, a launch) still being
                # written: answer with its records, not with the empty scope.
                await state.committed_view()
            return
        if not self._pool.any_serving(scope_id):
            return
        task = self._first_views.get(scope_id)
        if task is None:
            task = self._first_views[scope_id] = asyncio.ensure_future(self._define_first(scope_id))
            task.add_done_callback(lambda _: self._first_views.pop(scope_id, None))
        await asyncio.shield(task)

    async def _define_first(self, scope_id: str) -> None:
        try:
            infos = await self.describe_scope(scope_id)
            if not self._state.working.get(scope_id):
                await self.define(scope_id, infos, clean=False)
        except Exception as error:  # the view still answers, with what there is
            log.warning("defining scope %s on its first view failed: %s", scope_id, error)

    def run_ended(self, run: Run) -> None:
        """A run ended (``Ends`` says so): its record goes if a define found it no longer listed."""
        if run.key in self.retiring and self._retiring_term == self._state.term:
            self._state.spawn(self._retire(run))

    async def _retire(self, run: Run) -> None:
        state = self._state
        record = state.record(run.scope_id, run.process_id)
        if run.key not in self.retiring or record is None or record.state.is_active:
            return  # defined again meanwhile, or launched again with a definition of its own
        if record.next_attempt_at is not None:
            return  # a retry is planned: the record goes when that attempt ends
        self.retiring.discard(run.key)
        try:
            await state.commit(state.stage_removal(run.scope_id, run.process_id))
        except Exception as error:  # the next define removes it
            log.warning("could not remove %s of scope %s: %s", run.process_id, run.scope_id, error)

    async def purge_processes(self, scope_id: str) -> int:
        state = self._state
        state.require_leader()
        self._refuse_active(scope_id, "purging")
        records = state.working.get(scope_id, {})
        changes: list[tuple[Change, Run | None]] = [
            (state.stage_removal(scope_id, pid), None) for pid in sorted(records)
        ]
        self.retiring = {key for key in self.retiring if key[0] != scope_id}
        await state.commit_all(changes)
        return len(changes)

    async def dismiss_messages(self, scope_id: str, process_id: str) -> ProcessRecord:
        state = self._state
        state.require_leader()
        record = state.require_record(scope_id, process_id)
        if record.state.is_active:
            raise FailedPrecondition(
                f"process {process_id!r} is {record.state}; it can be dismissed once it has ended"
            )
        change = state.stage(transitions.dismiss(record))
        await state.commit(change)
        assert change.record is not None
        return change.record
