"""Giving freed memory back to the operating system after a one-off peak (private).

A take-over reads every record and active run at once: the documents decoded
on the way are freed, but glibc keeps the pages, so the process's resident
size stays at the peak (100,000 records from MongoDB: ~15 MB above what the
records hold). ``malloc_trim`` hands the free pages back. Elsewhere than on
glibc (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:  # the process's own symbols: glibc's, where it is the C library
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def give_back_free_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
