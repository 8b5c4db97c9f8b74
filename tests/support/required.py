"""A test that needs a server it cannot find skips on a laptop and fails under CI."""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip (locally) or fail (under CI=true) when ``what`` is not available."""
    if available:
        return
    if under_ci():
        pytest.fail(f"{what} is required under CI but is not available", pytrace=False)
    pytest.skip(f"{what} is not available")
