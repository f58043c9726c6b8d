"""The event-picking endpoints, through the app's real lifespan on a real PostgreSQL."""

from __future__ import annotations

import random
import re
from typing import Any

import httpx
import orjson
import pytest

from tests.support.catalogue import EVENTS_PER_RUN, RUNS, dsid_of, fuid_of, olt_of

NDJSON = "application/x-ndjson"


def expected(run: int, event: int) -> dict[str, Any]:
    if run in RUNS and 0 <= event < EVENTS_PER_RUN:
        return {
            "run_number": run,
            "event_number": event,
            "found": True,
            "fuid_raw": fuid_of(run, event),
            "dsid_raw": dsid_of(run),
            "olt_result": olt_of(event),
        }
    return {
        "run_number": run,
        "event_number": event,
        "found": False,
        "fuid_raw": None,
        "dsid_raw": None,
        "olt_result": None,
    }


def assert_problem(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    for needle in needles:
        assert needle in body["detail"], body
    return body


def ndjson_lines(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.headers["content-type"].startswith(NDJSON)
    return [orjson.loads(line) for line in response.content.splitlines()]


async def test_get_event_found(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/events/101/42")
    assert response.status_code == 200
    body = response.json()
    assert body == {k: v for k, v in expected(101, 42).items() if k != "found"}


async def test_get_event_unknown_is_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/events/101/999999")
    assert_problem(response, 404, "run_number 101", "event_number 999999")


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/v1/events/-1/5", "run_number"),
        ("/v1/events/2147483648/5", "run_number"),
        ("/v1/events/5/9223372036854775808", "event_number"),
        ("/v1/events/abc/5", "run_number"),
    ],
)
async def test_get_event_bad_numbers_are_422(
    client: httpx.AsyncClient, path: str, needle: str
) -> None:
    assert_problem(await client.get(path), 422, needle)


async def test_lookup_json_keeps_input_order_duplicates_and_missing(
    client: httpx.AsyncClient,
) -> None:
    pairs = [[104, 999], [100, 0], [999, 1], [100, 0], [102, 500], [100, 5000]]
    response = await client.post("/v1/lookup", json={"pairs": pairs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"] == [expected(r, e) for r, e in pairs]
    assert body["summary"] == {"requested": 6, "found": 4, "missing": 2}


async def test_lookup_accepts_object_items(client: httpx.AsyncClient) -> None:
    pairs = [{"run_number": 103, "event_number": 7}, [103, 8]]
    response = await client.post("/v1/lookup", json={"pairs": pairs})
    assert response.status_code == 200
    assert response.json()["results"] == [expected(103, 7), expected(103, 8)]


async def test_lookup_many_batches_in_order(client: httpx.AsyncClient) -> None:
    rng = random.Random(7)
    pairs = [[rng.choice([*RUNS, 7]), rng.randrange(1100)] for _ in range(4000)]
    response = await client.post("/v1/lookup", json={"pairs": pairs})
    body = response.json()
    assert body["results"] == [expected(r, e) for r, e in pairs]
    found = sum(1 for r in body["results"] if r["found"])
    assert body["summary"] == {"requested": 4000, "found": found, "missing": 4000 - found}


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"pairs": []}, 422, "pairs"),
        ({"pairs": [[1, 2], [-1, 2]]}, 422, "pairs[1]"),
        ({"pairs": [[1, 2], [3, 4], [2147483648, 1]]}, 422, "pairs[2]"),
        ({"pairs": [[1, 9223372036854775808]]}, 422, "pairs[0]"),
        ({"pairs": [[1, "2"]]}, 422, "pairs[0]"),
        ({"pairs": [[1, 2.5]]}, 422, "pairs[0]"),
        ({"pairs": [[1, 2, 3]]}, 422, "pairs[0]"),
        ({"pairs": [{"run_number": 1}]}, 422, "pairs[0]"),
        ({"pairs": [{"run_number": 1, "event_number": 2, "x": 1}]}, 422, "pairs[0]"),
        ({"pears": [[1, 2]]}, 422, "pairs"),
    ],
)
async def test_lookup_invalid_pairs_name_the_pair(
    client: httpx.AsyncClient, payload: Any, status: int, needle: str
) -> None:
    body = assert_problem(await client.post("/v1/lookup", json=payload), status, needle)
    assert body["errors"]


async def test_lookup_reports_index_of_bad_pair(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/lookup", json={"pairs": [[1, 2], [3, -4]]})
    body = assert_problem(response, 422, "pairs[1]")
    assert body["errors"][0]["pair"] == 1


async def test_lookup_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup", content=b'{"pairs": [[1, 2]', headers={"content-type": "application/json"}
    )
    assert_problem(response, 422)


async def test_lookup_unsupported_media_type(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup", content=b"<pairs/>", headers={"content-type": "application/xml"}
    )
    assert_problem(response, 415, "application/xml")


async def test_lookup_too_many_pairs_hints_at_stream(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/lookup", json={"pairs": [[1, i] for i in range(5001)]})
    assert_problem(response, 413, "5000", NDJSON)


async def test_lookup_body_over_limit(settings: Any) -> None:
    from tests.support.servers import app_client

    small = settings.model_copy(update={"max_body_bytes": 2048})
    async for client in app_client(small):
        response = await client.post("/v1/lookup", json={"pairs": [[1, i] for i in range(500)]})
        assert_problem(response, 413, "2048")


async def test_stream_text_lines_in_order(client: httpx.AsyncClient) -> None:
    rng = random.Random(3)
    pairs = [(rng.choice([*RUNS, 1]), rng.randrange(1200)) for _ in range(3000)]
    text = "".join(f"{r} {e}\n" for r, e in pairs).encode()
    response = await client.post(
        "/v1/lookup", content=text, headers={"content-type": "text/plain", "accept": NDJSON}
    )
    assert response.status_code == 200
    assert ndjson_lines(response) == [expected(r, e) for r, e in pairs]


async def test_stream_ndjson_body_chunked(client: httpx.AsyncClient) -> None:
    pairs = [(101, i) for i in range(0, 1500, 3)]

    async def body() -> Any:
        for r, e in pairs:
            # Chunks that split lines anywhere.
            yield orjson.dumps({"run_number": r, "event_number": e})[:7]
            yield orjson.dumps({"run_number": r, "event_number": e})[7:] + b"\n"

    response = await client.post(
        "/v1/lookup", content=body(), headers={"content-type": NDJSON, "accept": NDJSON}
    )
    assert ndjson_lines(response) == [expected(r, e) for r, e in pairs]


async def test_stream_mixed_text_forms(client: httpx.AsyncClient) -> None:
    text = b"run,event\n# picked by hand\n100 1\n\n 100:2 ; 100/3\n100,4 # trailing\n[100, 5]\n"
    response = await client.post(
        "/v1/lookup", content=text, headers={"content-type": "text/plain", "accept": NDJSON}
    )
    assert ndjson_lines(response) == [expected(100, i) for i in range(1, 6)]


async def test_stream_json_body_answered_as_ndjson(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup", json={"pairs": [[102, 1], [9, 9]]}, headers={"accept": NDJSON}
    )
    assert ndjson_lines(response) == [expected(102, 1), expected(9, 9)]


async def test_text_body_answered_as_json_reports_every_bad_line(
    client: httpx.AsyncClient,
) -> None:
    text = b"100 1\nfoo bar\n100 2\n100 -3\n"
    response = await client.post(
        "/v1/lookup",
        content=text,
        headers={"content-type": "text/plain", "accept": "application/json"},
    )
    body = assert_problem(response, 422, "line 2")
    assert [e["line"] for e in body["errors"]] == [2, 4]
    ok = await client.post(
        "/v1/lookup",
        content=b"100 1\n100 2\n",
        headers={"content-type": "text/plain", "accept": "application/json"},
    )
    assert ok.json()["results"] == [expected(100, 1), expected(100, 2)]


async def test_stream_bad_first_line_is_a_422_naming_the_line(
    client: httpx.AsyncClient,
) -> None:
    text = b"100 1\n100 2\n100 x\n"
    response = await client.post(
        "/v1/lookup", content=text, headers={"content-type": "text/plain", "accept": NDJSON}
    )
    body = assert_problem(response, 422, "line 3")
    assert body["errors"] == [{"line": 3, "message": "event_number 'x' is not a whole number"}]


async def test_stream_bad_line_after_answers_ends_with_error_line(
    client: httpx.AsyncClient,
) -> None:
    # Past the first batch (700 pairs here) every line before the bad one is answered.
    good = "".join(f"101 {i}\n" for i in range(2000))
    text = (good + "101 -5\n" + "101 1\n").encode()
    response = await client.post(
        "/v1/lookup", content=text, headers={"content-type": "text/plain", "accept": NDJSON}
    )
    assert response.status_code == 200
    lines = ndjson_lines(response)
    assert lines[:-1] == [expected(101, i) for i in range(2000)]
    error = lines[-1]["error"]
    assert error["status"] == 422
    assert "line 2001" in error["detail"]
    assert "negative" in error["detail"]


@pytest.mark.parametrize("body", [b"", b"\n\n# nothing here\n", b"run event\n"])
async def test_stream_without_pairs_is_422(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/v1/lookup", content=body, headers={"content-type": "text/plain", "accept": NDJSON}
    )
    assert_problem(response, 422, "no pairs")


async def test_openapi_documents_endpoints(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v1/lookup" in spec["paths"]
    assert "/v1/events/{run_number}/{event_number}" in spec["paths"]
    lookup_body = spec["paths"]["/v1/lookup"]["post"]["requestBody"]["content"]
    assert {"application/json", NDJSON, "text/plain"} <= set(lookup_body)
    assert (await client.get("/docs")).status_code == 200
    # Every reference in the document resolves.
    refs = set(re.findall(r'"\$ref":"#/components/schemas/([^"]+)"', orjson.dumps(spec).decode()))
    assert "LookupRequest" in refs
    assert refs <= set(spec["components"]["schemas"])


async def test_stream_report_mode_skips_and_reports_bad_lines(client: httpx.AsyncClient) -> None:
    text = b"run event\n100 1\nfoo\n100 2\n100 -1\n999 9\n"
    response = await client.post(
        "/v1/lookup?invalid=report",
        content=text,
        headers={"content-type": "text/plain", "accept": NDJSON},
    )
    assert response.status_code == 200
    lines = ndjson_lines(response)
    results = [x for x in lines if "run_number" in x]
    assert results == [expected(100, 1), expected(100, 2), expected(999, 9)]
    assert [x for x in lines if "line" in x] == [
        {
            "line": 3,
            "error": "expected 'run event' (or run:event, run,event, run/event), got 'foo'",
        },
        {"line": 5, "error": "event_number -1 is negative"},
    ]
    assert lines[-1] == {"summary": {"requested": 3, "found": 2, "missing": 1, "invalid_lines": 2}}


async def test_report_mode_all_bad_is_422_with_every_line(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup?invalid=report",
        content=b"a1 b\nc2 d\n",
        headers={"content-type": "text/plain", "accept": NDJSON},
    )
    body = assert_problem(response, 422, "line 1")
    assert [e["line"] for e in body["errors"]] == [1, 2]


async def test_json_answer_report_mode(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup?invalid=report",
        content=b"100 1\nbad line\n",
        headers={"content-type": "text/plain", "accept": "application/json"},
    )
    body = response.json()
    assert body["results"] == [expected(100, 1)]
    assert body["invalid_lines"] == [{"line": 2, "error": body["invalid_lines"][0]["error"]}]
    assert "bad" in body["invalid_lines"][0]["error"]


async def test_invalid_mode_value_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup?invalid=ignore", content=b"1 1\n", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 422, "invalid")


async def test_catalogue_names(client: httpx.AsyncClient) -> None:
    datasets = (await client.get("/v1/datasets")).json()["items"]
    assert [(d["id"], d["name"]) for d in datasets] == [
        (1, "spd.test.raw.a"),
        (2, "spd.test.raw.b"),
        (3, "spd.test.raw.c"),
    ]
    bits = (await client.get("/v1/online-filter/bits")).json()
    assert bits[0] == {
        "bit": 0,
        "name": "minimum_bias",
        "description": bits[0]["description"],
    }
    assert len(bits) == 9


async def test_page_is_served(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text
    for module in ("app.js", "api.js", "pick.js", "browse.js", "download.js"):
        script = await client.get("/static/" + module)
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
    assert "x-ndjson" in (await client.get("/static/pick.js")).text
    icon = await client.get("/favicon.ico")  # browsers ask for it: no 404 in every log
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/svg+xml"


async def test_values_postgres_refuses_are_422(client: httpx.AsyncClient) -> None:
    # A NUL byte in a decision name: a client error, not a 500.
    response = await client.get("/v1/selection/count", params={"all": "dimuon\x00"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
