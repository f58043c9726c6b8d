"""The event-picking page in a real headless Chromium against a real uvicorn and database
(fixtures in conftest.py). Screenshots of the main states go to test-artifacts/.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path

import asyncpg
import orjson
import pytest
from playwright.async_api import Browser, FilePayload, Page, expect

from eventindex import migrate
from tests.support.catalogue import dsid_of, fuid_of
from tests.support.servers import EmbeddedServer, Server, run_server
from tests.web.conftest import PHONE, Opened, Pages, fits, on_screen, shot

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow


async def counts(page: Page) -> dict[str, str]:
    items = page.locator("#counts li")
    out = {}
    for i in range(await items.count()):
        item = items.nth(i)
        out[await item.get_attribute("data-count") or ""] = await item.inner_text()
    return out


MIXED = """run_number event_number
# picked by hand
100 1
100:2 ; 100/3
101,4   # trailing comment
foo bar

102 999999
7 7
100 -5
103 10
"""


async def test_paste_mixed_forms_with_bad_lines(page: Page) -> None:
    await page.fill("#pairs", MIXED)
    await page.click("#lookup")
    await expect(page.locator("#progress-text")).to_contain_text("Done: 7 pairs")
    assert await counts(page) == {
        "requested": "7 requested",
        "found": "5 found",
        "missing": "2 missing",
        "files": "3 files",
        "invalid": "2 bad lines",
    }
    bad = page.locator("#invalid-table tbody tr")
    await expect(bad).to_have_count(2)
    assert await bad.nth(0).inner_text() == "6\trun_number 'foo' is not a whole number"
    assert "negative" in await bad.nth(1).inner_text()
    rows = page.locator("#results-table tbody tr")
    await expect(rows).to_have_count(7)
    first = (await rows.nth(0).inner_text()).split("\t")
    assert first[:4] == ["100", "1", fuid_of(100, 1), "spd.test.raw.b"]
    assert first[4] == "minimum_bias"
    missing = page.locator("#results-table tbody tr.missing")
    await expect(missing).to_have_count(2)
    assert "not in the catalogue" in await missing.nth(0).inner_text()
    await shot(page, "1-results-with-bad-lines")

    # A result links to its file's view; the back button comes back to the results.
    file_link = rows.nth(0).locator("td").nth(2).locator("a")
    assert await file_link.get_attribute("href") == f"#/files/{fuid_of(100, 1)}"
    await file_link.click()
    await expect(page.locator("#file-uuid")).to_have_text(fuid_of(100, 1))
    await page.go_back()
    await expect(rows).to_have_count(7)
    assert (await rows.nth(0).inner_text()).split("\t")[2] == fuid_of(100, 1)

    # Sorting by event, descending on the second press (keyboard).
    sort = page.locator("#results-table th:nth-child(2) button")
    await sort.focus()
    await page.keyboard.press("Enter")
    await page.keyboard.press("Enter")
    await expect(page.locator("#results-table th:nth-child(2)")).to_have_attribute(
        "aria-sort", "descending"
    )
    assert (await rows.nth(0).inner_text()).split("\t")[1] == "999999"

    await page.select_option("#filter", "missing")
    await expect(rows).to_have_count(2)


async def test_group_by_file_and_downloads(page: Page, tmp_path: Path) -> None:
    text = "".join(f"104 {e}\n" for e in range(0, 600, 3)) + "104 5000\n"
    await page.fill("#pairs", text)
    await page.keyboard.press("Tab")
    await page.click("#lookup")
    await expect(page.locator("#progress-text")).to_contain_text("Done: 201 pairs")

    await page.click("#tab-files")
    file_rows = page.locator("#results-table tbody tr")
    await expect(file_rows).to_have_count(3)  # events 0-599 of run 104: files of 250 events
    cells = [(await file_rows.nth(i).inner_text()).split("\t") for i in range(3)]
    assert [(c[0], int(c[3])) for c in cells] == [
        (fuid_of(104, 0), 84),
        (fuid_of(104, 250), 83),
        (fuid_of(104, 500), 33),
    ]
    assert all(c[2] == "104" for c in cells)
    await shot(page, "2-group-by-file")

    async with page.expect_download() as info:
        await page.click("#dl-csv")
    path = tmp_path / "r.csv"
    await (await info.value).save_as(path)
    table = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(table) == 201
    assert table[1]["event_number"] == "3"
    assert table[1]["fuid_raw"] == fuid_of(104, 3)
    assert table[1]["dataset"] == f"spd.test.raw.{'abc'[dsid_of(104) - 1]}"
    assert table[-1]["found"] == "false"

    async with page.expect_download() as info:
        await page.click("#dl-ndjson")
    await (await info.value).save_as(tmp_path / "r.ndjson")
    lines = [orjson.loads(x) for x in (tmp_path / "r.ndjson").read_bytes().splitlines()]
    assert len(lines) == 201
    assert lines[0]["fuid_raw"] == fuid_of(104, 0)

    async with page.expect_download() as info:
        await page.click("#dl-files")
    await (await info.value).save_as(tmp_path / "files.txt")
    assert (tmp_path / "files.txt").read_text().split() == [
        fuid_of(104, 0),
        fuid_of(104, 250),
        fuid_of(104, 500),
    ]


async def test_upload_a_file(page: Page) -> None:
    picks = FilePayload(name="picks.csv", mimeType="text/csv", buffer=b"run,event\n101,7\n102,8\n")
    await page.set_input_files("#file", files=[picks])
    await expect(page.locator("#progress-text")).to_contain_text("Done: 2 pairs")
    rows = page.locator("#results-table tbody tr")
    await expect(rows).to_have_count(2)
    assert (await rows.nth(1).inner_text()).split("\t")[2] == fuid_of(102, 8)


async def test_hundred_thousand_pairs(page: Page) -> None:
    text = "".join(f"{100 + i % 5} {(i * 7) % 1100}\n" for i in range(100_000)).encode()
    big = FilePayload(name="big.txt", mimeType="text/plain", buffer=text)
    await page.set_input_files("#file", files=[big])
    await expect(page.locator("#progress-text")).to_contain_text(
        "Done: 100,000 pairs", timeout=120_000
    )
    await expect(page.locator("#page-info")).to_contain_text("Page 1 of 2000")
    await expect(page.locator("#results-table tbody tr")).to_have_count(50)
    await page.click("#next")
    await expect(page.locator("#page-info")).to_contain_text("Page 2 of 2000")
    found = await counts(page)
    assert found["requested"] == "100,000 requested"
    await shot(page, "3-hundred-thousand-pairs")


async def test_empty_and_all_bad_input(opened: Opened) -> None:
    page = opened.page
    opened.watch.allow(422)  # the answer when no line is a pair
    await page.click("#lookup")
    await expect(page.locator("#banner")).to_contain_text("Paste some run/event pairs")
    await shot(page, "4-empty-input")
    await page.fill("#pairs", "abc 12\nfoo bar\n")
    await page.click("#lookup")
    await expect(page.locator("#banner")).to_contain_text("None of the lines is a run/event pair")
    await expect(page.locator("#invalid-table tbody tr")).to_have_count(2)
    await expect(page.locator("#results-box")).to_be_hidden()
    await shot(page, "5-all-bad")


async def test_phone_results_are_stacked_rows(pages: Pages, server: Server) -> None:
    page = (await pages.open(viewport=PHONE)).page
    await page.goto(server.url + "/")
    await expect(page.locator("#catalogue-status")).to_contain_text("3 datasets")
    bad = "this line is not a pair of numbers, and its message is long enough to wrap"
    await page.fill("#pairs", f"100 1\n100 2\n999 1\n{bad}\n")
    await page.click("#lookup")
    await expect(page.locator("#progress-text")).to_contain_text("Done: 3 pairs")
    await fits(page)
    # Each result is a block of labelled lines: the whole UUID and the decisions on screen.
    first = page.locator("#results-table tbody tr").nth(0)
    uuid_cell = first.locator("td").nth(2)
    assert await uuid_cell.inner_text() == fuid_of(100, 1)
    decisions = first.locator("td").nth(4)
    assert await decisions.inner_text() == "minimum_bias"
    for cell in (uuid_cell, decisions):
        await on_screen(cell, PHONE["width"])
    label = await decisions.evaluate("td => getComputedStyle(td, '::before').content")
    assert label == '"Online Filter decisions"'
    # The bad line's message is wrapped, not cut.
    problem = page.locator("#invalid-table tbody td").nth(1)
    assert "expected" in await problem.inner_text()
    assert await problem.evaluate("td => td.scrollWidth <= td.clientWidth")
    await on_screen(problem, PHONE["width"])
    await shot(page, "6-phone")


async def test_database_unavailable_then_back(browser: Browser, own_server: EmbeddedServer) -> None:
    url = own_server.url()
    conn = await asyncpg.connect(url)
    await migrate.apply(conn)
    await conn.close()
    with run_server(url, EVENTINDEX_POOL_ACQUIRE_TIMEOUT="2") as server:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(server.url + "/")
        await expect(page.locator("#catalogue-status")).to_contain_text("0 datasets")
        own_server.stop()
        await page.fill("#pairs", "1 1\n")
        await page.click("#lookup")
        await expect(page.locator("#banner")).to_contain_text("database is unavailable")
        await shot(page, "7-database-unavailable")
        await asyncio.to_thread(own_server.start)
        await expect(page.locator("#banner")).to_contain_text("is back", timeout=30_000)
        await page.click("#lookup")
        await expect(page.locator("#progress-text")).to_contain_text("Done: 1 pairs")
        await shot(page, "8-database-back")
        await context.close()


async def test_overlap_heat_map(page: Page) -> None:
    await page.click("nav.views >> text=Decision overlap")
    await page.select_option("#overlap-dataset", "1")
    await page.click("#overlap-show")
    await expect(page).to_have_url(re.compile(r"#/overlap\?dataset=1$"))
    table = page.locator("#overlap-table")
    await expect(table).to_be_visible()
    await expect(page.locator("#overlap-total")).to_contain_text("1,000 events in scope")
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(9)
    # Dataset 1 holds run 102 (olt_result = event % 16): each of bits 0-3 is set in half of
    # its 1,000 events, each pair of them in a quarter.
    first = (await rows.nth(0).inner_text()).split("\t")
    assert first[:3] == ["minimum_bias", "50%", "25%"]
    assert first[5] == "0"
    await expect(page.locator("#overlap-scale")).to_be_visible()
    await shot(page, "9-overlap-heat-map")
    await page.select_option("#overlap-show-as", "count")
    await page.click("#overlap-show")
    await expect(page).to_have_url(re.compile(r"#/overlap\?dataset=1&show=count$"))
    await expect(rows.nth(0)).to_contain_text("500")
    assert (await rows.nth(0).inner_text()).split("\t")[:3] == ["minimum_bias", "500", "250"]


async def test_heat_map_fits_a_phone(pages: Pages, server: Server) -> None:
    page = (await pages.open(viewport=PHONE)).page
    await page.goto(server.url + "/#/overlap")
    await expect(page.locator("#overlap-total")).to_contain_text("5,000 events in scope")
    await fits(page)
    table = page.locator("#overlap-table")
    await on_screen(table, PHONE["width"])
    # Numbered decisions, named in the key below; the cells are percentages.
    assert await table.locator("thead .short").all_inner_texts() == [str(i) for i in range(1, 10)]
    await expect(page.locator("#overlap-key li")).to_have_count(9)
    assert await page.locator("#overlap-key li").nth(3).inner_text() == "dimuon"
    # Every run holds events 0-999 with olt_result = event % 16: bit 3 in 496 of each 1,000.
    cell = table.locator("tbody tr").nth(3).locator("td").nth(3)
    assert await cell.inner_text() == f"{round(100 * 496 / 1000)}%"
    assert await cell.evaluate("td => td.scrollWidth <= td.clientWidth")
    await expect(page.locator("#overlap-scale")).to_be_visible()
    await shot(page, "10-phone-heat-map")


async def test_security_headers_and_no_inline_script(browser: Browser, server: Server) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    response = await page.goto(server.url + "/")
    assert response is not None
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    # The policy is enforced: an injected inline script does not run.
    ran = await page.evaluate(
        """() => new Promise(resolve => {
            window.injected = false;
            document.addEventListener("securitypolicyviolation", () => resolve(window.injected));
            const s = document.createElement("script");
            s.textContent = "window.injected = true";
            document.body.appendChild(s);
            setTimeout(() => resolve(window.injected), 2000);
        })"""
    )
    await context.close()
    assert ran is False
