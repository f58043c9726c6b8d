"""Every SQL statement the service and its tools send, in one place."""

from __future__ import annotations

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

# The lookup must probe the primary key once per pair (a nested loop). On large
# arrays the planner drifts to a hash join over a sequential scan of all of
# `events`, which is an order of magnitude slower, and JIT costs more than it
# saves; both are switched off for the lookup transaction only.
LOOKUP_PLAN_SETTINGS = (
    "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; SET LOCAL jit = off"
)

# One round trip per batch, and the database writes the JSON text itself, so
# the service never builds a Python object per pair. The pairs are probed in
# key order (index locality makes that faster than request order, and sorting
# in the database was cheaper than sorting in Python and sending positions);
# each pair's position in the request puts the answers back in request order.
# $3 separates the objects: a newline for NDJSON, a comma inside a JSON array.
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
FROM (
    SELECT r, e, o
    FROM unnest($1::integer[], $2::bigint[]) WITH ORDINALITY AS u (r, e, o)
    ORDER BY r, e
) AS p
LEFT JOIN events AS x ON x.run_number = p.r AND x.event_number = p.e
"""

GET_EVENT = """
SELECT run_number, event_number, fuid_raw::text AS fuid_raw, dsid_raw, olt_result
FROM events
WHERE run_number = $1 AND event_number = $2
"""

# --- health -----------------------------------------------------------------

PING = "SELECT 1"
