"""Pages of list answers: their sizes, their tokens, the byte budget, the summary view.

A scope can hold 10,000 records of 25 KB each (errors, warnings and names at
their limits): one answer with all of them would pass gRPC's 4 MiB message
limit and the scope could no longer be listed. So ListProcesses, ListRuns and
DefineProcesses answer a page at a time:

- at most ``page_size`` items (a default per RPC, at most ``MAX_PAGE_SIZE``)
  and never more than ``MAX_PAGE_BYTES`` (one item always fits: the field
  limits keep it far under);
- the summary view (the default) cuts an error and a progress message to
  ``SUMMARY_ERROR_LENGTH`` characters and leaves a run's log tail out
  (``LIST_VIEW_FULL`` keeps all); a warning stays whole, a UI asks with it;
- ``next_page_token`` is opaque to callers: the position after the page's last
  item (a record's sort key, a run's id) and the scope it belongs to. A token
  of another scope or RPC, or one that does not parse, is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import bisect
import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from shards import validation as v
from shards.convert import record_to_proto, run_to_proto
from shards.errors import InvalidArgument
from shards.models import ProcessRecord, Run, sort_key
from shards.processmanager.v1 import processmanager_pb2 as pb

DEFAULT_PROCESS_PAGE = 500
DEFAULT_RUN_PAGE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 2 * 1024 * 1024
SUMMARY_ERROR_LENGTH = 256
_MAX_TOKEN_LENGTH = 4096  # a record's sort key: a name of 256 characters, up to 4 bytes each

T = TypeVar("T")
P = TypeVar("P", pb.ProcessRecord, pb.Run)


def page_size(requested: int, default: int, what: str = "page_size") -> int:
    if not 0 <= requested <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"{what} must be within 0..{MAX_PAGE_SIZE} (0: {default}), got {requested}")
    return requested or default


def check_view(view: int) -> bool:
    """True for the full view."""
    if view not in (pb.LIST_VIEW_UNSPECIFIED, pb.LIST_VIEW_SUMMARY, pb.LIST_VIEW_FULL):
        raise InvalidArgument(f"view must be LIST_VIEW_SUMMARY or LIST_VIEW_FULL, got {view}")
    return view == pb.LIST_VIEW_FULL


def encode_token(kind: str, scope_id: str, position: list[Any]) -> str:
    raw = json.dumps([kind, scope_id, position], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, kind: str, scope_id: str) -> list[Any] | None:
    """The position a token names (None for no token); InvalidArgument for a token not of this list."""
    if not token:
        return None
    v.check_text(token, "page_token", _MAX_TOKEN_LENGTH)
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        token_kind, token_scope, position = decoded
    except (ValueError, TypeError) as error:
        raise InvalidArgument(
            f"page_token is malformed ({error}); use a next_page_token as it came"
        ) from None
    if token_kind != kind or token_scope != scope_id or not isinstance(position, list):
        raise InvalidArgument("page_token belongs to another list (another RPC or scope)")
    return position


def summary_error(error: str) -> str:
    return error if len(error) <= SUMMARY_ERROR_LENGTH else error[: SUMMARY_ERROR_LENGTH - 1] + "…"


def record_message(record: ProcessRecord, full: bool) -> pb.ProcessRecord:
    message = record_to_proto(record)
    if not full:
        message.error = summary_error(message.error)
        message.progress.message = summary_error(message.progress.message)
    return message


def run_message(run: Run, full: bool) -> pb.Run:
    message = run_to_proto(run)
    if not full:
        message.error = summary_error(message.error)
        del message.log_tail[:]
    return message


def fill(items: Sequence[T], size: int, convert: Callable[[T], P]) -> tuple[list[P], bool]:
    """Up to ``size`` converted items under the byte budget; True if items were left over."""
    page: list[P] = []
    used = 0
    for item in items[:size]:
        message = convert(item)
        used += message.ByteSize() + 8
        if page and used > MAX_PAGE_BYTES:
            return page, True
        page.append(message)
    return page, len(items) > size


def records_after(records: list[ProcessRecord], position: list[Any] | None) -> list[ProcessRecord]:
    """The sorted records that come after ``position`` (a record's sort key)."""
    if position is None:
        return records
    try:
        level, folded, process_id = position
        key = (int(level), str(folded), str(process_id))
    except (ValueError, TypeError):
        raise InvalidArgument("page_token is malformed; use a next_page_token as it came") from None
    return records[bisect.bisect_right(records, key, key=sort_key) :]


def process_page(
    scope_id: str, records: list[ProcessRecord], token: str, size: int, full: bool
) -> tuple[list[pb.ProcessRecord], str]:
    """One page of sorted ``records`` from ``token``: its messages and the next token ('' if last)."""
    rest = records_after(records, decode_token(token, "processes", scope_id))
    page, more = fill(rest, size, lambda record: record_message(record, full))
    if not more:
        return page, ""
    last = rest[len(page) - 1]
    return page, encode_token("processes", scope_id, list(sort_key(last)))


def run_position(token: str, scope_id: str, process_id: str) -> str:
    """The run id a ListRuns token continues after ('' for the first page)."""
    position = decode_token(token, "runs", scope_id)
    if position is None:
        return ""
    if len(position) != 2 or position[0] != process_id or not isinstance(position[1], str):
        raise InvalidArgument("page_token belongs to another list (another process)")
    v.check_id(position[1], "page_token's run id")
    return position[1]


def run_page(
    scope_id: str, process_id: str, runs: list[Run], size: int, full: bool
) -> tuple[list[pb.Run], str]:
    """One page of ``runs`` (fetched ``size + 1``, newest first): messages and the next token."""
    page, more = fill(runs, size, lambda run: run_message(run, full))
    if not more:
        return page, ""
    return page, encode_token("runs", scope_id, [process_id, page[-1].run_id])
