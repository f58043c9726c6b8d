"""Property-based tests of the text-pair parser, the streamed request reader and the JSON body.

Any byte sequence gives pairs or a clear error naming a line of the input, never another
exception; valid input in every accepted format round-trips; and nothing depends on how
the input was cut into chunks.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass
from typing import Protocol, TypeVar
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st

from eventindex import streaming
from eventindex.config import MAX_EVENT_NUMBER, MAX_RUN_NUMBER
from eventindex.pairs import (
    MAX_REPORTED_ERRORS,
    JsonBodyError,
    LineError,
    PairParser,
    PairSyntaxError,
    parse_text,
)
from eventindex.problems import Problem
from eventindex.routes.events import json_body_problem
from eventindex.schemas import parse_lookup_request
from eventindex.spool import BodyTooLarge, Spool
from eventindex.streaming import spooled_batches, syntax_problem

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

# Reproducible in CI: the same examples every run, nothing kept between runs.
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Pair = tuple[int, int]
T = TypeVar("T")


class Draw(Protocol):
    """A draw function: a composite strategy's, or ``st.data()``'s ``draw``."""

    def __call__(self, strategy: st.SearchStrategy[T], /) -> T: ...


# --- input strategies -------------------------------------------------------------------

RUNS = st.one_of(
    st.integers(0, MAX_RUN_NUMBER), st.sampled_from([0, 1, MAX_RUN_NUMBER, MAX_RUN_NUMBER - 1])
)
EVENTS = st.one_of(
    st.integers(0, MAX_EVENT_NUMBER),
    st.integers(0, 10**6),
    st.sampled_from([0, 1, MAX_EVENT_NUMBER, MAX_EVENT_NUMBER - 1]),
)
PAIRS = st.tuples(RUNS, EVENTS)

# Number-like text that is sometimes right and often just wrong.
NUMBER_TEXT = st.one_of(
    st.integers(0, MAX_EVENT_NUMBER).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.integers(0, 10**6).map(lambda n: f"0{n}"),  # a leading zero: fine in text, not in JSON
    st.from_regex(r"[+-]{1,3}[0-9]{1,3}", fullmatch=True),
    st.sampled_from(
        [
            "0",
            "00",
            "007",
            "+5",
            "-0",
            "+-5",
            "--1",
            "2147483647",
            "2147483648",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551616",
            "-9223372036854775809",
            "1e3",
            "1E400",
            "1.0",
            "1.5",
            "-1",
            "\u0663",  # ARABIC-INDIC DIGIT THREE
            "\uff13",  # FULLWIDTH DIGIT THREE
            "1\u0663",
            "1_000",
            "0x1f",
            "9" * 30,
            "9" * 5000,
            "Infinity",
            "NaN",
            "true",
            "null",
            '"1"',
        ]
    ),
)

TOKENS = [
    b" ",
    b"\t",
    b":",
    b",",
    b"/",
    b";",
    b"#",
    b"\n",
    b"\r\n",
    b"\r",
    b"\x00",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"run_number"',
    b'"event_number"',
    b'"extra"',
    b'"',
    b"\xef\xbb\xbf",  # BOM
    b"\xff",
    b"\xc3",  # a lead byte without its continuation
    b"\x80",
    b"\xed\xa0\x80",  # an encoded surrogate: not UTF-8
    b"\x0b",
    b"\x0c",
    "\u2028".encode(),
    "\u00a0".encode(),
    "\u0663".encode(),
    "\uff13".encode(),
    b"run_number,event_number",
    b"run event",
]

SOUP = st.lists(
    st.one_of(
        st.sampled_from(TOKENS),
        NUMBER_TEXT.map(str.encode),
        st.binary(max_size=3),
    ),
    max_size=40,
).map(b"".join)

SPACE = st.sampled_from(["", "", " ", "\t", "  \t "])
JSON_SPACE = st.sampled_from(["", "", " ", "\t "])
SEPARATOR = st.one_of(
    st.sampled_from([" ", "\t", "  "]),
    st.builds(lambda a, s, b: a + s + b, SPACE, st.sampled_from(":,/"), SPACE),
)
COMMENT_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\n"),
    max_size=12,
)
# A header: the first content line, with no digit; not a comment, not JSON.
HEADER = st.one_of(
    st.sampled_from(["run_number,event_number", "run event", "run:event", "RUN / EVENT"]),
    st.from_regex(r"[A-Za-z_][A-Za-z_ ,;:/\t]{0,20}", fullmatch=True),
)


FILLERS = st.sampled_from([0, 0, 0, 0, 0, 1, 2])


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in n draws (integers(0, n) would give 0 far more often)."""
    return st.sampled_from([True] + [False] * (n - 1))


def _number(draw: st.DrawFn, value: int, padded: bool) -> str:
    zeros = draw(st.sampled_from([0, 0, 0, 1, 3])) if padded else 0
    return "0" * zeros + str(value)


def _text_pair(draw: st.DrawFn, pair: Pair) -> str:
    run = _number(draw, pair[0], padded=True)
    event = _number(draw, pair[1], padded=True)
    return run + draw(SEPARATOR) + event


def _json_pair(draw: st.DrawFn, pair: Pair) -> str:
    s = [draw(JSON_SPACE) for _ in range(8)]
    if draw(st.booleans()):
        return f"[{s[0]}{pair[0]}{s[1]},{s[2]}{pair[1]}{s[3]}]"
    fields = [f'"run_number"{s[0]}:{s[1]}{pair[0]}', f'"event_number"{s[2]}:{s[3]}{pair[1]}']
    if draw(one_in(4)):
        fields.reverse()
    return "{" + s[4] + fields[0] + s[5] + "," + s[6] + fields[1] + s[7] + "}"


@st.composite
def pair_lines(draw: st.DrawFn, pairs: list[Pair]) -> list[str]:
    """The pairs as lines of content, in order, in a mix of every accepted format."""
    lines: list[str] = []
    i = 0
    while i < len(pairs):
        kind = draw(st.sampled_from(["text", "text", "json", "json", "several"]))
        if kind == "json":
            body, i = _json_pair(draw, pairs[i]), i + 1
        else:
            n = draw(st.integers(2, 4)) if kind == "several" else 1
            group, i = pairs[i : i + n], i + n
            parts = [_text_pair(draw, p) for p in group]
            body = ";".join(draw(SPACE) + p + draw(SPACE) for p in parts)
            if kind == "several" and draw(st.booleans()):
                body += ";"
            if draw(one_in(5)):
                body += draw(SPACE) + "#" + draw(COMMENT_TEXT)
        lines.append(draw(SPACE) + body + draw(SPACE))
    return lines


def _filler(draw: st.DrawFn) -> str:
    """A line that is neither a pair nor an error: blank, or a comment."""
    if draw(st.booleans()):
        return draw(SPACE)
    return draw(SPACE) + "#" + draw(COMMENT_TEXT)


def _join(draw: st.DrawFn, lines: list[str]) -> bytes:
    ends = [draw(st.sampled_from(["\n", "\n", "\r\n"])) for _ in lines]
    unterminated: bool = draw(one_in(3))
    if ends and unterminated:
        ends[-1] = ""
    return "".join(line + end for line, end in zip(lines, ends, strict=True)).encode()


@st.composite
def valid_documents(draw: st.DrawFn) -> tuple[bytes, list[Pair]]:
    """A body in the accepted formats, and the pairs it holds."""
    pairs = draw(st.lists(PAIRS, max_size=25))
    content = draw(pair_lines(pairs))
    lines: list[str] = []
    if draw(one_in(4)):
        lines += [_filler(draw) for _ in range(draw(st.integers(0, 2)))]
        lines.append(draw(SPACE) + draw(HEADER) + draw(SPACE))
    for line in content:
        lines += [_filler(draw) for _ in range(draw(FILLERS))]
        lines.append(line)
    if draw(one_in(5)):
        lines.append(_filler(draw))
    body = _join(draw, lines)
    if draw(one_in(6)):
        body = b"\xef\xbb\xbf" + body
    return body, pairs


@st.composite
def near_valid_lines(draw: st.DrawFn) -> bytes:
    """A line that is a pair, or nearly one: mutated, or with wrong numbers or fields."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return "".join(draw(pair_lines([draw(PAIRS)]))).encode()
    if kind == 1:
        line = "".join(draw(pair_lines(draw(st.lists(PAIRS, min_size=1, max_size=3))))).encode()
        at = draw(st.integers(0, len(line)))
        cut = draw(st.integers(0, 2))
        return line[:at] + draw(st.sampled_from(TOKENS)) + line[at + cut :]
    if kind == 2:
        a, b = draw(NUMBER_TEXT), draw(NUMBER_TEXT)
        shape = draw(
            st.sampled_from(
                [
                    "{a} {b}",
                    "{a}:{b}",
                    "{a},{b}",
                    "{a}/{b}",
                    "[{a}, {b}]",
                    "[{a}]",
                    "[{a}, {b}, {a}]",
                    '{{"run_number": {a}, "event_number": {b}}}',
                    '{{"run_number": {a}}}',
                    '{{"run_number": {a}, "event_number": {b}, "x": 1}}',
                    '{{"event_number": {b}, "run_number": {a}}}',
                ]
            )
        )
        return shape.format(a=a, b=b).encode()
    if kind == 3:
        return draw(SOUP).replace(b"\n", b"")
    return draw(st.binary(max_size=12)).replace(b"\n", b"")


@st.composite
def line_documents(draw: st.DrawFn) -> bytes:
    """Lines mostly valid, some nearly, with CR/LF and an occasional header or BOM."""
    lines = draw(
        st.lists(
            st.one_of(
                near_valid_lines(),
                st.builds(lambda d: d[0].rstrip(b"\r\n"), valid_documents()),
                st.just(b""),
                HEADER.map(str.encode),
            ),
            max_size=15,
        )
    )
    ends = [draw(st.sampled_from([b"\n", b"\n", b"\r\n", b"\r"])) for _ in lines]
    body = b"".join(line + end for line, end in zip(lines, ends, strict=True))
    if body and draw(st.booleans()):
        body = body[: -len(ends[-1])]
    if draw(one_in(6)):
        body = b"\xef\xbb\xbf" + body
    return body


DIGITS = st.one_of(
    st.integers(0, 10**6).map(str),
    st.from_regex(r"0[0-9]{0,3}", fullmatch=True),
    st.from_regex(r"[0-9]{9,21}", fullmatch=True),
)
FAST_SHAPES = {
    "text": st.builds(lambda a, sep, b: f"{a}{sep}{b}", DIGITS, SEPARATOR, DIGITS),
    "ndjson": st.builds(lambda a, b: f'{{"run_number": {a}, "event_number": {b}}}', DIGITS, DIGITS),
}


@st.composite
def fast_shaped_documents(draw: st.DrawFn) -> bytes:
    """Lines all of one shape the fast paths take whole, with digits of any length."""
    shape = FAST_SHAPES[draw(st.sampled_from(sorted(FAST_SHAPES)))]
    lines = draw(st.lists(shape, min_size=1, max_size=8))
    return _join(draw, lines)


ANY_INPUT = st.one_of(
    st.binary(max_size=300),
    SOUP,
    line_documents(),
    valid_documents().map(lambda d: d[0]),
    fast_shaped_documents(),
)

# --- helpers ----------------------------------------------------------------------------


def split_lines(data: bytes) -> list[bytes]:
    """The input's lines as the parser counts them: cut after each LF, ends kept."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def line_chunks(draw: Draw, data: bytes) -> list[bytes]:
    """The input cut into chunks of whole lines, at lines the strategy chooses."""
    lines = split_lines(data)
    cuts = draw(st.lists(st.booleans(), min_size=len(lines), max_size=len(lines)))
    chunks: list[bytes] = []
    current = b""
    for line, cut in zip(lines, cuts, strict=True):
        current += line
        if cut:
            chunks.append(current)
            current = b""
    if current:
        chunks.append(current)
    assert b"".join(chunks) == data
    return chunks


def byte_chunks(draw: Draw, data: bytes) -> list[bytes]:
    """The input cut anywhere, lines or not."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    assert b"".join(chunks) == data
    return chunks


@dataclass(frozen=True)
class Outcome:
    pairs: list[Pair]
    errors: list[LineError]  # collected; or the one failure
    error_count: int
    line_no: int


def run_parser(chunks: list[bytes], collect: bool) -> Outcome:
    """Feed the chunks in order; whatever happens, feed itself must not raise."""
    parser = PairParser(collect_errors=collect)
    pairs: list[Pair] = []
    for chunk in chunks:
        runs, events = parser.feed(chunk)
        assert len(runs) == len(events)
        pairs += zip(runs, events, strict=True)
    if collect:
        assert parser.failure is None
        errors = parser.errors
    else:
        assert parser.errors == []
        errors = [] if parser.failure is None else parser.failure.errors
        assert len(errors) == parser.error_count <= 1
    return Outcome(pairs, errors, parser.error_count, parser.line_no)


def slow_oracle(data: bytes, collect: bool) -> Outcome:
    """The line-by-line parser alone, the whole input at once: what the fast paths must match."""
    parser = PairParser(collect_errors=collect)
    runs, events = parser._feed_slow(data) if data else ([], [])
    errors = parser.errors if collect else (parser.failure.errors if parser.failure else [])
    return Outcome(list(zip(runs, events, strict=True)), errors, parser.error_count, -1)


def assert_pairs_in_range(pairs: list[Pair]) -> None:
    for run, event in pairs:
        assert type(run) is int
        assert type(event) is int
        assert 0 <= run <= MAX_RUN_NUMBER
        assert 0 <= event <= MAX_EVENT_NUMBER


REASONS = (
    "run_number ",
    "event_number ",
    "expected ",
    "not valid UTF-8",
    "not valid JSON (",
    "missing ",
    "unexpected field ",
    "numbers must be JSON numbers",
)


def assert_clear_errors(errors: list[LineError], n_lines: int) -> None:
    lines = [e.line for e in errors]
    assert lines == sorted(set(lines)), "one error per line, in increasing order"
    for error in errors:
        assert 1 <= error.line <= n_lines
        assert isinstance(error.reason, str)
        assert error.reason.strip()
        assert len(error.reason) < 300, "a reason is a sentence, not the whole line"
        assert error.reason.startswith(REASONS), "a reason of ours, not Python's"
        assert str(error) == f"line {error.line}: {error.reason}"
        # Sent back as JSON in problem details and stream lines.
        orjson.dumps({"line": error.line, "error": error.reason})


def assert_same(a: Outcome, b: Outcome) -> None:
    assert a.pairs == b.pairs
    assert a.errors == b.errors
    assert a.error_count == b.error_count


# --- the parser -------------------------------------------------------------------------


@PROPERTY
@given(data=ANY_INPUT, draw=st.data())
@example(data=b'{"run_number":01,"event_number":2}\n', draw=None)
@example(data=b'{"run_number":1,"event_number":00}\n', draw=None)
@example(data=b"\xff\nrun event\n1 2\n", draw=None)
@example(data=b"+-5 1\n", draw=None)
@example(data=b"1 " + b"9" * 5000 + b"\n", draw=None)
@example(data=b" \xef\xbb\xbf [1, 2]\n", draw=None)
@example(data=b"[1, 18446744073709551616]\n", draw=None)
@example(data=b"[1, 1e300]\n", draw=None)
@example(data=b"\xe1\x80\x80\n0/++0", draw=None)
@example(data=b"\xef\xbb\xbf0 0\n" + b"9" * 400 + b"\n", draw=None)
def test_any_bytes_give_pairs_or_errors_naming_a_line(
    data: bytes, draw: st.DataObject | None
) -> None:
    n_lines = len(split_lines(data))
    outcomes = {}
    for collect in (False, True):
        chunks = line_chunks(draw.draw, data) if draw is not None else [data]
        outcome = outcomes[collect] = run_parser(chunks, collect)
        assert_pairs_in_range(outcome.pairs)
        assert_clear_errors(outcome.errors, n_lines)
        # Whatever the chunks, the same answer as the line-by-line parser on the whole input.
        assert_same(outcome, slow_oracle(data, collect))
        assert_same(outcome, run_parser([data], collect))
        assert_same(outcome, run_parser(split_lines(data), collect))
    stopped, collected = outcomes[False], outcomes[True]
    assert collected.line_no == n_lines
    assert len(collected.errors) == min(collected.error_count, MAX_REPORTED_ERRORS)
    # Stopping at the first bad line gives the pairs before it and that line's error.
    assert stopped.errors == collected.errors[:1]
    if collected.errors:
        before = run_parser(split_lines(data)[: collected.errors[0].line - 1], True)
        assert before.errors == []
        assert stopped.pairs == before.pairs
    else:
        assert stopped.pairs == collected.pairs
    # parse_text: the whole body, every bad line reported at once.
    if collected.errors:
        with pytest.raises(PairSyntaxError) as info:
            parse_text(data)
        assert info.value.errors == collected.errors
        assert info.value.total == collected.error_count
        first = collected.errors[0]
        assert str(info.value).startswith(f"line {first.line}: {first.reason}")
        orjson.dumps(syntax_problem(info.value).body("/v1/lookup"))
    else:
        runs, events = parse_text(data)
        assert list(zip(runs, events, strict=True)) == collected.pairs


@PROPERTY
@given(document=valid_documents(), draw=st.data())
@example(
    document=(b'\xef\xbb\xbf {"event_number":0,"run_number":0}\n0 0#\n0 0\n', [(0, 0)] * 3),
    draw=None,
).via("a BOM, then spaces, then JSON: was read as text")
def test_valid_input_round_trips_in_any_chunks(
    document: tuple[bytes, list[Pair]], draw: st.DataObject | None
) -> None:
    data, pairs = document
    for collect in (False, True):
        chunks = line_chunks(draw.draw, data) if draw is not None else split_lines(data)
        for outcome in (run_parser(chunks, collect), run_parser([data], collect)):
            assert outcome.errors == []
            assert outcome.pairs == pairs
    assert parse_text(data) == ([r for r, _ in pairs], [e for _, e in pairs])


BAD_LINES = [
    b"x y",
    b"1",
    b"1 2 3",
    b"1 2 ;; x",
    b"-1 2",
    b"1 -2",
    b"2147483648 1",
    b"1 9223372036854775808",
    b"1 " + b"9" * 5000,
    b"+-5 1",
    b"\xff 1",
    b"1 \xc3",
    b"\xd9\xa3 1",  # an Arabic-Indic digit
    b"\xef\xbc\x93 1",  # a full-width digit
    b"1\x002",
    b"1,,2",
    b"1 2 # ok\x80",
    b'{"run_number": 1}',
    b'{"run_number": 1, "event_number": 2, "x": 3}',
    b'{"run_number": "1", "event_number": 2}',
    b'{"run_number": 01, "event_number": 2}',
    b'{"run_number": 1, "event_number": 2} # no',
    b"[1]",
    b"[1, 2, 3]",
    b"[1, 2.0]",
    b"[1, 18446744073709551616]",
    b"[1, true]",
    b"[" * 2000 + b"]" * 2000,
    b"{",
    b"run event",  # a header anywhere but before the first content
]


@PROPERTY
@given(document=valid_documents(), bad=st.sampled_from(BAD_LINES), where=st.data())
def test_a_bad_line_is_named_by_its_number(
    document: tuple[bytes, list[Pair]], bad: bytes, where: st.DataObject
) -> None:
    data, pairs = document
    lines = split_lines(data)
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"
    # After the first content line, so that a header-like line is an error too.
    first_content = next(
        (
            n
            for n, line in enumerate(lines)
            if (text := line.decode().strip().lstrip("\ufeff").strip()) and not text.startswith("#")
        ),
        None,
    )
    if first_content is None:
        lines.insert(0, b"1 1\n")
        pairs = [(1, 1), *pairs]
        first_content = 0
    at = where.draw(st.integers(first_content + 1, len(lines)))
    lines.insert(at, bad + where.draw(st.sampled_from([b"\n", b"\r\n"])))
    body = b"".join(lines)
    line_number = at + 1
    before = sum(len(run_parser([line], True).pairs) for line in lines[:at])

    for chunks in (line_chunks(where.draw, body), [body]):
        collected = run_parser(chunks, True)
        assert [e.line for e in collected.errors] == [line_number]
        assert collected.pairs == pairs
        stopped = run_parser(chunks, False)
        assert stopped.errors == collected.errors
        assert stopped.pairs == pairs[:before]


def test_error_count_beyond_the_reported_cap() -> None:
    body = b"1 2\n" + b"x y\n" * (MAX_REPORTED_ERRORS + 5) + b"3 4\n"
    with pytest.raises(PairSyntaxError) as info:
        parse_text(body)
    assert len(info.value.errors) == MAX_REPORTED_ERRORS
    assert info.value.total == MAX_REPORTED_ERRORS + 5
    assert [e.line for e in info.value.errors] == list(range(2, MAX_REPORTED_ERRORS + 2))
    parser = PairParser(collect_errors=True)
    assert parser.feed(body) == ([1, 3], [2, 4])
    assert parser.error_count == MAX_REPORTED_ERRORS + 5
    assert str(info.value).endswith(f"(and {MAX_REPORTED_ERRORS + 4} more bad lines)")


# --- the streamed request reader --------------------------------------------------------


@dataclass
class ReaderCase:
    chunks: list[bytes]
    batch_size: int
    collect: bool
    memory_limit: int
    max_line: int
    live: bool  # written while it is read, rather than all before


async def read_batches(
    case: ReaderCase, total_limit: int
) -> tuple[list[list[Pair]], BaseException | None, PairParser]:
    spool = Spool(case.memory_limit, total_limit)
    parser = PairParser(collect_errors=case.collect)

    async def write(chunks: list[bytes]) -> None:
        for chunk in chunks:
            spool.write(chunk)
            if case.live:
                await asyncio.sleep(0)
        spool.finish()

    batches: list[list[Pair]] = []
    error: BaseException | None = None
    writer = None
    if case.live:
        head = case.chunks[: len(case.chunks) // 2]
        for chunk in head:
            spool.write(chunk)
        writer = asyncio.create_task(write(case.chunks[len(head) :]))
    else:
        await write(case.chunks)
    try:
        async for runs, events in spooled_batches(spool, case.batch_size, parser):
            assert len(runs) == len(events)
            # Streamed batches carry the digits the database is sent.
            batches.append([(int(r), int(e)) for r, e in zip(runs, events, strict=True)])
    except (PairSyntaxError, Problem, BodyTooLarge) as exc:
        error = exc
    finally:
        if writer is not None:
            await writer
        spool.close()
    return batches, error, parser


def expected_reading(
    data: bytes, collect: bool, max_line: int
) -> tuple[list[Pair], PairSyntaxError | None, PairParser]:
    """What the reader must make of the whole body: the parser's answer, stopped at the
    first line longer than ``max_line`` bytes."""
    lines = split_lines(data)
    too_long = next((n for n, line in enumerate(lines) if len(line.rstrip(b"\n")) > max_line), None)
    head = data if too_long is None else b"".join(lines[:too_long])
    parser = PairParser(collect_errors=collect)
    runs, events = parser.feed(head)
    failure = parser.failure
    if failure is None and too_long is not None:
        failure = PairSyntaxError.single(too_long + 1, f"line longer than {max_line} bytes")
    return list(zip(runs, events, strict=True)), failure, parser


@st.composite
def reader_cases(draw: st.DrawFn, inputs: st.SearchStrategy[bytes] = ANY_INPUT) -> ReaderCase:
    data = draw(inputs)
    return ReaderCase(
        chunks=byte_chunks(draw, data),
        batch_size=draw(st.integers(1, 5)),
        collect=draw(st.booleans()),
        memory_limit=draw(st.sampled_from([0, 1, 7, 64, 1 << 20])),
        max_line=draw(st.sampled_from([4, 16, 64, streaming.MAX_LINE_BYTES])),
        live=draw(st.booleans()),
    )


def check_reading(case: ReaderCase) -> list[list[Pair]]:
    note(repr(case))
    data = b"".join(case.chunks)
    with mock.patch.object(streaming, "MAX_LINE_BYTES", case.max_line):
        batches, error, parser = asyncio.run(read_batches(case, total_limit=1 << 30))
    pairs, failure, model = expected_reading(data, case.collect, case.max_line)
    got = [p for batch in batches for p in batch]

    for batch in batches:
        assert 1 <= len(batch) <= case.batch_size
    if not case.live:
        # Nothing is waiting on the writer: every batch but the last is full.
        assert all(len(batch) == case.batch_size for batch in batches[:-1])
    assert_pairs_in_range(got)
    assert parser.errors == model.errors
    assert parser.error_count == model.error_count

    if failure is not None:
        assert isinstance(error, PairSyntaxError)
        assert error.errors == failure.errors
        assert str(error) == str(failure)
        # A bad line within the first batch fails before any answer; later, after them all.
        assert got == (pairs if len(pairs) >= case.batch_size else [])
    elif pairs:
        assert error is None
        assert got == pairs
    elif case.collect and model.errors:
        assert isinstance(error, PairSyntaxError)
        assert error.errors == model.errors
        assert got == []
    else:
        assert isinstance(error, Problem)
        assert (error.status, error.kind) == (422, "no-pairs")
        assert got == []
    return batches


@PROPERTY
@given(case=reader_cases())
@example(case=ReaderCase([b"1 2\n" + b"3" * 20 + b" 4\n5 6\n"], 1, False, 1 << 20, 16, False)).via(
    "a long line within one chunk"
)
@example(case=ReaderCase([b"1 2\n", b"3" * 20, b" 4\n5 6\n"], 1, False, 1 << 20, 16, False)).via(
    "the same long line over two chunks"
)
@example(case=ReaderCase([b"x\n" + b"3" * 20 + b"\n"], 1, True, 1 << 20, 16, False)).via(
    "a long line after a bad one, collecting errors"
)
def test_reader_gives_the_parsers_pairs_in_batches(case: ReaderCase) -> None:
    check_reading(case)


@PROPERTY
@given(document=valid_documents(), draw=st.data())
@example(document=(b"\xef\xbb\xbf0 0#\n0 0#\n0 0;0 0;0 0;0 0#", [(0, 0)] * 6), draw=None).via(
    "the last line's four pairs came out as one batch of four, over batch_size"
)
def test_reader_round_trips_valid_input_in_any_chunks(
    document: tuple[bytes, list[Pair]], draw: st.DataObject | None
) -> None:
    data, pairs = document
    if draw is None:
        case = ReaderCase([data], 1, False, 0, streaming.MAX_LINE_BYTES, False)
    else:
        case = ReaderCase(
            chunks=byte_chunks(draw.draw, data),
            batch_size=draw.draw(st.integers(1, 7)),
            collect=draw.draw(st.booleans()),
            memory_limit=draw.draw(st.sampled_from([0, 5, 100])),
            max_line=streaming.MAX_LINE_BYTES,
            live=draw.draw(st.booleans()),
        )
    batches = check_reading(case)
    if pairs:
        assert [p for batch in batches for p in batch] == pairs


@settings(PROPERTY, max_examples=100)
@given(case=reader_cases(), limit=st.integers(0, 200))
def test_reader_over_the_body_limit_stops_with_body_too_large(case: ReaderCase, limit: int) -> None:
    data = b"".join(case.chunks)
    written_first = ReaderCase(
        case.chunks, case.batch_size, case.collect, case.memory_limit, 0, False
    )
    batches, error, _ = asyncio.run(read_batches(written_first, total_limit=limit))
    if len(data) > limit:
        # Written before it was read: the reader sees the failure before any data.
        assert isinstance(error, BodyTooLarge)
        assert batches == []
    else:
        assert not isinstance(error, BodyTooLarge)


def test_reader_with_a_line_longer_than_the_limit_in_one_piece() -> None:
    limit = streaming.MAX_LINE_BYTES
    body = b"1 2\n1 " + b"2" * (limit + 10) + b"\n3 4\n"
    whole = ReaderCase([body], 1, False, 1 << 20, limit, False)
    batches, error, _ = asyncio.run(read_batches(whole, total_limit=1 << 30))
    assert batches == [[(1, 2)]]
    assert isinstance(error, PairSyntaxError)
    assert str(error) == f"line 2: line longer than {streaming.MAX_LINE_BYTES} bytes"


# --- the JSON body ----------------------------------------------------------------------


def _json_bytes(value: object) -> bytes:
    return json.dumps(value).encode()  # orjson refuses integers beyond 64 bits


JSON_NUMBERS = st.one_of(
    RUNS,
    EVENTS,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([True, False, None, "1", ""]),
)
JSON_ITEMS = st.one_of(
    st.tuples(JSON_NUMBERS, JSON_NUMBERS).map(list),
    st.lists(JSON_NUMBERS, max_size=3),
    st.fixed_dictionaries({"run_number": JSON_NUMBERS, "event_number": JSON_NUMBERS}),
    st.dictionaries(st.sampled_from(["run_number", "event_number", "x"]), JSON_NUMBERS, max_size=3),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=8,
    ),
)
JSON_BODIES = st.one_of(
    st.binary(max_size=200),
    st.fixed_dictionaries({"pairs": st.lists(JSON_ITEMS, max_size=6)}).map(_json_bytes),
    st.dictionaries(st.sampled_from(["pairs", "x"]), st.lists(JSON_ITEMS, max_size=3)).map(
        _json_bytes
    ),
    st.builds(
        lambda doc, at, token: doc[:at] + token + doc[at:],
        st.fixed_dictionaries({"pairs": st.lists(JSON_ITEMS, max_size=4)}).map(_json_bytes),
        st.integers(0, 60),
        st.sampled_from(TOKENS),
    ),
)


def check_json_body(body: bytes) -> list[Pair] | None:
    try:
        runs, events = parse_lookup_request(body)
    except JsonBodyError as exc:
        problem = json_body_problem(exc)
        assert problem.status == 422
        orjson.dumps(problem.body("/v1/lookup"))
        for error in problem.extra["errors"]:
            # A bad pair is named by its index, and by the number that is wrong, if one is.
            if "pair" in error:
                assert error["loc"] == f"pairs[{error['pair']}]"
        return None
    pairs = list(zip(runs, events, strict=True))
    assert pairs
    assert_pairs_in_range(pairs)
    # What was accepted is what the body says, item by item.
    try:
        items = orjson.loads(body)["pairs"]
    except orjson.JSONDecodeError:
        return pairs
    said = [
        (i["run_number"], i["event_number"]) if isinstance(i, dict) else tuple(i) for i in items
    ]
    assert said == pairs
    return pairs


@PROPERTY
@given(body=JSON_BODIES)
@example(body=b'{"pairs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
@example(body=b"[" * 100_000)
@example(body=b'{"pairs": [[1, ' + b"9" * 5000 + b"]]}")
@example(body=b'{"pairs": [[1, 1e400]]}')
def test_json_body_gives_pairs_or_a_validation_error(body: bytes) -> None:
    check_json_body(body)


@settings(PROPERTY, max_examples=100)
@given(pairs=st.lists(PAIRS, min_size=1, max_size=20), shapes=st.data())
def test_json_body_round_trips(pairs: list[Pair], shapes: st.DataObject) -> None:
    items = [
        {"run_number": r, "event_number": e} if shapes.draw(st.booleans()) else [r, e]
        for r, e in pairs
    ]
    assert check_json_body(orjson.dumps({"pairs": items})) == pairs


def test_json_body_nested_deeply_is_a_validation_error() -> None:
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"pairs": ' + b"[" * 100_000):
        with pytest.raises(JsonBodyError):
            parse_lookup_request(body)


# --- regressions found by the properties ------------------------------------------------


def test_ndjson_number_with_leading_zero_is_an_error_however_chunked() -> None:
    line = b'{"run_number": 01, "event_number": 2}\n'
    alone = run_parser([line], True)
    mixed = run_parser([line + b"x\n"], True)
    assert alone.pairs == mixed.pairs == []
    assert alone.errors[0] == mixed.errors[0]
    assert "leading zero" in alone.errors[0].reason


def test_an_undecodable_first_line_is_content_so_no_header_follows() -> None:
    outcome = run_parser([b"\xff\nrun event\n1 2\n"], True)
    assert [e.line for e in outcome.errors] == [1, 2]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b"+-5 1", "run_number '+-5' is not a whole number"),
        (b"1 " + b"9" * 5000, "event_number 99999999999"),
        (b"1 " + b"9" * 5000, "is larger than 9223372036854775807"),
        (b"[1, 18446744073709551616]", "larger than 9223372036854775807"),
        (b"[1, -18446744073709551616]", "negative"),
        (b" \xef\xbb\xbf [1, 2]", None),
    ],
)
def test_clear_reasons(line: bytes, needle: str | None) -> None:
    outcome = run_parser([b"1 1\n" + line + b"\n"], True)
    if needle is None:
        assert outcome.errors == []
        return
    assert [e.line for e in outcome.errors] == [2]
    reason = outcome.errors[0].reason
    assert needle in reason
    assert len(reason) < 300
    assert "set_int_max_str_digits" not in reason


def test_the_last_line_with_several_pairs_is_still_cut_into_batches() -> None:
    case = ReaderCase([b"1 1\n2 2;3 3;4 4;5 5"], 2, False, 1 << 20, 1 << 10, False)
    batches, error, _ = asyncio.run(read_batches(case, total_limit=1 << 30))
    assert error is None
    assert batches == [[(1, 1), (2, 2)], [(3, 3), (4, 4)], [(5, 5)]]


def test_a_bom_then_spaces_then_json_is_a_pair() -> None:
    assert parse_text(b'\xef\xbb\xbf {"run_number": 1, "event_number": 2}\n') == ([1], [2])


def test_a_long_line_inside_one_chunk_stops_the_reader_like_a_split_one() -> None:
    body = b"1 2\n" + b"3" * 20 + b" 4\n5 6\n"
    for chunks in ([body], [body[:6], body[6:]], [body[:4], body[4:]]):
        case = ReaderCase(chunks, 1, False, 1 << 20, 16, False)
        with mock.patch.object(streaming, "MAX_LINE_BYTES", 16):
            batches, error, _ = asyncio.run(read_batches(case, total_limit=1 << 30))
        assert batches == [[(1, 2)]]
        assert str(error) == "line 2: line longer than 16 bytes"
