"""The dashboard's own reads (projections/queries.py) at sizes a first render must survive, on SQLite and
PostgreSQL: the chart's sums come from the database in at most a hundred and twenty slices of time and add
up to every row however many there are (the old read stopped at 50,000 rows), and the failed lines shown
are limited in SQL. The rows are written straight into the activity and line tables: the projections'
shapes, at a size no sandbox sync reaches in a test's time."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infrastructure.adapters.projection_db import Database
from infrastructure.wiring import Services
from projections import queries
from projections.activity import ACTIVITY_TABLE
from tests.support.sandbox import RunningSandbox
from tests.support.services import run_sync

T0 = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
pytestmark = pytest.mark.sandbox(customers=12, invalid=3)
ROWS = 60_000  # past the 50,000 rows the chart once read before it silently stopped


def _activity(queue_id: uuid.UUID, number: int, kind: str, details: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": 10_000_000 + number,
        "queue_id": queue_id,
        "org_id": "acme",
        "activity_type": kind,
        "status": "info",
        "message": kind,
        "details": details,
        "created_at": T0 + timedelta(seconds=number * 0.05),
    }


def test_the_charts_sums_come_from_the_database_for_any_number_of_rows(services: Services) -> None:
    queue_id = uuid.uuid4()
    chooser = random.Random(14)
    expected = dict.fromkeys(queries.PROGRESS_OUTCOMES, 0)
    rows = []
    for number in range(ROWS):
        kind = chooser.choice(("batch_processed", "page_fetched", "line_failed", "queue_created"))
        if kind == "batch_processed":
            details: dict[str, Any] | None = {
                "created": chooser.randrange(5),
                "updated": chooser.randrange(3),
                "unchanged": chooser.randrange(2),
            }
            for name in ("created", "updated", "unchanged"):
                expected[name] += details[name]
        elif kind == "page_fetched":
            details = {"page": number, "count": 100, "unchanged": chooser.randrange(4)}
            expected["unchanged"] += details["unchanged"]
        elif kind == "line_failed":
            details = {"woo_customer_id": number}
            expected["failed"] += 1
        else:
            details = {"created": 99}  # not a progress row: never counted
        rows.append(_activity(queue_id, number, kind, details))
    # Details that are no counts are nothing: a boolean, a negative number, text, none at all.
    rows.append(
        _activity(queue_id, ROWS, "batch_processed", {"created": True, "updated": -4, "unchanged": "7"})
    )
    rows.append(_activity(queue_id, ROWS + 1, "batch_processed", None))
    rows.append({**_activity(queue_id, ROWS + 2, "batch_processed", {"created": 1000}), "org_id": "other"})
    db = Database(services.database)
    try:
        with db.transaction():
            db.insert_dicts(ACTIVITY_TABLE, "", rows)
    finally:
        db.close()

    buckets = queries.progress_buckets(services.projections, "acme", queue_id, 120)
    assert 100 <= len(buckets) <= 120  # rows are spread evenly over the span: nearly every slice has some
    totals = {name: sum(bucket[name] for bucket in buckets) for name in queries.PROGRESS_OUTCOMES}
    assert totals == expected
    times = [datetime.fromisoformat(bucket["at"]) for bucket in buckets]
    assert times == sorted(times) and times[0] >= T0
    # The last slice ends at the last row (SQLite's julianday keeps time to about a millisecond).
    last = T0 + timedelta(seconds=(ROWS + 1) * 0.05)
    assert abs((times[-1] - last).total_seconds()) < 0.01
    assert queries.progress_buckets(services.projections, "other", queue_id, 120)[0]["created"] == 1000
    assert queries.progress_buckets(services.projections, "acme", uuid.uuid4(), 120) == []


def test_one_row_is_one_slice_and_a_real_queues_sums_are_its_counts(
    services: Services, sandbox: RunningSandbox
) -> None:
    outcome = run_sync(services, sandbox, "acme", catch_up=True)
    status = queries.queue_status(services.projections, "acme", outcome.queue_id)
    assert status is not None
    buckets = queries.progress_buckets(services.projections, "acme", outcome.queue_id, 120)
    totals = {name: sum(bucket[name] for bucket in buckets) for name in queries.PROGRESS_OUTCOMES}
    assert totals == {name: status[f"{name}Count"] for name in queries.PROGRESS_OUTCOMES}
    assert len(queries.progress_buckets(services.projections, "acme", outcome.queue_id, 1)) == 1


def test_failed_lines_are_limited_in_sql_and_every_one_without_a_limit(
    services: Services, sandbox: RunningSandbox
) -> None:
    outcome = run_sync(services, sandbox, "acme", catch_up=True)
    every = queries.failed_lines(services.projections, "acme", outcome.queue_id)
    assert len(every) == 3
    first = queries.failed_lines(services.projections, "acme", outcome.queue_id, limit=1)
    assert first == every[:1]
