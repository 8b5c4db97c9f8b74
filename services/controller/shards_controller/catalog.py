"""The catalog: which processes a scope has (define, purge) and their messages (dismiss).

Definitions come from a worker that serves the scope (``DescribeScope``);
defining writes only what changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

import grpc

from shards.convert import info_from_proto
from shards.errors import FailedPrecondition, Unavailable
from shards.models import ProcessFilter, ProcessInfo, ProcessRecord, Run
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.validation import check_info
from shards_controller import transitions
from shards_controller.state import State
from shards_controller.watch import Change
from shards_controller.workers import WorkerPool

log = logging.getLogger(__name__)


class NoWorkerServes(FailedPrecondition):
    """No live worker serves the scope: its processes cannot be asked for."""


class Catalog:
    def __init__(self, state: State, pool: WorkerPool) -> None:
        self._state = state
        self._pool = pool

    async def define_processes(
        self, scope_id: str, only_if_missing: bool, clean: bool
    ) -> list[ProcessRecord]:
        self._state.require_leader()
        if not (only_if_missing and self._state.working.get(scope_id)):
            await self.define(scope_id, await self.describe_scope(scope_id), clean)
        records, _ = self._state.list_processes(ProcessFilter(scope_id))
        return records

    async def describe_scope(self, scope_id: str) -> list[ProcessInfo]:
        """The definitions of a scope, from the first live worker serving it that answers.

        When they cannot be known, says why: FailedPrecondition when no live
        worker serves the scope, or when the app's own callback raised (its
        exception type and message); Unavailable when every worker serving it
        failed to answer in time (the caller may retry).
        """
        entries = self._pool.any_serving(scope_id)
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

    async def define(self, scope_id: str, infos: Iterable[ProcessInfo], clean: bool) -> None:
        state = self._state
        current = dict(state.working.get(scope_id, {}))
        wanted = {info.process_id: info for info in infos}
        changes: list[tuple[Change, Run | None]] = []
        for process_id, info in wanted.items():
            record = current.get(process_id)
            if record is None:
                record = ProcessRecord(scope_id, process_id)
            elif record.info == info:
                continue
            defined = replace(
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
            changes.append((state.stage(defined), None))
        if clean:
            for process_id, record in current.items():
                if process_id not in wanted and not record.state.is_active:
                    changes.append((state.stage_removal(scope_id, process_id), None))
        await state.commit_all(changes)

    async def purge_processes(self, scope_id: str) -> int:
        state = self._state
        state.require_leader()
        records = state.working.get(scope_id, {})
        active = sorted(pid for pid, record in records.items() if record.state.is_active)
        if active:
            raise FailedPrecondition(
                f"scope {scope_id!r} has active processes ({', '.join(active[:5])}); stop them before purging"
            )
        changes: list[tuple[Change, Run | None]] = [
            (state.stage_removal(scope_id, pid), None) for pid in sorted(records)
        ]
        await state.commit_all(changes)
        return len(changes)

    async def dismiss_messages(self, scope_id: str, process_id: str) -> ProcessRecord:
        state = self._state
        state.require_leader()
        record = state.require_record(scope_id, process_id)
        if record.state.is_active:
            raise FailedPrecondition(
                f"process {process_id!r} is {record.state}; its messages can be dismissed once it has ended"
            )
        change = state.stage(transitions.dismiss(record))
        await state.commit(change)
        assert change.record is not None
        return change.record
