"""The API docs (Swagger UI at /docs) in a real headless Chromium against a real uvicorn: they
render every operation from files the service serves itself, under the page's strict
Content-Security-Policy, a request can be tried from them, and not one request leaves the
host (every other request is refused and recorded).

Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Route, async_playwright, expect

from tests.support.servers import Server, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("Chromium is missing: ./dev test installs it with apt-get as root")
    pytest.skip(
        "Chromium is not installed (./dev test installs it as root)", allow_module_level=True
    )


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


class Watched:
    """A browser context whose requests to anywhere but the service are refused and kept,
    with the page's Content-Security-Policy violations and script errors."""

    def __init__(self, context: BrowserContext, origin: str) -> None:
        self.context = context
        self.origin = origin
        self.elsewhere: list[str] = []
        self.local: list[str] = []
        self.problems: list[str] = []

    async def route(self, route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == self.origin or parts.scheme in ("data", "blob"):
            self.local.append(url)
            await route.continue_()
        else:
            self.elsewhere.append(url)
            await route.abort()


@pytest.fixture
async def watched(browser: Browser, server: Server) -> AsyncIterator[Watched]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    w = Watched(context, server.url)
    await context.route("**/*", w.route)
    yield w
    await context.close()
    assert w.elsewhere == [], "requests left the host"


def operations(server: Server) -> list[tuple[str, str, str]]:
    """(method, path, summary) of every operation, from the OpenAPI document itself."""
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    return [
        (method.upper(), path, op.get("summary", ""))
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


async def open_page(w: Watched, url: str) -> object:
    page = await w.context.new_page()
    page.on(
        "console",
        lambda m: (
            w.problems.append(m.text)
            if m.type == "error" or "Content Security Policy" in m.text
            else None
        ),
    )
    page.on("pageerror", lambda e: w.problems.append(str(e)))
    await page.goto(url)
    return page


async def test_swagger_ui_lists_every_operation_offline(watched: Watched, server: Server) -> None:
    from playwright.async_api import Page

    page = await open_page(watched, server.url + "/docs")
    assert isinstance(page, Page)
    ops = operations(server)
    blocks = page.locator(".opblock")
    await expect(blocks).to_have_count(len(ops), timeout=30_000)
    shown = set()
    for i in range(len(ops)):
        block = blocks.nth(i)
        method = (await block.locator(".opblock-summary-method").inner_text()).strip()
        path = (await block.locator(".opblock-summary-path").inner_text()).strip()
        shown.add((method, path.replace("\u200b", "")))
    assert shown == {(m, p) for m, p, _ in ops}
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "apidocs-swagger-top.png"), full_page=False)
    # An operation opens with its documentation (the lookup's request bodies).
    lookup = page.locator("#operations-event_picking-lookup_pairs_v1_lookup_post")
    await lookup.locator(".opblock-summary").click()
    await expect(lookup.locator(".opblock-description-wrapper").first).to_contain_text("text/csv")
    # Tried from the page: the example body goes to the service and its answer is shown.
    await lookup.get_by_role("button", name="Try it out").click()
    await lookup.get_by_role("button", name="Execute").click()
    status = lookup.locator(".live-responses-table tbody .response-col_status")
    await expect(status).to_have_text("200", timeout=15_000)
    await expect(lookup.locator(".live-responses-table")).to_contain_text('"summary"')
    await page.screenshot(path=str(ARTIFACTS / "apidocs-swagger-tried.png"), full_page=False)
    assert any(urlsplit(u).path == "/v1/lookup" for u in watched.local), watched.local
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in watched.local)
    assert any(u.endswith("/openapi.json") for u in watched.local)
    assert watched.problems == []


def test_an_unknown_asset_is_a_404_problem(server: Server) -> None:
    response = httpx.get(server.url + "/docs/assets/../../etc/passwd", timeout=10)
    assert response.status_code == 404
    for name in ("nothing.js", "..%2Fapp.py"):
        response = httpx.get(server.url + "/docs/assets/" + name, timeout=10)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
