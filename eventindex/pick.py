"""``eventindex pick``: event picking from the command line.

Exit codes: 0 every pair was found; 3 some pairs are not in the catalogue;
1 an error (bad input line, refused request, service unreachable); 2 usage.
It runs on the client's install (httpx and the standard library).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

from eventindex import clienttls
from eventindex.client import EventIndexClient, EventIndexError, Pair
from eventindex.pairs import MAX_REPORTED_ERRORS, LineError, PairParser, PairSyntaxError

EXIT_ALL_FOUND = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOME_MISSING = 3

FORMATS = ("ndjson", "csv", "table", "files")
_COLUMNS = ("run_number", "event_number", "found", "fuid_raw", "dsid_raw", "olt_result")
# Beside the numbers, in the words of the catalogue: the dataset's name and the names of
# the Online Filter decisions that selected the event.
_NAME_COLUMNS = ("dataset", "decisions")


ErrorSink = Callable[[list[LineError]], None]


def read_pairs(
    stream: IO[bytes], parser: PairParser, on_errors: ErrorSink | None = None
) -> Iterator[Pair]:
    """Pairs from text in any accepted form. A parser that collects errors hands each
    chunk's bad lines to ``on_errors`` and goes on; otherwise PairSyntaxError stops it."""
    tail = b""
    while True:
        data = stream.read(1 << 20)
        if not data:
            break
        data = tail + data
        cut = data.rfind(b"\n")
        if cut < 0:
            tail = data
            continue
        tail = data[cut + 1 :]
        yield from _checked(parser, data[: cut + 1], on_errors)
    if tail:
        yield from _checked(parser, tail, on_errors)


def _checked(parser: PairParser, chunk: bytes, on_errors: ErrorSink | None) -> Iterator[Pair]:
    runs, events = parser.feed(chunk)
    if on_errors is not None:
        on_errors(parser.take_errors())
    yield from zip(runs, events, strict=True)
    if parser.failure is not None:
        raise parser.failure


class Names:
    """Dataset and decision names, asked of the service before the first answer (a dataset
    made since is asked for when it is met)."""

    def __init__(self, client: EventIndexClient) -> None:
        self.client = client
        self.datasets: dict[int, str] = {}
        self.bits: dict[int, str] = {}

    async def load(self) -> None:
        self.datasets = await self.client.dataset_names()
        self.bits = await self.client.decisions()

    @property
    def width(self) -> int:
        """Of the table's dataset column: the longest name."""
        return max((len(n) for n in self.datasets.values()), default=7)

    async def dataset(self, dsid: int) -> str:
        name = self.datasets.get(dsid)
        if name is None:
            found = await self.client.get_dataset(dsid)
            name = self.datasets[dsid] = str(found["name"]) if found else f"dataset {dsid}"
        return name

    def decisions(self, mask: int) -> str:
        return ",".join(
            self.bits.get(bit, f"bit{bit}") for bit in range(mask.bit_length()) if mask >> bit & 1
        )


class Output:
    def __init__(self, out: IO[str], fmt: str, only_missing: bool, names: Names | None) -> None:
        self.out = out
        self.fmt = fmt
        self.only_missing = only_missing
        self.names = names
        self.total = self.missing = 0
        self.files: dict[str, int] = {}
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(_COLUMNS + _NAME_COLUMNS)
        self.width = max(7, names.width) if names is not None else 7
        if fmt == "table":
            out.write(
                f"{'run':>10} {'event':>20} {'file (fuid_raw)':<36} "
                f"{'dataset':<{self.width}} decisions\n"
            )

    async def add(self, lines: list[bytes]) -> None:
        self.total += len(lines)
        if self.fmt == "ndjson" and not self.only_missing:
            self.missing += sum(1 for line in lines if b'"found":false' in line)
            self.out.write(b"\n".join(lines).decode() + "\n")
            return
        for line in lines:
            r = json.loads(line)
            if not r["found"]:
                self.missing += 1
            elif self.only_missing:
                continue
            if self.fmt == "files":
                if r["found"]:
                    self.files[r["fuid_raw"]] = self.files.get(r["fuid_raw"], 0) + 1
            elif self.fmt == "ndjson":
                self.out.write(line.decode() + "\n")
            else:
                await self._write_row(r)

    async def _write_row(self, r: dict[str, Any]) -> None:
        assert self.names is not None
        found = r["found"]
        dataset = await self.names.dataset(r["dsid_raw"]) if found else ""
        decisions = self.names.decisions(r["olt_result"]) if found else ""
        if self.csv is not None:
            row = ["" if r[c] is None else r[c] for c in _COLUMNS]
            row[2] = "true" if found else "false"  # as in JSON, not Python's True
            self.csv.writerow([*row, dataset, decisions])
            return
        fuid = r["fuid_raw"] or "(not found)"
        self.out.write(
            f"{r['run_number']:>10} {r['event_number']:>20} {fuid:<36} {dataset:<{self.width}} "
            f"{decisions}".rstrip()
            + "\n"
        )

    def finish(self) -> None:
        if self.fmt == "files":
            for fuid, count in self.files.items():
                self.out.write(f"{fuid} {count}\n")
        self.out.flush()


class Messages:
    """What goes to stderr: the progress line on a terminal, bad lines, the summary."""

    def __init__(self, stream: IO[str], source: str) -> None:
        self.stream = stream
        self.source = source
        self.on = stream.isatty()
        self.started = self.last = time.monotonic()
        self.shown = False  # a progress line is on the screen, unfinished

    def _line(self, text: str) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def bad_lines(self, errors: list[LineError]) -> None:
        for error in errors:
            self._line(f"eventindex: {self.source}: {error} (skipped)")

    def progress(self, done: int) -> None:
        now = time.monotonic()
        if not self.on or now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(f"\r\x1b[K{done:,} pairs, {rate:,.0f} pairs/s")
        self.stream.flush()
        self.shown = True

    def summary(self, output: Output, parser: PairParser) -> None:
        text = (
            f"eventindex: {output.total:,} pairs: {output.total - output.missing:,} found, "
            f"{output.missing:,} missing"
        )
        if parser.collect_errors:
            text += f"; {_lines(parser.error_count)} skipped"
            if parser.error_count > MAX_REPORTED_ERRORS:
                text += f" (the first {MAX_REPORTED_ERRORS:,} shown)"
        if self.on:
            text += f" in {time.monotonic() - self.started:.1f} s"
        self._line(text)


async def pick(args: argparse.Namespace, source: IO[bytes], out: IO[str]) -> int:
    messages = Messages(sys.stderr, _source_name(args.input))
    parser = PairParser(collect_errors=args.skip_invalid)
    on_errors = messages.bad_lines if args.skip_invalid else None
    async with EventIndexClient(
        args.url,
        args.token,
        chunk_size=args.chunk_size,
        concurrency=args.concurrency,
        retries=args.retries,
        verify=clienttls.from_arguments(args).context(),
    ) as client:
        names = None
        if args.format in ("csv", "table"):
            names = Names(client)
            await names.load()
        output = Output(out, args.format, args.missing, names)
        async for batch in client.lookup_stream_raw(read_pairs(source, parser, on_errors)):
            await output.add(batch)
            messages.progress(output.total)
    output.finish()
    if output.total == 0 and parser.error_count:
        # As the API's invalid=report: input with bad lines and no pair is an error.
        print(
            f"eventindex: error: {messages.source}: no pairs to look up, only "
            f"{_lines(parser.error_count)}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    messages.summary(output, parser)
    return EXIT_SOME_MISSING if output.missing else EXIT_ALL_FOUND


def _lines(n: int) -> str:
    return f"{n:,} bad line{'' if n == 1 else 's'}"


def _source_name(path: str) -> str:
    return "stdin" if path == "-" else path


def service_arguments(p: argparse.ArgumentParser, token: str) -> None:
    """Where the service is and who asks: URL, token, client certificate (every command
    that talks to the service over HTTP)."""
    p.add_argument(
        "--url",
        default=os.environ.get("EVENTINDEX_URL", "http://127.0.0.1:8000"),
        help="service URL (default: EVENTINDEX_URL or http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("EVENTINDEX_TOKEN"),
        help=f"{token} (default: EVENTINDEX_TOKEN)",
    )
    clienttls.add_arguments(p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", default="-", help="file of pairs, or - for stdin (default)")
    service_arguments(p, "API token")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="ndjson",
        help="output: ndjson (default), csv (with dataset and decision names), table, or "
        "files (each file's UUID and how many of the events it holds)",
    )
    p.add_argument("--missing", action="store_true", help="print only the pairs not found")
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        help="skip bad input lines, each named on stderr with its number, and look up the rest "
        "(default: stop at the first)",
    )
    p.add_argument("--chunk-size", type=int, default=50_000, help="pairs per request")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    p.add_argument("--retries", type=int, default=6, help="retries of a failed request")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run(args: argparse.Namespace) -> int:
    if args.chunk_size < 1 or args.concurrency < 1:
        print("eventindex: error: --chunk-size and --concurrency must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        source: IO[bytes] = sys.stdin.buffer if args.input == "-" else open(args.input, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"eventindex: error: {args.input}: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return asyncio.run(pick(args, source, sys.stdout))
    except PairSyntaxError as exc:
        hint = "" if args.skip_invalid else " (--skip-invalid skips bad lines, looks up the rest)"
        print(
            f"eventindex: error: {_source_name(args.input)}: {_one_line(str(exc))}{hint}",
            file=sys.stderr,
        )
    except clienttls.ClientTlsError as exc:
        print(f"eventindex: error: {exc}", file=sys.stderr)
    except EventIndexError as exc:
        print(f"eventindex: error: {_one_line(str(exc))}", file=sys.stderr)
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. | head): not an error to report
    finally:
        source.close()
    return EXIT_ERROR
