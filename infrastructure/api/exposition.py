"""The Prometheus text exposition of /metrics: the process's counters (infrastructure.support.metrics
PROCESS) and a scrape's Snapshot, written by prometheus_client (generate_latest) from metric families built
per scrape. prometheus_client's global registry is never used: a library could fill it behind our back,
and this module owns every name it answers (``wcsync_*``, units in the names, ``_total`` for counters,
seconds as the base unit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from infrastructure.support.metrics import (
    LINE_RESULTS,
    LINE_STATES,
    PROCESS,
    QUEUE_STATES,
    JobFigures,
    ProcessCounters,
    ProjectionFigures,
    Snapshot,
)

__all__ = ["CONTENT_TYPE", "render"]

# Prometheus' text format 0.0.4, which every Prometheus server reads (what generate_latest writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labelled(
    family: CounterMetricFamily | GaugeMetricFamily, values: Mapping[str, float]
) -> CounterMetricFamily | GaugeMetricFamily:
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _gauge(name: str, documentation: str, label: str, values: Mapping[str, float]) -> Metric:
    return _labelled(GaugeMetricFamily(name, documentation, labels=[label]), values)


def _with_zeros(values: Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    return {**dict.fromkeys(names, 0), **values}


def _process_families(counters: ProcessCounters) -> Iterator[Metric]:
    yield _labelled(
        CounterMetricFamily(
            "wcsync_store_requests",
            "Requests this process sent to WooCommerce stores, by the answer's HTTP status class (or "
            "timeout, connection_error when none came). Process-wide, no store URL (one org's data).",
            labels=["status_class"],
        ),
        counters.requests(),
    )
    yield _labelled(
        CounterMetricFamily(
            "wcsync_store_retries",
            "Store requests this process sent again after a transient failure, by reason (timeout, "
            "connection, server_error, ...).",
            labels=["reason"],
        ),
        counters.retries(),
    )
    yield CounterMetricFamily(
        "wcsync_store_circuit_opened",
        "Times a store client of this process stopped calling its store after consecutive failures.",
        value=counters.circuits_opened(),
    )
    yield _gauge(
        "wcsync_store_circuits",
        "Store clients alive in this process by the state of their circuit breaker (closed: calling the "
        "store; open: paused after consecutive failures; half_open: one trial request in flight).",
        "state",
        counters.circuits(),
    )


def _database_families(snapshot: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "wcsync_database_up",
        "1 when this scrape read the database in time, else 0 (the figures read from it are then absent).",
        value=1 if snapshot.database_up else 0,
    )
    yield GaugeMetricFamily(
        "wcsync_scrape_read_seconds", "Time this scrape spent reading the database.", value=snapshot.read_s
    )
    if not snapshot.database_up:
        return
    yield _gauge(
        "wcsync_syncs",
        "Sync queues of the scraping token's org by state.",
        "state",
        _with_zeros(snapshot.syncs, QUEUE_STATES),
    )
    yield _gauge(
        "wcsync_sync_lines",
        "Lines (one customer each) of the org's sync queues by state (draft: not processed yet).",
        "state",
        _with_zeros(snapshot.lines, LINE_STATES),
    )
    yield _gauge(
        "wcsync_sync_line_results",
        "Lines of the org's sync queues processed, by result.",
        "result",
        _with_zeros(snapshot.line_results, LINE_RESULTS),
    )
    yield from _job_families(snapshot.jobs or JobFigures())
    yield from _projection_families(snapshot.projections)


def _job_families(jobs: JobFigures) -> Iterator[Metric]:
    yield GaugeMetricFamily("wcsync_jobs_waiting", "Sync jobs waiting for a worker.", value=jobs.waiting)
    yield GaugeMetricFamily("wcsync_jobs_running", "Sync jobs a worker has taken.", value=jobs.running)
    yield GaugeMetricFamily(
        "wcsync_jobs_oldest_waiting_age_seconds",
        "Age of the oldest job waiting for a worker (0 when none waits).",
        value=jobs.oldest_waiting_age_s,
    )
    yield GaugeMetricFamily(
        "wcsync_workers", "Workers registered with the job engine.", value=len(jobs.heartbeat_age_s)
    )
    yield _gauge(
        "wcsync_worker_heartbeat_age_seconds",
        "Seconds since each worker's last heartbeat (a stalled worker's jobs are taken up again).",
        "worker",
        jobs.heartbeat_age_s,
    )


def _projection_families(projections: Sequence[ProjectionFigures]) -> Iterator[Metric]:
    yield _gauge(
        "wcsync_projection_lag_events",
        "Events saved that the projection has not applied yet.",
        "projection",
        {p.name: p.lag_events for p in projections},
    )
    yield _gauge(
        "wcsync_projection_lag_seconds",
        "Seconds since the projection last applied an event while events wait for it (0 when caught up).",
        "projection",
        {p.name: p.lag_s for p in projections},
    )


class _Scrape:
    """One scrape as a prometheus_client collector: the process's counters, then the snapshot's figures."""

    def __init__(self, snapshot: Snapshot, counters: ProcessCounters) -> None:
        self.snapshot = snapshot
        self.counters = counters

    def collect(self) -> Iterable[Metric]:
        yield from _process_families(self.counters)
        yield from _database_families(self.snapshot)


def render(snapshot: Snapshot, counters: ProcessCounters = PROCESS) -> bytes:
    """The text exposition (CONTENT_TYPE) of ``counters`` and ``snapshot``."""
    return generate_latest(_Scrape(snapshot, counters))
