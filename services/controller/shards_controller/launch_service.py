"""LaunchProcess and LaunchProcesses: a launch request checked, authorized, then handed to the controller.

A client launches with ``launch`` in the scope (and ``define`` when it brings
a definition); a worker credential launches only children of its own running
runs, in their scope. Idempotency keys are scoped to their principal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from shards import validation as v
from shards._grpc.status import status_of
from shards.convert import info_from_proto, record_to_proto
from shards.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_controller.auth import Action, Authorizer, Limits, Principal
from shards_controller.controller import Controller, LaunchRequest
from shards_controller.metrics import code_of


def _scoped_key(principal: Principal, key: str) -> str:
    # Idempotency keys are per principal: another principal's key can neither
    # return its run nor, in an error, name its scope and process.
    return key if principal.is_anonymous or not key else f"{principal.name}|{key}"


class Launches:
    def __init__(self, controller: Controller, authorizer: Authorizer, limits: Limits) -> None:
        self._c = controller
        self._auth = authorizer
        self._limits = limits
        self._launching: set[asyncio.Task[None]] = set()  # LaunchProcesses' launches under way

    async def stream(
        self, requests: AsyncIterator[pb.LaunchProcessesRequest]
    ) -> AsyncIterator[pb.LaunchProcessesResponse]:
        # Each launch runs in a task of its own, as a LaunchProcess call would:
        # launches complete in any order, and one that has begun completes
        # even if the stream goes (only its answer is lost). The results done
        # while an answer is being written leave together in the next one.
        results: list[pb.TaggedLaunchResult] = []
        ready = asyncio.Event()
        limit_key = self._auth.caller().limit_key
        begun = answered = 0
        read_all = False

        async def launch(tagged: pb.TaggedLaunch) -> None:
            result = pb.TaggedLaunchResult(request_id=tagged.request_id)
            try:
                with self._limits.in_flight(limit_key):
                    if not tagged.HasField("launch"):
                        raise InvalidArgument("launch is required")
                    result.launched.CopyFrom(await self._launch(tagged.launch))
                self._accepted(result.launched)
            except Exception as error:
                self._c.metrics.launches_refused.inc((code_of(error),))
                code, text, leader = status_of(error, "LaunchProcesses")
                result.failed.CopyFrom(pb.LaunchFailure(code=code.value[0], message=text, leader=leader))
            except asyncio.CancelledError:
                code, text = grpc.StatusCode.UNAVAILABLE, "the launch was interrupted; retry it"
                result.failed.CopyFrom(pb.LaunchFailure(code=code.value[0], message=text))
                raise
            finally:
                results.append(result)  # never left unanswered: the caller would wait out its deadline
                ready.set()

        async def read() -> None:
            nonlocal begun, read_all
            try:
                async for message in requests:
                    v.check_range(len(message.launches), "the number of launches", 1, v.MAX_RUNS_PER_BATCH)
                    for tagged in message.launches:
                        begun += 1
                        task = asyncio.create_task(launch(tagged))
                        self._launching.add(task)
                        task.add_done_callback(self._launching.discard)
            finally:
                read_all = True  # the caller has closed its side, or sent a malformed message
                ready.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                while results:
                    batch = results[: v.MAX_RUNS_PER_BATCH]
                    del results[: len(batch)]
                    answered += len(batch)
                    yield pb.LaunchProcessesResponse(results=batch)
                if read_all:
                    await reader  # raises what ended the reading (a malformed message)
                    if answered == begun:
                        break
                await ready.wait()
                ready.clear()
        finally:
            reader.cancel()

    async def launch(self, request: pb.LaunchProcessRequest) -> pb.LaunchProcessResponse:
        """One launch, counted in the metrics (accepted, deduplicated, or refused by code)."""
        try:
            response = await self._launch(request)
        except Exception as error:
            self._c.metrics.launches_refused.inc((code_of(error),))
            raise
        self._accepted(response)
        return response

    def _accepted(self, response: pb.LaunchProcessResponse) -> None:
        metrics = self._c.metrics
        if response.deduplicated:
            metrics.launches_deduplicated += 1
        else:
            metrics.launches_accepted += 1

    async def _launch(self, request: pb.LaunchProcessRequest) -> pb.LaunchProcessResponse:
        v.check_id(request.scope_id, "scope_id")
        v.check_id(request.process_id, "process_id")
        v.check_text(request.idempotency_key, "idempotency_key", v.MAX_IDEMPOTENCY_KEY_LENGTH)
        v.check_optional_id(request.parent_run_id, "parent_run_id")
        v.check_optional_id(request.preferred_worker_id, "preferred_worker_id")
        definition = None
        if request.HasField("definition"):
            if request.definition.process_id not in ("", request.process_id):
                raise InvalidArgument("definition.process_id differs from process_id")
            v.check_text(request.definition.name, "definition.name", v.MAX_NAME_LENGTH)
            v.check_text(request.definition.warning, "definition.warning", v.MAX_MESSAGE_LENGTH)
            v.check_detail_level(request.definition.detail_level)
            definition = v.check_info(info_from_proto(request.definition))
        timeout_s = None
        if request.HasField("timeout"):
            seconds = request.timeout.ToTimedelta().total_seconds()
            timeout_s = v.check_seconds(seconds, "timeout", positive=True)
        principal = await self._authorize_launch(request)
        outcome = await self._c.launch(
            LaunchRequest(
                scope_id=request.scope_id,
                process_id=request.process_id,
                idempotency_key=_scoped_key(principal, request.idempotency_key),
                new_key=request.new_key,
                parent_run_id=request.parent_run_id,
                definition=definition,
                preferred_worker_id=request.preferred_worker_id,
                timeout_s=timeout_s,
            )
        )
        return pb.LaunchProcessResponse(
            run_id=outcome.run_id, process=record_to_proto(outcome.process), deduplicated=outcome.deduplicated
        )

    async def _authorize_launch(self, request: pb.LaunchProcessRequest) -> Principal:
        principal = self._auth.caller().principal
        if principal.is_anonymous:
            return principal
        if not principal.is_worker:
            await self._auth.require(principal, request.scope_id, Action.LAUNCH)
            if request.HasField("definition"):
                await self._auth.require(principal, request.scope_id, Action.DEFINE)
            if request.parent_run_id:
                raise PermissionDenied("only the worker running a process launches its children")
            return principal
        if not request.parent_run_id:
            raise PermissionDenied(
                f"{principal.name} holds a worker credential, which launches only children of its own runs"
            )
        try:
            parent = await self._c.get_run(request.parent_run_id, False)
        except NotFound:
            raise FailedPrecondition(f"parent run {request.parent_run_id!r} is not running") from None
        if not principal.may_act_as(parent.worker_id):
            raise PermissionDenied(f"parent run {request.parent_run_id!r} is not a run of {principal.name}")
        if parent.scope_id != request.scope_id:
            raise PermissionDenied("a child process runs in the scope of its parent")
        return principal
