"""eventsourcing's PostgreSQL persistence, sending events in psycopg's binary format.

The library sends the array of composite rows as text, which escapes every byte of every event's state in
Python: measured as a fifth of a 100k-customer sync (and more for the multi-megabyte snapshots of a big
queue). Binary sends the bytes as they are, one array per column. Selected with
``PERSISTENCE_MODULE=infrastructure.adapters.pgstore:BinaryPostgresFactory``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder, PostgresFactory
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

# PostgreSQL's JIT compiles a query whose estimated cost passes jit_above_cost, in 4-20 ms: longer than
# any of wcsync's queries take. The event store's tables have no statistics during a first big sync, so
# the planner's guesses pass that cost for a lookup of ten customers (measured: 19.9 ms, 3.9 of it
# compiling, for what runs in 0.2 ms; a 1%-changed re-sync of 100,000 spent 1.3 s in such lookups).
# wcsync's sessions turn it off; reporting tools' own sessions keep the server's setting.
SESSION_OPTIONS = "-c jit=off"


def _columns_statement(recorder: PostgresAggregateRecorder, returning: bool) -> Composed:
    """The same INSERT as the library's, from one array per column instead of an array of composite rows:
    psycopg dumps a list of uuids, integers, texts or bytes with its C dumpers, but a composite row by row
    in Python (measured: 5.0 against 3.7 us of client CPU an event, and less server time, over 20,000)."""
    statement = SQL(
        "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
        "SELECT * FROM unnest(%b::{id_type}[], %b::bigint[], %b::text[], %b::bytea[])"
    ).format(
        schema=Identifier(recorder.datastore.schema),
        table=Identifier(recorder.events_table_name),
        id_type=SQL(recorder.datastore.originator_id_type),
    )
    return statement + SQL(" RETURNING notification_id") if returning else statement


def _insert_columns(
    recorder: PostgresAggregateRecorder, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent]
) -> None:
    curs.execute(
        recorder.insert_events_statement,
        (
            [e.originator_id for e in stored_events],
            [e.originator_version for e in stored_events],
            [e.topic for e in stored_events],
            [e.state for e in stored_events],
        ),
    )


class BinaryAggregateRecorder(PostgresAggregateRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_events_statement = _columns_statement(self, returning=False)

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any
    ) -> None:
        _insert_columns(self, curs, stored_events)


class BinaryApplicationRecorder(PostgresApplicationRecorder):
    """The library's application recorder, inserting from column arrays, and returning no notification
    ids: nothing in wcsync reads the ids of what it saved (its applications' ``_notify`` does nothing; the
    followers read the log), and the library turned each save's ids into a dict row, a Notification and a
    Recording an event (500 a save, 100,000 in a first sync of as many customers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.insert_events_statement = _columns_statement(self, returning=False)

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any
    ) -> Sequence[int] | None:
        # Nothing to fetch. The library has synced the pipeline before this, so a unique violation (a lost
        # race) was raised already, as IntegrityError; an INSERT ... SELECT FROM unnest without ON CONFLICT,
        # triggers or rules stores every row or fails.
        return None

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any
    ) -> None:
        # What the library's does (the table lock that keeps notification ids in commit order, the
        # notification), then the insert from column arrays.
        self._lock_table(curs)
        self._notify_channel(curs)
        _insert_columns(self, curs, stored_events)


class BinaryPostgresFactory(PostgresFactory):
    aggregate_recorder_class = BinaryAggregateRecorder
    application_recorder_class = BinaryApplicationRecorder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The event store's sessions, as wcsync's own (DatabaseConfig.pg_connect_kwargs), without JIT: the
        # pool opens its connections later, with these arguments.
        pool_kwargs = self.datastore.pool.kwargs
        assert isinstance(pool_kwargs, dict)  # the library passes a dict (not a callable)
        # After the environment's PGOPTIONS (libpq ignores it once options are given), which it keeps.
        pool_kwargs["options"] = f"{os.environ.get('PGOPTIONS', '')} {SESSION_OPTIONS}".strip()
