"""Prometheus metrics: one registry per app, exposed at /metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # db imports this module (the metrics of a pool)
    from eventindex.db import Connection
    from eventindex.middleware.interactive import BulkAdmission


# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

EVENTS_LOADED = "SELECT coalesce(sum(events_inserted), 0) FROM loads"


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_STREAM_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class _PoolCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pool = self.metrics.pool
        family = GaugeMetricFamily(
            "eventindex_pool_connections", "Database pool connections", labels=["state"]
        )
        if pool is not None:
            size, idle = pool.get_size(), pool.get_idle_size()
            family.add_metric(["open"], size)
            family.add_metric(["in_use"], size - idle)
            family.add_metric(["idle"], idle)
            family.add_metric(["max"], pool.get_max_size())
        yield family
        waiting = GaugeMetricFamily(
            "eventindex_pool_waiting", "Requests waiting for a database connection"
        )
        waiting.add_metric([], self.metrics.waiting)
        yield waiting
        bulk = GaugeMetricFamily(
            "eventindex_bulk_requests",
            "Bulk requests (streams, lookups of many pairs, listings) of this worker",
            labels=["state"],
        )
        admission = self.metrics.admission
        if admission is not None:
            bulk.add_metric(["served"], admission.served)
            bulk.add_metric(["waiting"], admission.waiting)
        yield bulk


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pool: asyncpg.Pool | None = None
        self.admission: BulkAdmission | None = None
        self.waiting = 0
        r = self.registry
        self.requests = Counter(
            "eventindex_http_requests", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "eventindex_http_request_duration_seconds",
            "HTTP request duration, to the end of the response",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pairs = Counter(
            "eventindex_pairs_looked_up", "Pairs looked up", ["result"], registry=r
        )
        self.streams = Histogram(
            "eventindex_stream_duration_seconds",
            "Duration of NDJSON lookup streams",
            buckets=_STREAM_BUCKETS,
            registry=r,
        )
        self.queries = Histogram(
            "eventindex_db_query_duration_seconds",
            "Database query duration",
            ["query"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.loaded = Counter(
            "eventindex_loader_events_inserted",
            "Events inserted by loads recorded in the catalogue (read at scrape)",
            registry=r,
        )
        self._loaded_seen = 0
        r.register(_PoolCollector(self))

    def looked_up(self, found: int, requested: int) -> None:
        self.pairs.labels("found").inc(found)
        self.pairs.labels("missing").inc(requested - found)

    @contextmanager
    def query(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.queries.labels(name).observe(time.perf_counter() - started)

    def set_loaded(self, total: int) -> None:
        if total > self._loaded_seen:
            self.loaded.inc(total - self._loaded_seen)
            self._loaded_seen = total


# The app's metrics, for code that runs inside a request (set by the request middleware).
current: ContextVar[Metrics | None] = ContextVar("eventindex_metrics", default=None)


@contextmanager
def timed_query(name: str) -> Iterator[None]:
    metrics = current.get()
    if metrics is None:
        yield
        return
    with metrics.query(name):
        yield


def count_pairs(found: int, requested: int) -> None:
    metrics = current.get()
    if metrics is not None:
        metrics.looked_up(found, requested)


async def events_loaded(conn: Connection, timeout: float) -> int:
    """Events the loads recorded (the gauge of /metrics)."""
    return int(await conn.fetchval(EVENTS_LOADED, timeout=timeout))
