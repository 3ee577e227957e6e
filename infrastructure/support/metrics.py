"""wcsync's Prometheus metrics: the process's own counters, and the scrape's figures read from the database.

Two kinds, because they come from two places:

- what only this process sees as it happens (store requests by status class, retries, circuit breakers)
  is counted by the store client into ``PROCESS``, a registry of our own (never prometheus_client's
  global one, which a library could fill behind our back);
- what the database knows (syncs by state, lines by state and result, jobs waiting, worker heartbeats,
  projection lag) is read at scrape time by the operations endpoint and handed to ``render`` as a
  ``Snapshot``: nothing is kept in memory between scrapes, so every process answers the same.

The process counters carry no store URL and no org: a store URL is one org's data, and the store client
does not know the org it works for. They are process-wide totals, for the operator of the service; the
figures of an org (syncs, lines) are the scraping token's org only (see ``Snapshot``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from domain.lines import CANCELLED, DONE, DRAFT, FAILED
from domain.queue import Q_DONE, Q_DRAFT, Q_FAILED, Q_PROCESSING, RESULTS

__all__ = [
    "CONTENT_TYPE_LATEST",
    "LINE_RESULTS",
    "LINE_STATES",
    "PROCESS",
    "QUEUE_STATES",
    "Circuit",
    "JobFigures",
    "ProjectionFigures",
    "Snapshot",
    "count_circuit_opened",
    "count_store_request",
    "count_store_retry",
    "render",
    "track_circuit",
]

# The states a sync queue can be in, its lines' states and a done line's results (domain.queue,
# domain.lines): each gets a sample, 0 included, so a dashboard's series never vanish.
QUEUE_STATES = (Q_DRAFT, Q_PROCESSING, Q_DONE, Q_FAILED)
LINE_STATES = (DRAFT, DONE, FAILED, CANCELLED)
LINE_RESULTS = RESULTS
# A store answer's status class, or what happened instead of an answer.
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "timeout", "connection_error")
CIRCUIT_STATES = ("closed", "open", "half_open")

PROCESS = CollectorRegistry(auto_describe=True)

_STORE_REQUESTS = Counter(
    "wcsync_store_requests",
    "Requests this process sent to WooCommerce stores, by the answer's HTTP status class (or timeout, "
    "connection_error when none came). Process-wide, no store URL (one org's data).",
    ["status_class"],
    registry=PROCESS,
)
_STORE_RETRIES = Counter(
    "wcsync_store_retries",
    "Store requests this process sent again after a transient failure, by reason (timeout, connection, "
    "server_error, rate_limited, ...).",
    ["reason"],
    registry=PROCESS,
)
_CIRCUIT_OPENED = Counter(
    "wcsync_store_circuit_opened",
    "Times a store client of this process stopped calling its store after consecutive failures.",
    registry=PROCESS,
)
for _status_class in STATUS_CLASSES:
    _STORE_REQUESTS.labels(_status_class)


def count_store_request(outcome: int | str) -> None:
    """One attempt's outcome: an HTTP status, or the name of what happened instead ("timeout", ...)."""
    if isinstance(outcome, int):
        label = f"{outcome // 100}xx" if 100 <= outcome < 600 else "other"
    else:
        label = outcome
    _STORE_REQUESTS.labels(label).inc()


def count_store_retry(reason: str) -> None:
    _STORE_RETRIES.labels(reason).inc()


def count_circuit_opened() -> None:
    _CIRCUIT_OPENED.inc()


class Circuit(Protocol):
    """A store client's circuit breaker, as the gauge of circuit states reads it."""

    @property
    def state(self) -> str:
        """One of CIRCUIT_STATES."""
        ...


class _Circuits:
    """The circuit breakers of the store clients alive in this process, counted by state at scrape time.
    Held weakly: a client that is gone is no longer counted, so no open circuit is left behind by a run
    that ended with its store down (a gauge kept by inc/dec would be)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # added to on the event loop, read on a scrape's thread
        self._circuits: weakref.WeakSet[Circuit] = weakref.WeakSet()

    def add(self, circuit: Circuit) -> None:
        with self._lock:
            self._circuits.add(circuit)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            alive = list(self._circuits)
        counts = dict.fromkeys(CIRCUIT_STATES, 0)
        for circuit in alive:
            counts[circuit.state] = counts.get(circuit.state, 0) + 1
        family = GaugeMetricFamily(
            "wcsync_store_circuits",
            "Store clients alive in this process by the state of their circuit breaker (closed: calling the "
            "store; open: paused after consecutive failures; half_open: one trial request in flight).",
            labels=["state"],
        )
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family


_CIRCUITS = _Circuits()
PROCESS.register(_CIRCUITS)


def track_circuit(circuit: Circuit) -> None:
    """Count this circuit breaker in ``wcsync_store_circuits`` while it lives."""
    _CIRCUITS.add(circuit)


# ----- the scrape's figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobFigures:
    """The job engine's tables at scrape time (zeros where there are none: SQLite, before its migration)."""

    waiting: int = 0
    running: int = 0
    oldest_waiting_age_s: float = 0.0
    # worker id -> seconds since its last heartbeat
    heartbeat_age_s: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ProjectionFigures:
    name: str
    lag_events: int
    # Seconds since the projection last moved while events wait for it (0 when caught up): how stale its
    # tables are, as far as the tracking table tells (events carry no time of their own in the log).
    lag_s: float


@dataclass(frozen=True)
class Snapshot:
    """What a scrape read from the database. ``syncs`` and the line counts are one org's (the scraping
    token's; every org's in the no-auth mode of local development). ``database_up`` is False when the
    reads failed or took too long: the figures are then absent, the process counters still answer."""

    database_up: bool
    syncs: Mapping[str, int] = field(default_factory=dict)
    lines: Mapping[str, int] = field(default_factory=dict)
    line_results: Mapping[str, int] = field(default_factory=dict)
    jobs: JobFigures | None = None
    projections: Sequence[ProjectionFigures] = ()
    read_s: float = 0.0


def _gauge(name: str, documentation: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _with_zeros(values: Mapping[str, int], names: Sequence[str]) -> dict[str, int]:
    return {**dict.fromkeys(names, 0), **values}


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
    """One scrape: the process's counters and the snapshot's figures, as one collector."""

    def __init__(self, snapshot: Snapshot, process: CollectorRegistry) -> None:
        self.snapshot = snapshot
        self.process = process

    def collect(self) -> Iterable[Metric]:
        yield from self.process.collect()
        yield from _database_families(self.snapshot)


def render(snapshot: Snapshot, process: CollectorRegistry = PROCESS) -> bytes:
    """The Prometheus text exposition (CONTENT_TYPE_LATEST) of ``process``'s counters and ``snapshot``."""
    return generate_latest(_Scrape(snapshot, process))
