-- `events` becomes a table partitioned by ranges of run_number, and lookups go through one
-- function, eventindex_lookup(runs, events), that a sharded coordinator replaces with a
-- PL/Proxy function of the same signature (docs/scaling.md).
--
-- Range, not hash: runs arrive in increasing order, so a load writes into the newest
-- partition only (its index stays in memory, older partitions are cold and read-only and
-- can be frozen, moved to cheaper storage or detached), and everything about a run prunes
-- to one partition. Lookups prune either way (a probe visits one partition's index).
-- Spreading load evenly over machines is the shards' job, and they hash (0006).
--
-- Upgrade of an existing catalogue: its table is not copied. It is renamed
-- `events_legacy` and attached as the one partition for every run up to the next
-- partition boundary above its highest run (one validating scan, no rewrite); new runs
-- get new partitions.

-- How wide new partitions are. Changing it later affects only partitions made afterwards.
CREATE TABLE events_partitioning (
    only_row           boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    runs_per_partition integer NOT NULL CHECK (runs_per_partition > 0)
);
INSERT INTO events_partitioning (runs_per_partition) VALUES (100);

DROP TRIGGER events_summary_on_insert ON events;
DROP TRIGGER events_summary_on_delete ON events;
DROP TRIGGER events_summary_on_update_remove ON events;
DROP TRIGGER events_summary_on_update_add ON events;

ALTER TABLE events RENAME TO events_legacy;
ALTER TABLE events_legacy RENAME CONSTRAINT events_pkey TO events_legacy_pkey;

-- The CHECK constraints are named as 0001 named them, which attaching the old table needs.
CREATE TABLE events (
    run_number   integer NOT NULL CONSTRAINT events_run_number_check CHECK (run_number >= 0),
    event_number bigint  NOT NULL
                 CONSTRAINT events_event_number_check CHECK (event_number >= 0),
    olt_result   integer NOT NULL,
    dsid_raw     integer NOT NULL,
    fuid_raw     uuid    NOT NULL,
    PRIMARY KEY (run_number, event_number)
) PARTITION BY RANGE (run_number);

COMMENT ON TABLE events IS 'One row per event; partitioned by ranges of run_number';
COMMENT ON COLUMN events.olt_result IS 'Bitmask of Online Filter decisions that selected the event';
COMMENT ON COLUMN events.fuid_raw IS 'UUID of the raw-data file holding the event in distributed storage';

-- A partition's upper bound as SQL: past the largest run number it is MAXVALUE.
CREATE FUNCTION events_bound(hi bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN hi > 2147483647 THEN 'MAXVALUE' ELSE hi::text END
$$;

DO $$
DECLARE
    top integer;
    width integer;
BEGIN
    SELECT max(run_number) INTO top FROM events_legacy;
    IF top IS NULL THEN
        DROP TABLE events_legacy;
    ELSE
        SELECT runs_per_partition INTO width FROM events_partitioning;
        EXECUTE format(
            'ALTER TABLE events ATTACH PARTITION events_legacy FOR VALUES FROM (0) TO (%s)',
            events_bound((top::bigint / width + 1) * width));
    END IF;
END
$$;

-- Partitions for the given runs, made where none holds them yet; returns how many were
-- made. The loader calls it inside its load transaction, so a failed load leaves none
-- behind. A new table is attached rather than created as a partition: ATTACH takes only
-- a SHARE UPDATE EXCLUSIVE lock on `events`, so lookups and other loads go on meanwhile.
CREATE FUNCTION events_add_partitions(runs integer[]) RETURNS integer
-- The partitions go where `events` is, whatever the caller's search_path (a sharded load
-- stages in a schema of its own, first on its path).
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    width integer;
    run integer;
    lo bigint;
    hi bigint;
    made integer := 0;
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
        EXECUTE format(
            'CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
            'events_r' || lpad(lo::text, 10, '0'));
        EXECUTE format(
            'ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
            'events_r' || lpad(lo::text, 10, '0'), lo, events_bound(hi));
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;

-- Every partition of `events` and the runs it holds, [lo, hi).
CREATE FUNCTION events_partition_bounds()
RETURNS TABLE (partition regclass, lo bigint, hi bigint)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT c.oid::regclass, m[1]::bigint,
           CASE m[2] WHEN 'MAXVALUE' THEN 2147483648 ELSE m[2]::bigint END
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(
        pg_get_expr(c.relpartbound, c.oid), 'FROM \((\d+)\) TO \((\d+|MAXVALUE)\)') AS m
    WHERE i.inhparent = 'events'::regclass
    ORDER BY 2
$$;

-- The summaries of 0004, now on the partitioned table (a statement trigger on the parent
-- sees every row the statement routed to any partition).
CREATE TRIGGER events_summary_on_insert
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_add();

CREATE TRIGGER events_summary_on_delete
    AFTER DELETE ON events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_remove();

CREATE TRIGGER events_summary_on_update_remove
    AFTER UPDATE ON events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_remove();

CREATE TRIGGER events_summary_on_update_add
    AFTER UPDATE ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_add();

-- A dataset that events refer to stays: asked of the summary (indexed by dataset), which
-- holds a row for every (run, dataset) with events, instead of scanning every partition.
CREATE OR REPLACE FUNCTION datasets_keep_referenced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM run_olt_counts WHERE dsid_raw = OLD.id) THEN
        RAISE EXCEPTION 'dataset % still has events', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

-- The one lookup path: the events of the given (run, event) pairs that exist, once each,
-- in no particular order. Each pair is a probe of the primary key (a nested loop over
-- the pairs in key order, pruned to one partition per probe at run time); the hash and
-- merge joins the planner drifts to on large arrays scan every partition, and JIT costs
-- more than it saves, so they are off inside this function only.
CREATE FUNCTION eventindex_lookup(runs integer[], events bigint[])
RETURNS TABLE (run_number integer, event_number bigint, olt_result integer, dsid_raw integer,
               fuid_raw uuid)
LANGUAGE sql STABLE PARALLEL SAFE
SET enable_nestloop = on SET enable_hashjoin = off SET enable_mergejoin = off
SET enable_hashagg = off SET jit = off
AS $$
    SELECT x.run_number, x.event_number, x.olt_result, x.dsid_raw, x.fuid_raw
    FROM (SELECT r, e FROM unnest(runs, events) AS u (r, e) GROUP BY r, e ORDER BY r, e) AS p
    JOIN events AS x ON x.run_number = p.r AND x.event_number = p.e
$$;
