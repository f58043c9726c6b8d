"""The page's tests: a real headless Chromium (Debian's) against a real uvicorn and database.

Every page a test opens is watched: a Content-Security-Policy violation, a console error, a
script error or an answer >= 400 that the test did not expect fails it. Screenshots go to
test-artifacts/ (not in the repository).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    async_playwright,
    expect,
)

from tests.support.servers import Server, run_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("Chromium is missing: ./dev test installs it with apt-get as root")
    pytest.skip(
        "Chromium is not installed (./dev test installs it as root)", allow_module_level=True
    )


class Watch:
    """What went wrong on a page: console errors, script errors, answers >= 400."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.failed: list[tuple[int, str]] = []
        self.allowed: set[int] = set()
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"script error: {e}"))
        page.on(
            "response",
            lambda r: self.failed.append((r.status, r.url)) if r.status >= 400 else None,
        )

    def _console(self, message: object) -> None:
        kind = getattr(message, "type", "")
        text = getattr(message, "text", "")
        if kind == "error" or "Content Security Policy" in text:
            self.errors.append(text)

    def allow(self, status: int) -> None:
        """The test expects answers with this status (and the browser's console line)."""
        self.allowed.add(status)

    def check(self) -> None:
        failed = [(s, u) for s, u in self.failed if s not in self.allowed]
        assert not failed, failed
        # Chromium logs every answer >= 400 as "Failed to load resource": those allowed.
        errors = [
            e for e in self.errors if not (self.allowed and e.startswith("Failed to load resource"))
        ]
        assert not errors, errors


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Server]:
    with run_server(database_url) as running:
        yield running


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        await b.close()


class Opened:
    """A page in a browser context of its own, with its watch."""

    def __init__(self, context: BrowserContext, page: Page, watch: Watch) -> None:
        self.context = context
        self.page = page
        self.watch = watch


class Pages:
    """Opens watched pages; closes them and checks their watches at the end of a test."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.opened: list[Opened] = []

    async def open(self, **options: Any) -> Opened:
        context = await self.browser.new_context(accept_downloads=True, **options)
        page = await context.new_page()
        opened = Opened(context, page, Watch(page))
        self.opened.append(opened)
        return opened

    async def close(self) -> None:
        for o in self.opened:
            await o.context.close()
        for o in self.opened:
            o.watch.check()


@pytest.fixture
async def pages(browser: Browser) -> AsyncIterator[Pages]:
    opened = Pages(browser)
    yield opened
    await opened.close()


@pytest.fixture
async def opened(pages: Pages, server: Server) -> Opened:
    """A desktop page on the known catalogue, its names loaded."""
    o = await pages.open(viewport=DESKTOP)
    await o.page.goto(server.url + "/")
    await expect(o.page.locator("#catalogue-status")).to_contain_text("3 datasets")
    return o


@pytest.fixture
def page(opened: Opened) -> Page:
    return opened.page


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def fits(page: Page) -> None:
    """Nothing on the page scrolls sideways."""
    width = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], f"the page is {width[0]} px wide in a {width[1]} px window"


async def on_screen(locator: Locator, width: int) -> None:
    """The element lies within a window ``width`` px wide: nothing of it is cut off."""
    box = await locator.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= width, box
