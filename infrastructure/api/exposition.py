"""The Prometheus text exposition of /metrics: the process's counters (infrastructure.support.metrics
PROCESS) and a scrape's Snapshot, written by prometheus_client (generate_latest) from metric families built
per scrape. prometheus_client's global registry is never used: a library could fill it behind our back,
and this module owns every name it answers (``wcsync_*``, units in the names, ``_total`` for counters,
seconds as the base unit).

A scrape mixes figures of three scopes, and each family's HELP ends saying which (``ORG_SCOPE``,
``PROCESS_SCOPE``, ``SERVICE_SCOPE``): the syncs and lines are the scraping token's org's; the store
requests, retries and circuits are this process's, every org's stores together (they name no store); jobs,
workers and projection lag are the whole service's, every org's, as the shared database holds them.
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

__all__ = ["CONTENT_TYPE", "ORG_SCOPE", "PROCESS_SCOPE", "SERVICE_SCOPE", "render"]

# Prometheus' text format 0.0.4, which every Prometheus server reads (what generate_latest writes).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The last sentence of every family's HELP: whose figures these are.
ORG_SCOPE = "Scope: the scraping token's org only (every org's with --no-auth)."
PROCESS_SCOPE = "Scope: this process (this server), every org's stores together."
SERVICE_SCOPE = "Scope: the whole service, every org (the shared database)."


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
            f"timeout, connection_error when none came); no store URL (that is one org's data). {PROCESS_SCOPE}",
            labels=["status_class"],
        ),
        counters.requests(),
    )
    yield _labelled(
        CounterMetricFamily(
            "wcsync_store_retries",
            "Store requests this process sent again after a transient failure, by reason (timeout, "
            f"connection, server_error, ...). {PROCESS_SCOPE}",
            labels=["reason"],
        ),
        counters.retries(),
    )
    yield CounterMetricFamily(
        "wcsync_store_circuit_opened",
        f"Times a store client of this process stopped calling its store after consecutive failures. "
        f"{PROCESS_SCOPE}",
        value=counters.circuits_opened(),
    )
    yield _labelled(
        CounterMetricFamily(
            "wcsync_webhook_requests",
            "Requests this process's webhook receiver answered, by outcome (recorded: a delivery made "
            "durable; duplicate: one recorded before; ping; refused: a missing or wrong signature, answered "
            f"401; unknown_store: 404). {PROCESS_SCOPE}",
            labels=["outcome"],
        ),
        counters.webhook_requests(),
    )
    yield _gauge(
        "wcsync_store_circuits",
        "Store clients alive in this process by the state of their circuit breaker (closed: calling the "
        f"store; open: paused after consecutive failures; half_open: one trial request in flight). "
        f"{PROCESS_SCOPE}",
        "state",
        counters.circuits(),
    )


def _database_families(snapshot: Snapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "wcsync_database_up",
        "1 when this scrape read the database in time, else 0 (the figures read from it are then absent). "
        f"{PROCESS_SCOPE}",
        value=1 if snapshot.database_up else 0,
    )
    yield GaugeMetricFamily(
        "wcsync_scrape_read_seconds",
        f"Time this scrape spent reading the database. {PROCESS_SCOPE}",
        value=snapshot.read_s,
    )
    if not snapshot.database_up:
        return
    yield _gauge(
        "wcsync_syncs",
        f"Sync queues by state. {ORG_SCOPE}",
        "state",
        _with_zeros(snapshot.syncs, QUEUE_STATES),
    )
    yield _gauge(
        "wcsync_sync_lines",
        f"Lines (one customer each) of the sync queues by state (draft: not processed yet). {ORG_SCOPE}",
        "state",
        _with_zeros(snapshot.lines, LINE_STATES),
    )
    yield _gauge(
        "wcsync_sync_line_results",
        f"Lines of the sync queues processed, by result. {ORG_SCOPE}",
        "result",
        _with_zeros(snapshot.line_results, LINE_RESULTS),
    )
    yield GaugeMetricFamily(
        "wcsync_stores_webhooks_action_required",
        "Registered stores whose installed webhooks are not all active in the store (WooCommerce disabled "
        f"one after failed deliveries, or it was paused or deleted), as last seen. {ORG_SCOPE}",
        value=snapshot.stores_action_required,
    )
    yield _gauge(
        "wcsync_webhook_deliveries",
        f"Webhook deliveries recorded, by state (pending: not applied yet). {ORG_SCOPE}",
        "state",
        _with_zeros(snapshot.webhook_deliveries, ("pending", "applied", "failed")),
    )
    yield from _job_families(snapshot.jobs or JobFigures())
    yield from _projection_families(snapshot.projections)


def _job_families(jobs: JobFigures) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "wcsync_jobs_waiting", f"Sync jobs waiting for a worker. {SERVICE_SCOPE}", value=jobs.waiting
    )
    yield GaugeMetricFamily(
        "wcsync_jobs_running", f"Sync jobs a worker has taken. {SERVICE_SCOPE}", value=jobs.running
    )
    yield GaugeMetricFamily(
        "wcsync_jobs_oldest_waiting_age_seconds",
        f"Age of the oldest job waiting for a worker (0 when none waits). {SERVICE_SCOPE}",
        value=jobs.oldest_waiting_age_s,
    )
    yield GaugeMetricFamily(
        "wcsync_workers",
        f"Workers registered with the job engine, on any machine. {SERVICE_SCOPE}",
        value=len(jobs.heartbeat_age_s),
    )
    yield _gauge(
        "wcsync_worker_heartbeat_age_seconds",
        f"Seconds since each worker's last heartbeat (a stalled worker's jobs are taken up again). "
        f"{SERVICE_SCOPE}",
        "worker",
        jobs.heartbeat_age_s,
    )


def _projection_families(projections: Sequence[ProjectionFigures]) -> Iterator[Metric]:
    yield _gauge(
        "wcsync_projection_lag_events",
        f"Events saved that the projection has not applied yet. {SERVICE_SCOPE}",
        "projection",
        {p.name: p.lag_events for p in projections},
    )
    yield _gauge(
        "wcsync_projection_lag_seconds",
        "Seconds since the projection last applied an event while events wait for it (0 when caught up). "
        f"{SERVICE_SCOPE}",
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
