"""Input rules shared by the controller, the worker and the client.

Ids: 1 to 128 characters, starting with a letter or digit, then letters,
digits and ``_ . : @ / + = -`` (so a process id can embed the id of the
object it works on, e.g. ``import-file:4711``). ASCII only.

Scope patterns (what a worker serves): 1 to 128 characters, the id
characters plus the ``fnmatch`` wildcards ``* ? [ ] !``.

Every limit here is part of the API: a request over one is answered
INVALID_ARGUMENT and changes nothing (see SECURITY.md for the full list).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from shards.cron import check_schedule
from shards.errors import InvalidArgument
from shards.models import ProcessInfo, RetryPolicy
from shards.states import ProcessState

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_MESSAGE_LENGTH = 4096
MAX_LOG_LINE_LENGTH = 4096
MAX_DETAIL_LEVEL = 4
MAX_IDEMPOTENCY_KEY_LENGTH = 256
MAX_ERROR_LENGTH = 16_384
MAX_ADDRESS_LENGTH = 256
MAX_CAPACITY = 10_000
MAX_SCOPE_PATTERNS = 64
MAX_RUN_IDS_PER_REPORT = 20_000
MAX_EVENTS_PER_BATCH = 10_000
MAX_RUNS_PER_BATCH = 1_000  # runs of one ExecuteProcess, ends of one FinishRun, launches of one message
MAX_LOG_LINES_PER_MESSAGE = 1_000
# The last lines of a run kept with it (its log tail); a worker keeps as many
# of a run's lines until the controller has stored its end.
LOG_TAIL_LINES = 50

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}")
_PATTERN = re.compile(r"[A-Za-z0-9_.:@/+=*?\[\]!-]{1,128}")
_ADDRESS = re.compile(r"[\x21-\x7e]{1,256}")


def check_id(value: str, what: str) -> str:
    """``value`` if it is a well-formed id, else InvalidArgument naming ``what``."""
    if not value:
        raise InvalidArgument(f"{what} is required")
    if len(value) > MAX_ID_LENGTH or _ID.fullmatch(value) is None:
        raise InvalidArgument(
            f"{what} {value[:MAX_ID_LENGTH]!r} is malformed: use 1-{MAX_ID_LENGTH} characters, "
            "letters, digits and _ . : @ / + = - (starting with a letter or digit)"
        )
    return value


def check_optional_id(value: str, what: str) -> str:
    return check_id(value, what) if value else value


def check_rate(rate: float) -> float:
    """A progress rate must be a number in 0..1 (NaN is refused)."""
    if not 0.0 <= rate <= 1.0:  # also false for NaN
        raise InvalidArgument(f"progress rate must be within 0..1, got {rate!r}")
    return rate


def check_text(value: str, what: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidArgument(f"{what} is too long: {len(value)} characters, at most {limit}")
    return value


def check_detail_level(level: int) -> int:
    if not 0 <= level <= MAX_DETAIL_LEVEL:
        raise InvalidArgument(
            f"detail_level must be within 1..{MAX_DETAIL_LEVEL} (0: default 1), got {level}"
        )
    return level or 1


def check_scope_pattern(value: str, what: str = "scope pattern") -> str:
    """A scope pattern: id characters and the wildcards ``* ? [ ] !``, 1-128 characters."""
    if len(value) > MAX_ID_LENGTH or _PATTERN.fullmatch(value) is None:
        raise InvalidArgument(
            f"{what} {value[:MAX_ID_LENGTH]!r} is malformed: use 1-{MAX_ID_LENGTH} characters, "
            "letters, digits, _ . : @ / + = - and the wildcards * ? [ ] !"
        )
    return value


def check_address(value: str, what: str = "address") -> str:
    """A host:port (or another gRPC target): 1-256 printable ASCII characters, no spaces."""
    if len(value) > MAX_ADDRESS_LENGTH or _ADDRESS.fullmatch(value) is None:
        raise InvalidArgument(
            f"{what} must be a host:port the controller can reach "
            f"(1-{MAX_ADDRESS_LENGTH} printable ASCII characters, no spaces)"
        )
    return value


def check_count(count: int, what: str, limit: int) -> int:
    if count > limit:
        raise InvalidArgument(f"too many {what}: {count}, at most {limit}")
    return count


def check_range(value: int, what: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{what} must be within {low}..{high}, got {value}")
    return value


def check_lines(lines: Sequence[str], what: str) -> Sequence[str]:
    """Log lines: at most MAX_LOG_LINES_PER_MESSAGE, each at most MAX_LOG_LINE_LENGTH characters."""
    check_count(len(lines), what, MAX_LOG_LINES_PER_MESSAGE)
    if lines and max(map(len, lines)) > MAX_LOG_LINE_LENGTH:  # one pass in C, then the culprit
        for line in lines:
            check_text(line, what[:-1] if what.endswith("s") else what, MAX_LOG_LINE_LENGTH)
    return lines


MAX_SECONDS = 366 * 86400  # a time limit or a grace: at most a year


def check_seconds(value: float, what: str, *, positive: bool = False) -> float:
    """A duration in seconds: finite, >= 0 (> 0 when ``positive``), at most a year."""
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{what} must be a number of seconds, got {value}")
    if positive and value <= 0:
        raise InvalidArgument(f"{what} must be more than 0 s, got {value:g} s")
    if value < 0:
        raise InvalidArgument(f"{what} must not be negative, got {value:g} s")
    if value > MAX_SECONDS:
        raise InvalidArgument(f"{what} must be at most {MAX_SECONDS} s (a year), got {value:g} s")
    return value


MAX_ATTEMPTS = 1000


def check_retry(policy: RetryPolicy, what: str = "retry") -> RetryPolicy:
    """A retry policy: at least one attempt, waits that make sense, and only failed/lost covered."""
    if not 1 <= policy.max_attempts <= MAX_ATTEMPTS:
        raise InvalidArgument(
            f"{what}.max_attempts must be within 1..{MAX_ATTEMPTS} (the first run counts), "
            f"got {policy.max_attempts}"
        )
    check_seconds(policy.backoff_s, f"{what}.backoff")
    check_seconds(policy.max_backoff_s, f"{what}.max_backoff")
    multiplier = policy.backoff_multiplier
    if not 1.0 <= multiplier <= 100.0:
        raise InvalidArgument(f"{what}.backoff_multiplier must be within 1..100, got {multiplier}")
    covered = {ProcessState.FAILED, ProcessState.LOST}
    if not policy.on or not set(policy.on) <= covered:
        names = ", ".join(str(state) for state in policy.on) or "nothing"
        raise InvalidArgument(f"{what}.on: a retry follows a failed or lost run, not {names}")
    return policy


def check_info(info: ProcessInfo, what: str = "definition") -> ProcessInfo:
    """The run-control settings of a definition (a worker's, or a child's defined on the fly)."""
    if info.timeout_s is not None:
        check_seconds(info.timeout_s, f"{what}.timeout", positive=True)
    if info.retry is not None:
        check_retry(info.retry, f"{what}.retry")
    if info.schedule:
        check_schedule(info.schedule, info.schedule_timezone, f"{what}.schedule")
    elif info.schedule_timezone:
        raise InvalidArgument(f"{what}.schedule_timezone without a schedule")
    return info
