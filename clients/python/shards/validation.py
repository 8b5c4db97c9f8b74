"""Input rules shared by the controller, the worker and the client.

Ids: 1 to 128 characters, starting with a letter or digit, then letters,
digits and ``_ . : @ / + = -`` (so a process id can embed the id of the
object it works on, e.g. ``import-file:4711``).
"""

from __future__ import annotations

import re

from shards.errors import InvalidArgument

MAX_ID_LENGTH = 128
MAX_NAME_LENGTH = 256
MAX_MESSAGE_LENGTH = 4096
MAX_LOG_LINE_LENGTH = 4096
MAX_DETAIL_LEVEL = 4

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}")


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
