"""An upload's body turned into rows: every form and split of the same events gives the
same rows; bad lines are numbered; memory stays within the shared budget."""

from __future__ import annotations

import gzip
import json
import random
import uuid

import pytest

from eventindex.ingest.filebody import BodyError, FileBody, MemoryBudget, RowBuffer

FUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def parse(body: bytes, fmt: str = "csv", *, gz: bool = False, seed: int = 0) -> list[str]:
    """The rows the body becomes, fed in random pieces."""
    rng = random.Random(seed)
    with RowBuffer(MemoryBudget(1 << 30)) as rows:
        fb = FileBody(FUID, 7, fmt, rows, gzip=gz)  # type: ignore[arg-type]
        at = 0
        while at < len(body):
            step = rng.randint(1, 200)
            fb.feed(body[at : at + step])
            at += step
        fb.finish()
        return b"".join(rows.chunks()).decode().splitlines()


def expected_rows(events: list[tuple[int, int, int]]) -> list[str]:
    return [f"{r},{e},{o},7,{FUID}" for r, e, o in events]


EVENTS = [(5, e, (e * 37) % 300) for e in range(1, 400)] + [(5, 2**62, 2**31 - 1)]


def test_csv_in_any_pieces_gives_the_rows() -> None:
    body = (
        "run_number,event_number,olt_result\n" + "".join(f"{r},{e},{o}\n" for r, e, o in EVENTS)
    ).encode()
    for seed in range(5):
        assert parse(body, seed=seed) == expected_rows(EVENTS)


def test_other_spellings_of_the_same_events_give_the_same_rows() -> None:
    csv_crlf_bom = (
        "\ufeffolt_result, run_number ,event_number\r\n"
        + "".join(f"{o}, {r},0{e}\r\n" for r, e, o in EVENTS)
    ).encode()
    assert parse(csv_crlf_bom) == expected_rows(EVENTS)
    ndjson = "".join(
        json.dumps({"olt_result": o, "event_number": e, "run_number": r}) + "\n"
        for r, e, o in EVENTS
    ).encode()
    assert parse(ndjson, "ndjson") == expected_rows(EVENTS)
    compact = "".join(
        f'{{"run_number":{r},"event_number":{e},"olt_result":{o}}}\n' for r, e, o in EVENTS
    ).encode()
    assert parse(compact, "ndjson") == expected_rows(EVENTS)
    no_final_newline = compact.rstrip(b"\n")
    assert parse(no_final_newline, "ndjson") == expected_rows(EVENTS)
    members = gzip.compress(compact[:500]) + gzip.compress(compact[500:])
    assert parse(members, "ndjson", gz=True) == expected_rows(EVENTS)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("5,x,1", "event_number 'x' is not a whole number"),
        ("5,-1,1", "event_number -1 is negative"),
        ("2147483648,1,1", "run_number 2147483648 is larger than 2147483647"),
        ("5,1,2147483648", "olt_result 2147483648 is larger than 2147483647"),
        ("5,1", "expected 3 values"),
        ("5,1,1,1", "expected 3 values"),
        ("5,,1", "event_number is missing"),
        ("", "the line is empty"),
        ("6,1,1", "not the file's run 5"),
        ("5,١٢,1", "is not a whole number"),
        ("5,+7,1", "is not a whole number"),
        ("5,-0,1", "event_number -0 is negative"),
        ("5,\u00a07,1", "is not a whole number"),
        ("5," + "0" * 3000 + "7,1", "is not a whole number"),
    ],
)
def test_a_bad_line_is_named_by_its_number(line: str, error: str) -> None:
    body = f"run_number,event_number,olt_result\n5,100,1\n{line}\n5,101,1\n".encode()
    with pytest.raises(BodyError) as caught:
        parse(body)
    assert caught.value.status == 422
    assert caught.value.extra["errors"][0]["line"] == 3
    assert error in caught.value.extra["errors"][0]["error"]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"run_number": 5, "event_number": true, "olt_result": 1}', "whole number"),
        ('{"run_number": 5, "event_number": 1.5, "olt_result": 1}', "whole number"),
        ('{"run_number": 5, "event_number": 1}', "olt_result is missing"),
        ('{"run_number": 5, "event_number": 1, "olt_result": 1, "fuid_raw": "x"}', "unknown"),
        ("[5, 1, 1]", "not a JSON object"),
        ('7{"run_number": 5, "event_number": 1, "olt_result": 1}', "not a JSON object"),
        ("5,1,1", "not a JSON object"),
        ('{"run_number": 5, "event_number": "1", "olt_result": 1}', "not a string"),
        ('{"run_number": 5, "event_number": 1, "olt_result": 1, "olt_result": 2}', "twice"),
        ("{", "not a JSON object"),
    ],
)
def test_a_bad_ndjson_line_is_named(line: str, error: str) -> None:
    body = ('{"run_number": 5, "event_number": 9, "olt_result": 1}\n' + line + "\n").encode()
    with pytest.raises(BodyError) as caught:
        parse(body, "ndjson")
    assert caught.value.extra["errors"][0]["line"] == 2
    assert error in caught.value.extra["errors"][0]["error"]


def test_reading_stops_at_the_fiftieth_bad_line() -> None:
    lines = ["5,x,1"] * 120
    body = ("run_number,event_number,olt_result\n" + "\n".join(lines) + "\n").encode()
    with pytest.raises(BodyError) as caught:
        parse(body)
    assert caught.value.extra["error_count"] == 50
    assert [e["line"] for e in caught.value.extra["errors"]] == list(range(2, 52))
    assert "reading stopped" in caught.value.detail


def test_a_body_is_taken_in_bounded_steps() -> None:
    """20 MB of bad lines in 20 kB of gzip: the work comes in steps of 64 kB, and stops
    at the fiftieth bad line."""
    bomb = gzip.compress(b"run_number,event_number,olt_result\n" + b"x\n" * 10_000_000)
    steps = 0
    with RowBuffer(MemoryBudget(1 << 30)) as rows:
        fb = FileBody(FUID, 7, "csv", rows, gzip=True)

        def take_all() -> None:
            nonlocal steps
            for _ in fb.steps(bomb):
                steps += 1

        with pytest.raises(BodyError):
            take_all()
    assert steps <= 2
    assert fb.decoded <= 2 * 64 * 1024


def test_gzip_that_is_not_or_ends_early_is_refused() -> None:
    body = gzip.compress(b"run_number,event_number,olt_result\n5,1,1\n")
    with pytest.raises(BodyError, match="truncated"):
        parse(body[:-6], gz=True)
    with pytest.raises(BodyError, match="corrupt"):
        parse(b"\x1f\x8b\x08\x00garbage-garbage", gz=True)


def test_the_decoded_size_is_limited_whatever_the_encoding() -> None:
    bomb = gzip.compress(b"run_number,event_number,olt_result\n" + b"5,1,1\n" * 1_000_000)
    with RowBuffer(MemoryBudget(1 << 30)) as rows:
        fb = FileBody(FUID, 7, "csv", rows, gzip=True, max_bytes=100_000)
        with pytest.raises(BodyError) as caught:
            fb.feed(bomb)
    assert caught.value.status == 413


def test_rows_beyond_the_shared_budget_go_to_a_file_and_the_budget_comes_back() -> None:
    budget = MemoryBudget(1000)
    first, second = RowBuffer(budget), RowBuffer(budget)
    first.write(b"a" * 800)
    second.write(b"b" * 300)  # over the budget: to a file
    second.write(b"c" * 10)
    assert not first.spilled
    assert second.spilled
    assert budget.used == 800
    assert b"".join(second.chunks()) == b"b" * 300 + b"c" * 10
    assert b"".join(second.chunks()) == b"b" * 300 + b"c" * 10  # again, from the start
    first.close()
    second.close()
    assert budget.used == 0
