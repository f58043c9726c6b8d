-- Core catalogue: datasets and the events that belong to them.

CREATE TABLE datasets (
    id          integer PRIMARY KEY CHECK (id >= 0),
    name        text NOT NULL UNIQUE CHECK (name <> ''),
    data_type   text NOT NULL DEFAULT 'raw',
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Free-form metadata (production tags, software versions, ...) until it earns columns.
    metadata    jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE events (
    run_number   integer NOT NULL CHECK (run_number >= 0),
    event_number bigint  NOT NULL CHECK (event_number >= 0),
    olt_result   integer NOT NULL,
    dsid_raw     integer NOT NULL REFERENCES datasets (id),
    fuid_raw     uuid    NOT NULL,
    -- Every lookup is a probe of this index: keep it the primary key.
    PRIMARY KEY (run_number, event_number)
);

COMMENT ON COLUMN events.olt_result IS 'Bitmask of Online Filter decisions that selected the event';
COMMENT ON COLUMN events.fuid_raw IS 'UUID of the raw-data file holding the event in distributed storage';
