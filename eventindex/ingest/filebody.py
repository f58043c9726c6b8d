"""An uploaded file's events, as they arrive: decoded, checked line by line and turned into
the rows COPY writes into ``events``, kept in bounded memory.

A raw file's index comes as CSV (header ``run_number,event_number,olt_result``) or NDJSON
objects with those fields, possibly gzip-coded. Every line is checked before anything is
written, so a bad upload is refused whole with the numbers of its bad lines. The common
forms are checked and rewritten a block at a time by compiled patterns (the file's UUID
and dataset appended to every line by one ``bytes.replace``), which keeps up with COPY;
anything else is read line by line, slowly but exactly.

What the rows take in memory comes out of a budget shared by all uploads in flight; an
upload that finds it spent keeps its rows in a temporary file instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal
from uuid import UUID

from eventindex.config import MAX_EVENT_NUMBER, MAX_RUN_NUMBER
from eventindex.pairs import check_number

MAX_OLT_RESULT = 2**31 - 1
COLUMNS = ("run_number", "event_number", "olt_result")
# How COPY reads the rows this module writes: text format, comma-separated.
COPY_COLUMNS = ["run_number", "event_number", "olt_result", "dsid_raw", "fuid_raw"]
MAX_LISTED_ERRORS = 50

Format = Literal["csv", "ndjson"]

# Canonical lines, which the fast path takes a block at a time. Numbers without leading
# zeros and short enough to be in range whatever their digits; longer ones go the slow way.
_CSV_BLOCK = re.compile(rb"(?:(?:0|[1-9]\d{0,8}),(?:0|[1-9]\d{0,17}),(?:0|[1-9]\d{0,8})\n)*")
_NDJSON_LINE = re.compile(
    rb'^\{[ \t]*"run_number"[ \t]*:[ \t]*(0|[1-9]\d{0,8})[ \t]*,'
    rb'[ \t]*"event_number"[ \t]*:[ \t]*(0|[1-9]\d{0,17})[ \t]*,'
    rb'[ \t]*"olt_result"[ \t]*:[ \t]*(0|[1-9]\d{0,8})[ \t]*\}[ \t]*\n',
    re.M,
)
_MAXIMA = {
    "run_number": MAX_RUN_NUMBER,
    "event_number": MAX_EVENT_NUMBER,
    "olt_result": MAX_OLT_RESULT,
}
_CSV_NUMBER = re.compile(r"[ \t]*(-?)[0-9]{1,25}[ \t]*")
_DIGEST_ITEM = re.compile(r"^\s*([a-z0-9-]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*$")
# Decoded bytes handled at a time: a few milliseconds of work, after which the caller
# lets the event loop run (a 20 kB gzip body can hold 20 MB of lines).
STEP = 64 * 1024
# A line of a file's index is a few dozen bytes: anything longer is not one.
MAX_LINE = 4096


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"field {key!r} is given twice")
    return dict(pairs)


def _kind(value: object) -> str:
    return "a string" if isinstance(value, str) else type(value).__name__


class BodyError(Exception):
    """The upload cannot be taken; ``status``, ``kind`` and the message say why."""

    def __init__(self, status: int, kind: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.extra = extra


@dataclass
class LineError:
    line: int
    error: str


class MemoryBudget:
    """Bytes of upload rows that may be held in memory, shared by every upload in flight."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n


class RowBuffer:
    """The rows of one upload: in memory while the budget allows, else in a temporary file.
    A context manager: leaving it gives the memory back and removes the file."""

    def __init__(self, budget: MemoryBudget) -> None:
        self._budget = budget
        self._memory: list[bytes] = []
        self._held = 0
        self._file: IO[bytes] | None = None
        self._taken = 0
        self.size = 0

    def __enter__(self) -> RowBuffer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self._file is None and self._budget.take(len(data)):
            self._memory.append(data)
            self._held += len(data)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="eventindex-upload-")  # noqa: SIM115
            for piece in self._memory:
                self._file.write(piece)
            self._release()
        self._file.write(data)

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The rows, from the start (any number of times)."""
        if self._file is None:
            yield from self._memory
            return
        self._file.seek(0)
        while piece := self._file.read(size):
            yield piece

    def take(self) -> list[bytes]:
        """The rows written since the last take, handed over and no longer kept (a file
        written while it arrives)."""
        if self._file is None:
            pieces = self._memory
            self._release()
            return pieces
        self._file.seek(self._taken)
        data = self._file.read()
        self._taken += len(data)
        self._file.seek(0, os.SEEK_END)
        return [data] if data else []

    def _release(self) -> None:
        self._budget.give(self._held)
        self._held = 0
        self._memory = []

    def close(self) -> None:
        self._release()
        if self._file is not None:
            self._file.close()
            self._file = None


def parse_content_digest(header: str | None) -> bytes | None:
    """The sha-256 of an RFC 9530 ``Content-Digest`` (None when absent or without it)."""
    if header is None:
        return None
    for item in header.split(","):
        match = _DIGEST_ITEM.match(item)
        if match is None:
            raise BodyError(
                400,
                "bad-content-digest",
                "Malformed Content-Digest",
                f"Content-Digest {header[:100]!r} is not a list of algorithm=:base64: items.",
            )
        if match[1] == "sha-256":
            try:
                value = base64.b64decode(match[2], validate=True)
            except ValueError:
                value = b""
            if len(value) != 32:
                raise BodyError(
                    400,
                    "bad-content-digest",
                    "Malformed Content-Digest",
                    "The Content-Digest's sha-256 is not 32 bytes in base64.",
                )
            return value
    return None


@dataclass(eq=False)  # compared by identity
class FileBody:
    """One upload's body, fed as it arrives; its rows end up in ``rows``."""

    fuid: UUID
    dsid: int
    fmt: Format
    rows: RowBuffer
    gzip: bool = False
    max_bytes: int = 1 << 30
    max_events: int = 2_000_000
    received: int = 0
    decoded: int = 0
    count: int = 0
    run: int | None = None
    first_event: int | None = None
    errors: list[LineError] = field(default_factory=list)
    _sha256: Any = field(default_factory=hashlib.sha256)
    _inflate: Any = None
    _rest: bytes = b""
    _line: int = 0  # lines consumed so far
    _header: tuple[str, ...] | None = None
    _suffix: bytes = b""
    _run_prefix: bytes = b""

    def __post_init__(self) -> None:
        self._suffix = f",{self.dsid},{self.fuid}\n".encode()
        if self.gzip:
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.fmt == "ndjson":
            self._header = COLUMNS

    @property
    def first_line(self) -> int:
        """The body line of the first row (COPY numbers rows from 1)."""
        return 2 if self.fmt == "csv" else 1

    def digest(self) -> bytes:
        return bytes(self._sha256.digest())

    # --- receiving ---

    def feed(self, data: bytes) -> None:
        for _ in self.steps(data):
            pass

    def steps(self, data: bytes) -> Iterator[None]:
        """Take a piece of the body as sent, a bounded step of work at a time (the
        caller gives the event loop its turn between steps)."""
        self.received += len(data)
        if self.received > self.max_bytes:
            raise self._too_large()
        self._sha256.update(data)
        if self._inflate is None:
            for start in range(0, len(data), STEP):
                self._decoded(data[start : start + STEP])
                yield
            return
        while data:
            try:
                out = self._inflate.decompress(data, STEP)
            except zlib.error as exc:
                raise BodyError(
                    400, "bad-encoding", "Body is not gzip", f"The gzip body is corrupt: {exc}."
                ) from None
            self._decoded(out)
            yield
            data = self._inflate.unconsumed_tail
            if self._inflate.eof and self._inflate.unused_data:
                # Another gzip member follows (as `cat a.gz b.gz` makes).
                data = self._inflate.unused_data + data
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def finish(self) -> None:
        """The body has ended: the last line, and the verdict on all of them."""
        if self._inflate is not None and not self._inflate.eof and self.received:
            raise BodyError(400, "bad-encoding", "Body is not gzip", "The gzip body is truncated.")
        if self._rest:
            rest, self._rest = self._rest, b""
            self._lines(rest + b"\n")
        if self._header is None:
            raise BodyError(
                422,
                "empty-file",
                "Empty upload",
                "The body is empty: expected a CSV header "
                f"{','.join(COLUMNS)} and a line per event.",
            )
        if self.errors:
            raise self._invalid(stopped=False)
        if self.count == 0:
            raise BodyError(
                422, "empty-file", "Empty upload", "The file has no events; nothing was loaded."
            )

    def check_digest(self, expected: bytes | None) -> None:
        if expected is not None and expected != self.digest():
            raise BodyError(
                400,
                "content-digest-mismatch",
                "Content-Digest mismatch",
                "The body's sha-256 is not the one its Content-Digest gives: it was damaged "
                "on the way; nothing was loaded.",
            )

    def _check_count(self) -> None:
        if self.count > self.max_events:
            raise BodyError(
                413,
                "upload-too-large",
                "Upload too large",
                f"The file holds more than {self.max_events:,} events; nothing was loaded.",
                headers={"Connection": "close"},
            )

    def _too_large(self) -> BodyError:
        return BodyError(
            413,
            "upload-too-large",
            "Upload too large",
            f"The file's body exceeds {self.max_bytes} bytes (decoded); nothing was loaded.",
            headers={"Connection": "close"},
        )

    def _decoded(self, data: bytes) -> None:
        if not data:
            return
        self.decoded += len(data)
        if self.decoded > self.max_bytes:
            raise self._too_large()
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        if cut:
            self._lines(data[:cut])
        if len(self._rest) > MAX_LINE:
            self._error(self._line + 1, f"the line is longer than {MAX_LINE} bytes")
            raise self._invalid()

    def _invalid(self, *, stopped: bool = True) -> BodyError:
        """The 422 for the bad lines met; ``stopped``: reading stopped at the last one."""
        first = self.errors[0]
        more = f" (and {len(self.errors) - 1} more bad lines)" if len(self.errors) > 1 else ""
        where = "; reading stopped there" if stopped else ""
        return BodyError(
            422,
            "invalid-lines",
            "Invalid lines",
            f"line {first.line}: {first.error}{more}{where}; nothing was loaded.",
            errors=[{"line": e.line, "error": e.error} for e in self.errors],
            error_count=len(self.errors),
        )

    # --- lines ---

    def _lines(self, block: bytes) -> None:
        """Complete lines, each ending in a newline."""
        if b"\r" in block:
            block = block.replace(b"\r\n", b"\n")
        if self._header is None:
            end = block.index(b"\n") + 1
            self._line += 1
            self._read_header(block[: end - 1])
            block = block[end:]
            if not block:
                return
        n = block.count(b"\n")
        canonical = self._header == COLUMNS and not self.errors
        if canonical and self.fmt == "ndjson":
            # Every line one whole object (a CSV line left as it was is not NDJSON).
            converted, replaced = _NDJSON_LINE.subn(rb"\1,\2,\3\n", block)
            if replaced == n and _CSV_BLOCK.fullmatch(converted) and self._one_run(converted, n):
                self._accept(converted, n)
                return
        elif canonical and _CSV_BLOCK.fullmatch(block) and self._one_run(block, n):
            self._accept(block, n)
            return
        self._slowly(block)

    def _read_header(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").lstrip("\ufeff").strip()
        names = tuple(c.strip() for c in text.split(","))
        if sorted(names) != sorted(COLUMNS):
            raise BodyError(
                422,
                "bad-header",
                "Bad CSV header",
                f"line 1: the header is {text[:200]!r}; expected {','.join(COLUMNS)} "
                "(in any order).",
                errors=[{"line": 1, "error": "bad header"}],
            )
        self._header = names

    def _one_run(self, block: bytes, n: int) -> bool:
        if self.run is None:
            self.run = int(block[: block.index(b",")])
            self.first_event = int(block.split(b",", 2)[1])
            self._run_prefix = b"\n%d," % self.run
        return (b"\n" + block).count(self._run_prefix) == n

    def _accept(self, rows: bytes, n: int) -> None:
        self._line += n
        self.count += n
        self._check_count()
        self.rows.write(rows.replace(b"\n", self._suffix))

    def _slowly(self, block: bytes) -> None:
        out: list[bytes] = []
        for raw in block.split(b"\n")[:-1]:
            self._line += 1
            try:
                run, event, olt = self._parse(raw)
            except ValueError as exc:
                self._error(self._line, str(exc))
                continue
            if self.run is None:
                self.run, self.first_event = run, event
                self._run_prefix = b"\n%d," % run
            elif run != self.run:
                self._error(
                    self._line,
                    f"run_number {run} is not the file's run {self.run}: a raw file holds "
                    "the events of one run",
                )
                continue
            self.count += 1
            self._check_count()
            if not self.errors:
                out.append(b"%d,%d,%d" % (run, event, olt) + self._suffix)
        if out and not self.errors:
            self.rows.write(b"".join(out))

    def _error(self, line: int, message: str) -> None:
        self.errors.append(LineError(line, message))
        if len(self.errors) >= MAX_LISTED_ERRORS:
            # Enough to go on: reading further would only cost the service time.
            raise self._invalid()

    def _parse(self, raw: bytes) -> tuple[int, int, int]:
        if not raw.strip():
            raise ValueError("the line is empty")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the line is not UTF-8") from None
        assert self._header is not None
        if self.fmt == "ndjson":
            try:
                item = json.loads(text, object_pairs_hook=_no_repeated_keys)
            except json.JSONDecodeError:
                raise ValueError("the line is not a JSON object") from None
            if not isinstance(item, dict):
                raise ValueError("the line is not a JSON object")
            for name in COLUMNS:
                value = item.get(name)
                if name in item and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError(f"{name} must be a whole number, not {_kind(value)}")
            unknown = sorted(set(item) - set(COLUMNS))
            if unknown:
                raise ValueError(f"unknown field {unknown[0]!r} (expected {', '.join(COLUMNS)})")
            missing = [c for c in COLUMNS if c not in item]
            if missing:
                raise ValueError(f"{missing[0]} is missing")
            values = [item[c] for c in COLUMNS]
        else:
            fields = text.split(",")
            if len(fields) != len(COLUMNS):
                raise ValueError(
                    f"expected {len(COLUMNS)} values ({','.join(self._header)}), "
                    f"found {len(fields)}"
                )
            by_name = dict(zip(self._header, fields, strict=True))
            values = [by_name[c] for c in COLUMNS]
            for name, value in zip(COLUMNS, values, strict=True):
                if not value.strip():
                    raise ValueError(f"{name} is missing")
                number = _CSV_NUMBER.fullmatch(value)
                if number is None:
                    shown = value if len(value) <= 40 else value[:40] + "..."
                    raise ValueError(f"{name} {shown!r} is not a whole number (digits 0-9)")
                if number[1]:
                    raise ValueError(f"{name} {value.strip()} is negative")
        run, event, olt = (
            check_number(v, c, _MAXIMA[c]) for v, c in zip(values, COLUMNS, strict=True)
        )
        return run, event, olt
