"""The asyncio client. Every call returns models from ``shards.models``, never protobuf.

    async with AsyncClient("localhost:50051") as client:
        launched = await client.launch_process("demo", "count-sheep")
        async for event in client.watch_processes("demo"):
            ...

Given several controller addresses, it finds the leader by itself. Launches
carry an idempotency key (one is made when you give none), so a launch
retried across a take-over runs once.

Against a controller with auth on, give a token (and TLS off loopback)::

    AsyncClient("shards.example:50051", token="...", tls=TlsConfig(ca="ca.pem"))
    AsyncClient.from_env()  # SHARDS_CONTROLLER, SHARDS_TOKEN, SHARDS_TLS_CA, ...
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from shards._grpc.channel import MAX_RETRY_PAUSE_S, ControllerChannel
from shards._grpc.credentials import TlsConfig
from shards._grpc.launch_stream import LaunchStream
from shards.convert import (
    define_result_from_proto,
    identity_from_proto,
    record_from_proto,
    run_from_proto,
    schedule_from_proto,
    scope_summary_from_proto,
    watch_event_from_proto,
    worker_from_proto,
)
from shards.errors import ResourceExhausted, ShardsError, Unavailable, from_rpc_error
from shards.models import (
    DefineResult,
    Identity,
    LaunchResult,
    ProcessRecord,
    Run,
    ScheduleInfo,
    ScopeSummary,
    WatchEvent,
    WatchEventType,
    WorkerInfo,
)
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards.processmanager.v1 import processmanager_pb2_grpc as pb_grpc
from shards.run_logs import RunLogPage, page_from_proto
from shards.run_logs import follow as follow_log
from shards.settings import settings_from_env, tls_config

if TYPE_CHECKING:  # the generated stubs type an aio stub as its own class
    from shards.processmanager.v1.processmanager_pb2_grpc import ProcessControllerAsyncStub as Stub
else:
    Stub = pb_grpc.ProcessControllerStub

T = TypeVar("T")
_POSITIONS = (WatchEventType.SNAPSHOT, WatchEventType.SYNCED, WatchEventType.CHANGED, WatchEventType.REMOVED)
MAX_LAUNCHES_IN_FLIGHT = 500


class AsyncClient:
    """A client of the ProcessController service (asyncio)."""

    def __init__(
        self,
        controller: Sequence[str] | str,
        *,
        timeout_s: float = 10.0,
        retry_deadline_s: float = 15.0,
        token: str = "",
        tls: TlsConfig | bool | None = None,
    ) -> None:
        """``token``: sent as ``authorization: Bearer <token>``; ``tls``: a TlsConfig, or True for
        TLS trusting the system's roots (default: plaintext)."""
        self._channel = ControllerChannel(
            controller, retry_deadline_s=retry_deadline_s, tls=tls_config(tls), token=token
        )
        self.timeout_s = timeout_s
        self._launch_streams: dict[grpc.aio.Channel, LaunchStream] = {}
        self._streamed_launches = True
        # Well under the controller's default in-flight limit per principal (1,000):
        # 10,000 launches at once queue here instead of being refused there.
        self._launch_slots = asyncio.Semaphore(MAX_LAUNCHES_IN_FLIGHT)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """A client set up from ``SHARDS_*`` variables (see ``settings_from_env``); ``options`` win."""
        settings = {**settings_from_env(environ), **options}
        return cls(settings.pop("controller"), **settings)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for stream in self._launch_streams.values():
            await stream.close()
        self._launch_streams.clear()
        await self._channel.close()

    @property
    def address(self) -> str:
        """The controller address in use (the leader, once found)."""
        return self._channel.address

    async def _call(self, invoke: Callable[[Stub], Awaitable[T]], *, timeouts_mean_down: bool = True) -> T:
        return await self._call_channel(lambda channel: invoke(Stub(channel)), timeouts_mean_down)

    async def _call_channel(
        self, invoke: Callable[[grpc.aio.Channel], Awaitable[T]], timeouts_mean_down: bool = True
    ) -> T:
        try:
            return await self._channel.call(invoke, timeouts_mean_down=timeouts_mean_down)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def _launch(self, channel: grpc.aio.Channel, request: pb.LaunchProcessRequest) -> Any:
        """One launch on the channel's LaunchProcesses stream (LaunchProcess on an older controller).
        Once sent, ``new_key`` is cleared: a retry may find the first attempt stored."""
        try:
            if self._streamed_launches:
                stream = self._launch_streams.get(channel)
                if stream is None or stream.broken is not None:
                    stream = self._launch_streams[channel] = LaunchStream(channel)
                try:
                    return await stream.launch(request, self.timeout_s)
                except grpc.aio.AioRpcError as error:
                    if error.code() is not grpc.StatusCode.UNIMPLEMENTED:
                        raise
                    self._streamed_launches = False  # a controller from before LaunchProcesses
            return await Stub(channel).LaunchProcess(request, timeout=self.timeout_s)
        finally:
            request.new_key = False

    # ------------------------------------------------------------ processes

    async def define_processes(
        self, scope_id: str, *, only_if_missing: bool = False, clean: bool = False
    ) -> DefineResult:
        """Ask a worker for the scope's processes and store a record for each.

        Records the workers no longer list go (an active one once its run
        ends); ``clean`` first wipes every inactive record, statuses too. The
        result has the records and says what was added, removed and kept.
        """
        request = pb.DefineProcessesRequest(scope_id=scope_id, only_if_missing=only_if_missing, clean=clean)
        reply = await self._call(lambda s: s.DefineProcesses(request, timeout=self.timeout_s))
        return await self._define_result(scope_id, reply)

    async def reset_processes(self, scope_id: str) -> DefineResult:
        """Wipe every record of the scope and define it again, in one request.

        FailedPrecondition, naming them, while a process of the scope is active.
        """
        request = pb.ResetProcessesRequest(scope_id=scope_id)
        reply = await self._call(lambda s: s.ResetProcesses(request, timeout=self.timeout_s))
        return await self._define_result(scope_id, reply)

    async def _define_result(
        self, scope_id: str, reply: pb.DefineProcessesResponse | pb.ResetProcessesResponse
    ) -> DefineResult:
        result = define_result_from_proto(reply)
        if reply.next_page_token:  # a big scope: the rest page by page
            rest = await self._list_pages(pb.ListProcessesRequest(scope_id=scope_id), reply.next_page_token)
            result = replace(result, processes=(*result.processes, *rest))
        return result

    async def purge_processes(self, scope_id: str) -> int:
        request = pb.PurgeProcessesRequest(scope_id=scope_id)
        reply = await self._call(lambda s: s.PurgeProcesses(request, timeout=self.timeout_s))
        return reply.purged

    async def list_processes(
        self,
        scope_id: str,
        *,
        name_contains: str = "",
        max_detail_level: int = 0,
        include_details: bool = False,
        page_size: int = 0,
        name_regex: str = "",
        hide_special: bool = False,
        active_only: bool = False,
    ) -> list[ProcessRecord]:
        """The scope's records, by detail level then name, fetched page by page.

        Errors are cut to their first 256 characters unless ``include_details``
        (``get_process`` always has the whole record). ``page_size``: records
        per call (0: the controller's default, 500). ``name_contains`` is a
        substring, ``name_regex`` a case-insensitive RE2 pattern, both searched
        in the name and the process id. An active process always passes
        ``max_detail_level`` and ``hide_special``. The first view of a scope
        with no records defines it, if a worker serves it.
        """
        request = pb.ListProcessesRequest(
            scope_id=scope_id,
            name_contains=name_contains,
            max_detail_level=max_detail_level,
            page_size=page_size,
            view=pb.LIST_VIEW_FULL if include_details else pb.LIST_VIEW_SUMMARY,
            name_regex=name_regex,
            hide_special=hide_special,
            active_only=active_only,
        )
        return await self._list_pages(request, "")

    async def _list_pages(self, request: pb.ListProcessesRequest, token: str) -> list[ProcessRecord]:
        records: list[ProcessRecord] = []
        while True:
            reply = await self._list_page(request, token)
            records.extend(record_from_proto(p) for p in reply.processes)
            token = reply.next_page_token
            if not token:
                return records

    async def _list_page(self, request: pb.ListProcessesRequest, token: str) -> pb.ListProcessesResponse:
        page = pb.ListProcessesRequest()
        page.CopyFrom(request)
        page.page_token = token
        return await self._call(lambda s: s.ListProcesses(page, timeout=self.timeout_s))

    async def get_process(self, scope_id: str, process_id: str) -> ProcessRecord:
        request = pb.GetProcessRequest(scope_id=scope_id, process_id=process_id)
        reply = await self._call(lambda s: s.GetProcess(request, timeout=self.timeout_s))
        return record_from_proto(reply.process)

    async def launch_process(
        self, scope_id: str, process_id: str, *, idempotency_key: str = "", timeout_s: float | None = None
    ) -> LaunchResult:
        """Launch a process; FailedPrecondition if it is already active.

        ``timeout_s``: this run's time limit from its start, instead of the definition's;
        past it the run is stopped and ends failed ("timed out after N s").
        """
        request = pb.LaunchProcessRequest(
            scope_id=scope_id,
            process_id=process_id,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
            new_key=not idempotency_key,  # made here, for this launch; _launch clears it once sent
        )
        if timeout_s is not None:
            request.timeout.FromTimedelta(timedelta(seconds=timeout_s))
        reply = await self._paced_launch(request)
        return LaunchResult(reply.run_id, record_from_proto(reply.process), reply.deduplicated)

    async def _paced_launch(self, request: pb.LaunchProcessRequest) -> Any:
        """A launch, at most ``MAX_LAUNCHES_IN_FLIGHT`` of this client's at once, retried when the
        controller's in-flight limit refuses it (its idempotency key makes the retry safe)."""
        deadline = time.monotonic() + self._channel.retry_deadline_s
        backoff_s = 0.05
        while True:
            try:
                async with self._launch_slots:
                    return await self._call_channel(lambda channel: self._launch(channel, request))
            except ResourceExhausted as refused:
                # The principal's requests in flight (other clients of it, other calls).
                if "retry later" not in refused.message or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(backoff_s * random.uniform(0.5, 1.5))
            backoff_s = min(backoff_s * 2, 1.0)

    async def stop_process(
        self, scope_id: str, process_id: str, *, stop_grace_s: float | None = None
    ) -> ProcessRecord:
        """Stop a process; ``stop_grace_s``: how long its code has before the stop is forced
        (isolated code) or shown overdue (code in a thread), instead of its definition's."""
        request = pb.StopProcessRequest(scope_id=scope_id, process_id=process_id)
        if stop_grace_s is not None:
            request.stop_grace.FromTimedelta(timedelta(seconds=stop_grace_s))
        reply = await self._call(lambda s: s.StopProcess(request, timeout=self.timeout_s))
        return record_from_proto(reply.process)

    async def dismiss_process_messages(self, scope_id: str, process_id: str) -> ProcessRecord:
        request = pb.DismissProcessMessagesRequest(scope_id=scope_id, process_id=process_id)
        reply = await self._call(lambda s: s.DismissProcessMessages(request, timeout=self.timeout_s))
        return record_from_proto(reply.process)

    # ------------------------------------------------------------ workers and runs

    async def list_workers(self) -> list[WorkerInfo]:
        reply = await self._call(lambda s: s.ListWorkers(pb.ListWorkersRequest(), timeout=self.timeout_s))
        return [worker_from_proto(w) for w in reply.workers]

    async def list_runs(
        self, scope_id: str, process_id: str = "", *, limit: int = 50, include_details: bool = False
    ) -> list[Run]:
        """The newest ``limit`` runs (of one process, or of the scope), newest first, page by page.

        Without ``include_details`` runs come without their log tails and with
        errors cut to 256 characters (``get_run`` always has the whole run).
        """
        runs: list[Run] = []
        token = ""
        while len(runs) < limit:
            request = pb.ListRunsRequest(
                scope_id=scope_id,
                process_id=process_id,
                page_size=min(limit - len(runs), 1000),
                page_token=token,
                view=pb.LIST_VIEW_FULL if include_details else pb.LIST_VIEW_SUMMARY,
            )
            reply = await self._list_runs_page(request)
            runs.extend(run_from_proto(r) for r in reply.runs)
            token = reply.next_page_token
            if not token:
                break
        return runs

    async def _list_runs_page(self, request: pb.ListRunsRequest) -> pb.ListRunsResponse:
        return await self._call(lambda s: s.ListRuns(request, timeout=self.timeout_s))

    async def get_run(self, run_id: str) -> Run:
        request = pb.GetRunRequest(run_id=run_id)
        reply = await self._call(lambda s: s.GetRun(request, timeout=self.timeout_s))
        return run_from_proto(reply.run)

    async def wait_run(
        self, run_id: str, timeout_s: float | None = None, *, follow_retries: bool = False
    ) -> Run:
        """The run once it has ended; with ``follow_retries``, its last attempt's run once that
        ended (a run its retry policy covers is run again: each attempt is a run of its own)."""
        request = pb.GetRunRequest(run_id=run_id, wait_until_ended=True, follow_retries=follow_retries)
        reply = await self._call(lambda s: s.GetRun(request, timeout=timeout_s), timeouts_mean_down=False)
        return run_from_proto(reply.run)

    async def get_run_log(self, run_id: str, offset: int = 0, limit: int = 0) -> RunLogPage:
        """A page of the run's whole log from ``offset`` (``limit`` lines at most: 0 is 1,000)."""
        request = pb.GetRunLogRequest(run_id=run_id, offset=offset, limit=limit)
        return page_from_proto(await self._call(lambda s: s.GetRunLog(request, timeout=self.timeout_s)))

    def follow_run_log(
        self, run_id: str, offset: int = 0, *, resume: bool = True
    ) -> AsyncIterator[RunLogPage]:
        """The run's lines from ``offset``, stored then live, until the run has ended."""
        return follow_log(self._channel, run_id, offset, resume)

    # ------------------------------------------------------------ scopes and the caller

    async def list_scopes(self) -> list[ScopeSummary]:
        """The scopes with records that the caller may list, with their counts by state."""
        reply = await self._call(lambda s: s.ListScopes(pb.ListScopesRequest(), timeout=self.timeout_s))
        return [scope_summary_from_proto(m) for m in reply.scopes]

    async def list_schedules(self, scope_id: str) -> list[ScheduleInfo]:
        """The scope's schedules: each one's next fire time and last outcome."""
        request = pb.ListSchedulesRequest(scope_id=scope_id)
        reply = await self._call(lambda s: s.ListSchedules(request, timeout=self.timeout_s))
        return [schedule_from_proto(m) for m in reply.schedules]

    async def pause_schedule(self, scope_id: str, process_id: str) -> ScheduleInfo:
        """No fire time launches the process until it is resumed (the pause is stored)."""
        request = pb.PauseScheduleRequest(scope_id=scope_id, process_id=process_id)
        reply = await self._call(lambda s: s.PauseSchedule(request, timeout=self.timeout_s))
        return schedule_from_proto(reply.schedule)

    async def resume_schedule(self, scope_id: str, process_id: str) -> ScheduleInfo:
        """Fire again from now on (the fire times it was paused for are not caught up)."""
        request = pb.ResumeScheduleRequest(scope_id=scope_id, process_id=process_id)
        reply = await self._call(lambda s: s.ResumeSchedule(request, timeout=self.timeout_s))
        return schedule_from_proto(reply.schedule)

    async def who_am_i(self, scope_id: str = "") -> Identity:
        """The caller's principal, and the actions it may take in ``scope_id`` (if given)."""
        request = pb.WhoAmIRequest(scope_id=scope_id)
        reply = await self._call(lambda s: s.WhoAmI(request, timeout=self.timeout_s))
        return identity_from_proto(reply, scope_id)

    # ------------------------------------------------------------ watch

    async def watch_processes(
        self,
        scope_id: str,
        *,
        name_contains: str = "",
        max_detail_level: int = 0,
        from_revision: int = 0,
        resume: bool = True,
        name_regex: str = "",
        hide_special: bool = False,
        active_only: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        """The scope's records (SNAPSHOT ... SYNCED), then every change (CHANGED, REMOVED).

        Filters as ``list_processes``; a record that leaves the filter (one
        that ends, with ``active_only``) comes as REMOVED.

        With ``resume`` (the default), a broken stream (controller restart,
        take-over, a watcher that fell behind) is reopened from the last
        revision seen, so no state change is missed.
        """
        revision = from_revision
        backoff_s = 0.05
        while True:
            request = pb.WatchProcessesRequest(
                scope_id=scope_id,
                name_contains=name_contains,
                max_detail_level=max_detail_level,
                from_revision=revision,
                name_regex=name_regex,
                hide_special=hide_special,
                active_only=active_only,
            )
            stream = Stub(self._channel.channel()).WatchProcesses(request)
            received = False
            try:
                async for message in stream:
                    received = True
                    event = watch_event_from_proto(message)
                    # Snapshot events come in revision order, so each is a position
                    # too. A reset is none: what was held is dropped, and only the
                    # snapshot that follows it says how far the new view goes.
                    if event.type is WatchEventType.RESET:
                        revision = 0
                    elif event.type in _POSITIONS:
                        revision = max(revision, event.revision)
                        backoff_s = 0.05
                    yield event
                return
            except grpc.aio.AioRpcError as error:
                mapped = from_rpc_error(error)
                if not resume or not isinstance(mapped, (Unavailable, ResourceExhausted)):
                    raise mapped from None
                if isinstance(mapped, ResourceExhausted) and not received:
                    raise mapped from None  # refused (too many watches), not a watcher that fell behind
                if isinstance(mapped, Unavailable) and not self._channel.redirect(error):
                    # No leader known: try the next address, pausing up to MAX_RETRY_PAUSE_S.
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, MAX_RETRY_PAUSE_S)
            finally:
                stream.cancel()


__all__ = ["AsyncClient", "ShardsError", "TlsConfig"]
