"""Load datasets and events into the EventIndex catalogue with PostgreSQL COPY.

    eventindex load PATH [PATH ...] [--database-url URL]
                    [--on-conflict fail|skip] [--conflicts-report FILE]
                    [--datasets FILE]

PATH is a generator output directory (its datasets.csv first, then every
events*.csv[.gz] in name order), a datasets CSV (header starting ``id,name``),
an events CSV (plain or gzip), or ``-`` for events CSV on standard input.

Guarantees:

- One invocation is one transaction: if anything fails, the database is left
  exactly as it was, and the error names the file, line, column and value.
- Every event's dataset exists (checked in bulk over each file, not per row).
- Duplicates: a row whose run and event are already in the catalogue (or
  earlier in the file) with the same file, dataset and decisions is skipped and
  counted, so loading the same file twice changes nothing and says so. A
  conflicting duplicate (same run and event, anything else different) stops the
  load, naming it; with ``--on-conflict skip`` it is skipped instead, recorded
  in the ``load_conflicts`` table and, with ``--conflicts-report``, in a CSV.

Each events file is first copied straight into ``events`` (the fast path, at
the speed of COPY into the indexed table); only when that meets a duplicate or
an unknown dataset is it rolled back to a savepoint and loaded again through a
staging table that classifies every row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import asyncpg

from eventindex import sharding
from eventindex.db import (
    CONNECT_ERRORS,
    UNAVAILABLE_ERRORS,
    connect,
    describe_connect_error,
)
from eventindex.ingest.loader import FileResult, Loader
from eventindex.ingest.sharded import load_sharded
from eventindex.ingest.source import LoadError, header_columns, plan
from eventindex.ingest.statements import EVENT_COLUMNS

_URL_VARIABLE = "EVENTINDEX_DATABASE_URL"


async def run(args: argparse.Namespace) -> int:
    dataset_sources, event_sources = plan(args.paths, args.datasets)
    # With "eventindex generate --out - --datasets-out F | eventindex load - --datasets F"
    # the datasets file is complete once the events start to flow: wait for them first.
    for source in event_sources:
        if source.path is None:
            header_columns(source, EVENT_COLUMNS, EVENT_COLUMNS)
    for source in dataset_sources:
        if source.path is not None and not source.path.is_file():
            raise LoadError(f"{source.name}: no such file")
    url = args.database_url or os.environ.get(_URL_VARIABLE)
    if not url:
        raise LoadError("no database: set EVENTINDEX_DATABASE_URL or pass --database-url")
    try:
        conn = await connect(url, timeout=10)
    except CONNECT_ERRORS as exc:
        why = describe_connect_error(exc, url)
        raise LoadError(f"cannot connect to the database: {why}") from None
    report = Path(args.conflicts_report) if args.conflicts_report else None
    loader = Loader(
        conn,
        on_conflict=args.on_conflict,
        report=report,
        progress_interval=args.progress_interval,
    )
    results: list[FileResult] = []
    try:
        if await sharding.is_coordinator(conn):
            results = await load_sharded(loader, dataset_sources, event_sources)
            return _print_results(results)
        async with conn.transaction():
            for source in dataset_sources:
                n = await loader.load_datasets(source)
                print(f"{source.name}: {n} new datasets")
            for source in event_sources:
                results.append(await loader.load_events(source))
    except asyncpg.UndefinedTableError:
        raise LoadError("the database is not migrated: run 'eventindex migrate'") from None
    except asyncpg.PostgresError as exc:
        raise LoadError(f"the database refused: {str(exc).splitlines()[0]}") from None
    except sharding.PartialCommit:
        raise
    except sharding.ShardingError as exc:
        raise LoadError(str(exc)) from None
    finally:
        for source in [*dataset_sources, *event_sources]:
            source.close()
        await conn.close()
    return _print_results(results)


def _print_results(results: list[FileResult]) -> int:
    for result in results:
        print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="eventindex load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="directory, CSV file, or - (stdin)")
    p.add_argument("--database-url", help="PostgreSQL URL (default: EVENTINDEX_DATABASE_URL)")
    p.add_argument("--datasets", metavar="FILE", help="a datasets CSV to load first")
    p.add_argument(
        "--on-conflict",
        choices=("fail", "skip"),
        default="fail",
        help="a conflicting duplicate stops the load (fail, default) or is skipped (skip)",
    )
    p.add_argument("--conflicts-report", metavar="FILE", help="with skip: append conflicts here")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines when not on a terminal (default 10)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.conflicts_report and args.on_conflict != "skip":
        parser.exit(2, "eventindex load: error: --conflicts-report goes with --on-conflict skip\n")
    started = time.monotonic()
    try:
        code = asyncio.run(run(args))
    except LoadError as exc:
        print(f"eventindex load: error: {exc}; nothing was loaded", file=sys.stderr)
        return 1
    except sharding.PartialCommit as exc:
        print(f"eventindex load: error: the load is decided but {exc}", file=sys.stderr)
        return 1
    except (*UNAVAILABLE_ERRORS,) as exc:
        why = describe_connect_error(exc, args.database_url or os.environ.get(_URL_VARIABLE, ""))
        print(
            f"eventindex load: error: lost the database: {why}; nothing was loaded", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print("eventindex load: interrupted; nothing was loaded", file=sys.stderr)
        return 130
    print(f"eventindex load: done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
