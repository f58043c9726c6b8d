-- One event by its numbers, without the SET clauses of eventindex_lookup (which make each
-- call about twice as dear as the index probe it is): a plain SQL function, which the
-- planner inlines into the query that calls it. A sharded coordinator sends it to the
-- shard of the run (sharding.sql), which answers with its own.
CREATE FUNCTION eventindex_lookup_one(run integer, event bigint)
RETURNS TABLE (run_number integer, event_number bigint, olt_result integer, dsid_raw integer,
               fuid_raw uuid)
LANGUAGE sql STABLE AS $$
    SELECT e.run_number, e.event_number, e.olt_result, e.dsid_raw, e.fuid_raw
    FROM events AS e
    WHERE e.run_number = run AND e.event_number = event
$$;

-- A coordinator made before this migration: the same routing as eventindex_lookup.
DO $$
BEGIN
    IF to_regclass('eventindex_shards') IS NOT NULL THEN
        DROP FUNCTION eventindex_lookup_one(integer, bigint);
        CREATE FUNCTION eventindex_lookup_one(run integer, event bigint)
        RETURNS TABLE (run_number integer, event_number bigint, olt_result integer,
                       dsid_raw integer, fuid_raw uuid)
        LANGUAGE plproxy AS $f$
            CLUSTER 'eventindex';
            RUN ON hashint4(run);
        $f$;
    END IF;
END
$$;
