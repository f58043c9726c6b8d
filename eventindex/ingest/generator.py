"""Pseudo-event generator: a realistic, deterministic EventIndex catalogue as CSV.

    eventindex generate --out DIR [--events N] [--runs R] [--datasets D] [--seed S]
                             [--parts K] [--gzip] [faults]
    eventindex generate --out - --datasets-out FILE ...   (events CSV on stdout)

Writes ``DIR/datasets.csv`` (``id,name,data_type,description``) and the events as
``DIR/events.csv`` (or ``events-001.csv`` ... with ``--parts``), header
``run_number,event_number,olt_result,dsid_raw,fuid_raw``.

Shape: runs with increasing run numbers (the first at --first-run, occasional
gaps between runs); within a run, event numbers increase from 1 with occasional
gaps; each raw file holds a contiguous block of 1,000-10,000 events of one run
under one random UUID (a run shorter than 1,000 events is one smaller file);
all the files of a run belong to one dataset (datasets are consecutive run
ranges); ``olt_result`` sets each Online Filter bit (names in ``OLT_BITS``, also
in the database's ``olt_bits`` table) independently with its own frequency,
and an event no decision selected is marked ``minimum_bias``.

The same arguments and seed give byte-identical output. Faults for testing the
loader are injected at random positions of the events: ``--duplicates N``
(identical copies of existing rows), ``--conflicts N`` (same run and event, a
different file), ``--malformed N`` (a broken line) and ``--unknown-dataset N``
(a dataset id not in datasets.csv).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path

import numpy as np

HEADER = b"run_number,event_number,olt_result,dsid_raw,fuid_raw\n"
DATASETS_HEADER = b"id,name,data_type,description\n"

# bit -> (name, frequency among events). The names match migrations/0002.
OLT_BITS: dict[int, tuple[str, float]] = {
    0: ("minimum_bias", 0.30),
    1: ("high_multiplicity", 0.08),
    2: ("high_pt_hadron", 0.05),
    3: ("dimuon", 0.02),
    4: ("jpsi_candidate", 0.005),
    5: ("open_charm", 0.03),
    6: ("prompt_photon", 0.02),
    7: ("calibration", 0.01),
    8: ("random_trigger", 0.01),
}

MIN_FILE, MAX_FILE = 1_000, 10_000
CHUNK_ROWS = 1 << 20
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


class GenerateError(Exception):
    pass


@dataclass(frozen=True)
class Options:
    events: int
    runs: int
    datasets: int
    seed: int
    first_run: int = 1000
    first_dataset: int = 1
    duplicates: int = 0
    conflicts: int = 0
    malformed: int = 0
    unknown_dataset: int = 0


@dataclass
class Catalogue:
    """Column arrays of every event, in file order."""

    run: np.ndarray
    event: np.ndarray
    olt: np.ndarray
    dsid: np.ndarray
    file: np.ndarray  # index into fuids
    fuids: np.ndarray  # (n_files, 36) ASCII


def _uuid_ascii(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[raw >> 4]
    hexed[:, 1::2] = _HEX[raw & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for src, dst in ((0, 0), (8, 9), (12, 14), (16, 19), (20, 24)):
        width = {0: 8, 8: 4, 12: 4, 16: 4, 20: 12}[src]
        out[:, dst : dst + width] = hexed[:, src : src + width]
    return out


def _file_sizes(rng: np.random.Generator, n: int) -> list[int]:
    if n <= MAX_FILE:
        return [n]
    sizes: list[int] = []
    left = n
    while left > 0:
        size = int(rng.integers(MIN_FILE, MAX_FILE + 1))
        if left - size < MIN_FILE:
            # Split the rest in one or two files that stay within the bounds.
            size = left if left <= MAX_FILE else left // 2
        sizes.append(size)
        left -= size
    return sizes


def build(opts: Options) -> Catalogue:
    if opts.runs < 1 or opts.events < opts.runs or opts.datasets < 1:
        raise GenerateError("need --runs >= 1, --events >= --runs and --datasets >= 1")
    if opts.datasets > opts.runs:
        raise GenerateError("--datasets must not exceed --runs (a dataset is a range of runs)")
    rng = np.random.default_rng(opts.seed)
    # Runs of uneven length, with occasional gaps between run numbers.
    weights = rng.gamma(4.0, 1.0, opts.runs)
    per_run = np.floor(weights / weights.sum() * opts.events).astype(np.int64) + 0
    per_run = np.maximum(per_run, 1)
    per_run[-1] += opts.events - per_run.sum()
    while per_run[-1] < 1:  # rounding took too much from the last run
        i = int(np.argmax(per_run))
        per_run[i] -= 1
        per_run[-1] += 1
    run_numbers = (
        opts.first_run
        + np.cumsum(1 + (rng.random(opts.runs) < 0.05) * rng.integers(1, 20, opts.runs))
        - 1
    )
    run_dataset = opts.first_dataset + (np.arange(opts.runs) * opts.datasets) // opts.runs

    # Files: contiguous blocks within each run.
    file_sizes: list[int] = []
    file_run: list[int] = []
    for r, n in enumerate(per_run.tolist()):
        sizes = _file_sizes(rng, n)
        file_sizes += sizes
        file_run += [r] * len(sizes)
    sizes_arr = np.asarray(file_sizes, dtype=np.int64)
    file_of_event = np.repeat(np.arange(len(file_sizes)), sizes_arr)
    run_index = np.asarray(file_run, dtype=np.int64)[file_of_event]

    # Event numbers: 1, 2, 3, ... within a run, with occasional gaps.
    steps = 1 + (rng.random(opts.events) < 0.001) * rng.integers(1, 1000, opts.events)
    run_start = np.zeros(opts.events, dtype=bool)
    run_start[0] = True
    run_start[1:] = run_index[1:] != run_index[:-1]
    steps[run_start] = 1
    total = np.cumsum(steps)
    base = np.maximum.accumulate(np.where(run_start, total - 1, 0))
    event = total - base

    bits = np.array(sorted(OLT_BITS), dtype=np.int64)
    freq = np.array([OLT_BITS[b][1] for b in bits])
    olt = np.zeros(opts.events, dtype=np.int64)
    for b, p in zip(bits.tolist(), freq.tolist(), strict=True):
        olt |= (rng.random(opts.events) < p).astype(np.int64) << b
    olt[olt == 0] = 1  # minimum_bias

    return Catalogue(
        run=run_numbers[run_index],
        event=event,
        olt=olt,
        dsid=run_dataset[run_index],
        file=file_of_event,
        fuids=_uuid_ascii(rng, len(file_sizes)),
    )


def _digits(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned ASCII digits of non-negative ints, and which of them to keep."""
    width = max(1, len(str(int(values.max())))) if len(values) else 1
    v = values.astype(np.uint64)
    out = np.empty((len(values), width), dtype=np.uint8)
    ndigits = np.ones(len(values), dtype=np.int64)
    for k in range(width - 1, -1, -1):
        out[:, k] = (v % 10).astype(np.uint8) + 48
        v //= 10
    for k in range(1, width):
        ndigits += values >= 10**k
    keep = np.arange(width) >= (width - ndigits)[:, None]
    return out, keep


def format_rows(
    run: np.ndarray, event: np.ndarray, olt: np.ndarray, dsid: np.ndarray, fuid: np.ndarray
) -> bytes:
    """CSV lines for the rows, built column-wise (no Python object per row)."""
    n = len(run)
    comma = np.full((n, 1), ord(","), dtype=np.uint8)
    newline = np.full((n, 1), ord("\n"), dtype=np.uint8)
    yes = np.ones((n, 1), dtype=bool)
    blocks: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for column in (run, event, olt, dsid):
        d, k = _digits(column)
        blocks += [d, comma]
        masks += [k, yes]
    blocks += [fuid, newline]
    masks += [np.ones(fuid.shape, dtype=bool), yes]
    data: bytes = np.hstack(blocks)[np.hstack(masks)].tobytes()
    return data


def _faulty_lines(
    cat: Catalogue, opts: Options, rng: np.random.Generator
) -> dict[int, list[bytes]]:
    """Extra lines to insert after given row positions."""
    extra: dict[int, list[bytes]] = {}
    n = len(cat.run)

    def line(
        i: int, *, olt: int | None = None, dsid: int | None = None, fuid: bytes | None = None
    ) -> bytes:
        f = fuid if fuid is not None else cat.fuids[cat.file[i]].tobytes()
        return b"%d,%d,%d,%d,%s\n" % (
            cat.run[i],
            cat.event[i],
            cat.olt[i] if olt is None else olt,
            cat.dsid[i] if dsid is None else dsid,
            f,
        )

    def at(i: int, text: bytes) -> None:
        extra.setdefault(i, []).append(text)

    for i in rng.integers(0, n, opts.duplicates).tolist():
        at(i, line(i))
    for i in rng.integers(0, n, opts.conflicts).tolist():
        at(i, line(i, fuid=str(uuid.UUID(bytes=rng.bytes(16), version=4)).encode()))
    for i in rng.integers(0, n, opts.malformed).tolist():
        at(i, b"%d,not-a-number,%d\n" % (cat.run[i], cat.olt[i]))
    for i in rng.integers(0, n, opts.unknown_dataset).tolist():
        # A new event (beyond the run's last) in a dataset that does not exist.
        at(
            i,
            b"%d,%d,1,%d,%s\n"
            % (
                cat.run[i],
                10**15 + i,
                opts.first_dataset + opts.datasets + 999,
                cat.fuids[cat.file[i]].tobytes(),
            ),
        )
    return extra


def event_chunks(
    cat: Catalogue, opts: Options, start: int = 0, stop: int | None = None
) -> Iterator[bytes]:
    """The CSV bytes of rows [start, stop), faults included, in chunks."""
    stop = len(cat.run) if stop is None else stop
    rng = np.random.default_rng(opts.seed + 1)
    extra = _faulty_lines(cat, opts, rng)
    cut_points = sorted(i for i in extra if start <= i < stop)
    pos = start
    for i in [*cut_points, stop - 1]:
        # Rows up to and including i, then the extra lines that go after row i.
        end = i + 1
        while pos < end:
            hi = min(end, pos + CHUNK_ROWS)
            s = slice(pos, hi)
            yield format_rows(
                cat.run[s], cat.event[s], cat.olt[s], cat.dsid[s], cat.fuids[cat.file[s]]
            )
            pos = hi
        if i in extra and i < stop:
            yield b"".join(extra.pop(i))


def datasets_csv(opts: Options, cat: Catalogue) -> bytes:
    rows = [DATASETS_HEADER]
    for d in range(opts.first_dataset, opts.first_dataset + opts.datasets):
        runs = cat.run[cat.dsid == d]
        first, last = int(runs.min()), int(runs.max())
        rows.append(
            b"%d,spd.raw.runs_%d-%d,raw,Raw data of runs %d to %d\n" % (d, first, last, first, last)
        )
    return b"".join(rows)


def _open_out(path: Path, gz: bool) -> BufferedIOBase:
    if gz:
        # Level 1: the generator stays fast; the files are scratch data.
        return gzip.GzipFile(path.with_name(path.name + ".gz"), "wb", compresslevel=1)
    return path.open("wb")


def write(
    cat: Catalogue, opts: Options, out: str, parts: int, gz: bool, datasets_out: str | None
) -> list[Path]:
    if out == "-":
        if datasets_out:
            Path(datasets_out).write_bytes(datasets_csv(opts, cat))
        stream = sys.stdout.buffer
        stream.write(HEADER)
        for chunk in event_chunks(cat, opts):
            stream.write(chunk)
        stream.flush()
        return []
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "datasets.csv").write_bytes(datasets_csv(opts, cat))
    written: list[Path] = []
    n = len(cat.run)
    bounds = np.linspace(0, n, parts + 1).astype(np.int64).tolist()
    for k in range(parts):
        name = "events.csv" if parts == 1 else f"events-{k + 1:03d}.csv"
        path = directory / name
        with _open_out(path, gz) as f:
            f.write(HEADER)
            for chunk in event_chunks(cat, opts, bounds[k], bounds[k + 1]):
                f.write(chunk)
        written.append(path.with_name(path.name + ".gz") if gz else path)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eventindex generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory, or - for events CSV on stdout")
    p.add_argument("--events", type=int, default=1_000_000, help="total events (default 1M)")
    p.add_argument("--runs", type=int, default=100, help="number of runs (default 100)")
    p.add_argument(
        "--datasets", type=int, help="number of datasets (default 4, or --runs if fewer)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--first-run", type=int, default=1000, help="first run number (default 1000)")
    p.add_argument("--first-dataset", type=int, default=1, help="first dataset id (default 1)")
    p.add_argument("--parts", type=int, default=1, help="split events into N files")
    p.add_argument("--gzip", action="store_true", help="write .csv.gz")
    p.add_argument("--datasets-out", help="with --out -: where to write datasets.csv")
    faults = p.add_argument_group("faults (for testing the loader)")
    faults.add_argument("--duplicates", type=int, default=0, help="identical duplicate rows")
    faults.add_argument("--conflicts", type=int, default=0, help="same run/event in another file")
    faults.add_argument("--malformed", type=int, default=0, help="broken lines")
    faults.add_argument("--unknown-dataset", type=int, default=0, help="rows of a missing dataset")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.datasets is None:
        args.datasets = min(4, max(args.runs, 1))
    for name in ("events", "runs", "datasets", "parts"):
        if getattr(args, name) < 1:
            parser.exit(2, f"eventindex generate: error: --{name} must be at least 1\n")
    nonneg = ("duplicates", "conflicts", "malformed", "unknown_dataset", "first_run", "seed")
    for name in (*nonneg, "first_dataset"):
        if getattr(args, name) < 0:
            parser.exit(
                2, f"eventindex generate: error: --{name.replace('_', '-')} must not be negative\n"
            )
    opts = Options(
        events=args.events,
        runs=args.runs,
        datasets=args.datasets,
        seed=args.seed,
        first_run=args.first_run,
        first_dataset=args.first_dataset,
        duplicates=args.duplicates,
        conflicts=args.conflicts,
        malformed=args.malformed,
        unknown_dataset=args.unknown_dataset,
    )
    try:
        cat = build(opts)
        written = write(cat, opts, args.out, args.parts, args.gzip, args.datasets_out)
    except GenerateError as exc:
        parser.exit(2, f"eventindex generate: error: {exc}\n")
    except OSError as exc:
        parser.exit(1, f"eventindex generate: error: {exc}\n")
    if written:
        print(
            f"eventindex generate: {args.events:,} events in {len(written)} file(s) "
            f"under {args.out}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
