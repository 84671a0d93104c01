"""Browser fixtures: Playwright (Python) driving Debian's chromium headless against the live test service.

Every page records console errors, uncaught exceptions and requests that leave the machine; a test fails if
there are any. Screenshots go to tests/artifacts/ui/ (kept after the run, for CI to publish).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.api.conftest import db_url, pg_url  # noqa: F401  (re-exported fixtures)
from tests.e2e.conftest import required_or_skip
from tests.live_service import live  # noqa: F401

CHROMIUM = os.environ.get("DSKD_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        required_or_skip(f"no chromium at {CHROMIUM} (scripts/browser.sh installs Debian's package)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


class PageProblems:
    def __init__(self) -> None:
        self.console: list[str] = []
        self.external: list[str] = []


@pytest.fixture
def page(browser: Any, live: Any) -> Iterator[Any]:  # noqa: F811
    """A page on the live service, with its API key already stored; fails the test on console errors."""
    context = browser.new_context(
        base_url=live.url, viewport={"width": 1360, "height": 900}, accept_downloads=True
    )
    problems = PageProblems()

    def only_local(route: Any) -> None:
        if urlparse(route.request.url).hostname in {"127.0.0.1", "localhost"} or route.request.url.startswith(
            ("data:", "blob:")
        ):
            route.continue_()
        else:
            problems.external.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    context.add_init_script(f"localStorage.setItem('dskd_api_key', {live.key!r});")
    page = context.new_page()
    page.on("console", lambda m: problems.console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.console.append(f"uncaught: {e}"))
    page.problems = problems
    yield page
    context.close()
    assert (problems.console, problems.external) == ([], [])


def shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
