"""Debian's chromium, driven by Playwright (never a browser Playwright downloads).

A test that cannot start chromium skips locally and fails under CI=true.
Every page is watched: a request to any origin but the GUI server's is
aborted and fails the test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.required import require

CHROMIUM = os.environ.get("SHARDS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One chromium per test module. Not per session: while Playwright's sync API is
    started, its event loop runs on the main thread, and another module's test on the
    same xdist worker calling asyncio.run() would fail."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "the playwright package")
        raise
    require(os.path.exists(CHROMIUM), f"chromium ({CHROMIUM}; scripts/install-chromium.sh installs it)")
    playwright = sync_playwright().start()
    try:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as error:
            require(False, f"a chromium that starts ({CHROMIUM}: {str(error).splitlines()[0]})")
            raise
        yield browser
        browser.close()
    finally:
        playwright.stop()


class Tab:
    """A page of a fresh browser context, with every request checked against ``origin``."""

    def __init__(self, browser: Any, origin: str, height: int = 900) -> None:
        self.origin = origin
        self.context = browser.new_context(viewport={"width": 1400, "height": height})
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.set_default_timeout(30_000)  # a busy machine

    def _route(self, route: Any) -> None:
        url = route.request.url
        if url == self.origin or url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def goto(self, path: str) -> Any:
        self.page.goto(self.origin + path)
        return self.page

    def close(self) -> None:
        self.context.close()
        assert self.foreign == [], f"the page made requests to other origins: {self.foreign}"
        assert self.errors == [], f"the page's scripts failed: {self.errors}"
