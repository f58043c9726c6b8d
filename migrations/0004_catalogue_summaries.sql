-- Summaries kept by the database itself as events are written, so that catalogue queries
-- (datasets, files, runs, Online Filter counts and overlaps) never scan `events`.

-- One row per raw file: its dataset, run, number of events and event-number range.
CREATE TABLE files (
    fuid_raw        uuid PRIMARY KEY,
    dsid_raw        integer NOT NULL,
    run_number      integer NOT NULL,
    n_events        bigint NOT NULL,
    first_event     bigint NOT NULL,
    last_event      bigint NOT NULL,
    first_loaded_at timestamptz NOT NULL DEFAULT now(),
    last_loaded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_dataset ON files (dsid_raw, run_number);
CREATE INDEX files_run ON files (run_number);

-- Events per run, dataset and exact Online Filter bitmask: a few hundred rows per run at
-- most, from which every count by decision, selection and overlap is summed.
CREATE TABLE run_olt_counts (
    run_number integer NOT NULL,
    dsid_raw   integer NOT NULL,
    olt_result integer NOT NULL,
    n_events   bigint NOT NULL,
    PRIMARY KEY (run_number, dsid_raw, olt_result)
);
CREATE INDEX run_olt_counts_dataset ON run_olt_counts (dsid_raw);

-- The summaries follow every statement that writes events, from its transition tables:
-- one aggregation pass over the statement's rows, never a scan of `events`. The same pass
-- checks that every dataset exists, replacing the separate check of migration 0002.
DROP TRIGGER events_datasets_on_insert ON events;
DROP TRIGGER events_datasets_on_update ON events;
DROP FUNCTION events_check_datasets();

CREATE FUNCTION events_summary_add() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing integer;
BEGIN
    WITH delta AS MATERIALIZED (
        SELECT fuid_raw, dsid_raw, run_number, olt_result, count(*) AS n,
               min(event_number) AS lo, max(event_number) AS hi
        FROM new_rows GROUP BY fuid_raw, dsid_raw, run_number, olt_result
    ), counts AS (
        INSERT INTO run_olt_counts AS c (run_number, dsid_raw, olt_result, n_events)
        SELECT run_number, dsid_raw, olt_result, sum(n) FROM delta
        GROUP BY run_number, dsid_raw, olt_result
        ON CONFLICT (run_number, dsid_raw, olt_result)
        DO UPDATE SET n_events = c.n_events + EXCLUDED.n_events
    ), file_rows AS (
        INSERT INTO files AS f (fuid_raw, dsid_raw, run_number, n_events, first_event,
                                last_event)
        SELECT fuid_raw, min(dsid_raw), min(run_number), sum(n), min(lo), max(hi)
        FROM delta GROUP BY fuid_raw
        ON CONFLICT (fuid_raw) DO UPDATE SET
            n_events = f.n_events + EXCLUDED.n_events,
            first_event = least(f.first_event, EXCLUDED.first_event),
            last_event = greatest(f.last_event, EXCLUDED.last_event),
            last_loaded_at = now()
    )
    SELECT min(d.dsid_raw) INTO missing
    FROM (SELECT DISTINCT dsid_raw FROM delta) AS d
    WHERE NOT EXISTS (SELECT 1 FROM datasets AS s WHERE s.id = d.dsid_raw);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'dataset % does not exist', missing
            USING ERRCODE = 'foreign_key_violation', HINT = 'load the dataset first';
    END IF;
    RETURN NULL;
END
$$;

-- After a delete, counts go down; a file's event range is not narrowed (that would need
-- a scan), and rows that reach zero are removed.
CREATE FUNCTION events_summary_remove() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
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
    DELETE FROM run_olt_counts WHERE n_events <= 0;
    DELETE FROM files WHERE n_events <= 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_summary_on_insert
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_add();

CREATE TRIGGER events_summary_on_delete
    AFTER DELETE ON events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_remove();

-- An update is a removal of the old rows and an addition of the new ones.
CREATE TRIGGER events_summary_on_update_remove
    AFTER UPDATE ON events REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_remove();

CREATE TRIGGER events_summary_on_update_add
    AFTER UPDATE ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_summary_add();

-- The events already there (one scan, once).
INSERT INTO run_olt_counts (run_number, dsid_raw, olt_result, n_events)
SELECT run_number, dsid_raw, olt_result, count(*) FROM events
GROUP BY run_number, dsid_raw, olt_result;

INSERT INTO files (fuid_raw, dsid_raw, run_number, n_events, first_event, last_event)
SELECT fuid_raw, min(dsid_raw), min(run_number), count(*), min(event_number), max(event_number)
FROM events GROUP BY fuid_raw;
