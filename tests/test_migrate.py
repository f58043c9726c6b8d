"""Migrations: ordered, recorded, idempotent, all-or-nothing."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from eventindex import migrate


async def test_apply_is_idempotent(scratch_database: str) -> None:
    conn = await asyncpg.connect(scratch_database)
    try:
        first = await migrate.apply(conn)
        assert [m.name for m in first] == [m.name for m in migrate.load_migrations()]
        assert await migrate.apply(conn) == []
        assert await migrate.pending(conn) == []
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert {"datasets", "events", "schema_migrations"} <= tables
    finally:
        await conn.close()


async def test_failed_migration_leaves_nothing_half_applied(
    scratch_database: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (x int);")
    (tmp_path / "0002_bad.sql").write_text(
        "CREATE TABLE half (x int);\nINSERT INTO half VALUES (1);\nSELECT no_such_function();"
    )
    conn = await asyncpg.connect(scratch_database)
    try:
        with pytest.raises(migrate.MigrationError, match="0002_bad"):
            await migrate.apply(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('good') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('half') IS NOT NULL")
        assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
        # Fixed on disk, it applies on the next run.
        (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (x int);")
        assert [m.version for m in await migrate.apply(conn, tmp_path)] == [2]
    finally:
        await conn.close()


async def test_changed_migration_is_refused(scratch_database: str, tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x int);")
    conn = await asyncpg.connect(scratch_database)
    try:
        await migrate.apply(conn, tmp_path)
        (tmp_path / "0001_a.sql").write_text("CREATE TABLE a (x bigint);")
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            await migrate.apply(conn, tmp_path)
    finally:
        await conn.close()


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_init.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match=r"NNNN_name\.sql"):
        migrate.load_migrations(tmp_path)
