"""The one browser of the book tests: Playwright's sync API allows a single instance per thread,
so the built-page test and the JupyterLab test share this session's chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """A headless Debian chromium driven by Playwright (never downloads a browser)."""
    from playwright import sync_api

    from tests.book.test_browser import CHROMIUM, CHROMIUM_ARGS

    assert CHROMIUM.exists(), f"{CHROMIUM} is not installed (python3 tools/lab.py test installs it)"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield browser
        finally:
            browser.close()
