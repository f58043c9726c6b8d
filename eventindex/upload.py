"""``eventindex upload`` and ``eventindex datasets``: data collection from the command line,
over the HTTP API (a write token, no database credentials).

Files are given as the generator writes them: one CSV per raw file, named by its UUID
(``<fuid>.csv`` or ``.csv.gz``, header ``run_number,event_number,olt_result``), or a
catalogue CSV holding many files (header with ``fuid_raw``, as ``eventindex generate``
writes), which is split by ``fuid_raw`` (each file's rows together, as the generator
writes them). A file already loaded with the same events is answered "identical" and
counted as already loaded (the service compares every event, so a run can be resumed by
running it again); failures are retried with backoff (uploads are idempotent).

Exit codes: 0 every file is in the catalogue; 3 some files were refused (each named on
stderr); 1 an error (service unreachable, unreadable input); 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import io
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from eventindex import clienttls
from eventindex.client import EventIndexClient, EventIndexError, ProblemError
from eventindex.pick import service_arguments

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3

EVENT_COLUMNS = ("run_number", "event_number", "olt_result")


class InputError(Exception):
    """An input file that cannot be read as files to upload; one line for the user."""


@dataclass
class RawFile:
    fuid: str
    source: str
    body: bytes  # CSV, header run_number,event_number,olt_result
    events: int
    dataset: int | None = None  # from a catalogue CSV's dsid_raw


def _open_text(path: Path) -> IO[str]:
    raw = path.open("rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.close()
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    raw.seek(0)
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def raw_files(path: Path) -> Iterator[RawFile]:
    """The raw files an input holds, one at a time (memory: one raw file)."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = [c.strip().lstrip("\ufeff") for c in next(reader, [])]
        if not header:
            raise InputError(f"{path}: the file is empty")
        missing = [c for c in EVENT_COLUMNS if c not in header]
        if missing:
            raise InputError(f"{path}: line 1: no column {missing[0]!r}")
        at = [header.index(c) for c in EVENT_COLUMNS]
        if "fuid_raw" not in header:
            name = path.name.split(".")[0]
            try:
                fuid = str(uuid.UUID(name))
            except ValueError:
                raise InputError(
                    f"{path}: the file name is not a raw file's UUID and the file has no "
                    "fuid_raw column"
                ) from None
            lines = [_fields(row, at, path, n) for n, row in enumerate(reader, start=2) if row]
            body = ",".join(EVENT_COLUMNS) + "\n" + "\n".join(lines) + "\n"
            yield RawFile(fuid, str(path), body.encode(), len(lines))
            return
        fuid_at = header.index("fuid_raw")
        dsid_at = header.index("dsid_raw") if "dsid_raw" in header else None
        seen: set[str] = set()
        current: str | None = None
        dataset: int | None = None
        lines = []
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                fuid = row[fuid_at].strip()
            except IndexError:
                raise InputError(f"{path}: line {number}: no fuid_raw value") from None
            if fuid != current:
                if current is not None:
                    yield _raw_file(current, path, lines, dataset)
                if fuid in seen:
                    raise InputError(
                        f"{path}: line {number}: the events of file {fuid} are not together "
                        "(sort the file by fuid_raw)"
                    )
                seen.add(fuid)
                current, lines = fuid, []
                dataset = _dataset(row, dsid_at, path, number)
            lines.append(_fields(row, at, path, number))
        if current is not None:
            yield _raw_file(current, path, lines, dataset)


def _fields(row: list[str], at: list[int], path: Path, number: int) -> str:
    try:
        return ",".join(row[i] for i in at)
    except IndexError:
        raise InputError(f"{path}: line {number}: too few values") from None


def _dataset(row: list[str], at: int | None, path: Path, number: int) -> int | None:
    if at is None:
        return None
    try:
        return int(row[at])
    except (IndexError, ValueError):
        raise InputError(f"{path}: line {number}: dsid_raw is not a number") from None


def _raw_file(fuid: str, path: Path, lines: list[str], dataset: int | None) -> RawFile:
    body = ",".join(EVENT_COLUMNS) + "\n" + "\n".join(lines) + "\n"
    return RawFile(fuid, str(path), body.encode(), len(lines), dataset)


@dataclass
class Tally:
    loaded: int = 0
    identical: int = 0
    skipped: int = 0
    refused: int = 0
    events: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        seconds = time.monotonic() - self.started
        return (
            f"{self.loaded:,} files loaded ({self.events:,} events), "
            f"{self.identical + self.skipped:,} already loaded, {self.refused:,} refused, "
            f"in {seconds:,.1f} s"
        )


class Progress:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def show(self, tally: Tally, final: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if final or now - self.last > 0.2:
            self.last = now
            self.stream.write("\r\x1b[K" + ("" if final else tally.line()))
            self.stream.flush()


async def upload(args: argparse.Namespace, err: IO[str]) -> int:
    tally = Tally()
    progress = Progress(err)
    jobs = asyncio.Semaphore(args.jobs)
    failed: list[str] = []
    async with _client(args) as client:
        target = None
        if args.dataset is not None:
            target = (await client.dataset_status(args.dataset))["id"]

        async def one(raw: RawFile) -> None:
            try:
                await upload_one(client, raw, target, args.dataset, tally, failed, err)
                progress.show(tally)
            finally:
                jobs.release()

        tasks: list[asyncio.Task[None]] = []
        try:
            for path in args.paths:
                for raw in raw_files(Path(path)):
                    # Read ahead no more than --jobs files.
                    await jobs.acquire()
                    tasks.append(asyncio.create_task(one(raw)))
                    for task in tasks:
                        if task.done():
                            task.result()  # an error stops the upload
                    tasks = [t for t in tasks if not t.done()]
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            progress.show(tally, final=True)
    err.write(f"eventindex: {tally.line()}\n")
    return EXIT_REFUSED if failed else EXIT_OK


async def upload_one(
    client: EventIndexClient,
    raw: RawFile,
    target: int | None,
    named: str | None,
    tally: Tally,
    failed: list[str],
    err: IO[str],
) -> None:
    dataset = target if target is not None else raw.dataset
    if dataset is None:
        raise InputError(f"{raw.source}: file {raw.fuid}: no dataset (give --dataset NAME)")
    if target is not None and raw.dataset not in (None, target):
        raise InputError(
            f"{raw.source}: file {raw.fuid} is of dataset {raw.dataset}, not {named} ({target})"
        )
    try:
        answer = await client.upload_file(raw.fuid, raw.body, dataset)
    except ProblemError as exc:
        tally.refused += 1
        failed.append(f"{raw.source}: file {raw.fuid}: {exc}")
        err.write(f"eventindex: refused: {failed[-1]}\n")
        return
    if answer["result"] == "identical":
        tally.identical += 1
    else:
        tally.loaded += 1
        tally.events += raw.events


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="CSV files (.csv or .csv.gz)")
    p.add_argument(
        "--dataset",
        help="the dataset's name or id (default: each row's dsid_raw, in a catalogue CSV)",
    )
    _service_arguments(p)
    p.add_argument("--jobs", type=int, default=4, help="uploads in flight (default 4)")


def _service_arguments(p: argparse.ArgumentParser) -> None:
    service_arguments(p, "API token with the write scope")
    p.add_argument("--retries", type=int, default=6, help="retries of a failed request")


def _client(args: argparse.Namespace) -> EventIndexClient:
    return EventIndexClient(
        args.url,
        args.token,
        retries=args.retries,
        verify=clienttls.from_arguments(args).context(),
    )


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        print("eventindex: error: --jobs must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    return _guarded(lambda: asyncio.run(upload(args, sys.stderr)))


def _guarded(call: Any) -> int:
    try:
        code: int = call()
        return code
    except (InputError, EventIndexError, clienttls.ClientTlsError) as exc:
        print(f"eventindex: error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"eventindex: error: {exc.filename}: {exc.strerror}", file=sys.stderr)
    except UnicodeDecodeError:
        print("eventindex: error: an input file is not UTF-8 text", file=sys.stderr)
    except csv.Error as exc:
        print(f"eventindex: error: an input file is not CSV: {exc}", file=sys.stderr)
    return EXIT_ERROR


# --- eventindex datasets ---


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="datasets_command", required=True, metavar="COMMAND")
    c = sub.add_parser("create", help="register a dataset (the same again is not an error)")
    c.add_argument("name")
    c.add_argument("--data-type", default="raw")
    c.add_argument("--description", default="")
    c.add_argument("--files-expected", type=int, help="files the production will report")
    c.add_argument("--id", type=int, dest="dataset_id", help="the dataset's id, if it has one")
    _service_arguments(c)
    c = sub.add_parser("close", help="end a dataset's filling; validate it when it is clean")
    c.add_argument("dataset", help="name or id")
    _service_arguments(c)
    c = sub.add_parser("show", help="a dataset's state, files loaded and expected")
    c.add_argument("dataset", help="name or id")
    _service_arguments(c)


async def _datasets(args: argparse.Namespace) -> dict[str, Any]:
    async with _client(args) as client:
        if args.datasets_command == "create":
            return await client.create_dataset(
                args.name,
                data_type=args.data_type,
                description=args.description,
                files_expected=args.files_expected,
                dataset_id=args.dataset_id,
            )
        if args.datasets_command == "close":
            return await client.close_dataset(args.dataset)
        return await client.dataset_status(args.dataset)


def run_datasets(args: argparse.Namespace) -> int:
    def call() -> int:
        d = asyncio.run(_datasets(args))
        expected = d.get("files_expected")
        files = f"{d['n_files']:,} files" + (f" of {expected:,} expected" if expected else "")
        print(f"dataset {d['id']} {d['name']}: {d['state']}, {files}, {d['n_events']:,} events")
        for problem in (d.get("close_report") or {}).get("problems", []):
            print(f"  problem: {problem}")
        return 4 if args.datasets_command == "close" and d["state"] != "validated" else EXIT_OK

    return _guarded(call)
