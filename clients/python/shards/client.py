"""The synchronous client: ``AsyncClient`` run on a private event-loop thread.

    with Client("localhost:50051") as client:
        client.launch_process("demo", "count-sheep")
        for record in client.list_processes("demo"):
            print(record.process_id, record.state, record.progress.rate)

One implementation serves both APIs, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Generator, Mapping, Sequence
from typing import Any, TypeVar

from shards._aio import loop_factory
from shards.aio import AsyncClient, TlsConfig
from shards.models import (
    DefineResult,
    Identity,
    LaunchResult,
    ProcessRecord,
    Run,
    ScheduleInfo,
    ScopeSummary,
    WatchEvent,
    WorkerInfo,
)
from shards.run_logs import RunLogPage
from shards.settings import settings_from_env

T = TypeVar("T")
_DONE = object()


class Client:
    """A client of the ProcessController service (blocking calls)."""

    def __init__(
        self,
        controller: Sequence[str] | str,
        *,
        timeout_s: float = 10.0,
        retry_deadline_s: float = 15.0,
        token: str = "",
        tls: TlsConfig | bool | None = None,
    ) -> None:
        """As ``AsyncClient``: ``token`` is sent as a bearer token, ``tls`` turns TLS on."""
        self._loop = loop_factory()()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shards-client", daemon=True)
        self._thread.start()

        async def make() -> AsyncClient:
            return AsyncClient(
                controller, timeout_s=timeout_s, retry_deadline_s=retry_deadline_s, token=token, tls=tls
            )

        try:
            self._client = self._run(make())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
            raise

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Client:
        """A client set up from ``SHARDS_*`` variables (see ``shards.settings.settings_from_env``)."""
        settings = {**settings_from_env(environ), **options}
        return cls(settings.pop("controller"), **settings)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def address(self) -> str:
        return self._client.address

    def define_processes(
        self, scope_id: str, *, only_if_missing: bool = False, clean: bool = False
    ) -> DefineResult:
        return self._run(
            self._client.define_processes(scope_id, only_if_missing=only_if_missing, clean=clean)
        )

    def reset_processes(self, scope_id: str) -> DefineResult:
        return self._run(self._client.reset_processes(scope_id))

    def purge_processes(self, scope_id: str) -> int:
        return self._run(self._client.purge_processes(scope_id))

    def list_processes(
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
        return self._run(
            self._client.list_processes(
                scope_id,
                name_contains=name_contains,
                max_detail_level=max_detail_level,
                include_details=include_details,
                page_size=page_size,
                name_regex=name_regex,
                hide_special=hide_special,
                active_only=active_only,
            )
        )

    def get_process(self, scope_id: str, process_id: str) -> ProcessRecord:
        return self._run(self._client.get_process(scope_id, process_id))

    def launch_process(
        self, scope_id: str, process_id: str, *, idempotency_key: str = "", timeout_s: float | None = None
    ) -> LaunchResult:
        return self._run(
            self._client.launch_process(
                scope_id, process_id, idempotency_key=idempotency_key, timeout_s=timeout_s
            )
        )

    def stop_process(
        self, scope_id: str, process_id: str, *, stop_grace_s: float | None = None
    ) -> ProcessRecord:
        return self._run(self._client.stop_process(scope_id, process_id, stop_grace_s=stop_grace_s))

    def dismiss_process_messages(self, scope_id: str, process_id: str) -> ProcessRecord:
        return self._run(self._client.dismiss_process_messages(scope_id, process_id))

    def list_workers(self) -> list[WorkerInfo]:
        return self._run(self._client.list_workers())

    def list_runs(
        self, scope_id: str, process_id: str = "", *, limit: int = 50, include_details: bool = False
    ) -> list[Run]:
        return self._run(
            self._client.list_runs(scope_id, process_id, limit=limit, include_details=include_details)
        )

    def get_run(self, run_id: str) -> Run:
        return self._run(self._client.get_run(run_id))

    def wait_run(self, run_id: str, timeout_s: float | None = None, *, follow_retries: bool = False) -> Run:
        return self._run(self._client.wait_run(run_id, timeout_s, follow_retries=follow_retries))

    def list_scopes(self) -> list[ScopeSummary]:
        return self._run(self._client.list_scopes())

    def list_schedules(self, scope_id: str) -> list[ScheduleInfo]:
        return self._run(self._client.list_schedules(scope_id))

    def pause_schedule(self, scope_id: str, process_id: str) -> ScheduleInfo:
        return self._run(self._client.pause_schedule(scope_id, process_id))

    def resume_schedule(self, scope_id: str, process_id: str) -> ScheduleInfo:
        return self._run(self._client.resume_schedule(scope_id, process_id))

    def who_am_i(self, scope_id: str = "") -> Identity:
        return self._run(self._client.who_am_i(scope_id))

    def watch_processes(
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
    ) -> Generator[WatchEvent, None, None]:
        """As ``AsyncClient.watch_processes``; close the iterator (or break) to end the watch."""
        stream = self._client.watch_processes(
            scope_id,
            name_contains=name_contains,
            max_detail_level=max_detail_level,
            from_revision=from_revision,
            resume=resume,
            name_regex=name_regex,
            hide_special=hide_special,
            active_only=active_only,
        )
        yield from self._iterate(stream)

    def get_run_log(self, run_id: str, offset: int = 0, limit: int = 0) -> RunLogPage:
        return self._run(self._client.get_run_log(run_id, offset, limit))

    def follow_run_log(
        self, run_id: str, offset: int = 0, *, resume: bool = True
    ) -> Generator[RunLogPage, None, None]:
        """As ``AsyncClient.follow_run_log``; close the iterator (or break) to stop following."""
        return self._iterate(self._client.follow_run_log(run_id, offset, resume=resume))

    def _iterate(self, stream: AsyncIterator[T]) -> Generator[T, None, None]:
        """An async iterator of the client's loop, as a generator of this thread."""
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)

        async def pump() -> None:
            try:
                async for item in stream:
                    await queue.put(item)
                await queue.put(_DONE)
            except Exception as error:
                await queue.put(error)

        task = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = self._run(queue.get())
                if item is _DONE:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            task.cancel()
