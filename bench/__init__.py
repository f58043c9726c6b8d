"""EventIndex benchmarks: the project measured against its baseline, in one run.

    python -m bench lookup [--events 1000000] [--pairs 200000 1000000] [--rounds 3]
    python -m bench load [--events 10000000] [--rounds 3]
    python -m bench client [--pairs 1000000] [--rounds 3]
    python -m bench catalogue [--events 10000000] [--rounds 3]
    python -m bench churn [--connections 1000000] [--concurrency 200]
    python -m bench load-test [--clients 300] [--duration 60] [--events 1000000]
                                    [--mix get=90,json10k=8,stream=2] [--stream-pairs 100000]
                                    [--server-env EVENTINDEX_NAME=VALUE ...]

``load-test`` runs several hundred concurrent clients (asyncio tasks in this process,
each with its own connection) against a real uvicorn for a fixed time, each looping
over a weighted mix of single-pair GETs (5% unknown: a 404 is the right answer),
JSON lookups of 10,000 pairs and NDJSON streams of 100,000 pairs read to their end,
every answer checked (counts, unknown pairs, sampled fuids). Around the load, one
client measures each kind alone (baseline before, recovery after). It prints per
kind and phase the requests, errors, throughput and p50/p99/max latency, the loaded
and recovered p50 as ratios of the baseline, CPU per process, and the server's RSS
over time (VmRSS each second, peak VmHWM) against a stated bound
(--max-rss-growth-mib). Exit 1 if any request failed (a transport error, a 5xx, a
4xx other than the GET 404 of an unknown event, a wrong answer) or the bound was
exceeded. tests/test_load.py runs a short version with the same generator.

``load`` times the loader (eventindex load, with all its integrity checks)
against raw ``COPY ... FROM STDIN`` of the same file into a table with the same
primary key and nothing else, interleaved over rounds, on an empty table and on
one that already holds as many other events.

``client`` times ``EventIndexClient.lookup_stream`` (typed results) and
``lookup_stream_raw`` (NDJSON lines) for 1M pairs against the server's own
stream read by plain httpx (the raw server figure), in one run.

``lookup``:

Loads N synthetic events into a benchmark database (reused across runs), then
measures, interleaved over several rounds and reported as medians:

- the floor: the database on one asyncpg connection, the better of one
  unnest-join query for the whole set and sorted batches of 25k (nested loop);
- the service's NDJSON stream, end to end over HTTP to a real uvicorn;
- the service's JSON lookup of 10,000 pairs, against the floor for 10,000 pairs;
  (the service's answers are read whole and counted, not decoded: what is
  measured is the service, as the floor measures the driver's fetch);
- single-pair GETs from concurrent clients, against the seed's design (one
  query per pair on one connection);
- the server's peak RSS growth while it streams the largest pair set.

The database is EVENTINDEX_DATABASE_URL (or --database-url), else an embedded
PostgreSQL under ./bench-data.
"""
