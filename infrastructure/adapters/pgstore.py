"""eventsourcing's PostgreSQL persistence, sending events in psycopg's binary format.

The library sends the array of composite rows as text, which escapes every byte of every event's state in
Python: measured as a fifth of a 100k-customer sync (and more for the multi-megabyte snapshots of a big
queue). Binary sends the bytes as they are. Selected with
``PERSISTENCE_MODULE=infrastructure.adapters.pgstore:BinaryPostgresFactory``.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder, PostgresFactory
from psycopg.sql import SQL, Composed


def _binary(statement: Any) -> Composed:
    assert isinstance(statement, Composed)
    return Composed(
        [
            SQL(part.as_string(None).replace("%s", "%b")) if isinstance(part, SQL) else part
            for part in statement
        ]
    )


class BinaryAggregateRecorder(PostgresAggregateRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_events_statement = _binary(self.insert_events_statement)


class BinaryApplicationRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_events_statement = _binary(self.insert_events_statement)


class BinaryPostgresFactory(PostgresFactory):
    aggregate_recorder_class = BinaryAggregateRecorder
    application_recorder_class = BinaryApplicationRecorder
