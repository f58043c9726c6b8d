"""The event-picking endpoints, through the app's real lifespan on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from eventindex.config import Settings
from eventindex.middleware import interactive
from eventindex.middleware.interactive import Priority
from tests.support.auth import api_tokens, bearer
from tests.support.catalogue import EVENTS_PER_RUN, RUNS, dsid_of, fuid_of, olt_of
from tests.support.servers import app_client

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


BODY_SHAPE = '{"pairs": [[run, event], ...]}'


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"pairs": []}, "pairs is empty: the request body contains no pairs"),
        ({"pairs": [[1, 2], [-1, 2]]}, "pairs[1]: run_number -1 is negative"),
        (
            {"pairs": [[1, 2], [3, 4], [2147483648, 1]]},
            f"pairs[2]: run_number 2147483648 is larger than {2**31 - 1}",
        ),
        (
            {"pairs": [[1, 9223372036854775808]]},
            f"pairs[0]: event_number 9223372036854775808 is larger than {2**63 - 1}",
        ),
        ({"pairs": [[1, "2"]]}, "pairs[0]: numbers must be JSON numbers, not strings"),
        (
            {"pairs": [[1, 2.5]]},
            "pairs[0]: event_number must be a whole number, not a number with a fraction or "
            "exponent",
        ),
        ({"pairs": [[None, 2]]}, "pairs[0]: run_number must be a whole number, not null"),
        (
            {"pairs": [[1, 2, 3]]},
            'pairs[0]: expected {"run_number": R, "event_number": E} or [R, E]',
        ),
        ({"pairs": [{"run_number": 1}]}, "pairs[0]: missing event_number"),
        (
            {"pairs": [{"run_number": 1, "event_number": 2, "x": 1}]},
            "pairs[0]: unexpected field 'x'",
        ),
        (
            {"pairs": [[1, 2], {"run_number": -5, "event_number": 2}, [1, -3]]},
            "pairs[1]: run_number -5 is negative (and 1 more bad pairs)",
        ),
        ({"pears": [[1, 2]]}, f"pairs is missing; send {BODY_SHAPE}"),
        ({"pairs": [[1, 2]], "x": 1}, f"unexpected field 'x'; send {BODY_SHAPE}"),
        ({"pairs": {"1": 2}}, "pairs must be a list of [run, event] pairs, not an object"),
        ([[1, 2]], f"the request body must be {BODY_SHAPE}, not a list"),
    ],
)
async def test_lookup_invalid_json_bodies_say_what_and_where(
    client: httpx.AsyncClient, payload: Any, detail: str
) -> None:
    body = assert_problem(await client.post("/v1/lookup", json=payload), 422)
    assert body["detail"] == detail
    assert body["errors"]


async def test_lookup_reports_index_of_bad_pair(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/lookup", json={"pairs": [[1, 2], [3, -4], [-1, 0]]})
    body = assert_problem(response, 422, "pairs[1]")
    assert body["errors"] == [
        {"loc": "pairs[1]", "pair": 1, "message": "event_number -4 is negative"},
        {"loc": "pairs[2]", "pair": 2, "message": "run_number -1 is negative"},
    ]


async def test_json_and_text_bodies_word_a_bad_pair_alike(client: httpx.AsyncClient) -> None:
    bad = [(-5, 1), (1, -5), (2**31, 1), (1, 2**63)]
    as_json = await client.post("/v1/lookup", json={"pairs": [list(p) for p in bad]})
    text = "".join(f"{r} {e}\n" for r, e in bad)
    as_text = await client.post(
        "/v1/lookup",
        content=text,
        headers={"content-type": "text/plain", "accept": "application/json"},
    )
    json_errors = assert_problem(as_json, 422)["errors"]
    text_errors = assert_problem(as_text, 422)["errors"]
    assert [e["pair"] for e in json_errors] == [0, 1, 2, 3]
    assert [e["line"] for e in text_errors] == [1, 2, 3, 4]
    assert [e["message"] for e in json_errors] == [e["message"] for e in text_errors]


async def test_lookup_takes_integral_numbers_written_as_floats(client: httpx.AsyncClient) -> None:
    # JSON Schema's integer includes 101.0; beyond 2**53 a float may not be the number sent.
    response = await client.post("/v1/lookup", content=b'{"pairs": [[101.0, 42]]}')
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [expected(101, 42)]
    inexact = await client.post("/v1/lookup", content=b'{"pairs": [[1, 9007199254740993.0]]}')
    assert_problem(inexact, 422, "pairs[0]: event_number must be a whole number")


@pytest.mark.parametrize(
    ("content_type", "detail"),
    [
        ("application/json", f"the request body is empty; send {BODY_SHAPE}"),
        ("text/plain", "The request body is empty."),
        (NDJSON, "The request body is empty."),
    ],
)
async def test_an_empty_body_says_so(
    client: httpx.AsyncClient, content_type: str, detail: str
) -> None:
    for accept in ("application/json", NDJSON):
        response = await client.post(
            "/v1/lookup", content=b"", headers={"content-type": content_type, "accept": accept}
        )
        assert assert_problem(response, 422)["detail"] == detail


async def test_lookup_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup", content=b'{"pairs": [[1, 2]', headers={"content-type": "application/json"}
    )
    assert assert_problem(response, 422)["detail"] == (
        "the request body is not valid JSON (unexpected end of data at line 1 column 18)"
    )


CSV_HEAD = "run_number,event_number,found,fuid_raw,dsid_raw,olt_result"


def csv_row(run: int, event: int) -> str:
    e = expected(run, event)
    if not e["found"]:
        return f"{run},{event},false,,,"
    return f"{run},{event},true,{e['fuid_raw']},{e['dsid_raw']},{e['olt_result']}"


@pytest.mark.parametrize(
    "accept", ["text/csv", "text/csv; charset=utf-8", "text/*", "text/csv;q=0.5, text/html"]
)
async def test_lookup_answers_csv_when_asked(client: httpx.AsyncClient, accept: str) -> None:
    rng = random.Random(3)
    pairs = [(rng.choice([*RUNS, 7]), rng.randrange(1100)) for _ in range(3000)]
    text = "".join(f"{r} {e}\n" for r, e in pairs)
    want = "\n".join([CSV_HEAD, *(csv_row(r, e) for r, e in pairs)]) + "\n"
    as_text = await client.post(
        "/v1/lookup", content=text, headers={"content-type": "text/plain", "accept": accept}
    )
    assert as_text.status_code == 200, as_text.text
    assert as_text.headers["content-type"] == "text/csv; charset=utf-8"
    assert as_text.text == want
    as_json = await client.post("/v1/lookup", json={"pairs": pairs}, headers={"accept": accept})
    assert as_json.headers["content-type"] == "text/csv; charset=utf-8"
    assert as_json.text == want


@pytest.mark.parametrize(
    ("accept", "json_body", "text_body"),
    [
        (None, "json", "ndjson"),
        ("*/*", "json", "ndjson"),
        ("application/*", "json", "ndjson"),
        ("application/json", "json", "json"),
        (NDJSON, "ndjson", "ndjson"),
        ("application/jsonl", "ndjson", "ndjson"),
        ("application/json, application/x-ndjson", "ndjson", "ndjson"),
        ("application/x-ndjson;q=0.5, application/json", "json", "json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "json", "ndjson"),
        ("text/csv;q=0, */*", "json", "ndjson"),
        ("text/html", 406, 406),
        ("application/xml, text/plain", 406, 406),
        ("application/problem+json", 406, 406),
        ("application/json;q=0", 406, 406),
        ("nonsense", 406, 406),
    ],
)
async def test_lookup_answers_in_the_accepted_form(
    client: httpx.AsyncClient, accept: str | None, json_body: Any, text_body: Any
) -> None:
    headers = {} if accept is None else {"accept": accept}
    forms = {"json": "application/json", "ndjson": NDJSON}
    by_json = await client.post("/v1/lookup", json={"pairs": [[101, 1]]}, headers=headers)
    by_text = await client.post(
        "/v1/lookup", content=b"101 1\n", headers={**headers, "content-type": "text/plain"}
    )
    for response, want in ((by_json, json_body), (by_text, text_body)):
        if want == 406:
            body = assert_problem(response, 406, "application/json", NDJSON, "text/csv")
            assert body["type"].endswith("not-acceptable")
        else:
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(forms[want])


async def test_csv_with_invalid_report_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/lookup",
        params={"invalid": "report"},
        content=b"101 1\nx y\n",
        headers={"content-type": "text/plain", "accept": "text/csv"},
    )
    assert_problem(response, 422, "invalid=report", NDJSON)


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
    body_text = assert_problem(response, 422)["detail"]
    assert body_text == (
        "The request body is empty." if not body else "The request body contains no pairs."
    )


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


# --- the single event's fast path (middleware/fastget.py) ---


@pytest.mark.parametrize(
    "path", ["/v1/events/101/42", "/v1/events/0101/042", "/v1/events/101/999999"]
)
async def test_the_fast_path_answers_as_the_routed_endpoint_does(
    client: httpx.AsyncClient, path: str
) -> None:
    """A query string sends the request past the fast path to the routed endpoint: both
    answer alike, headers included (the middleware around both adds them)."""
    fast = await client.get(path)
    routed = await client.get(path + "?via=router")
    assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
    skip = {"date", "x-request-id"}
    assert {k: v for k, v in fast.headers.items() if k not in skip} == {
        k: v for k, v in routed.headers.items() if k not in skip
    }
    if fast.status_code == 404:
        assert fast.json()["instance"] == path


async def test_the_fast_path_keeps_credentials_scopes_and_the_request_log(
    catalogue: str,
) -> None:
    made = await api_tokens(catalogue, reader=["read"], producer=["write"])
    reader, writer = made["reader"], made["producer"]
    settings = Settings(
        database_url=catalogue, auth_required=True, metrics_token=SecretStr("m" * 32)
    )
    async for api in app_client(settings):
        missing = await api.get("/v1/events/5/6")
        assert_problem(missing, 401, "needs a credential")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        unknown = await api.get("/v1/events/5/6", headers=bearer("ei_" + "x" * 40))
        assert_problem(unknown, 401, "unknown, expired or revoked")
        assert_problem(await api.get("/v1/events/5/6", headers=bearer(writer)), 403, "'read'")
        # A permitted request is answered (the catalogue is empty: 404 from the lookup).
        found = await api.get("/v1/events/5/6", headers=bearer(reader))
        assert_problem(found, 404, "run_number 5")
        metrics = await api.get("/metrics", headers=bearer("m" * 32))
        line = next(
            x
            for x in metrics.text.splitlines()
            if x.startswith("eventindex_http_requests_total{")
            and 'route="/v1/events/{run_number}/{event_number}"' in x
            and 'status="404"' in x
        )
        assert line.endswith(" 1.0")


async def test_priority_holds_bulk_steps_while_an_interactive_request_runs() -> None:
    """Bulk steps wait for the interactive request in flight, and go on when it ends; a
    request that turned bulk holds nothing back. (No clocks: the order of events.)"""
    priority = Priority(max_pause=60.0, short_pause=60.0)
    order: list[str] = []
    request = priority.claim()

    async def bulk_work() -> None:
        token = interactive._claim.set(priority.claim())
        try:
            interactive.as_bulk()
            await interactive.bulk_turn()
            order.append("bulk step")
        finally:
            interactive._claim.reset(token)

    task = asyncio.create_task(bulk_work())
    for _ in range(5):
        await asyncio.sleep(0)
    order.append("interactive answered")
    request.release()
    request.release()  # once only
    await task
    assert order == ["interactive answered", "bulk step"]
    assert priority.active == 0


async def test_a_bulk_step_waits_no_longer_than_its_pause() -> None:
    priority = Priority(max_pause=0.01, short_pause=0.01)
    held = priority.claim()
    token = interactive._claim.set(priority.claim())
    try:
        interactive.as_bulk()
        await interactive.bulk_turn()  # returns although the interactive claim is held
    finally:
        interactive._claim.reset(token)
    assert held.held
    assert priority.active == 1


async def test_bulk_steps_hold_back_longer_for_a_request_with_database_work() -> None:
    """A single-event request holds bulk steps back for the short pause only; one that
    weighs (a page-sized lookup) for as long as it runs, up to the long pause."""
    priority = Priority(max_pause=60.0, short_pause=0.001)
    request = priority.claim()
    token = interactive._claim.set(request)
    bulk_token = None
    try:
        bulk_claim = priority.claim()
        bulk_claim.release()  # a request that turned bulk
        bulk_token = interactive._claim.set(bulk_claim)
        await interactive.bulk_turn()  # back after the short pause although one is in flight
        interactive._claim.reset(bulk_token)
        bulk_token = None
        interactive.weighty()
        assert priority.weighty == 1

        async def bulk_step() -> None:
            interactive._claim.set(bulk_claim)
            await interactive.bulk_turn()

        step = asyncio.create_task(bulk_step())
        for _ in range(20):
            await asyncio.sleep(0.002)  # many short pauses: the step still waits
        assert not step.done()
        request.release()
        await step
        assert (priority.active, priority.weighty) == (0, 0)
    finally:
        if bulk_token is not None:
            interactive._claim.reset(bulk_token)
        interactive._claim.reset(token)
