-- Online Filter decisions, the loader's records, and a bulk dataset check in place of the
-- per-row foreign key.

-- The names of the bits of events.olt_result (SPD has a software Online Filter, not a
-- hardware trigger; each bit is one of its selection decisions).
CREATE TABLE olt_bits (
    bit         smallint PRIMARY KEY CHECK (bit BETWEEN 0 AND 30),
    name        text NOT NULL UNIQUE,
    description text NOT NULL DEFAULT ''
);

INSERT INTO olt_bits (bit, name, description) VALUES
    (0, 'minimum_bias', 'Prescaled minimum-bias selection (any beam-beam interaction)'),
    (1, 'high_multiplicity', 'Many reconstructed tracks in the straw tracker'),
    (2, 'high_pt_hadron', 'A hadron candidate with high transverse momentum'),
    (3, 'dimuon', 'Two muon candidates in the range system (Drell-Yan, charmonium)'),
    (4, 'jpsi_candidate', 'Dimuon or dielectron mass in the J/psi window'),
    (5, 'open_charm', 'Displaced secondary vertex in the vertex detector (D mesons)'),
    (6, 'prompt_photon', 'Isolated high-energy cluster in the electromagnetic calorimeter'),
    (7, 'calibration', 'Calibration and monitoring events'),
    (8, 'random_trigger', 'Random (zero-bias) events for efficiency studies');

-- The foreign key from events to datasets is checked row by row, which cuts COPY to a
-- quarter of its speed. The same rule is checked here once per statement, over all the
-- rows the statement wrote.
ALTER TABLE events DROP CONSTRAINT events_dsid_raw_fkey;

CREATE FUNCTION events_check_datasets() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    missing integer;
BEGIN
    SELECT n.dsid_raw INTO missing
    FROM (SELECT DISTINCT dsid_raw FROM new_rows) AS n
    WHERE NOT EXISTS (SELECT 1 FROM datasets AS d WHERE d.id = n.dsid_raw)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'dataset % does not exist', missing
            USING ERRCODE = 'foreign_key_violation', HINT = 'load the dataset first';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_datasets_on_insert
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_check_datasets();

CREATE TRIGGER events_datasets_on_update
    AFTER UPDATE ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_check_datasets();

-- The other half of the foreign key: a dataset that events refer to stays.
CREATE FUNCTION datasets_keep_referenced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM events WHERE dsid_raw = OLD.id) THEN
        RAISE EXCEPTION 'dataset % still has events', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER datasets_keep_referenced
    BEFORE DELETE OR UPDATE OF id ON datasets
    FOR EACH ROW EXECUTE FUNCTION datasets_keep_referenced();

-- One row per successful load of an events file: what it held and what it changed.
CREATE TABLE loads (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source             text NOT NULL,
    content_sha256     text NOT NULL,
    rows_read          bigint NOT NULL,
    events_inserted    bigint NOT NULL,
    duplicates_skipped bigint NOT NULL,
    conflicts_skipped  bigint NOT NULL,
    started_at         timestamptz NOT NULL,
    finished_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX loads_content ON loads (content_sha256);

-- Conflicting duplicates (same run and event, different file, dataset or decisions) that a
-- load was told to skip: the "duplicate event" consistency check's record.
CREATE TABLE load_conflicts (
    load_id             bigint NOT NULL REFERENCES loads (id),
    line                bigint NOT NULL,
    run_number          integer NOT NULL,
    event_number        bigint NOT NULL,
    olt_result          integer NOT NULL,
    dsid_raw            integer NOT NULL,
    fuid_raw            uuid NOT NULL,
    existing_olt_result integer,
    existing_dsid_raw   integer,
    existing_fuid_raw   uuid,
    PRIMARY KEY (load_id, line)
);
