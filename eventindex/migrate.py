"""Numbered SQL migrations, applied in order, one transaction each."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from eventindex.db import Connection

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

MIGRATIONS_LOCK = "SELECT pg_advisory_lock(hashtext('eventindex.migrations'))"

MIGRATIONS_UNLOCK = "SELECT pg_advisory_unlock(hashtext('eventindex.migrations'))"

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

MIGRATIONS_TABLE_EXISTS = "SELECT to_regclass('schema_migrations') IS NOT NULL"

APPLIED_MIGRATIONS = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"

RECORD_MIGRATION = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(Exception):
    """The migrations on disk and in the database disagree, or one failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The packaged copy in a built wheel, else the repository's ``migrations/``."""
    packaged = Path(str(resources.files("eventindex"))) / "_migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    if not found:
        raise MigrationError(f"no migrations found in {directory}")
    return [found[v] for v in sorted(found)]


async def _applied(conn: Connection) -> dict[int, tuple[str, str]]:
    if not await conn.fetchval(MIGRATIONS_TABLE_EXISTS):
        return {}
    rows = await conn.fetch(APPLIED_MIGRATIONS)
    return {r["version"]: (r["name"], r["checksum"]) for r in rows}


def _check_history(migrations: list[Migration], applied: dict[int, tuple[str, str]]) -> None:
    on_disk = {m.version: m for m in migrations}
    for version, (name, checksum) in applied.items():
        m = on_disk.get(version)
        if m is None:
            raise MigrationError(f"migration {name} is applied but missing on disk")
        if m.checksum != checksum:
            raise MigrationError(f"migration {m.name} was changed after it was applied")


async def pending(conn: Connection, directory: Path | None = None) -> list[Migration]:
    migrations = load_migrations(directory)
    applied = await _applied(conn)
    _check_history(migrations, applied)
    return [m for m in migrations if m.version not in applied]


async def apply(conn: Connection, directory: Path | None = None) -> list[Migration]:
    """Apply what is pending; return what was applied. Safe to run concurrently."""
    migrations = load_migrations(directory)
    await conn.execute(MIGRATIONS_LOCK)
    try:
        await conn.execute(CREATE_MIGRATIONS_TABLE)
        applied = await _applied(conn)
        _check_history(migrations, applied)
        done = []
        for m in migrations:
            if m.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(RECORD_MIGRATION, m.version, m.name, m.checksum)
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"migration {m.name} failed: {exc}") from exc
            done.append(m)
        return done
    finally:
        await conn.execute(MIGRATIONS_UNLOCK)
