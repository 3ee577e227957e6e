"""The PostgreSQL event store's own insert (infrastructure/adapters/pgstore.py): events from column arrays,
in one transaction a save, with no notification ids sent back."""

from __future__ import annotations

import pytest

from domain.customer import Customer
from infrastructure.adapters.eventstore import ConcurrentWriteError, SyncApplication
from infrastructure.adapters.pgstore import BinaryApplicationRecorder
from infrastructure.support.config import DatabaseConfig
from tests.support.digests import content_hash


def _customers(count: int, start: int = 1) -> list[Customer]:
    customers = []
    for cid in range(start, start + count):
        record = {"id": cid, "email": f"c{cid}@example.com"}
        customers.append(
            Customer(
                org_id="o",
                store_url="s",
                woo_id=cid,
                record=record,
                digest=content_hash(record),
                queue_id="q",
            )
        )
    return customers


def test_a_save_stores_every_event_in_order_and_returns_no_notification_ids(postgres_url: str) -> None:
    app = SyncApplication(DatabaseConfig.from_url(postgres_url))
    try:
        assert isinstance(app.recorder, BinaryApplicationRecorder)
        with app.recorder.datastore.get_connection() as conn:
            statement = app.recorder.insert_events_statement.as_string(conn)
        assert statement.startswith("INSERT INTO") and "RETURNING" not in statement
        customers = _customers(500)
        stored = [app.mapper.to_stored_event(c.pending_events[0]) for c in customers]
        assert app.recorder.insert_events(stored) is None
        notifications = app.recorder.select_notifications(start=None, limit=1000)
        assert [(n.originator_id, n.originator_version) for n in notifications] == [
            (c.id, 1) for c in customers
        ]
        assert [n.id for n in notifications] == list(range(1, 501))  # in the save's order, no gap

        # The application's own save (one transaction) stores the next ones after them.
        later = _customers(3, start=501)
        app.save_batch(*later)
        tail = app.recorder.select_notifications(start=501, limit=10)
        assert [(n.id, n.originator_id) for n in tail] == [(501 + i, c.id) for i, c in enumerate(later)]
    finally:
        app.close()


def test_a_save_that_loses_a_race_stores_none_of_its_events(postgres_url: str) -> None:
    app = SyncApplication(DatabaseConfig.from_url(postgres_url))
    try:
        app.save_batch(*_customers(1, start=7))
        again = _customers(3, start=6)  # 7's first event is stored already
        with pytest.raises(ConcurrentWriteError):
            app.save_batch(*again)
        assert app.recorder.max_notification_id() == 1
    finally:
        app.close()
