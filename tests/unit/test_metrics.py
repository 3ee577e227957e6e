"""/metrics' counters and exposition without I/O: status classes, circuits counted while they live, the
figures of a snapshot under Prometheus' naming rules, and a scrape that could not read the database."""

from __future__ import annotations

import gc

from prometheus_client.parser import text_string_to_metric_families

from infrastructure.api.exposition import render
from infrastructure.support.metrics import JobFigures, ProcessCounters, ProjectionFigures, Snapshot


class FakeCircuit:
    def __init__(self, state: str) -> None:
        self.state = state


def parsed(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_store_requests_are_counted_by_status_class_or_by_what_happened_instead() -> None:
    counters = ProcessCounters()
    for outcome in (200, 200, 204, 301, 404, 429, 500, 503, "timeout", "connection_error", 99):
        counters.store_request(outcome)
    assert counters.requests() == {
        "2xx": 3,
        "3xx": 1,
        "4xx": 2,
        "5xx": 2,
        "timeout": 1,
        "connection_error": 1,
        "other": 1,
    }


def test_circuits_are_counted_by_state_while_their_clients_live() -> None:
    counters = ProcessCounters()
    circuits = [FakeCircuit("closed"), FakeCircuit("open"), FakeCircuit("open")]
    for tracked in circuits:
        counters.track_circuit(tracked)
    del tracked  # only the list holds them now
    assert counters.circuits() == {"closed": 1, "open": 2, "half_open": 0}
    circuits[1].state = "half_open"
    assert counters.circuits() == {"closed": 1, "open": 1, "half_open": 1}
    del circuits[1:]
    gc.collect()
    assert counters.circuits() == {"closed": 1, "open": 0, "half_open": 0}


def test_a_snapshot_is_written_under_wcsync_names_with_units_and_every_state() -> None:
    counters = ProcessCounters()
    counters.store_request(200)
    counters.store_retry("server_error")
    counters.circuit_opened()
    snapshot = Snapshot(
        database_up=True,
        syncs={"done": 2},
        lines={"done": 7, "failed": 1},
        line_results={"created": 7},
        jobs=JobFigures(waiting=3, running=1, oldest_waiting_age_s=12.5, heartbeat_age_s={"17": 4.0}),
        projections=[ProjectionFigures("queues", lag_events=5, lag_s=1.5)],
        read_s=0.01,
    )
    samples = parsed(render(snapshot, counters))
    assert samples[("wcsync_store_requests_total", frozenset({("status_class", "2xx")}))] == 1
    assert samples[("wcsync_store_retries_total", frozenset({("reason", "server_error")}))] == 1
    assert samples[("wcsync_store_circuit_opened_total", frozenset())] == 1
    assert samples[("wcsync_syncs", frozenset({("state", "done")}))] == 2
    assert samples[("wcsync_syncs", frozenset({("state", "processing")}))] == 0  # every state, 0 included
    assert samples[("wcsync_sync_lines", frozenset({("state", "cancelled")}))] == 0
    assert samples[("wcsync_sync_line_results", frozenset({("result", "unchanged")}))] == 0
    assert samples[("wcsync_jobs_oldest_waiting_age_seconds", frozenset())] == 12.5
    assert samples[("wcsync_worker_heartbeat_age_seconds", frozenset({("worker", "17")}))] == 4.0
    assert samples[("wcsync_projection_lag_events", frozenset({("projection", "queues")}))] == 5
    assert samples[("wcsync_projection_lag_seconds", frozenset({("projection", "queues")}))] == 1.5
    assert all(name.startswith("wcsync_") for name, _ in samples)


def test_a_scrape_that_could_not_read_the_database_says_so_and_keeps_the_counters() -> None:
    counters = ProcessCounters()
    counters.store_request("timeout")
    samples = parsed(render(Snapshot(database_up=False, read_s=3.0), counters))
    assert samples[("wcsync_database_up", frozenset())] == 0
    assert samples[("wcsync_store_requests_total", frozenset({("status_class", "timeout")}))] == 1
    assert not any(
        name.startswith(("wcsync_syncs", "wcsync_jobs", "wcsync_projection")) for name, _ in samples
    )
