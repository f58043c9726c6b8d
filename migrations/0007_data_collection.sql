-- Data collection: datasets are registered, filled and closed by the production system, and
-- every load records who made it and which file it wrote.

-- A dataset is open while the production fills it; closing it refuses new files and runs
-- the consistency check, after which it is validated (clean) or stays closed (problems
-- listed in close_report). Datasets that exist already stay open, as they were.
ALTER TABLE datasets
    ADD COLUMN state text NOT NULL DEFAULT 'open'
        CHECK (state IN ('open', 'closed', 'validated')),
    ADD COLUMN files_expected integer CHECK (files_expected >= 0),
    ADD COLUMN closed_at timestamptz,
    ADD COLUMN validated_at timestamptz,
    ADD COLUMN close_report jsonb;

-- Who made a load (a token's or certificate's name, a JWT subject; NULL for the command
-- line) and, for an upload, the one file it wrote.
ALTER TABLE loads
    ADD COLUMN principal text,
    ADD COLUMN fuid_raw uuid;

CREATE INDEX loads_file ON loads (fuid_raw) WHERE fuid_raw IS NOT NULL;

-- Events go only into open datasets, whoever writes them. The rows of the datasets written
-- are locked FOR SHARE until the writing transaction ends, so closing a dataset (which
-- updates its row) waits for the loads in flight and every later load sees it closed.
-- Summary rows are written in key order: concurrent loads of the same runs then lock them
-- in one order and cannot deadlock (hash aggregation leaves them in any order).
CREATE OR REPLACE FUNCTION events_summary_add() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing integer;
    written integer[];
    shut record;
BEGIN
    WITH delta AS MATERIALIZED (
        SELECT fuid_raw, dsid_raw, run_number, olt_result, count(*) AS n,
               min(event_number) AS lo, max(event_number) AS hi
        FROM new_rows GROUP BY fuid_raw, dsid_raw, run_number, olt_result
    ), counts AS (
        INSERT INTO run_olt_counts AS c (run_number, dsid_raw, olt_result, n_events)
        SELECT run_number, dsid_raw, olt_result, sum(n) FROM delta
        GROUP BY run_number, dsid_raw, olt_result
        ORDER BY run_number, dsid_raw, olt_result
        ON CONFLICT (run_number, dsid_raw, olt_result)
        DO UPDATE SET n_events = c.n_events + EXCLUDED.n_events
    ), file_rows AS (
        INSERT INTO files AS f (fuid_raw, dsid_raw, run_number, n_events, first_event,
                                last_event)
        SELECT fuid_raw, min(dsid_raw), min(run_number), sum(n), min(lo), max(hi)
        FROM delta GROUP BY fuid_raw ORDER BY fuid_raw
        ON CONFLICT (fuid_raw) DO UPDATE SET
            n_events = f.n_events + EXCLUDED.n_events,
            first_event = least(f.first_event, EXCLUDED.first_event),
            last_event = greatest(f.last_event, EXCLUDED.last_event),
            last_loaded_at = now()
    )
    SELECT array_agg(DISTINCT dsid_raw) INTO written FROM delta;
    SELECT min(w.id) INTO missing
    FROM unnest(written) AS w (id)
    WHERE NOT EXISTS (SELECT 1 FROM datasets AS s WHERE s.id = w.id);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'dataset % does not exist', missing
            USING ERRCODE = 'foreign_key_violation', HINT = 'load the dataset first';
    END IF;
    PERFORM 1 FROM datasets WHERE id = ANY (written) ORDER BY id FOR SHARE;
    SELECT s.id, s.name, s.state INTO shut
    FROM datasets AS s
    WHERE s.id = ANY (written) AND s.state <> 'open'
    ORDER BY s.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'dataset % (%) is %: it takes no new events', shut.id, shut.name,
            shut.state
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN NULL;
END
$$;

-- A removal (a file replaced, a dataset deleted) locks its summary rows in key order
-- before it changes them, for the same reason.
CREATE OR REPLACE FUNCTION events_summary_remove() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM run_olt_counts AS c
    WHERE (c.run_number, c.dsid_raw, c.olt_result) IN
          (SELECT run_number, dsid_raw, olt_result FROM old_rows)
    ORDER BY c.run_number, c.dsid_raw, c.olt_result FOR UPDATE;
    PERFORM 1 FROM files AS f
    WHERE f.fuid_raw IN (SELECT fuid_raw FROM old_rows)
    ORDER BY f.fuid_raw FOR UPDATE;
    WITH delta AS MATERIALIZED (
        SELECT fuid_raw, dsid_raw, run_number, olt_result, count(*) AS n
        FROM old_rows GROUP BY fuid_raw, dsid_raw, run_number, olt_result
    ), counts AS (
        UPDATE run_olt_counts AS c SET n_events = c.n_events - d.n
        FROM (SELECT run_number, dsid_raw, olt_result, sum(n) AS n FROM delta
              GROUP BY run_number, dsid_raw, olt_result) AS d
        WHERE (c.run_number, c.dsid_raw, c.olt_result) = (d.run_number, d.dsid_raw, d.olt_result)
    )
    UPDATE files AS f SET n_events = f.n_events - d.n
    FROM (SELECT fuid_raw, sum(n) AS n FROM delta GROUP BY fuid_raw) AS d
    WHERE f.fuid_raw = d.fuid_raw;
    -- Only the rows this removal touched: the tables hold a row per file of the catalogue.
    DELETE FROM run_olt_counts AS c
    WHERE c.n_events <= 0
      AND (c.run_number, c.dsid_raw, c.olt_result) IN
          (SELECT run_number, dsid_raw, olt_result FROM old_rows);
    DELETE FROM files AS f
    WHERE f.n_events <= 0 AND f.fuid_raw IN (SELECT fuid_raw FROM old_rows);
    RETURN NULL;
END
$$;

-- COPY into a partitioned table with statement triggers that read transition tables
-- inserts row by row (PostgreSQL turns its multi-row inserts off), about 0.6x of a COPY
-- into a plain table. An upload holds one run, so it is written straight into the run's
-- partition, which needs the summary trigger of its own (a row routed through `events`
-- fires the parent's statement trigger only, never both).
DO $$
DECLARE
    p regclass;
BEGIN
    FOR p IN SELECT partition FROM events_partition_bounds() LOOP
        EXECUTE format(
            'CREATE TRIGGER events_summary_on_insert AFTER INSERT ON %s '
            'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
            'EXECUTE FUNCTION events_summary_add()', p);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION events_add_partitions(runs integer[]) RETURNS integer
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    width integer;
    run integer;
    lo bigint;
    hi bigint;
    made integer := 0;
    name text;
BEGIN
    -- Two loaders making the same partition: the second waits, then finds it made.
    PERFORM pg_advisory_xact_lock(hashtext('eventindex.partitions'));
    SELECT runs_per_partition INTO width FROM events_partitioning;
    FOR run IN SELECT DISTINCT r FROM unnest(runs) AS r WHERE r >= 0 ORDER BY r LOOP
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM events_partition_bounds() AS b WHERE run >= b.lo AND run < b.hi);
        -- The width-aligned range around the run, narrowed to fit between neighbours.
        SELECT greatest(run::bigint / width * width, coalesce(max(b.hi), 0)) INTO lo
        FROM events_partition_bounds() AS b WHERE b.hi <= run;
        SELECT least(run::bigint / width * width + width, coalesce(min(b.lo), 2147483648))
        INTO hi
        FROM events_partition_bounds() AS b WHERE b.lo > run;
        name := 'events_r' || lpad(lo::text, 10, '0');
        EXECUTE format(
            'CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
        EXECUTE format(
            'CREATE TRIGGER events_summary_on_insert AFTER INSERT ON %I '
            'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT '
            'EXECUTE FUNCTION events_summary_add()', name);
        EXECUTE format(
            'ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
            name, lo, events_bound(hi));
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;

-- The partition holding a run, for writing into it directly (NULL: none yet).
CREATE FUNCTION events_partition_of(run integer) RETURNS TABLE (schema_name name, table_name name)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT n.nspname, c.relname
    FROM events_partition_bounds() AS b
    JOIN pg_class AS c ON c.oid = b.partition
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE run >= b.lo AND run < b.hi
$$;
