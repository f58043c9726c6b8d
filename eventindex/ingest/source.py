"""What a load reads: CSV sources (plain, gzip, standard input), their header, their
distinct runs, the files a command line names, and progress lines."""

from __future__ import annotations

import gzip
import os
import re
import sys
import tempfile
import time
import zlib
from array import array
from collections.abc import Iterator
from io import BufferedIOBase
from pathlib import Path
from typing import IO, Any

READ_SIZE = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"


class LoadError(Exception):
    """A load that cannot go on; the message is one line for the user."""


# --- sources ---------------------------------------------------------------------------


class Source:
    """An input file (or stdin) that can be read twice: once fast, once carefully."""

    def __init__(self, name: str, path: Path | None, line_map: array[int] | None = None) -> None:
        self.name = name
        self.path = path
        # For a shard's part of a file: the original line of each of its data rows.
        self.line_map = line_map
        self._tee: IO[bytes] | None = None
        self._stdin_done = False
        self._decompressor: Any = None

    def line(self, line: int) -> int:
        """The line of the original file that line ``line`` of this one is."""
        if self.line_map is None or line < 2:
            return line
        return int(self.line_map[line - 2])

    @property
    def size(self) -> int | None:
        return self.path.stat().st_size if self.path is not None else None

    def _open(self) -> tuple[BufferedIOBase, BufferedIOBase]:
        """(the raw file, for progress; the decompressed data)."""
        assert self.path is not None
        raw = self.path.open("rb")
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            return raw, gzip.GzipFile(fileobj=raw, mode="rb")
        raw.seek(0)
        return raw, raw

    def chunks(self, progress: Progress | None = None) -> Iterator[bytes]:
        if self.path is None:
            yield from self._stdin_chunks(progress)
            return
        raw, data = self._open()
        with raw, data:
            while chunk := data.read(READ_SIZE):
                if progress:
                    progress.update(raw.tell(), chunk.count(b"\n"))
                yield chunk

    def _stdin_chunks(self, progress: Progress | None) -> Iterator[bytes]:
        # Standard input can be read once: what has been read is kept in a temporary
        # file, and every pass replays that before it reads on.
        if self._tee is None:
            self._tee = tempfile.TemporaryFile(prefix="eventindex-load-")  # noqa: SIM115
        tee = self._tee
        tee.seek(0)
        while chunk := tee.read(READ_SIZE):
            if progress:
                progress.update(None, chunk.count(b"\n"))
            yield chunk
        stream = sys.stdin.buffer
        while not self._stdin_done:
            raw = stream.read(READ_SIZE)
            if self._decompressor is None and raw[:2] == GZIP_MAGIC and tee.tell() == 0:
                self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if not raw:
                self._stdin_done = True
                data = self._decompressor.flush() if self._decompressor else b""
            else:
                data = self._decompressor.decompress(raw) if self._decompressor else raw
            tee.seek(0, os.SEEK_END)
            tee.write(data)
            if progress:
                progress.update(None, data.count(b"\n"))
            if data:
                yield data

    def close(self) -> None:
        if self._tee is not None:
            self._tee.close()


def header_columns(
    source: Source, expected: tuple[str, ...], required: tuple[str, ...]
) -> list[str]:
    """The file's columns, from its first line, checked against the table's."""
    first = b""
    for chunk in source.chunks():
        first += chunk
        if b"\n" in first or len(first) > 4096:
            break
    line = first.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    if not line:
        raise LoadError(f"{source.name}: line 1: the file is empty (expected a header)")
    columns = [c.strip() for c in line.split(",")]
    unknown = [c for c in columns if c not in expected]
    if unknown:
        raise LoadError(
            f"{source.name}: line 1: unknown column {unknown[0]!r} "
            f"(expected a header of {','.join(expected)})"
        )
    missing = [c for c in required if c not in columns]
    if missing:
        raise LoadError(f"{source.name}: line 1: missing column {missing[0]!r}")
    if len(set(columns)) != len(columns):
        raise LoadError(f"{source.name}: line 1: a column is named twice")
    return columns


# --- progress --------------------------------------------------------------------------


class Progress:
    """Rows, rows/s and ETA: a live line on a terminal, a log line now and then otherwise."""

    def __init__(
        self, name: str, total_bytes: int | None, stream: IO[str], interval: float
    ) -> None:
        self.name = name
        self.total = total_bytes
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.rows = 0
        self.position = 0
        self.started = time.monotonic()
        self.last = self.started
        self.shown = False

    def update(self, position: int | None, rows: int) -> None:
        self.rows += rows
        if position is not None:
            self.position = position
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.rows / elapsed
        text = f"{self.name}: {self.rows:,} rows, {rate:,.0f} rows/s"
        if self.total and self.position:
            fraction = min(self.position / self.total, 1.0)
            eta = elapsed * (1 - fraction) / max(fraction, 1e-9)
            text += f", {fraction:.0%}, ETA {eta:,.0f} s"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --- loading ---------------------------------------------------------------------------


def distinct_runs(source: Source, columns: list[str]) -> set[int]:
    """Every run number in an events file (values that are not numbers are left to COPY)."""
    index = columns.index("run_number")
    field = re.compile(rb"^(?:[^,\n]*,){%d}[ \t]*(\d{1,10})[ \t]*(?:,|\r?$)" % index, re.M)
    runs: set[int] = set()
    rest = b""
    first = True
    for chunk in source.chunks():
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        data, rest = data[:cut], data[cut:]
        if first and data:
            data = data[data.find(b"\n") + 1 :]  # the header
            first = False
        runs.update(int(r) for r in set(field.findall(data)))
    runs.update(int(r) for r in set(field.findall(rest)))
    return {r for r in runs if r <= 2**31 - 1}


def is_datasets_file(path: Path) -> bool:
    opener = gzip.open if path.read_bytes()[:2] == GZIP_MAGIC else open
    with opener(path, "rb") as f:
        head = f.readline(4096).lstrip(b"\xef\xbb\xbf")
    return head.startswith(b"id,name")


def plan(paths: list[str], datasets: str | None) -> tuple[list[Source], list[Source]]:
    """(datasets files, events files) to load, in order."""
    dataset_sources: list[Source] = []
    event_sources: list[Source] = []
    if datasets:
        path = Path(datasets)
        dataset_sources.append(Source(str(path), path))
    for arg in paths:
        if arg == "-":
            event_sources.append(Source("<stdin>", None))
            continue
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if re.fullmatch(r"events.*\.csv(\.gz)?", p.name)
            )
            ds = path / "datasets.csv"
            if ds.is_file():
                dataset_sources.append(Source(str(ds), ds))
            if not found and not ds.is_file():
                raise LoadError(f"{arg}: no datasets.csv or events*.csv in this directory")
            event_sources += [Source(str(p), p) for p in found]
        elif path.is_file():
            target = dataset_sources if is_datasets_file(path) else event_sources
            target.append(Source(str(path), path))
        else:
            raise LoadError(f"{arg}: no such file or directory")
    return dataset_sources, event_sources
