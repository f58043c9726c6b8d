"""Every SQL statement the service and its tools send, in one place.

Values always travel as bound parameters ($1, $2, ...). Where PostgreSQL cannot bind
(utility statements: CREATE DATABASE, CREATE SCHEMA, PREPARE TRANSACTION, ...) the text
is built with ident() and literal() only; tests/test_sql_safety.py checks both.
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


# --- migrations -------------------------------------------------------------

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

# --- lookups ----------------------------------------------------------------

# Every lookup goes through eventindex_lookup(runs, events) (migration 0005): on one
# server a SQL function probing the primary key, on a sharded coordinator a PL/Proxy
# function of the same signature that sends each shard its own pairs (docs/scaling.md).
# The function sets its own plan (a nested loop of index probes); what is left here is
# matching its answers back to the request, which is a hash join at every size, and JIT
# costs more than it saves.
LOOKUP_PLAN_SETTINGS = (
    "SET LOCAL enable_nestloop = off; SET LOCAL enable_mergejoin = off; SET LOCAL jit = off"
)

# One round trip per batch, and the database writes the JSON text itself, so the
# service never builds a Python object per pair; each pair's position in the request
# puts the answers in request order. $3 separates the objects: a newline for NDJSON, a
# comma inside a JSON array.
LOOKUP_BATCH_JSON = """
SELECT convert_to(
           string_agg(
               CASE WHEN x.fuid_raw IS NULL THEN
                   '{"run_number":' || p.r || ',"event_number":' || p.e
                   || ',"found":false,"fuid_raw":null,"dsid_raw":null,"olt_result":null}'
               ELSE
                   '{"run_number":' || p.r || ',"event_number":' || p.e
                   || ',"found":true,"fuid_raw":"' || x.fuid_raw
                   || '","dsid_raw":' || x.dsid_raw || ',"olt_result":' || x.olt_result || '}'
               END,
               $3::text ORDER BY p.o),
           'UTF8') AS body,
       count(x.fuid_raw) AS found
FROM unnest($1::integer[], $2::bigint[]) WITH ORDINALITY AS p (r, e, o)
LEFT JOIN eventindex_lookup($1::integer[], $2::bigint[]) AS x
       ON x.run_number = p.r AND x.event_number = p.e
"""

GET_EVENT = """
SELECT run_number, event_number, fuid_raw::text AS fuid_raw, dsid_raw, olt_result
FROM eventindex_lookup(ARRAY[$1::integer], ARRAY[$2::bigint])
"""

CATALOGUE_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM events)"

# A few events spread over the catalogue (a sample of pages, not a scan).
SAMPLE_EVENTS = """
SELECT run_number, event_number FROM events TABLESAMPLE SYSTEM (1)
ORDER BY random() LIMIT $1
"""

LIST_DATASETS = """
SELECT id, name, data_type, description, created_at FROM datasets ORDER BY id
"""

LIST_OLT_BITS = "SELECT bit, name, description FROM olt_bits ORDER BY bit"

EVENTS_LOADED = "SELECT coalesce(sum(events_inserted), 0) FROM loads"

# --- health -----------------------------------------------------------------

PING = "SELECT 1"

# --- loader (eventindex/ingest) ------------------------------------------------

EVENT_COLUMNS = ("run_number", "event_number", "olt_result", "dsid_raw", "fuid_raw")
DATASET_COLUMNS = ("id", "name", "data_type", "description")

CREATE_DATASET_STAGE = """
CREATE TEMP TABLE dataset_stage (
    line bigint GENERATED ALWAYS AS IDENTITY,
    id integer, name text, data_type text, description text
) ON COMMIT DROP
"""

# A row of the file that disagrees with the catalogue or with another row of the file.
DATASET_CONFLICT = """
SELECT s.line, s.id, s.name, d.id AS other_id, d.name AS other_name, d.line AS other_line
FROM dataset_stage AS s
JOIN (
    SELECT NULL::bigint AS line, id, name FROM datasets
    UNION ALL
    SELECT line, id, name FROM dataset_stage
) AS d ON (d.id = s.id OR d.name = s.name) AND (d.line IS NULL OR d.line < s.line)
WHERE d.id IS DISTINCT FROM s.id OR d.name IS DISTINCT FROM s.name
ORDER BY s.line
LIMIT 1
"""

DATASET_BAD_ROW = """
SELECT line, id, name FROM dataset_stage
WHERE id IS NULL OR id < 0 OR name IS NULL OR name = ''
ORDER BY line LIMIT 1
"""

INSERT_DATASETS = """
INSERT INTO datasets (id, name, data_type, description)
SELECT DISTINCT ON (id) id, name, coalesce(data_type, 'raw'), coalesce(description, '')
FROM dataset_stage ORDER BY id, line
ON CONFLICT (id) DO NOTHING
"""

CREATE_EVENT_STAGE = """
CREATE TEMP TABLE event_stage (
    line bigint GENERATED ALWAYS AS IDENTITY,
    run_number integer, event_number bigint, olt_result integer, dsid_raw integer, fuid_raw uuid
) ON COMMIT DROP
"""

EVENT_BAD_ROW = """
SELECT line, run_number, event_number, olt_result, dsid_raw, fuid_raw::text AS fuid_raw
FROM event_stage
WHERE run_number IS NULL OR run_number < 0 OR event_number IS NULL OR event_number < 0
   OR olt_result IS NULL OR dsid_raw IS NULL OR fuid_raw IS NULL
ORDER BY line LIMIT 1
"""

EVENT_UNKNOWN_DATASET = """
SELECT s.line, s.dsid_raw FROM event_stage AS s
WHERE NOT EXISTS (SELECT 1 FROM datasets AS d WHERE d.id = s.dsid_raw)
ORDER BY s.line LIMIT 1
"""

# Every row of the file that repeats a key: of the catalogue, or of an earlier row of the
# file (the first row of a key in the file is the one kept), with the values it repeats
# and whether it disagrees with them.
CREATE_EVENT_DUPLICATES = """
CREATE TEMP TABLE event_duplicates ON COMMIT DROP AS
WITH ranked AS (
    SELECT s.*, row_number() OVER w AS nth,
           first_value(s.olt_result) OVER w AS first_olt_result,
           first_value(s.dsid_raw) OVER w AS first_dsid_raw,
           first_value(s.fuid_raw) OVER w AS first_fuid_raw
    FROM event_stage AS s
    WINDOW w AS (PARTITION BY s.run_number, s.event_number ORDER BY s.line)
), kept AS (
    SELECT r.*, e.run_number IS NOT NULL AS in_catalogue,
           CASE WHEN e.run_number IS NULL THEN r.first_olt_result ELSE e.olt_result END
               AS kept_olt_result,
           CASE WHEN e.run_number IS NULL THEN r.first_dsid_raw ELSE e.dsid_raw END
               AS kept_dsid_raw,
           CASE WHEN e.run_number IS NULL THEN r.first_fuid_raw ELSE e.fuid_raw END
               AS kept_fuid_raw
    FROM ranked AS r
    LEFT JOIN events AS e ON e.run_number = r.run_number AND e.event_number = r.event_number
)
SELECT line, run_number, event_number, olt_result, dsid_raw, fuid_raw,
       kept_olt_result, kept_dsid_raw, kept_fuid_raw,
       (kept_olt_result, kept_dsid_raw, kept_fuid_raw) IS DISTINCT FROM
           (olt_result, dsid_raw, fuid_raw) AS conflicting
FROM kept
WHERE in_catalogue OR nth > 1
"""

DUPLICATE_COUNTS = """
SELECT count(*) FILTER (WHERE NOT conflicting) AS identical,
       count(*) FILTER (WHERE conflicting) AS conflicting
FROM event_duplicates
"""

FIRST_CONFLICTS = """
SELECT line, run_number, event_number, olt_result, dsid_raw, fuid_raw::text AS fuid_raw,
       kept_olt_result, kept_dsid_raw, kept_fuid_raw::text AS kept_fuid_raw
FROM event_duplicates WHERE conflicting ORDER BY line LIMIT $1
"""

ALL_CONFLICTS = """
SELECT line, run_number, event_number, olt_result, dsid_raw, fuid_raw::text AS fuid_raw,
       kept_olt_result, kept_dsid_raw, kept_fuid_raw::text AS kept_fuid_raw
FROM event_duplicates WHERE conflicting ORDER BY line
"""

# Partitions of `events` for new runs (migration 0005), inside the load's transaction.
ADD_PARTITIONS = "SELECT events_add_partitions($1::integer[])"

ADD_PARTITIONS_FOR_STAGE = """
SELECT events_add_partitions(array_agg(DISTINCT run_number))
FROM event_stage
WHERE run_number IS NOT NULL
"""


# On a shard the load's transaction is prepared for two-phase commit, which temporary
# tables forbid: the stage is made of ordinary unlogged tables in a schema of the load's
# own, first on the search path, dropped before the transaction ends.
def private_stage(sql: str) -> str:
    return sql.replace("CREATE TEMP TABLE", "CREATE UNLOGGED TABLE").replace(" ON COMMIT DROP", "")


OPEN_PRIVATE_STAGE = """
SELECT set_config('search_path', quote_ident($1) || ', ' || current_setting('search_path'), true)
"""

SEARCH_PATH = "SHOW search_path"
RESTORE_SEARCH_PATH = "SELECT set_config('search_path', $1, true)"
# Utility statements take no parameters: {schema} is filled with ident() only.
CREATE_STAGE_SCHEMA = "CREATE SCHEMA {schema}"
CLOSE_PRIVATE_STAGE = "DROP SCHEMA {schema} CASCADE"

INSERT_STAGED_EVENTS = """
INSERT INTO events (run_number, event_number, olt_result, dsid_raw, fuid_raw)
SELECT s.run_number, s.event_number, s.olt_result, s.dsid_raw, s.fuid_raw
FROM event_stage AS s
WHERE NOT EXISTS (SELECT 1 FROM event_duplicates AS d WHERE d.line = s.line)
"""

# For the load's transaction only: the statement trigger aggregates every row of a COPY
# (its transition table), and spilling that to disk costs more than the memory.
LOAD_WORK_MEM = "SELECT set_config('work_mem', $1, true)"

RECORD_LOAD = """
INSERT INTO loads (source, content_sha256, rows_read, events_inserted, duplicates_skipped,
                   conflicts_skipped, started_at, duplicate_datasets)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING id
"""

# The datasets of the staged file's duplicate rows: each row's and the one kept.
DUPLICATE_DATASETS = """
SELECT coalesce(array_agg(DISTINCT d ORDER BY d), '{}')
FROM event_duplicates, unnest(ARRAY[dsid_raw, kept_dsid_raw]) AS d
"""

RECORD_CONFLICTS = """
INSERT INTO load_conflicts (load_id, line, run_number, event_number, olt_result, dsid_raw,
                            fuid_raw, existing_olt_result, existing_dsid_raw, existing_fuid_raw)
SELECT $1, line, run_number, event_number, olt_result, dsid_raw, fuid_raw,
       kept_olt_result, kept_dsid_raw, kept_fuid_raw
FROM event_duplicates WHERE conflicting
"""

RECORD_CONFLICT_ROW = """
INSERT INTO load_conflicts (load_id, line, run_number, event_number, olt_result, dsid_raw,
                            fuid_raw, existing_olt_result, existing_dsid_raw, existing_fuid_raw)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
"""

PREVIOUS_LOAD = "SELECT id FROM loads WHERE content_sha256 = $1 ORDER BY id LIMIT 1"

# --- API tokens -----------------------------------------------------------------

CREATE_TOKEN = """
INSERT INTO api_tokens (name, token_sha256, scopes, expires_at)
VALUES ($1, $2, $3, $4)
RETURNING name, scopes, created_at, expires_at
"""

# The token's record if it may be used now; marks it used (at most once a minute).
USE_TOKEN = """
WITH found AS (
    SELECT id, name, scopes, last_used_at FROM api_tokens
    WHERE token_sha256 = $1 AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > now())
), touched AS (
    UPDATE api_tokens AS t SET last_used_at = now()
    FROM found AS f
    WHERE t.id = f.id AND (f.last_used_at IS NULL OR f.last_used_at < now() - interval '1 minute')
)
SELECT name, scopes FROM found
"""

LIST_TOKENS = """
SELECT name, scopes, created_at, expires_at, last_used_at, revoked_at,
       CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
            WHEN expires_at <= now() THEN 'expired'
            ELSE 'active' END AS state
FROM api_tokens ORDER BY name
"""

REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING name
"""

# --- catalogue (answered from the summaries `files` and `run_olt_counts`) -----------

DATASET_PAGE = """
SELECT d.id, d.name, d.data_type, d.description, d.created_at,
       coalesce(f.n_events, 0) AS n_events, coalesce(f.n_files, 0) AS n_files,
       f.first_run, f.last_run, f.first_loaded_at, f.last_loaded_at
FROM datasets AS d
LEFT JOIN LATERAL (
    SELECT sum(n_events)::bigint AS n_events, count(*) AS n_files,
           min(run_number) AS first_run, max(run_number) AS last_run,
           min(first_loaded_at) AS first_loaded_at, max(last_loaded_at) AS last_loaded_at
    FROM files WHERE files.dsid_raw = d.id
) AS f ON true
WHERE ($1::integer IS NULL OR d.id = $1) AND d.id > $2
ORDER BY d.id
LIMIT $3
"""

FILE_INFO = """
SELECT f.fuid_raw::text AS fuid_raw, f.dsid_raw, d.name AS dataset, f.run_number, f.n_events,
       f.first_event, f.last_event, f.first_loaded_at, f.last_loaded_at
FROM files AS f LEFT JOIN datasets AS d ON d.id = f.dsid_raw
WHERE f.fuid_raw = $1
"""

DATASET_FILES_PAGE = """
SELECT f.fuid_raw::text AS fuid_raw, f.dsid_raw, f.run_number, f.n_events, f.first_event,
       f.last_event, f.first_loaded_at, f.last_loaded_at
FROM files AS f
WHERE f.dsid_raw = $1 AND (f.run_number, f.fuid_raw) > ($2, $3::uuid)
ORDER BY f.run_number, f.fuid_raw
LIMIT $4
"""

# A file's events lie in its run between its first and last event: a range of the key.
FILE_EVENTS = """
SELECT run_number, event_number, olt_result
FROM events
WHERE run_number = $1 AND event_number BETWEEN $2 AND $3 AND fuid_raw = $4
ORDER BY event_number
"""

RUN_PAGE = """
SELECT c.run_number, sum(c.n_events)::bigint AS n_events,
       array_agg(DISTINCT c.dsid_raw) AS datasets,
       (SELECT count(*) FROM files AS f
        WHERE f.run_number = c.run_number AND ($2::integer IS NULL OR f.dsid_raw = $2))
           AS n_files
FROM run_olt_counts AS c
WHERE c.run_number > $1 AND ($2::integer IS NULL OR c.dsid_raw = $2)
GROUP BY c.run_number
ORDER BY c.run_number
LIMIT $3
"""

RUN_DECISIONS = """
SELECT b.bit, b.name,
       coalesce(sum(c.n_events) FILTER (WHERE c.olt_result & (1 << b.bit) <> 0), 0)::bigint
           AS n_events
FROM olt_bits AS b CROSS JOIN run_olt_counts AS c
WHERE c.run_number = $1
GROUP BY b.bit, b.name
ORDER BY b.bit
"""

# The scope of a selection: $1..$2 run range, $3 dataset (or NULL), and a bit expression:
# every bit of $4, at least one bit of $5 (if any), no bit of $6.
_SELECTION_SCOPE = """
run_number BETWEEN $1 AND $2 AND ($3::integer IS NULL OR dsid_raw = $3)
AND (olt_result & $4) = $4 AND ($5 = 0 OR (olt_result & $5) <> 0) AND (olt_result & $6) = 0
"""

SELECTION_COUNT = f"""
SELECT CASE $7 WHEN 'run' THEN run_number WHEN 'dataset' THEN dsid_raw END AS key,
       sum(n_events)::bigint AS n_events
FROM run_olt_counts
WHERE {_SELECTION_SCOPE}
GROUP BY 1
ORDER BY 1
"""

# Rows after the (run, event) key $7/$8, in key order: a range scan of the primary key.
SELECTION_EVENTS = f"""
SELECT run_number, event_number, olt_result, dsid_raw, fuid_raw::text AS fuid_raw
FROM events
WHERE {_SELECTION_SCOPE} AND (run_number, event_number) > ($7, $8)
ORDER BY run_number, event_number
"""

DATASET_RUN_RANGE = "SELECT min(run_number), max(run_number) FROM files WHERE dsid_raw = $1"

OVERLAP = """
SELECT a.bit AS bit_a, b.bit AS bit_b, sum(c.n_events)::bigint AS n_events
FROM run_olt_counts AS c
JOIN olt_bits AS a ON (c.olt_result & (1 << a.bit)) <> 0
JOIN olt_bits AS b ON (c.olt_result & (1 << b.bit)) <> 0
WHERE c.run_number BETWEEN $1 AND $2 AND ($3::integer IS NULL OR c.dsid_raw = $3)
GROUP BY a.bit, b.bit
"""

SCOPE_TOTAL = """
SELECT coalesce(sum(n_events), 0)::bigint FROM run_olt_counts
WHERE run_number BETWEEN $1 AND $2 AND ($3::integer IS NULL OR dsid_raw = $3)
"""

DATASET_EXISTS = "SELECT name FROM datasets WHERE id = $1"

# --- consistency ------------------------------------------------------------------

# Files whose recorded count differs from the events found in their key range.
FILE_COUNT_MISMATCHES = """
SELECT count(*) OVER () AS total,
       f.fuid_raw::text AS fuid_raw, f.run_number, f.n_events AS recorded, e.found
FROM files AS f
CROSS JOIN LATERAL (
    SELECT count(*) AS found FROM events AS x
    WHERE x.run_number = f.run_number AND x.event_number BETWEEN f.first_event AND f.last_event
      AND x.fuid_raw = f.fuid_raw
) AS e
WHERE f.dsid_raw = $1 AND e.found <> f.n_events
ORDER BY f.run_number, f.fuid_raw
LIMIT $2
"""

DATASET_CONFLICTS = """
SELECT count(*) OVER () AS total, c.line, l.source, c.run_number, c.event_number,
       c.fuid_raw::text AS fuid_raw, c.existing_fuid_raw::text AS existing_fuid_raw
FROM load_conflicts AS c JOIN loads AS l ON l.id = c.load_id
WHERE c.dsid_raw = $1 OR c.existing_dsid_raw = $1
ORDER BY c.load_id, c.line
LIMIT $2
"""

# Loads that met duplicates of dataset $1 (loads recorded before duplicate_datasets
# existed: those whose recorded conflicts involve it).
LOADS_WITH_DUPLICATES = """
SELECT l.id, l.source, l.finished_at, l.duplicates_skipped, l.conflicts_skipped FROM loads AS l
WHERE (l.duplicates_skipped > 0 OR l.conflicts_skipped > 0)
  AND ($1 = ANY (l.duplicate_datasets)
       OR (l.duplicate_datasets IS NULL AND EXISTS (
           SELECT 1 FROM load_conflicts AS c
           WHERE c.load_id = l.id AND (c.dsid_raw = $1 OR c.existing_dsid_raw = $1))))
ORDER BY l.id
"""

EVENT_GAPS = """
SELECT count(*) OVER () AS total, sum(next_event - event_number - 1) OVER () AS missing_total,
       run_number, event_number AS after_event, next_event - event_number - 1 AS missing
FROM (
    SELECT run_number, event_number,
           lead(event_number) OVER (PARTITION BY run_number ORDER BY event_number) AS next_event
    FROM events
    WHERE run_number IN (SELECT DISTINCT run_number FROM files WHERE dsid_raw = $1)
      AND dsid_raw = $1
) AS e
WHERE next_event > event_number + 1
ORDER BY run_number, event_number
LIMIT $2
"""

# --- sharding (coordinator; docs/scaling.md) -------------------------------------

IS_COORDINATOR = "SELECT to_regclass('eventindex_shards') IS NOT NULL"

# Turns a migrated, empty catalogue into the coordinator of shards: the map of hash slots
# to shards, PL/Proxy's cluster configuration read from it, eventindex_lookup replaced by
# a PL/Proxy function of the same signature, and `events`, `files` and `run_olt_counts`
# replaced by views over the shards' tables (postgres_fdw) for the catalogue queries.
COORDINATOR_SCHEMA = r"""
CREATE EXTENSION IF NOT EXISTS plproxy;
CREATE EXTENSION IF NOT EXISTS postgres_fdw;
CREATE SCHEMA IF NOT EXISTS plproxy;

CREATE TABLE eventindex_shards (
    name     text PRIMARY KEY CHECK (name ~ '^[a-z0-9_]{1,40}$'),
    host     text NOT NULL CHECK (host !~ '[\s'']'),
    port     integer NOT NULL,
    dbname   text NOT NULL CHECK (dbname !~ '[\s'']'),
    username text NOT NULL CHECK (username !~ '[\s'']'),
    password text CHECK (password !~ '[\s'']')
);

-- Runs are spread by hashint4(run_number) over a fixed power-of-two number of slots; each
-- slot lives on one shard. Adding a shard moves whole slots.
CREATE TABLE eventindex_shard_slots (
    slot  integer PRIMARY KEY CHECK (slot >= 0),
    shard text NOT NULL REFERENCES eventindex_shards (name)
);

-- PL/Proxy reloads the map when this changes. It is a row, not a sequence: it must change
-- in the same commit as the map (a sequence would move before the map commits, and a
-- session that reloaded in between would keep the old map under the new number).
CREATE TABLE eventindex_shard_map_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  integer NOT NULL
);
INSERT INTO eventindex_shard_map_version (version) VALUES (0);

CREATE FUNCTION plproxy.get_cluster_version(cluster_name text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT version FROM eventindex_shard_map_version
$$;

CREATE FUNCTION plproxy.get_cluster_partitions(cluster_name text) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT format('host=%s port=%s dbname=%s user=%s connect_timeout=5', s.host, s.port,
                  s.dbname, s.username)
           || coalesce(' password=' || s.password, '')
    FROM eventindex_shard_slots AS m JOIN eventindex_shards AS s ON s.name = m.shard
    ORDER BY m.slot
$$;

CREATE FUNCTION plproxy.get_cluster_config(cluster_name text, OUT key text, OUT val text)
RETURNS SETOF record LANGUAGE sql STABLE AS $$
    VALUES ('connection_lifetime', '1800')
$$;

DROP FUNCTION eventindex_lookup(integer[], bigint[]);

-- Same signature as on a single server: each shard gets the pairs of its own runs and
-- answers with its own eventindex_lookup.
CREATE FUNCTION eventindex_lookup(runs integer[], events bigint[])
RETURNS TABLE (run_number integer, event_number bigint, olt_result integer, dsid_raw integer,
               fuid_raw uuid)
LANGUAGE plproxy AS $$
    CLUSTER 'eventindex';
    SPLIT runs, events;
    RUN ON hashint4(runs);
$$;

-- (Re)creates a foreign server and schema per shard and the views over them.
CREATE FUNCTION eventindex_shard_views() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    s record;
    t text;
    parts text;
BEGIN
    FOR s IN SELECT * FROM eventindex_shards ORDER BY name LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pg_foreign_server WHERE srvname = 'shard_' || s.name);
        EXECUTE format(
            'CREATE SERVER %I FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host %L, port %L, '
            'dbname %L, async_capable ''true'', fetch_size ''10000'', connect_timeout ''5'')',
            'shard_' || s.name, s.host, s.port::text, s.dbname);
        EXECUTE format('CREATE USER MAPPING FOR PUBLIC SERVER %I OPTIONS (user %L%s)',
            'shard_' || s.name, s.username,
            CASE WHEN s.password IS NULL THEN '' ELSE format(', password %L', s.password) END);
        EXECUTE format('CREATE SCHEMA %I', 'shard_' || s.name);
        EXECUTE format('IMPORT FOREIGN SCHEMA public LIMIT TO (events, files, run_olt_counts) '
                       'FROM SERVER %I INTO %I', 'shard_' || s.name, 'shard_' || s.name);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['events', 'files', 'run_olt_counts'] LOOP
        SELECT string_agg(format('SELECT * FROM %I.%I', 'shard_' || name, t), ' UNION ALL '
                          ORDER BY name)
        INTO parts FROM eventindex_shards;
        EXECUTE format('CREATE OR REPLACE VIEW %I AS %s', t, parts);
    END LOOP;
END
$$;
"""

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

SHARD_LOAD_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', '60s', true)"

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

# --- databases (the embedded server, the benchmark, the tests) ------------------------

DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = $1"
# For psql, which cannot bind: {name} is filled with literal() only.
DATABASE_EXISTS_LITERAL = "SELECT 1 FROM pg_database WHERE datname = {name}"
# {name} is filled with ident() only.
CREATE_DATABASE = "CREATE DATABASE {name}"
DROP_DATABASE = "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
