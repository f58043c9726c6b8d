"""The shared text parser for pairs."""

from __future__ import annotations

import pytest

from eventindex.pairs import PairParser, PairSyntaxError, parse_text


def test_canonical_text_and_ndjson() -> None:
    assert parse_text(b"1 2\n3\t4\n") == ([1, 3], [2, 4])
    body = b'{"run_number": 5, "event_number": 6}\n{"run_number":7,"event_number":8}'
    assert parse_text(body) == ([5, 7], [6, 8])


@pytest.mark.parametrize(
    "line", [b"10 20", b"10:20", b"10,20", b"10/20", b" 10 , 20 ", b"10\t20\r", b"[10, 20]"]
)
def test_every_accepted_separator(line: bytes) -> None:
    assert parse_text(line + b"\n") == ([10], [20])


def test_header_comments_blank_lines_and_semicolons() -> None:
    body = b"run_number,event_number\n\n# a comment\n1 2 ; 3:4;\n5/6 # why\n"
    assert parse_text(body) == ([1, 3, 5], [2, 4, 6])


def test_header_only_on_the_first_line() -> None:
    with pytest.raises(PairSyntaxError) as info:
        parse_text(b"1 2\nrun event\n")
    assert info.value.errors[0].line == 2


def test_every_bad_line_is_reported_with_its_number() -> None:
    body = b"1 2\nx y\n3 4\n-1 5\n6 99999999999999999999\n7\n8 9 10\n"
    with pytest.raises(PairSyntaxError) as info:
        parse_text(body)
    errors = {e.line: e.reason for e in info.value.errors}
    assert set(errors) == {2, 4, 5, 6, 7}
    assert "run_number 'x' is not a whole number" in errors[2]
    assert "negative" in errors[4]
    assert "larger than 9223372036854775807" in errors[5]
    assert "expected 'run event'" in errors[6]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b'{"run_number": 1}', "missing event_number"),
        (b'{"run_number": 1, "event_number": 2, "x": 3}', "unexpected field 'x'"),
        (b'{"run_number": "1", "event_number": 2}', "not strings"),
        (b'{"run_number": 1, "event_number": 2.5}', "whole number"),
        (b'{"run_number": true, "event_number": 2}', "whole number"),
        (b'{"run_number": 1, "event_number"', "not valid JSON"),
        (b"2147483648 1", "larger than 2147483647"),
        (b"\xff\xfe 1", "UTF-8"),
    ],
)
def test_bad_lines(line: bytes, needle: str) -> None:
    with pytest.raises(PairSyntaxError) as info:
        parse_text(b"1 1\n" + line + b"\n")
    assert info.value.errors[0].line == 2
    assert needle in info.value.errors[0].reason


def test_fast_and_slow_paths_agree() -> None:
    canonical = b"".join(b"%d %d\n" % (i % 7, i * 13) for i in range(1000))
    # A comment forces the line-by-line path for the same pairs.
    assert parse_text(canonical) == parse_text(b"# c\n" + canonical)


def test_stop_at_first_failure_keeps_pairs_before_it() -> None:
    parser = PairParser()
    assert parser.feed(b"1 2\n3 4\n") == ([1, 3], [2, 4])
    assert parser.feed(b"5 6\nbad\n7 8\n") == ([5], [6])
    assert parser.failure is not None
    assert parser.failure.errors[0].line == 4
    assert parser.feed(b"9 10\n") == ([], [])


def test_line_numbers_continue_across_chunks() -> None:
    parser = PairParser(collect_errors=True)
    parser.feed(b"1 2\n3 4\n")
    parser.feed(b"# note\nnope\n")
    assert [e.line for e in parser.errors] == [4]
