"""The page as a catalogue browser, in a real headless Chromium against a real uvicorn and
the known catalogue (fixtures in conftest.py). Expected values come from the catalogue's
formulas (tests/support/catalogue.py), never from the service's answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from playwright.async_api import Page, expect

from tests.support.auth import new_token
from tests.support.catalogue import (
    DATASETS,
    EVENTS_PER_FILE,
    EVENTS_PER_RUN,
    RUNS,
    dsid_of,
    fuid_of,
    olt_of,
)
from tests.support.servers import Server, run_server
from tests.web.conftest import DESKTOP, PHONE, Opened, Pages, fits, on_screen, shot

pytestmark = pytest.mark.slow

# The first Online Filter decisions of migration 0002 (the known events set bits 0-3 only).
BITS = {"minimum_bias": 0, "high_multiplicity": 1, "high_pt_hadron": 2, "dimuon": 3}
N_DECISIONS = 9
FILES_PER_RUN = EVENTS_PER_RUN // EVENTS_PER_FILE


def decision_names(mask: int) -> str:
    return ", ".join(name for name, bit in BITS.items() if mask & (1 << bit)) or "none"


def runs_of(dataset: int) -> list[int]:
    return [run for run in RUNS if dsid_of(run) == dataset]


def files_of(dataset: int) -> list[tuple[int, str]]:
    """The dataset's files as the catalogue orders them: by run, then UUID."""
    return sorted(
        (run, fuid_of(run, k * EVENTS_PER_FILE)) for run in runs_of(dataset) for k in range(4)
    )


def events_where(keep: Callable[[int, int], bool]) -> list[dict[str, object]]:
    """The known events (run, event) that ``keep`` keeps, as the selection stream gives them."""
    return [
        {
            "run_number": run,
            "event_number": event,
            "olt_result": olt_of(event),
            "dsid_raw": dsid_of(run),
            "fuid_raw": fuid_of(run, event),
        }
        for run in RUNS
        for event in range(EVENTS_PER_RUN)
        if keep(run, event)
    ]


def n(value: int) -> str:
    return f"{value:,}"


async def column(page: Page, table: str, label: str) -> list[str]:
    return await page.locator(f"#{table} tbody td[data-label='{label}']").all_inner_texts()


async def saved_lines(page: Page, click: str, path: Path) -> tuple[str, list[dict[str, object]]]:
    """Click a download link; the download's URL and its NDJSON lines."""
    async with page.expect_download() as info:
        await page.click(click)
    download = await info.value
    await download.save_as(path)
    return download.url, ndjson(path)


def ndjson(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_datasets_to_runs_to_files_to_events(page: Page, server: Server) -> None:
    await page.click("nav.views >> text=Datasets")
    await expect(page).to_have_url(re.compile(r"#/datasets$"))
    await expect(page.locator("#datasets-table tbody tr")).to_have_count(len(DATASETS))
    assert await column(page, "datasets-table", "Dataset") == list(DATASETS.values())
    assert await column(page, "datasets-table", "Events") == [
        n(len(runs_of(d)) * EVENTS_PER_RUN) for d in DATASETS
    ]
    assert await column(page, "datasets-table", "Files") == [
        n(len(runs_of(d)) * FILES_PER_RUN) for d in DATASETS
    ]
    spans = [runs_of(d) for d in DATASETS]
    assert await column(page, "datasets-table", "Runs") == [
        f"{r[0]}–{r[-1]}" if len(r) > 1 else str(r[0]) for r in spans
    ]
    await shot(page, "browse-1-datasets")

    # A dataset: its runs, with the dataset's share of each.
    await page.click("#datasets-table >> text=spd.test.raw.b")
    await expect(page).to_have_url(re.compile(r"#/datasets/2$"))
    await expect(page.locator("#browse-title")).to_have_text(DATASETS[2])
    await expect(page.locator("#runs-table tbody tr")).to_have_count(len(runs_of(2)))
    assert await column(page, "runs-table", "Run") == [str(r) for r in runs_of(2)]
    assert await column(page, "runs-table", "Events in this dataset") == [
        n(EVENTS_PER_RUN) for _ in runs_of(2)
    ]
    assert await column(page, "runs-table", "Files in this dataset") == [
        str(FILES_PER_RUN) for _ in runs_of(2)
    ]

    # Its files, three a page (the service's keyset paging), forward, back and by history.
    expected = [fuid for _, fuid in files_of(2)]
    await page.click("text=Files (8)")
    await expect(page).to_have_url(re.compile(r"#/datasets/2/files$"))
    await expect(page.locator("#files-table tbody tr")).to_have_count(len(expected))
    await page.evaluate("location.hash = '#/datasets/2/files?per=3'")
    pages = [expected[0:3], expected[3:6], expected[6:8]]

    async def on_page(i: int) -> None:
        # The range line is drawn with its page (pages 1 and 2 have as many rows).
        first = 3 * i + 1
        await expect(page.locator("#files-range")).to_have_text(
            f"Files {first}–{first + len(pages[i]) - 1} of 8, by run and UUID."
        )
        assert await column(page, "files-table", "File (fuid_raw)") == pages[i]

    await on_page(0)
    await page.click("a[rel=next]")
    await on_page(1)
    await page.click("a[rel=next]")
    await on_page(2)
    await expect(page.locator("a[rel=next]")).to_have_count(0)  # the end
    await shot(page, "browse-2-dataset-files")
    await page.click("a[rel=prev]")
    await on_page(1)
    await page.go_back()
    await on_page(2)
    await page.go_back()
    await on_page(1)
    await page.go_back()
    await on_page(0)

    # A file: its facts and its events, fifty a page.
    run, fuid = files_of(2)[0]
    first_event = next(e for e in range(0, EVENTS_PER_RUN, 250) if fuid_of(run, e) == fuid)
    await page.click(f"#files-table >> text={fuid}")
    await expect(page).to_have_url(re.compile(rf"#/files/{fuid}$"))
    await expect(page.locator("#file-uuid")).to_have_text(fuid)
    facts = page.locator("#browse-body dl.facts")
    await expect(facts).to_contain_text(DATASETS[2])
    await expect(facts).to_contain_text(f"{first_event}–{first_event + EVENTS_PER_FILE - 1}")
    await expect(page.locator("#events-range")).to_have_text("Events 1–50 of 250.")
    events = list(range(first_event, first_event + 50))
    assert await column(page, "events-table", "Event") == [str(e) for e in events]
    assert await column(page, "events-table", "Online Filter decisions") == [
        decision_names(olt_of(e)) for e in events
    ]
    await expect(page.locator(".page-info")).to_have_text("Page 1 of 5")
    await shot(page, "browse-3-file")
    await page.click("a[rel=next]")
    await expect(page.locator("#events-range")).to_have_text("Events 51–100 of 250.")
    assert (await column(page, "events-table", "Event"))[0] == str(first_event + 50)

    # Its run: events per decision, and the run's files.
    await page.click(f"#browse-body dl.facts a[href='#/runs/{run}']")
    await expect(page).to_have_url(re.compile(rf"#/runs/{run}$"))
    await expect(page.locator("#decisions-table tbody tr")).to_have_count(N_DECISIONS)
    passed = await column(page, "decisions-table", "Events passed")
    assert passed[:4] == [
        n(sum(1 for e in range(EVENTS_PER_RUN) if olt_of(e) & (1 << bit))) for bit in BITS.values()
    ]
    assert passed[4:] == ["0"] * (N_DECISIONS - 4)
    assert await column(page, "files-table", "File (fuid_raw)") == sorted(
        fuid_of(run, k * EVENTS_PER_FILE) for k in range(FILES_PER_RUN)
    )
    await shot(page, "browse-4-run")


async def test_shared_links_and_the_back_button(pages: Pages, server: Server) -> None:
    opened = await pages.open(viewport=DESKTOP)
    page = opened.page
    # A link someone shared: the third page of twenty events of a file.
    fuid = fuid_of(103, 500)
    await page.goto(f"{server.url}/#/files/{fuid}?page=3&per=20")
    await expect(page.locator("#events-range")).to_have_text("Events 41–60 of 250.")
    assert await column(page, "events-table", "Event") == [str(e) for e in range(540, 560)]
    await expect(page.locator(".page-info")).to_have_text("Page 3 of 13")
    await page.click("a[rel=prev]")
    await expect(page.locator("#events-range")).to_have_text("Events 21–40 of 250.")

    await page.click("nav.views >> text=Runs")
    await expect(page.locator("#runs-table tbody tr")).to_have_count(len(RUNS))
    assert await column(page, "runs-table", "Run") == [str(r) for r in RUNS]
    assert await column(page, "runs-table", "Datasets") == [DATASETS[dsid_of(r)] for r in RUNS]
    await page.go_back()
    await expect(page.locator("#events-range")).to_have_text("Events 21–40 of 250.")
    await page.go_back()
    await expect(page.locator("#events-range")).to_have_text("Events 41–60 of 250.")
    await page.go_forward()
    await expect(page.locator("#events-range")).to_have_text("Events 21–40 of 250.")

    # Links to nothing say so in the view.
    opened.watch.allow(404)
    unknown = "00000000-0000-4000-8000-000000000000"
    await page.goto(f"{server.url}/#/files/{unknown}")
    await expect(page.locator("#browse-body")).to_contain_text(f"No file {unknown}")
    await page.goto(f"{server.url}/#/datasets/99")
    await expect(page.locator("#browse-body")).to_contain_text("No dataset 99.")
    await page.goto(f"{server.url}/#/nowhere")
    await expect(page.locator("#browse-title")).to_have_text("Not a view of this page")
    await page.goto(f"{server.url}/#/datasets?after=x")
    await expect(page.locator("#browse-body")).to_contain_text("after=x is not a number")


async def test_selection_count_per_run_and_download(
    page: Page, server: Server, tmp_path: Path
) -> None:
    await page.click("nav.views >> text=Select by decision")
    await page.select_option("#select-dataset", "3")
    await page.select_option("select[data-bit=minimum_bias]", "all")
    await page.select_option("select[data-bit=high_multiplicity]", "any")
    await page.select_option("select[data-bit=high_pt_hadron]", "any")
    await page.select_option("select[data-bit=dimuon]", "none")
    await page.click("#select-count")
    await expect(page).to_have_url(
        re.compile(
            r"#/select\?dataset=3&all=minimum_bias&any=high_multiplicity%2Chigh_pt_hadron&none=dimuon$"
        )
    )

    def chosen(run: int, event: int) -> bool:
        m = olt_of(event)
        return dsid_of(run) == 3 and m & 1 != 0 and m & 0b110 != 0 and m & 0b1000 == 0

    expected = events_where(chosen)
    await expect(page.locator("#select-total")).to_have_text(n(len(expected)))
    await expect(page.locator("#select-runs-table tbody tr")).to_have_count(len(runs_of(3)))
    assert await column(page, "select-runs-table", "Run") == [str(r) for r in runs_of(3)]
    assert await column(page, "select-runs-table", "Selected") == [
        n(sum(1 for e in expected if e["run_number"] == r)) for r in runs_of(3)
    ]
    await shot(page, "browse-5-selection")

    # The download is the service's stream itself (a link), in (run, event) order.
    url, lines = await saved_lines(page, "#select-result a[download]", tmp_path / "s.ndjson")
    assert url.startswith(server.url + "/v1/selection/events?")
    assert lines == expected

    # A run range, one run a page: the per-run counts are paged too.
    await page.evaluate("location.hash = '#/select?run_min=101&run_max=103&all=dimuon&per=1'")
    dimuon = sum(1 for e in range(EVENTS_PER_RUN) if olt_of(e) & 8)
    await expect(page.locator("#select-total")).to_have_text(n(3 * dimuon))
    for run in (101, 102, 103):
        await expect(page.locator("#select-runs-table tbody td[data-label=Run]")).to_have_text(
            str(run)
        )
        assert await column(page, "select-runs-table", "Selected") == [n(dimuon)]
        if run < 103:
            await page.click("#select-result a[rel=next]")
    await expect(page.locator("#select-result a[rel=next]")).to_have_count(0)
    # The form shows what the link holds.
    assert await page.input_value("#select-run-min") == "101"
    assert await page.input_value("select[data-bit=dimuon]") == "all"


async def test_downloads_with_a_token(pages: Pages, database_url: str, tmp_path: Path) -> None:
    token = new_token(database_url, "page-download", "read")
    with run_server(database_url, EVENTINDEX_MODE="production") as server:
        keep_token = f"sessionStorage.setItem('eventindex-token', {orjson.dumps(token).decode()})"
        # A link cannot carry the token: the page's download worker adds it to the stream.
        opened = await pages.open(viewport=DESKTOP)
        page = opened.page
        await page.add_init_script(keep_token)
        await page.goto(server.url + "/#/select?dataset=1&none=minimum_bias")
        expected = events_where(lambda run, event: dsid_of(run) == 1 and olt_of(event) & 1 == 0)
        await expect(page.locator("#select-total")).to_have_text(n(len(expected)))
        url, lines = await saved_lines(page, "#select-result a[download]", tmp_path / "a.ndjson")
        assert lines == expected
        assert re.fullmatch(rf"{server.url}/download/[0-9a-f-]+", url)  # no token in a URL
        await expect(page.locator("#select-result-body")).to_contain_text("started")

        fuid = fuid_of(102, 250)
        await page.goto(f"{server.url}/#/files/{fuid}")
        url, lines = await saved_lines(page, "#browse-body a[download]", tmp_path / "f.ndjson")
        assert [line["event_number"] for line in lines] == list(range(250, 500))
        assert [line["olt_result"] for line in lines] == [olt_of(e) for e in range(250, 500)]

        # Without service workers (a page served over plain http to another machine), the
        # page reads a bounded stream itself.
        opened = await pages.open(viewport=DESKTOP)
        page = opened.page
        await page.add_init_script(keep_token + "; delete Navigator.prototype.serviceWorker;")
        await page.goto(server.url + "/#/select?dataset=1&none=minimum_bias")
        await expect(page.locator("#select-total")).to_have_text(n(len(expected)))
        url, lines = await saved_lines(page, "#select-result a[download]", tmp_path / "b.ndjson")
        assert url.startswith("blob:")
        assert lines == expected


async def test_every_view_fits_a_phone(pages: Pages, server: Server) -> None:
    page = (await pages.open(viewport=PHONE)).page
    fuid = fuid_of(101, 750)
    views = {
        "datasets": ("#/datasets", "#datasets-table"),
        "dataset-files": ("#/datasets/3/files", "#files-table"),
        "file": (f"#/files/{fuid}", "#events-table"),
        "run": ("#/runs/104", "#decisions-table"),
        "selection": ("#/select?dataset=3&all=minimum_bias", "#select-runs-table"),
    }
    await page.goto(server.url + "/")
    for name, (hash_, ready) in views.items():
        await page.evaluate(f"location.hash = {orjson.dumps(hash_).decode()}")
        await expect(page.locator(ready + " tbody tr").first).to_be_visible()
        await fits(page)
        await shot(page, f"browse-phone-{name}")
    # The file's whole UUID is on screen (wrapped where it must be).
    await page.goto(f"{server.url}/#/files/{fuid}")
    cell = page.locator("#file-uuid")
    await expect(cell).to_have_text(fuid)
    await on_screen(cell, PHONE["width"])


async def test_icon_and_download_worker_are_served(page: Page, server: Server) -> None:
    # Browsers ask for /favicon.ico on pages that name no icon; the page names its own.
    icon = await page.request.get(server.url + "/favicon.ico")
    assert icon.status == 200
    assert icon.headers["content-type"] == "image/svg+xml"
    assert (await icon.text()).startswith("<svg")
    href = await page.get_attribute("link[rel=icon]", "href")
    assert href is not None
    assert await page.evaluate(f"fetch({orjson.dumps(href).decode()}).then(r => r.status)") == 200
    worker = await page.request.get(server.url + "/download-worker.js")
    assert worker.status == 200
    assert worker.headers["content-type"].startswith("text/javascript")
    assert "script-src 'self'" in worker.headers["content-security-policy"]


async def test_a_result_opens_its_file(opened: Opened) -> None:
    page = opened.page
    await page.fill("#pairs", "104 777\n")
    await page.click("#lookup")
    await expect(page.locator("#progress-text")).to_contain_text("Done: 1 pairs")
    await page.click("#tab-files")
    await page.click(f"#results-table >> text={fuid_of(104, 777)}")
    await expect(page.locator("#file-uuid")).to_have_text(fuid_of(104, 777))
    await expect(page.locator("#browse-body dl.facts")).to_contain_text("750–999")
