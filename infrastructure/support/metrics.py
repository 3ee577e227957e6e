"""What /metrics reports, as plain data: the process's own counters, and the figures a scrape reads from
the database. The Prometheus exposition of both is the API's (infrastructure/api/exposition.py).

Two kinds, because they come from two places:

- what only this process sees as it happens (store requests by status class, retries, circuit breakers)
  is counted by the store client into ``PROCESS``: plain counters under a lock, so that the store client,
  which every `wcsync start` loads, imports no metrics library (prometheus_client costs ~30 ms at start);
- what the database knows (syncs by state, lines by state and result, jobs waiting, worker heartbeats,
  projection lag) is read at scrape time by the operations endpoint and handed over as a ``Snapshot``:
  nothing is kept between scrapes, so every process of a deployment answers the same.

The process counters carry no store URL and no org: a store URL is one org's data, and the store client
does not know which org it works for. They are process-wide totals for whoever operates the service; the
figures of an org (syncs, lines) are the scraping token's org only (see ``Snapshot``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from domain.lines import CANCELLED, DONE, DRAFT, FAILED
from domain.queue_terms import Q_DONE, Q_DRAFT, Q_FAILED, Q_PROCESSING, RESULTS

__all__ = [
    "CIRCUIT_STATES",
    "LINE_RESULTS",
    "LINE_STATES",
    "PROCESS",
    "QUEUE_STATES",
    "STATUS_CLASSES",
    "WEBHOOK_OUTCOMES",
    "Circuit",
    "JobFigures",
    "ProcessCounters",
    "ProjectionFigures",
    "Snapshot",
]

# The states a sync queue can be in, its lines' states and a done line's results (domain.queue,
# domain.lines): each gets a sample, 0 included, so a dashboard's series never vanish.
QUEUE_STATES = (Q_DRAFT, Q_PROCESSING, Q_DONE, Q_FAILED)
LINE_STATES = (DRAFT, DONE, FAILED, CANCELLED)
LINE_RESULTS = RESULTS
# A store answer's status class, or what happened instead of an answer.
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "timeout", "connection_error")
CIRCUIT_STATES = ("closed", "open", "half_open")
# What the webhook receiver did with a request (infrastructure/services/deliveries.py).
WEBHOOK_OUTCOMES = ("recorded", "duplicate", "ping", "refused", "unknown_store")


class Circuit(Protocol):
    """A store client's circuit breaker, as the count of circuits by state reads it."""

    @property
    def state(self) -> str:
        """One of CIRCUIT_STATES."""
        ...


class ProcessCounters:
    """This process's store counters (thread-safe: counted on event loops, read on a scrape's thread).

    Circuit breakers are held weakly and counted by state when read: a client that is gone is no longer
    counted, so a run that ended with its store down leaves no open circuit behind (a gauge kept by
    increments and decrements would)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests = dict.fromkeys(STATUS_CLASSES, 0)
        self._retries: dict[str, int] = {}
        self._circuits_opened = 0
        self._circuits: weakref.WeakSet[Circuit] = weakref.WeakSet()
        self._webhooks = dict.fromkeys(WEBHOOK_OUTCOMES, 0)

    def store_request(self, outcome: int | str) -> None:
        """One attempt's outcome: an HTTP status, or the name of what happened instead ("timeout", ...)."""
        if isinstance(outcome, int):
            label = f"{outcome // 100}xx" if 100 <= outcome < 600 else "other"
        else:
            label = outcome
        with self._lock:
            self._requests[label] = self._requests.get(label, 0) + 1

    def store_retry(self, reason: str) -> None:
        with self._lock:
            self._retries[reason] = self._retries.get(reason, 0) + 1

    def circuit_opened(self) -> None:
        with self._lock:
            self._circuits_opened += 1

    def track_circuit(self, circuit: Circuit) -> None:
        """Count this circuit breaker by its state while it lives."""
        with self._lock:
            self._circuits.add(circuit)

    def webhook_request(self, outcome: str) -> None:
        """One request to the webhook receiver, by what it did (one of WEBHOOK_OUTCOMES)."""
        with self._lock:
            self._webhooks[outcome] = self._webhooks.get(outcome, 0) + 1

    def webhook_requests(self) -> dict[str, int]:
        with self._lock:
            return dict(self._webhooks)

    def requests(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)

    def retries(self) -> dict[str, int]:
        with self._lock:
            return dict(self._retries)

    def circuits_opened(self) -> int:
        with self._lock:
            return self._circuits_opened

    def circuits(self) -> dict[str, int]:
        """The live circuit breakers by state, every state included."""
        with self._lock:
            alive = list(self._circuits)
        counts = dict.fromkeys(CIRCUIT_STATES, 0)
        for circuit in alive:
            counts[circuit.state] = counts.get(circuit.state, 0) + 1
        return counts


PROCESS = ProcessCounters()


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
    # The org's stores whose installed webhooks are not all active; its webhook deliveries by state.
    stores_action_required: int = 0
    webhook_deliveries: Mapping[str, int] = field(default_factory=dict)
