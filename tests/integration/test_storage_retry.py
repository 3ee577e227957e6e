"""A save retried after a transient storage error writes the same events (tests/unit/test_storage_retry.py
has the retry helper itself; this one opens a real SQLite file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eventsourcing.persistence import OperationalError

from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.support.config import DatabaseConfig


def test_a_save_retried_after_a_transient_error_writes_the_same_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("infrastructure.adapters.eventstore.time.sleep", lambda _: None)
    app = SyncApplication(DatabaseConfig.from_url(f"sqlite:///{tmp_path / 'w.db'}"))
    queue = SyncQueue(
        org_id="o", queue_name="q", store_url="http://s", options=QueueOptions().as_dict(), started_by="t"
    )
    queue.add_lines([{"id": 1}, {"id": 2}], page=1)
    record = app._record
    failures = [OperationalError("database is locked")]

    def flaky_record(processing: object) -> object:
        if failures:
            raise failures.pop()
        return record(processing)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "_record", flaky_record)
    app.save_batch(queue)
    assert app.get_queue(queue.id).lines.total == 2
