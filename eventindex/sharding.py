"""Sharding on PostgreSQL itself: events spread over several servers by a hash of their
run, a coordinator database that routes lookups with PL/Proxy and reads the catalogue
through postgres_fdw, and two-phase commit for writes that span servers.

The layout (docs/scaling.md): ``hashint4(run_number)`` picks one of a fixed power-of-two
number of slots, each slot lives on one shard, and the coordinator's
``eventindex_shard_slots`` table is the map that PL/Proxy, the loader and this module
all read. Adding a shard moves whole slots (all the events of their runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import asyncpg
from asyncpg.transaction import Transaction

from eventindex import migrate, queries
from eventindex.db import (
    DatabaseUrlError,
    connect,
    copy_unless_lost,
    describe_connect_error,
    redact,
)
from eventindex.ingest.statements import ADD_PARTITIONS, EVENT_COLUMNS

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

IS_COORDINATOR = "SELECT to_regclass('eventindex_shards') IS NOT NULL"


# The coordinator holds no events itself: its own tables give way to the views.
COORDINATOR_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM events) AND NOT EXISTS (SELECT 1 FROM files)"

DROP_LOCAL_EVENT_TABLES = "DROP TABLE events, files, run_olt_counts"

ADD_SHARD = """
INSERT INTO eventindex_shards (name, host, port, dbname, username, password)
VALUES ($1, $2, $3, $4, $5, $6)
"""

ASSIGN_SLOTS = """
INSERT INTO eventindex_shard_slots (slot, shard)
SELECT slot, shard FROM unnest($1::integer[], $2::text[]) AS u (slot, shard)
ON CONFLICT (slot) DO UPDATE SET shard = EXCLUDED.shard
"""

BUMP_SHARD_MAP = "UPDATE eventindex_shard_map_version SET version = version + 1"

# Statements on the coordinator that began before $1 and still run (they may be routing
# by the map of before $1).
OLDER_STATEMENTS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
  AND query_start < $1
"""

NOW = "SELECT clock_timestamp()"

SHARD_VIEWS = "SELECT eventindex_shard_views()"

# Loads hold the map shared for their whole transaction and a slot move holds it alone, so
# no load can write a run to the shard it is being moved away from.
LOCK_SHARD_MAP_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtext('eventindex.shard_map'))"

LOCK_SHARD_MAP = "SELECT pg_advisory_xact_lock(hashtext('eventindex.shard_map'))"

SHARDS = "SELECT name, host, port, dbname, username, password FROM eventindex_shards ORDER BY name"

SHARD_SLOTS = "SELECT slot, shard FROM eventindex_shard_slots ORDER BY slot"

SLOT_OWNER = "SELECT shard FROM eventindex_shard_slots WHERE slot = $1"

# Runs a shard holds whose slot is $1 of $2 slots.
RUNS_OF_SLOT = """
SELECT DISTINCT run_number FROM run_olt_counts
WHERE (hashint4(run_number) & ($2 - 1)) = $1
ORDER BY run_number
"""

EVENTS_OF_RUNS = """
SELECT run_number, event_number, olt_result, dsid_raw, fuid_raw FROM events
WHERE run_number = ANY($1::integer[])
"""

DELETE_EVENTS_OF_RUNS = "DELETE FROM events WHERE run_number = ANY($1::integer[])"

ALL_DATASETS = "SELECT id, name, data_type, description, created_at, metadata FROM datasets"

# A shard keeps a copy of the datasets (its loads check them); they only ever grow.
SYNC_DATASETS = """
INSERT INTO datasets (id, name, data_type, description, created_at, metadata)
SELECT * FROM unnest($1::integer[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::jsonb[])
ON CONFLICT (id) DO NOTHING
"""

PREPARED_TRANSACTIONS = "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'eventindex-%'"

# Two-phase commit: {gid} is filled with literal() only (utility statements cannot bind).
PREPARE_TRANSACTION = "PREPARE TRANSACTION {gid}"

COMMIT_PREPARED = "COMMIT PREPARED {gid}"

ROLLBACK_PREPARED = "ROLLBACK PREPARED {gid}"


log = logging.getLogger("eventindex")

DEFAULT_SLOTS = 16
_MASK = 0xFFFFFFFF


class ShardingError(Exception):
    """A sharding operation that cannot go on; the message is one line for the user."""


class PartialCommit(ShardingError):
    """Decided and committed on some servers, still prepared on others (named)."""


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def run_hash(run: int) -> int:
    """PostgreSQL's ``hashint4(run)`` (Bob Jenkins' lookup3 on one 32-bit word), which
    PL/Proxy routes lookups by: the loader must route events the same way."""
    a = b = c = (0x9E3779B9 + 4 + 3923095) & _MASK
    a = (a + (run & _MASK)) & _MASK
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return c - (1 << 32) if c >= 1 << 31 else c


def slot_of(run: int, slots: int) -> int:
    return run_hash(run) & (slots - 1)


@dataclass(frozen=True)
class Shard:
    name: str
    host: str
    port: int
    dbname: str
    username: str
    password: str | None = None

    @classmethod
    def from_url(cls, name: str, url: str) -> Shard:
        if not re.fullmatch(r"[a-z0-9_]{1,40}", name):
            raise ShardingError(f"shard name {name!r}: use 1-40 of a-z, 0-9 and _")
        parts = urlsplit(url)
        # A unix socket is given as ?host=/directory.
        host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
        try:
            # A password holding an unencoded / or # is read as the port.
            port = parts.port
        except ValueError:
            port, host = None, ""
        if parts.scheme not in ("postgresql", "postgres") or not host:
            raise ShardingError(
                f"shard {name}: {redact(url)!r} is not a postgresql://host/db URL (a user "
                "name or password holding / ? # @ : [ ] must be percent-encoded)"
            )
        query_port = parse_qs(parts.query).get("port", [""])[0]
        return cls(
            name=name,
            host=host,
            port=port or (int(query_port) if _digits(query_port) else 5432),
            dbname=unquote(parts.path.lstrip("/")) or "postgres",
            username=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password else None,
        )

    @property
    def url(self) -> str:
        auth = quote(self.username) + (f":{quote(self.password)}" if self.password else "")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@/{self.dbname}?host={self.host}&port={self.port}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"


@dataclass(frozen=True)
class ShardMap:
    shards: dict[str, Shard]
    slots: list[str]  # slot -> shard name

    def shard_of(self, run: int) -> Shard:
        return self.shards[self.slots[slot_of(run, len(self.slots))]]

    @classmethod
    async def load(cls, conn: asyncpg.Connection) -> ShardMap:
        shards = {r["name"]: Shard(**dict(r)) for r in await conn.fetch(SHARDS)}
        slots = [r["shard"] for r in await conn.fetch(SHARD_SLOTS)]
        return cls(shards, slots)


async def is_coordinator(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval(IS_COORDINATOR))


async def _connect(shard: Shard) -> asyncpg.Connection:
    try:
        return await connect(shard.url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, DatabaseUrlError) as exc:
        why = describe_connect_error(exc, shard.url)
        raise ShardingError(f"shard {shard.name} ({shard.address}) unreachable: {why}") from None


async def _connect_coordinator(url: str) -> asyncpg.Connection:
    try:
        return await connect(url, timeout=10)
    except DatabaseUrlError as exc:
        raise ShardingError(str(exc)) from None


async def sync_datasets(coordinator: asyncpg.Connection, shard: asyncpg.Connection) -> None:
    rows = await coordinator.fetch(ALL_DATASETS)
    columns: list[list[Any]] = [[r[i] for r in rows] for i in range(6)]
    await shard.execute(SYNC_DATASETS, *columns)


class TwoPhase:
    """One transaction on each of several servers, committed together (two-phase commit).

    Every transaction but the deciding one is prepared first; if any cannot be, all are
    rolled back and nothing changed anywhere. Then all are committed in the order they
    were begun, the deciding one with a plain COMMIT: if that fails, the prepared ones
    not yet committed are rolled back. A server lost after the decision keeps its
    prepared transaction, which the error names, to be finished with COMMIT PREPARED.
    """

    def __init__(self) -> None:
        self.gid = f"eventindex-{uuid.uuid4()}"
        self._members: list[tuple[str, asyncpg.Connection, Transaction, bool]] = []
        self._ended: set[int] = set()  # members whose transaction is over on this side

    async def begin(self, label: str, conn: asyncpg.Connection, *, decides: bool = False) -> None:
        tr = conn.transaction()
        await tr.start()
        self._members.append((label, conn, tr, decides))

    async def rollback(self, prepared: Iterable[tuple[str, asyncpg.Connection, str]] = ()) -> None:
        for i, (_label, conn, tr, _) in enumerate(self._members):
            if not conn.is_closed() and i not in self._ended:
                with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    await tr.rollback()
        for _label, conn, gid in prepared:
            try:
                await conn.execute(ROLLBACK_PREPARED.format(gid=queries.literal(gid)))
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("could not roll back prepared transaction %s", gid)
        self._members.clear()
        self._ended.clear()

    async def commit(self, after_decision: Callable[[], Awaitable[None]] | None = None) -> None:
        """Prepare, decide, commit; ``after_decision`` runs right after the decision."""
        prepared: dict[int, tuple[str, asyncpg.Connection, str]] = {}
        try:
            for i, (label, conn, tr, decides) in enumerate(self._members):
                if decides:
                    continue
                gid = f"{self.gid}-{i}"
                try:
                    await conn.execute(PREPARE_TRANSACTION.format(gid=queries.literal(gid)))
                except asyncpg.PostgresError as exc:
                    first = str(exc).splitlines()[0]
                    raise ShardingError(
                        f"{label}: cannot prepare its transaction ({first})"
                    ) from exc
                prepared[i] = (label, conn, gid)
                self._ended.add(i)
                # The server has ended the transaction; asyncpg's record of it is closed
                # too (its COMMIT outside a transaction is only a warning).
                await tr.commit()
        except BaseException:
            await self.rollback(prepared.values())
            raise
        unfinished = []
        try:
            for i, (label, conn, tr, decides) in enumerate(self._members):
                if decides:
                    try:
                        await tr.commit()
                    except BaseException:
                        self._ended.add(i)
                        await self.rollback(v for k, v in prepared.items() if k > i)
                        prepared.clear()
                        raise
                    if after_decision is not None:
                        try:
                            await after_decision()
                        except Exception:
                            log.exception("after the decision of %s; committing on", self.gid)
                    continue
                label, conn, gid = prepared.pop(i)
                try:
                    await conn.execute(COMMIT_PREPARED.format(gid=queries.literal(gid)))
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    unfinished.append(f"on {label}: COMMIT PREPARED '{gid}' ({exc})")
        finally:
            # Interrupted after the decision: what is still prepared must be finished by hand.
            unfinished += [
                f"on {label}: COMMIT PREPARED '{gid}'" for label, _, gid in prepared.values()
            ]
            self._members.clear()
            self._ended.clear()
            if unfinished and prepared:
                log.error("decided but not committed: %s", "; ".join(unfinished))
        if unfinished:
            raise PartialCommit(
                "committed only in part; when the servers are back, run " + "; ".join(unfinished)
            )


@asynccontextmanager
async def shard_connections(shard_map: ShardMap) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    async with AsyncExitStack() as stack:
        conns: dict[str, asyncpg.Connection] = {}
        for name, shard in shard_map.shards.items():
            conn = await _connect(shard)
            stack.push_async_callback(conn.close)
            conns[name] = conn
        yield conns


def _even_slots(names: list[str], slots: int) -> list[str]:
    return [names[i % len(names)] for i in range(slots)]


async def init(
    coordinator_url: str, shards: dict[str, str], slots: int = DEFAULT_SLOTS
) -> ShardMap:
    """Make ``coordinator_url`` (a migrated catalogue with no events) the coordinator of
    the given shards (name -> URL), with ``slots`` slots spread evenly over them."""
    if slots < 1 or slots & (slots - 1):
        raise ShardingError(f"--slots must be a power of two, not {slots}")
    if not shards:
        raise ShardingError("name at least one shard")
    members = [Shard.from_url(name, url) for name, url in shards.items()]
    shard_map = ShardMap({s.name: s for s in members}, _even_slots(sorted(shards), slots))
    coordinator = await _connect_coordinator(coordinator_url)
    try:
        await migrate.apply(coordinator)
        if await is_coordinator(coordinator):
            raise ShardingError("this database is already a coordinator (use 'shards add')")
        async with shard_connections(shard_map) as conns:
            for shard in members:
                await migrate.apply(conns[shard.name])
            async with coordinator.transaction():
                if not await coordinator.fetchval(COORDINATOR_EMPTY):
                    raise ShardingError(
                        "the coordinator holds events; shard a new, empty catalogue (an "
                        "existing one can become a shard: docs/scaling.md)"
                    )
                await coordinator.execute(coordinator_schema())
                await coordinator.execute(DROP_LOCAL_EVENT_TABLES)
                for s in members:
                    await coordinator.execute(
                        ADD_SHARD, s.name, s.host, s.port, s.dbname, s.username, s.password
                    )
                await coordinator.execute(ASSIGN_SLOTS, list(range(slots)), shard_map.slots)
                await coordinator.execute(BUMP_SHARD_MAP)
                await coordinator.execute(SHARD_VIEWS)
            for shard in members:
                await sync_datasets(coordinator, conns[shard.name])
    finally:
        await coordinator.close()
    return shard_map


async def _move_runs(
    source: asyncpg.Connection, target: asyncpg.Connection, runs: list[int]
) -> int:
    """Copy the events of ``runs`` from one shard to another (both in transactions)."""
    await target.execute(ADD_PARTITIONS, runs)
    with tempfile.TemporaryFile(prefix="eventindex-move-") as buffer:
        await source.copy_from_query(EVENTS_OF_RUNS, runs, output=buffer, format="binary")
        buffer.seek(0)
        status = await copy_unless_lost(
            target,
            target.copy_to_table(
                "events", source=buffer, columns=list(EVENT_COLUMNS), format="binary"
            ),
        )
    return int(status.split()[-1])


async def add(coordinator_url: str, name: str, url: str) -> dict[int, int]:
    """Add a shard and move to it its share of the slots, one slot at a time; returns the
    events moved per slot. Lookups go on throughout: each slot's events are copied,
    the map switched and the old copies deleted in one two-phase commit."""
    new = Shard.from_url(name, url)
    coordinator = await _connect_coordinator(coordinator_url)
    try:
        if not await is_coordinator(coordinator):
            raise ShardingError("this database is not a coordinator (run 'shards init')")
        shard_map = await ShardMap.load(coordinator)
        known = shard_map.shards.get(name)
        # Adding a shard again with the same address resumes an add that was interrupted.
        if known is not None and known.address != new.address:
            raise ShardingError(f"shard {name} exists already, at {known.address}")
        target = await _connect(new)
        try:
            await migrate.apply(target)
            await sync_datasets(coordinator, target)
            if known is None:
                async with coordinator.transaction():
                    await coordinator.execute(
                        ADD_SHARD,
                        new.name,
                        new.host,
                        new.port,
                        new.dbname,
                        new.username,
                        new.password,
                    )
                    await coordinator.execute(SHARD_VIEWS)
            others = ShardMap(
                {n: s for n, s in shard_map.shards.items() if n != name}, shard_map.slots
            )
            moved: dict[int, int] = {}
            async with shard_connections(others) as conns:
                for slot in _slots_to_move(shard_map, name):
                    moved[slot] = await _move_slot(
                        coordinator, conns[shard_map.slots[slot]], target, slot, shard_map, name
                    )
        finally:
            await target.close()
    finally:
        await coordinator.close()
    return moved


def _slots_to_move(shard_map: ShardMap, name: str) -> list[int]:
    """Slots for the new shard, taken one by one from the shard holding the most."""
    owners = list(shard_map.slots)
    share = len(owners) // len(set(shard_map.shards) | {name})
    chosen: list[int] = []
    for _ in range(share - owners.count(name)):
        counts: dict[str, int] = {}
        for owner in owners:
            counts[owner] = counts.get(owner, 0) + 1
        busiest = max(sorted(counts), key=lambda n: counts[n])
        slot = max(i for i, owner in enumerate(owners) if owner == busiest)
        owners[slot] = name
        chosen.append(slot)
    return sorted(chosen)


async def _move_slot(
    coordinator: asyncpg.Connection,
    source: asyncpg.Connection,
    target: asyncpg.Connection,
    slot: int,
    shard_map: ShardMap,
    name: str,
) -> int:
    await _wait_for_prepared(source, shard_map.slots[slot])
    commit = TwoPhase()
    try:
        await commit.begin(f"shard {name}", target)
        await commit.begin("coordinator", coordinator, decides=True)
        # Running loads finish first, and new ones wait for the new map.
        await coordinator.execute(LOCK_SHARD_MAP)
        await commit.begin(f"shard {shard_map.slots[slot]}", source)
        runs = [
            r["run_number"] for r in await source.fetch(RUNS_OF_SLOT, slot, len(shard_map.slots))
        ]
        moved = await _move_runs(source, target, runs) if runs else 0
        await coordinator.execute(ASSIGN_SLOTS, [slot], [name])
        await coordinator.execute(BUMP_SHARD_MAP)
        if runs:
            await source.execute(DELETE_EVENTS_OF_RUNS, runs)
    except BaseException:
        await commit.rollback()
        raise
    # Committed in the order begun: the copy, then the map, then the deletion, so that
    # a lookup finds the events wherever the map sends it at every moment.
    try:
        await commit.commit(after_decision=lambda: _drain(coordinator))
    except ShardingError:
        raise
    except BaseException:
        # The copy may be committed and the map not: remove the copy, which no lookup
        # reaches and the catalogue views would count twice.
        with contextlib.suppress(Exception):
            owner = await coordinator.fetchval(SLOT_OWNER, slot)
            if owner != name and runs:
                await target.execute(DELETE_EVENTS_OF_RUNS, runs)
        raise
    log.info("slot %d: %d events of %d runs moved to shard %s", slot, moved, len(runs), name)
    return moved


async def _wait_for_prepared(conn: asyncpg.Connection, label: str, patience: float = 30.0) -> None:
    """A load decided on the coordinator commits on the shards just after: rows still
    prepared on the source would be missed by the copy and later committed where no
    lookup goes. Wait for them; name them if they stay."""
    deadline = asyncio.get_running_loop().time() + patience
    while gids := [r["gid"] for r in await conn.fetch(PREPARED_TRANSACTIONS)]:
        if asyncio.get_running_loop().time() > deadline:
            raise ShardingError(
                f"shard {label} has prepared transactions {', '.join(gids)}: finish them "
                "(COMMIT PREPARED, see docs/scaling.md) and run 'shards add' again"
            )
        await asyncio.sleep(0.1)


async def _drain(coordinator: asyncpg.Connection, patience: float = 120.0) -> None:
    """Wait until no statement that began under the old map still runs: a lookup that
    read the old map may still be on its way to the old shard."""
    switched = await coordinator.fetchval(NOW)
    deadline = asyncio.get_running_loop().time() + patience
    while await coordinator.fetchval(OLDER_STATEMENTS, switched):
        if asyncio.get_running_loop().time() > deadline:
            log.warning("statements older than the map switch still run; deleting anyway")
            return
        await asyncio.sleep(0.02)


def describe(shard_map: ShardMap) -> Iterable[str]:
    for name, shard in sorted(shard_map.shards.items()):
        slots = [str(i) for i, owner in enumerate(shard_map.slots) if owner == name]
        yield f"{name}\t{shard.address}\tslots {','.join(slots) or '-'}"


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def coordinator_schema() -> str:
    """The coordinator's DDL (PL/Proxy functions, foreign tables, the shard map): a file of its
    own, sharding.sql, beside this module."""
    return (Path(__file__).parent / "sharding.sql").read_text()
