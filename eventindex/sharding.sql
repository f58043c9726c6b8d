-- Turns a migrated, empty catalogue into the coordinator of shards: the map of hash slots
-- to shards, PL/Proxy's cluster configuration read from it, eventindex_lookup replaced by
-- a PL/Proxy function of the same signature, and `events`, `files` and `run_olt_counts`
-- replaced by views over the shards' tables (postgres_fdw) for the catalogue queries.
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

-- One event (migration 0009): to the shard of its run, as eventindex_lookup routes it.
DROP FUNCTION eventindex_lookup_one(integer, bigint);

CREATE FUNCTION eventindex_lookup_one(run integer, event bigint)
RETURNS TABLE (run_number integer, event_number bigint, olt_result integer, dsid_raw integer,
               fuid_raw uuid)
LANGUAGE plproxy AS $$
    CLUSTER 'eventindex';
    RUN ON hashint4(run);
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
