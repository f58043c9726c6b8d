"""SQL text helpers and the statements on whole databases.

Each area keeps its SQL beside the code that sends it (``lookup``, ``catalogue``,
``tokens``, ``migrate``, ``sharding``, ``ingest.statements``, ...). Values always travel
as bound parameters ($1, $2, ...). Where PostgreSQL cannot bind (utility statements:
CREATE DATABASE, CREATE SCHEMA, PREPARE TRANSACTION, ...) the text is built with
ident() and literal() only; tests/test_sql_safety.py checks both.
"""

from __future__ import annotations


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (embedded double quotes doubled)."""
    if not name or "\x00" in name:
        raise ValueError("an SQL identifier is a non-empty string without NUL")
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """``text`` as an SQL string literal, whatever standard_conforming_strings is.

    Quotes are doubled; text holding a backslash becomes an E'' literal with the
    backslashes doubled too (as PostgreSQL's quote_literal does).
    """
    if "\x00" in text:
        raise ValueError("an SQL string literal cannot hold NUL")
    quoted = "'" + text.replace("'", "''") + "'"
    if "\\" in text:
        return "E" + quoted.replace("\\", "\\\\")
    return quoted


# --- databases (the embedded server, the benchmark, the tests) ------------------------

DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = $1"
# For psql, which cannot bind: {name} is filled with literal() only.
DATABASE_EXISTS_LITERAL = "SELECT 1 FROM pg_database WHERE datname = {name}"
# {name} is filled with ident() only.
CREATE_DATABASE = "CREATE DATABASE {name}"
DROP_DATABASE = "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
