"""A real browser for the dashboards' tests: Debian's Chromium (apt: chromium) driven by
Playwright's Python package, headless. `.ci/run` installs Chromium; Playwright's own browser
download is not used (this machine's network reaches only package registries).

`chromium` is a browser for one test (see why in its docstring); `browser_context` gives the test
a fresh context (cookies, storage). `save_screenshot(page, name)` writes artifacts/screenshots/
NAME.png, which the test run leaves behind for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling Google's hosts, which this network refuses.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is not installed: apt-get install chromium (.ci/run does it).")
    return path


@pytest.fixture
def chromium() -> Iterator[Any]:
    """A browser for one test. Playwright's sync API keeps an asyncio loop running in this
    thread while it lives, so it lives only for the test: kept for the session, it would make
    every later test's async_to_sync (Channels) fail, and Django refuse their database calls.
    Inside the test, database calls are declared safe (the loop only drives the browser)."""
    from playwright.sync_api import sync_playwright

    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium_path(), args=CHROMIUM_ARGS
            )
            try:
                yield browser
            finally:
                # Connections the test opened while the loop ran are not the ones pytest-django
                # closes afterwards: close them here, or the test database cannot be dropped.
                connections.close_all()
                browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def browser_context(chromium: Any) -> Iterator[Any]:
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    try:
        yield context
    finally:
        context.close()


def save_screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
