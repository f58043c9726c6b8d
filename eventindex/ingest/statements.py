"""The loader's SQL: staging tables that classify every row, partitions for new runs, the
record of each load and its conflicts."""

from __future__ import annotations

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

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

SHARD_LOAD_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', '60s', true)"


# On a shard the load's transaction is prepared for two-phase commit, which temporary
# tables forbid: the stage is made of ordinary unlogged tables in a schema of the load's
# own, first on the search path, dropped before the transaction ends.
def private_stage(sql: str) -> str:
    return sql.replace("CREATE TEMP TABLE", "CREATE UNLOGGED TABLE").replace(" ON COMMIT DROP", "")


DROP_DATASET_STAGE = "DROP TABLE dataset_stage"
COUNT_EVENT_STAGE = "SELECT count(*) FROM event_stage"
DROP_EVENT_STAGE = "DROP TABLE event_duplicates; DROP TABLE event_stage"
