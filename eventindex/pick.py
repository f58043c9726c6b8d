"""``eventindex pick``: event picking from the command line.

Exit codes: 0 every pair was found; 3 some pairs are not in the catalogue;
1 an error (bad input line, refused request, service unreachable); 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import time
from collections.abc import Iterator
from typing import IO

import orjson

from eventindex import clienttls
from eventindex.client import EventIndexClient, EventIndexError, Pair
from eventindex.pairs import PairParser, PairSyntaxError

EXIT_ALL_FOUND = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SOME_MISSING = 3

FORMATS = ("ndjson", "csv", "table", "files")
_COLUMNS = ("run_number", "event_number", "found", "fuid_raw", "dsid_raw", "olt_result")


def read_pairs(stream: IO[bytes]) -> Iterator[Pair]:
    """Pairs from text in any accepted form; stops with PairSyntaxError at a bad line."""
    parser = PairParser()
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
        yield from _checked(parser, data[: cut + 1])
    if tail:
        yield from _checked(parser, tail)


def _checked(parser: PairParser, chunk: bytes) -> Iterator[Pair]:
    runs, events = parser.feed(chunk)
    yield from zip(runs, events, strict=True)
    if parser.failure is not None:
        raise parser.failure


class Output:
    def __init__(self, out: IO[str], fmt: str, only_missing: bool) -> None:
        self.out = out
        self.fmt = fmt
        self.only_missing = only_missing
        self.total = self.missing = 0
        self.files: dict[str, int] = {}
        self.csv = csv.writer(out, lineterminator="\n") if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(_COLUMNS)
        if fmt == "table":
            out.write(f"{'run':>10} {'event':>20} {'file (fuid_raw)':<36} {'dsid':>6} {'olt':>6}\n")

    def add(self, lines: list[bytes]) -> None:
        self.total += len(lines)
        if self.fmt == "ndjson" and not self.only_missing:
            self.missing += sum(1 for line in lines if b'"found":false' in line)
            self.out.write(b"\n".join(lines).decode() + "\n")
            return
        for line in lines:
            r = orjson.loads(line)
            if not r["found"]:
                self.missing += 1
            elif self.only_missing:
                continue
            if self.fmt == "files":
                if r["found"]:
                    self.files[r["fuid_raw"]] = self.files.get(r["fuid_raw"], 0) + 1
            elif self.fmt == "ndjson":
                self.out.write(line.decode() + "\n")
            elif self.csv is not None:
                self.csv.writerow(["" if r[c] is None else r[c] for c in _COLUMNS])
            else:
                fuid = r["fuid_raw"] or "(not found)"
                dsid = "" if r["dsid_raw"] is None else r["dsid_raw"]
                olt = "" if r["olt_result"] is None else r["olt_result"]
                self.out.write(
                    f"{r['run_number']:>10} {r['event_number']:>20} {fuid:<36} {dsid:>6} {olt:>6}\n"
                )

    def finish(self) -> None:
        if self.fmt == "files":
            for fuid, count in self.files.items():
                self.out.write(f"{fuid} {count}\n")
        self.out.flush()


class Progress:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.on = stream.isatty()
        self.started = self.last = time.monotonic()

    def show(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not self.on or (not final and now - self.last < 0.2):
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        end = "\n" if final else ""
        self.stream.write(f"\r\x1b[K{done:,} pairs, {rate:,.0f} pairs/s{end}")
        self.stream.flush()


async def pick(args: argparse.Namespace, source: IO[bytes], out: IO[str]) -> int:
    output = Output(out, args.format, args.missing)
    progress = Progress(sys.stderr)
    async with EventIndexClient(
        args.url,
        args.token,
        chunk_size=args.chunk_size,
        concurrency=args.concurrency,
        retries=args.retries,
        verify=clienttls.from_arguments(args).context(),
    ) as client:
        async for batch in client.lookup_stream_raw(read_pairs(source)):
            output.add(batch)
            progress.show(output.total)
    output.finish()
    progress.show(output.total, final=True)
    return EXIT_SOME_MISSING if output.missing else EXIT_ALL_FOUND


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", nargs="?", default="-", help="file of pairs, or - for stdin (default)")
    p.add_argument(
        "--url",
        default=os.environ.get("EVENTINDEX_URL", "http://127.0.0.1:8000"),
        help="service URL (default: EVENTINDEX_URL or http://127.0.0.1:8000)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("EVENTINDEX_TOKEN"),
        help="API token (default: EVENTINDEX_TOKEN)",
    )
    clienttls.add_arguments(p)
    p.add_argument("--format", choices=FORMATS, default="ndjson", help="output (default ndjson)")
    p.add_argument("--missing", action="store_true", help="print only the pairs not found")
    p.add_argument("--chunk-size", type=int, default=50_000, help="pairs per request")
    p.add_argument("--concurrency", type=int, default=2, help="requests in flight")
    p.add_argument("--retries", type=int, default=6, help="retries of a failed request")


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
        print(f"eventindex: error: {args.input}: {exc}", file=sys.stderr)
    except clienttls.ClientTlsError as exc:
        print(f"eventindex: error: {exc}", file=sys.stderr)
    except EventIndexError as exc:
        print(f"eventindex: error: {exc}", file=sys.stderr)
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. | head): not an error to report
    finally:
        source.close()
    return EXIT_ERROR
