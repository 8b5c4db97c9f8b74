"""Waiting for a condition instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def assert_eventually(condition: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.01) -> T:
    """Poll ``condition`` until it returns a truthy value (returned) or raises no AssertionError.

    The last AssertionError (or a plain one) is raised when ``timeout_s`` runs out.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
            if value:
                return value
            error: AssertionError = AssertionError(f"condition still false after {timeout_s}s")
        except AssertionError as failed:
            error = failed
        if time.monotonic() >= deadline:
            raise error
        time.sleep(interval_s)


async def assert_eventually_async(
    condition: Callable[[], T | Awaitable[T]], timeout_s: float = 10.0, interval_s: float = 0.01
) -> T:
    """The asyncio twin of ``assert_eventually``; ``condition`` may be a coroutine function."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = condition()
            if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
                value = await value
            if value:
                return value
            error: AssertionError = AssertionError(f"condition still false after {timeout_s}s")
        except AssertionError as failed:
            error = failed
        if time.monotonic() >= deadline:
            raise error
        await asyncio.sleep(interval_s)
