"""The HTTP API fuzzed from its own OpenAPI document with schemathesis, on real servers.

Every operation and method the document lists, through every phase schemathesis has:
its examples, coverage (boundary values, and invalid data to probe validation, and
methods the document does not list), fuzzing (valid and invalid data), and stateful
sequences along the document's links (a new token or certificate principal is revoked, a
listed dataset is read, a file's events are streamed). Every built-in check runs on every
answer: no 5xx, status code, content type, headers and body as documented, invalid data
rejected, valid data accepted, Allow on 405, and in production mode that authentication is
enforced. NDJSON answers get a check of their own (below). Generation is bounded and seeded,
so a run is reproducible and takes seconds.

A development server (open) and a production server (authentication required) are each
fuzzed once; without a credential every /v1 operation of the production server must answer
401 problem details. Each defect the fuzzing found has a plain regression test at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from schemathesis.engine import events

from eventindex.app import create_app
from eventindex.config import Mode, Settings
from tests.support.catalogue import create_known_catalogue, drop_database, fuid_of
from tests.support.servers import Server, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

SEED = 20240917
MAX_EXAMPLES = 30
NDJSON = "application/x-ndjson"
PROBLEM_JSON = "application/problem+json"
ADMIN = "fuzz-admin"

# Valid data the document cannot tell from invalid: an Online Filter decision is a row of
# olt_bits, not a name the document could list, and run_min <= run_max is a relation of two
# parameters; line bodies (text, NDJSON) are documented as strings, their "run event" syntax
# in prose. Such values are answered 422, which these operations may give to valid data.
_DATA_DEPENDENT = ["2xx", "3xx", 401, 403, 404, 409, 422, 429]

# Defects in files outside this change, each with a strict xfail regression test below:
# (operation, failure, text in its message). When one is fixed its test passes, which a
# strict xfail reports as a failure, and both the marker and the entry here go.
KNOWN: list[tuple[str, str, str]] = []

CONFIG: dict[str, Any] = {
    "seed": SEED,
    "generation": {
        "max-examples": MAX_EXAMPLES,
        "mode": "all",  # valid and invalid data
        "database": "none",  # no replay of earlier runs' failures: the same cases every run
    },
    "phases": {"stateful": {"max-steps": 6}},
    "request-timeout": 30,
    "operations": [
        {
            "include-path-regex": "^/v1/(selection/|online-filter/overlap)",
            "checks": {"positive_data_acceptance": {"expected-statuses": _DATA_DEPENDENT}},
        },
        {
            "include-path": "/v1/lookup",
            "checks": {"positive_data_acceptance": {"expected-statuses": _DATA_DEPENDENT}},
        },
        {
            # expires_at must lie in the future, which JSON Schema cannot say.
            "include-path": "/v1/tokens",
            "include-method": "POST",
            "checks": {"positive_data_acceptance": {"expected-statuses": _DATA_DEPENDENT}},
        },
        {
            # ...nor the grammar of a distinguished name (documented in prose).
            "include-path": "/v1/certificates",
            "include-method": "POST",
            "checks": {"positive_data_acceptance": {"expected-statuses": _DATA_DEPENDENT}},
        },
    ],
}

# The NDJSON request bodies are documented as strings: send them as text.
schemathesis.serializer.alias(NDJSON, "text/plain")


@schemathesis.check
def ndjson_conformance(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> None:
    """An NDJSON answer is JSON objects, one per line, and none of them reports a failure:
    a stream that fails after its 200 went out ends with an ``{"error": ...}`` line, which
    no status code check can see."""
    content_type = response.headers.get("content-type", [""])[0]
    if response.status_code != 200 or not content_type.startswith(NDJSON):
        return
    lines = response.content.split(b"\n")
    if response.stream_cut_short:
        lines = lines[:-1]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"NDJSON line {number} is not JSON: {line[:200]!r}") from None
        if not isinstance(item, dict):
            raise AssertionError(f"NDJSON line {number} is not an object: {line[:200]!r}")
        error = item.get("error")
        if isinstance(error, dict) and error.get("status", 500) >= 500:
            raise AssertionError(f"the stream failed after its 200 (line {number}): {error}")


def fuzz(server: Server, **config: Any) -> tuple[list[str], set[str]]:
    """Run every phase of schemathesis against ``server``: the failures and errors found, and
    the links the stateful phase followed."""
    schema = schemathesis.openapi.from_url(
        server.url + "/openapi.json", config=schemathesis.Config.from_dict({**CONFIG, **config})
    )
    found: dict[tuple[str, str], str] = {}
    links: set[str] = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            links |= {
                case.transition.id
                for case in event.recorder.cases.values()
                if case.transition is not None and case.is_transition_applied
            }
            for case_id, checks in event.recorder.checks.items():
                node = event.recorder.cases.get(case_id)
                label = node.value.operation.label if node else event.recorder.label
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    if (label, failure.title) in {
                        (op, title) for op, title, text in KNOWN if text in failure.message
                    }:
                        continue
                    found.setdefault(
                        (label, failure.title),
                        f"{label}: {failure.title} [{check.name}]\n{failure.message}\n"
                        f"    {check.failure_info.code_sample}",
                    )
        elif isinstance(event, events.NonFatalError):
            found.setdefault((event.label, "error"), f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            raise event.exception
    return list(found.values()), links


def report(failures: list[str]) -> str:
    return f"{len(failures)} failures:\n\n" + "\n\n".join(failures)


# --- the servers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
async def fuzz_database(server_url: str) -> AsyncIterator[str]:
    """The known events in a database of these tests' own: the fuzzing creates and revokes
    tokens at random."""
    name = f"eventindex_fuzz_{os.getpid()}"
    url = await create_known_catalogue(server_url, name)
    yield url
    await drop_database(server_url, name)


@pytest.fixture(scope="module")
def dev_server(fuzz_database: str) -> Iterator[Server]:
    with run_server(fuzz_database) as server:
        yield server


@pytest.fixture(scope="module")
def prod_server(fuzz_database: str) -> Iterator[Server]:
    with run_server(fuzz_database, EVENTINDEX_MODE="production") as server:
        yield server


def new_token(database_url: str, name: str, *scopes: str) -> str:
    command = [sys.executable, "-m", "eventindex", "token", "--database-url", database_url]
    command += ["create", "--name", name, *(f"--scope={scope}" for scope in scopes)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("ei_")
    return token


@pytest.fixture(scope="module")
def admin_token(fuzz_database: str) -> str:
    return new_token(fuzz_database, ADMIN, "read", "write", "admin")


@pytest.fixture(scope="module")
def read_token(fuzz_database: str) -> str:
    return new_token(fuzz_database, "fuzz-reader", "read")


# --- the fuzzing ---------------------------------------------------------------------


def test_fuzz_development(dev_server: Server) -> None:
    """Open: the document makes the credential optional, and requests with or without one
    are answered alike."""
    failures, links = fuzz(dev_server)
    assert not failures, report(failures)
    assert links, "the stateful phase followed no link"


def test_fuzz_production(prod_server: Server, admin_token: str) -> None:
    """With an admin token every check passes, ``ignored_auth`` included: it repeats
    answered requests without the credential and with a wrong one, and wants 401."""
    failures, links = fuzz(prod_server, auth={"openapi": {"bearer": {"bearer": admin_token}}})
    assert not failures, report(failures)
    assert links, "the stateful phase followed no link"
    still = httpx.get(prod_server.url + "/v1/tokens", headers=bearer(admin_token))
    assert still.status_code == 200, "the fuzzing revoked its own token"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- the document and authentication, operation by operation -------------------------------


def _document() -> dict[str, Any]:
    """The OpenAPI document as a production server serves it (the app is built, not
    started)."""
    settings = Settings(database_url="postgresql://localhost/unused", mode=Mode.PRODUCTION)
    return create_app(settings).openapi()


DOCUMENT = _document()
OPERATIONS = [
    f"{method.upper()} {path}" for path, item in DOCUMENT["paths"].items() for method in item
]
V1_OPERATIONS = [op for op in OPERATIONS if op.split()[1].startswith("/v1/")]
PROBLEM_CONTENT = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}


def _operation(op: str) -> dict[str, Any]:
    method, path = op.split()
    operation: dict[str, Any] = DOCUMENT["paths"][path][method.lower()]
    return operation


def test_document_declares_the_bearer_credential() -> None:
    """Found: the document had no security scheme, so nothing (schemathesis' ignored_auth
    check included) could tell that /v1 wants a credential."""
    scheme = DOCUMENT["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for op in OPERATIONS:
        expected: list[dict[str, list[str]]] | None = (
            [{"bearer": []}] if op in V1_OPERATIONS else None
        )
        assert _operation(op).get("security") == expected, op


@pytest.mark.parametrize("op", OPERATIONS)
def test_errors_are_documented_as_problem_details(op: str) -> None:
    """Found: errors were documented as application/json (FastAPI puts a response `model`
    under the route's media type) and served as application/problem+json."""
    assert "ProblemDetail" in DOCUMENT["components"]["schemas"]
    for status, response in _operation(op)["responses"].items():
        if int(status) >= 400 and op != "GET /ready":  # /ready's 503 is its Readiness
            assert response["content"] == PROBLEM_CONTENT, (op, status)


@pytest.mark.parametrize("op", V1_OPERATIONS)
def test_auth_errors_are_documented(op: str) -> None:
    """Found (production mode): POST /v1/lookup answers 401 without a credential and does
    not say so. Every /v1 operation may answer 401 and 403."""
    assert {"401", "403"} <= set(_operation(op)["responses"]), op


def test_links_lead_to_documented_operations() -> None:
    """The links the stateful phase follows: each names an operation of the document, and a
    parameter of it for each value it passes on."""
    found = set()
    for op in OPERATIONS:
        for status, response in _operation(op)["responses"].items():
            for name, link in response.get("links", {}).items():
                _, _, path, method = link["operationRef"].split("/")
                target = DOCUMENT["paths"][path.replace("~1", "/").replace("~0", "~")][method]
                names = {p["name"] for p in target.get("parameters", [])}
                assert set(link["parameters"]) <= names, (op, name)
                found.add(f"{op} {status} {name}")
    assert "POST /v1/tokens 201 RevokeToken" in found
    assert "POST /v1/certificates 201 RevokeCertificate" in found
    assert "GET /v1/datasets/{dataset}/files 200 GetFile" in found


# Values for path parameters and bodies that would be answered (200, 201 or 404) with a
# credential: without one, only the credential is what is wrong.
PATH_VALUES = {
    "run_number": "100",
    "event_number": "1",
    "run": "100",
    "dataset": "1",
    "fuid": fuid_of(100, 1),
    "name": "nobody",
}
BODIES = {
    "POST /v1/lookup": {"pairs": [[100, 1]]},
    "POST /v1/tokens": {"name": "intruder", "scopes": ["admin"]},
    "POST /v1/certificates": {"dn": "CN=Intruder,O=X", "name": "intruder", "scopes": ["admin"]},
    "POST /v1/datasets": {"name": "intruder"},
    # (A file's events are CSV or NDJSON: the credential is looked at before the body.)
    "PUT /v1/files/{fuid}": {"run_number": 100, "event_number": 1, "olt_result": 1},
}
ADMIN_PATHS = ("/v1/tokens", "/v1/certificates")
# What the read scope may not do besides administering: writing.
WRITE_OPS = ("PUT /v1/files/{fuid}", "POST /v1/datasets", "POST /v1/datasets/{dataset}/close")


@pytest.mark.parametrize("op", V1_OPERATIONS)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer ei_not-a-token", "Bearer not-a-jwt", "Basic eDp5"]
)
def test_production_wants_a_credential(
    prod_server: Server, op: str, authorization: str | None
) -> None:
    """Every /v1 operation of a production server, without a (valid bearer) credential:
    401 problem details with a Bearer challenge, whatever the operation."""
    method, path = op.split()
    has_body = "requestBody" in _operation(op)
    assert has_body == (op in BODIES), f"{op}: add a body to BODIES (or drop it)"
    response = httpx.request(
        method,
        prod_server.url + path.format(**PATH_VALUES),
        json=BODIES.get(op),
        headers={"authorization": authorization} if authorization else {},
    )
    assert response.status_code == 401, (op, response.text)
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["status"] == 401


@pytest.mark.parametrize("op", V1_OPERATIONS)
def test_production_checks_the_scope(prod_server: Server, read_token: str, op: str) -> None:
    """A token with the read scope reads, and is refused (403) what needs admin or write."""
    method, path = op.split()
    response = httpx.request(
        method,
        prod_server.url + path.format(**PATH_VALUES),
        json=BODIES.get(op),
        headers=bearer(read_token),
    )
    if path.startswith(ADMIN_PATHS) or op in WRITE_OPS:
        assert response.status_code == 403, (op, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
    else:
        assert response.status_code in (200, 404), (op, response.text)


# --- regressions: each defect the fuzzing found, as a plain request ---------------------


def test_catalogue_validation_error_is_documented_problem_json(dev_server: Server) -> None:
    """Found: GET /v1/datasets?limit=0 answered 422 application/problem+json; the document
    said application/json (so did every error of the catalogue and token operations)."""
    response = httpx.get(dev_server.url + "/v1/datasets", params={"limit": 0})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["errors"][0]["loc"] == "limit"
    assert _operation("GET /v1/datasets")["responses"]["422"]["content"] == PROBLEM_CONTENT


def test_token_scopes_are_documented(prod_server: Server, admin_token: str) -> None:
    """Found: scopes were documented as any strings; ``[""]`` was answered 422 by the
    handler. The document now lists the scopes, and validation names the bad one."""
    schema = DOCUMENT["components"]["schemas"]["TokenRequest"]["properties"]["scopes"]
    assert sorted(schema["items"]["enum"]) == ["admin", "read", "write"]
    response = httpx.post(
        prod_server.url + "/v1/tokens",
        json={"name": "grid-picking", "scopes": [""]},
        headers=bearer(admin_token),
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["errors"][0]["loc"] == "scopes[0]"


def test_unreadable_token_body_is_documented(prod_server: Server, admin_token: str) -> None:
    """Found: a body that is not UTF-8 was answered 400, which the document did not list."""
    response = httpx.post(
        prod_server.url + "/v1/tokens",
        content=b"\x15\x10\xff\xfe\x1e\x0f\xb66",
        headers={"content-type": "application/json", **bearer(admin_token)},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM_JSON
    assert _operation("POST /v1/tokens")["responses"]["400"]["content"] == PROBLEM_CONTENT


def test_lookup_takes_integral_numbers_as_json_schema_does(dev_server: Server) -> None:
    """Found: ``{"run_number": 1244.0, ...}`` is an integer to JSON Schema (and so to the
    document) but was answered 422. Integral numbers are taken; others still are not."""
    url = dev_server.url + "/v1/lookup"
    body = {"pairs": [{"run_number": 100.0, "event_number": 1.0}, [101, 2.0], [100, 3]]}
    response = httpx.post(url, json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["run_number"], r["event_number"], r["found"]) for r in results] == [
        (100, 1, True),
        (101, 2, True),
        (100, 3, True),
    ]
    assert results[0]["fuid_raw"] == fuid_of(100, 1)
    for bad in (1.5, "100", True, None, 1e300):
        response = httpx.post(url, json={"pairs": [[bad, 1]]})
        assert response.status_code == 422, bad
        assert response.json()["errors"][0]["pair"] == 0


def test_405_allow_lists_every_method(prod_server: Server) -> None:
    """Found: OPTIONS /v1/tokens answered 405 with ``Allow: POST``; GET is there too
    (Starlette names only the methods of the first route at the path)."""
    response = httpx.request("OPTIONS", prod_server.url + "/v1/tokens")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.headers["content-type"] == PROBLEM_JSON
    response = httpx.put(prod_server.url + "/v1/tokens/someone")
    assert (response.status_code, response.headers["allow"]) == (405, "DELETE")


def test_metrics_content_type_is_documented(dev_server: Server) -> None:
    """The document gave /metrics' 200 no content at all."""
    response = httpx.get(dev_server.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert set(_operation("GET /metrics")["responses"]["200"]["content"]) == {"text/plain"}


def test_open_service_documents_the_credential_as_optional() -> None:
    """Found (development mode): the document said a credential was required by a service
    that answers without one."""
    document = create_app(Settings(database_url="postgresql://unused@127.0.0.1:1/x")).openapi()
    for op in V1_OPERATIONS:
        method, path = op.split()
        if path.startswith(ADMIN_PATHS):
            assert path not in document["paths"], "an open service administers no credentials"
            continue
        assert document["paths"][path][method.lower()]["security"] == [{}, {"bearer": []}], op
