"""The original's search, made safe: a case-insensitive regular expression, matched in linear time.

Patterns are RE2 (``google-re2``): no backreferences or lookaround, and so no
pattern can make a match backtrack for ever. Patterns are bounded in length
and in the memory their automaton may take; a bad one is InvalidArgument
with the engine's own message.
"""

from __future__ import annotations

import functools
from typing import Protocol, cast

import re2

from shards.errors import InvalidArgument

MAX_PATTERN_LENGTH = 256
_MAX_MEM = 1 << 20  # bytes of automaton per pattern: far more than 256 characters need


class Pattern(Protocol):
    def search(self, text: str) -> object | None: ...


def _options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # the message goes to the caller, not to the controller's stderr
    options.max_mem = _MAX_MEM
    options.never_capture = True
    return options


_OPTIONS = _options()


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Pattern:
    """The compiled pattern; InvalidArgument for one too long or malformed."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidArgument(
            f"name_regex is {len(pattern)} characters long; at most {MAX_PATTERN_LENGTH} are allowed"
        )
    if "\x00" in pattern:
        raise InvalidArgument("name_regex must not contain NUL characters")
    try:
        return cast(Pattern, re2.compile(pattern, _OPTIONS))
    except UnicodeError:
        raise InvalidArgument("name_regex must be valid Unicode text") from None
    except re2.error as error:
        reason = error.args[0] if error.args else error
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
        raise InvalidArgument(
            f"name_regex {pattern[:64]!r} is not a valid regular expression: {text}"
        ) from None


def matches(pattern: str, *texts: str) -> bool:
    """Whether ``pattern`` is found in any of ``texts`` (case-insensitive)."""
    compiled = compile_pattern(pattern)
    return any(compiled.search(text) is not None for text in texts)
