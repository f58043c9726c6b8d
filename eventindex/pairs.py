"""The one parser for (run_number, event_number) pairs given as text.

Accepted, one or more pairs per line: ``run event``, ``run:event``,
``run,event``, ``run/event``, several pairs separated by ``;``, NDJSON objects
``{"run_number": R, "event_number": E}`` and ``[R, E]`` arrays. Blank lines,
``#`` comments, surrounding spaces and one header line (a first line with no
digit in it) are skipped. Anything else is an error naming its line.

Input comes in chunks of whole lines. A chunk in the canonical shapes is
parsed by one regular-expression pass over the whole chunk; anything else
falls back to the line-by-line parser, which also words the errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Imported by the client too (eventindex pick), whose install has the standard library and
# httpx only: the service's faster orjson when it is there.
_json_loads: Callable[[str | bytes], Any]
try:
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - the light client install
    from json import loads as _json_loads

MAX_RUN_NUMBER = 2**31 - 1
MAX_EVENT_NUMBER = 2**63 - 1

_FAST_TEXT = re.compile(rb"^[ \t]*(\d{1,10})(?:[ \t]*[,:/][ \t]*|[ \t]+)(\d{1,19})[ \t]*\r?$", re.M)
_FAST_NDJSON = re.compile(
    rb'^[ \t]*\{[ \t]*"run_number"[ \t]*:[ \t]*(0|[1-9]\d{0,9})[ \t]*,'
    rb'[ \t]*"event_number"[ \t]*:[ \t]*(0|[1-9]\d{0,18})[ \t]*\}[ \t]*\r?$',
    re.M,
)
_TEXT_PAIR = re.compile(r"([^\s,:/]+)\s*[,:/]\s*([^\s,:/]+)|([^\s,:/]+)\s+([^\s,:/]+)")
_DIGIT = re.compile(r"\d")
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")
_SHOWN_CHARS = 40
_PAIR_KEYS = frozenset(("run_number", "event_number"))

MAX_REPORTED_ERRORS = 1000


@dataclass(frozen=True)
class LineError:
    """One bad line: where it is and what is wrong with it."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class PairSyntaxError(ValueError):
    def __init__(self, errors: list[LineError], total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        first = errors[0]
        more = f" (and {self.total - 1} more bad lines)" if self.total > 1 else ""
        super().__init__(f"{first}{more}")

    @classmethod
    def single(cls, line: int, reason: str) -> PairSyntaxError:
        return cls([LineError(line, reason)])


def _shown(text: str, quoted: bool = True) -> str:
    """The text for an error message, cut short if long."""
    short = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    return repr(short) if quoted else short


def _kind(value: object) -> str:
    """A JSON value's kind, in the words of JSON rather than Python's type names."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def check_number(value: object, name: str, maximum: int) -> int:
    """An int within [0, maximum], or ValueError saying what it is instead."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str):
            text = value.strip()
            if _WHOLE_NUMBER.fullmatch(text) is None:
                raise ValueError(f"{name} {_shown(value)} is not a whole number")
            if len(text.lstrip("+-").lstrip("0")) > len(str(maximum)):
                # Not converted: far too large, and int() refuses over 4300 digits.
                digits = _shown(text, quoted=False)
                if text.startswith("-"):
                    raise ValueError(f"{name} {digits} is negative")
                raise ValueError(f"{name} {digits} is larger than {maximum}")
            value = int(text)
        elif isinstance(value, float) and value.is_integer() and abs(value) > maximum:
            # orjson reads integers beyond 64 bits as floats.
            digits = _shown(f"{value:.0f}", quoted=False)
            if value < 0:
                raise ValueError(f"{name} {digits} is negative")
            raise ValueError(f"{name} {digits} is larger than {maximum}")
        else:
            raise ValueError(f"{name} must be a whole number, not {_kind(value)}")
    assert isinstance(value, int)
    if value < 0:
        raise ValueError(f"{name} {value} is negative")
    if value > maximum:
        raise ValueError(f"{name} {value} is larger than {maximum}")
    return value


# Below 2**53 a float is exactly the integer written; from there on, 2**53 + 1 reads as 2**53.
_EXACT_FLOAT = 2**53


def _integral(value: Any) -> Any:
    """JSON Schema's integer includes ``1234.0``: an integral float read exactly is its int."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT:
        return int(value)
    return value


def pair_from_json(item: Any, integral_floats: bool = False) -> tuple[int, int]:
    """A pair from a decoded JSON item, ``[R, E]`` or ``{"run_number": R, "event_number": E}``,
    or ValueError in the same words for an NDJSON line and an item of a JSON body."""
    if isinstance(item, dict):
        missing = _PAIR_KEYS - item.keys()
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        extra = item.keys() - _PAIR_KEYS
        if extra:
            raise ValueError(f"unexpected field {_shown(sorted(extra)[0])}")
        run, event = item["run_number"], item["event_number"]
    elif isinstance(item, list) and len(item) == 2:
        run, event = item
    else:
        raise ValueError('expected {"run_number": R, "event_number": E} or [R, E]')
    if isinstance(run, str) or isinstance(event, str):
        raise ValueError("numbers must be JSON numbers, not strings")
    if integral_floats:
        run, event = _integral(run), _integral(event)
    return (
        check_number(run, "run_number", MAX_RUN_NUMBER),
        check_number(event, "event_number", MAX_EVENT_NUMBER),
    )


def _parse_json_item(text: str) -> tuple[int, int]:
    try:
        item = _json_loads(text)
    except json.JSONDecodeError as exc:  # orjson's error is a JSONDecodeError too
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError):
        # The standard library's: an integer of over 4300 digits, or nesting too deep.
        raise ValueError("not valid JSON (a number too long or nesting too deep)") from None
    return pair_from_json(item)


@dataclass(frozen=True)
class BodyError:
    """One thing wrong with a JSON lookup body: a pair (by its index) or the body itself."""

    pair: int | None
    reason: str

    @property
    def loc(self) -> str:
        return "" if self.pair is None else f"pairs[{self.pair}]"

    def __str__(self) -> str:
        return self.reason if self.pair is None else f"{self.loc}: {self.reason}"


class JsonBodyError(ValueError):
    def __init__(self, errors: list[BodyError], total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        more = f" (and {self.total - 1} more bad pairs)" if self.total > 1 else ""
        super().__init__(f"{errors[0]}{more}")

    @classmethod
    def body(cls, reason: str) -> JsonBodyError:
        return cls([BodyError(None, reason)])


_BODY_SHAPE = '{"pairs": [[run, event], ...]}'


def parse_json_body(body: bytes) -> tuple[list[int], list[int]]:
    """Runs and events of a JSON lookup body, or JsonBodyError naming each bad pair by its
    index in the words of the line parser (up to MAX_REPORTED_ERRORS of them)."""
    if not body.strip():
        raise JsonBodyError.body(f"the request body is empty; send {_BODY_SHAPE}")
    try:
        doc = _json_loads(body)
    except json.JSONDecodeError as exc:
        raise JsonBodyError.body(
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f"{exc.colno})"
        ) from None
    except (ValueError, RecursionError):
        raise JsonBodyError.body("the request body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise JsonBodyError.body(f"the request body must be {_BODY_SHAPE}, not {_kind(doc)}")
    if "pairs" not in doc:
        raise JsonBodyError.body(f"pairs is missing; send {_BODY_SHAPE}")
    extra = doc.keys() - {"pairs"}
    if extra:
        raise JsonBodyError.body(f"unexpected field {_shown(sorted(extra)[0])}; send {_BODY_SHAPE}")
    items = doc["pairs"]
    if not isinstance(items, list):
        raise JsonBodyError.body(f"pairs must be a list of [run, event] pairs, not {_kind(items)}")
    if not items:
        raise JsonBodyError.body("pairs is empty: the request body contains no pairs")
    runs: list[int] = []
    events: list[int] = []
    errors: list[BodyError] = []
    total = 0
    for i, item in enumerate(items):
        try:
            run, event = pair_from_json(item, integral_floats=True)
        except ValueError as exc:
            total += 1
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append(BodyError(i, str(exc)))
            continue
        runs.append(run)
        events.append(event)
    if errors:
        raise JsonBodyError(errors, total)
    return runs, events


_MAX_RUN_DIGITS = str(MAX_RUN_NUMBER).encode()
_MAX_EVENT_DIGITS = str(MAX_EVENT_NUMBER).encode()


def _within(tokens: list[bytes], limit: bytes) -> bool:
    """Every token (digits only) at most ``limit``: only one as long as the limit can be
    over it, and digit strings of one length compare as their numbers do."""
    if max(map(len, tokens)) < len(limit):
        return True
    return all(len(t) < len(limit) or t <= limit for t in tokens)


def _parse_text_piece(piece: str) -> tuple[int, int]:
    match = _TEXT_PAIR.fullmatch(piece)
    if match is None:
        raise ValueError(
            f"expected 'run event' (or run:event, run,event, run/event), got {_shown(piece)}"
        )
    run, event = match.group(1, 2) if match.group(1) is not None else match.group(3, 4)
    return (
        check_number(run, "run_number", MAX_RUN_NUMBER),
        check_number(event, "event_number", MAX_EVENT_NUMBER),
    )


@dataclass
class PairParser:
    """Feeds chunks of whole lines in order; keeps line numbers and the header rule.

    With ``collect_errors`` every bad line is recorded (up to a cap) and the
    good ones still returned. Without it parsing stops at the first bad line:
    ``feed`` returns the pairs before it and sets ``failure``, and any further
    ``feed`` returns nothing.
    """

    collect_errors: bool = False
    line_no: int = 0
    seen_content: bool = False
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0
    failure: PairSyntaxError | None = None
    _taken: int = 0

    def feed(self, chunk: bytes) -> tuple[list[int], list[int]]:
        if not chunk or self.failure is not None:
            return [], []
        tokens = self._feed_fast(chunk)
        if tokens is not None:
            return [int(r) for r in tokens[0]], [int(e) for e in tokens[1]]
        return self._feed_slow(chunk)

    def feed_tokens(self, chunk: bytes) -> tuple[list[bytes], list[bytes]]:
        """As ``feed``, each number as its decimal digits, which is what the database is
        sent: the usual lines never become Python ints (that and encoding the ints took
        two thirds of a bulk stream's CPU in the service)."""
        if not chunk or self.failure is not None:
            return [], []
        tokens = self._feed_fast(chunk)
        if tokens is not None:
            return tokens
        runs, events = self._feed_slow(chunk)
        return [b"%d" % r for r in runs], [b"%d" % e for e in events]

    def _feed_fast(self, chunk: bytes) -> tuple[list[bytes], list[bytes]] | None:
        """The digits of every line when all of them have one of the usual forms, with
        numbers in range; else None (and nothing counted), for the line-by-line reader."""
        n_lines = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
        fast = _FAST_NDJSON if chunk.lstrip()[:1] == b"{" else _FAST_TEXT
        found = fast.findall(chunk)
        if len(found) != n_lines:
            return None
        runs = [r for r, _ in found]
        events = [e for _, e in found]
        if not (_within(runs, _MAX_RUN_DIGITS) and _within(events, _MAX_EVENT_DIGITS)):
            return None
        self.line_no += n_lines
        self.seen_content = True
        return runs, events

    def _feed_slow(self, chunk: bytes) -> tuple[list[int], list[int]]:
        runs: list[int] = []
        events: list[int] = []
        lines = chunk.split(b"\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        for raw in lines:
            self.line_no += 1
            try:
                pairs = self._parse_line(raw)
            except ValueError as exc:
                self._error(LineError(self.line_no, str(exc)))
                if self.failure is not None:
                    break
                continue
            for run, event in pairs:
                runs.append(run)
                events.append(event)
        return runs, events

    def _parse_line(self, raw: bytes) -> list[tuple[int, int]]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.seen_content = True  # a line, if not a readable one: no header after it
            raise ValueError("not valid UTF-8") from None
        text = text.strip().lstrip("\ufeff").strip()
        if text.startswith(("{", "[")):
            self.seen_content = True
            return [_parse_json_item(text)]
        text = text.split("#", 1)[0].strip()
        if not text:
            return []
        if not self.seen_content:
            self.seen_content = True
            if _DIGIT.search(text) is None:
                return []  # a header such as "run_number,event_number"
        pieces = [p.strip() for p in text.split(";")]
        return [_parse_text_piece(p) for p in pieces if p]

    def _error(self, error: LineError) -> None:
        self.error_count += 1
        if not self.collect_errors:
            self.failure = PairSyntaxError([error])
            return
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)

    def take_errors(self) -> list[LineError]:
        """The errors recorded since the last call."""
        new = self.errors[self._taken :]
        self._taken = len(self.errors)
        return new

    def raise_collected(self) -> None:
        if self.errors:
            raise PairSyntaxError(self.errors, self.error_count)


def parse_text(data: bytes) -> tuple[list[int], list[int]]:
    """Parse a whole text body; every bad line is reported at once."""
    parser = PairParser(collect_errors=True)
    runs, events = parser.feed(data)
    parser.raise_collected()
    return runs, events
