"""The one module that writes SQL on eventsourcing's stored-events table (``wcsync_events`` on PostgreSQL,
``stored_events`` on SQLite).

Everything else reads the log through the library (``app.recorder``, ``app.repository``) or through what is
here:

- the event store's bulk reads of many customers (``select_events_of``: SyncApplication.load_customers;
  ``select_heads_of``: the tails of their latest events, SyncApplication.customer_heads;
  ``select_positions_after``: which aggregates have events past a position, SyncApplication.changed_after);
- the projections' catch-up and rebuild reads: notifications in binary (``select_notifications``), the raw
  rows the ledger chains (``select_for_ledger``, ``head_position``; ``postgres_head_position`` on a bare
  connection, for bench/lag_bench.py), and the stored states PostgreSQL turns
  into customer rows itself (``JSONB_STATES``);
- the audit's consistent, streamed view of the log, the ledger and its checkpoints (``LogReader``);
- whether a database holds the events table at all (``sqlite_has_events_table``,
  ``postgres_has_events_table``).

These are the read paths of a catch-up: each statement is built once per batch, and rows come back as the
driver returns them (no conversion pass of their own).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent

from infrastructure.adapters.schema import (
    CHECKPOINT_TABLE_NAME,
    EVENTS_ID_COLUMN,
    EVENTS_TABLE,
    LEDGER_TABLE_NAME,
    NUL_ESCAPE,
    POSTGRES,
    SQLITE,
    as_uuid,
)
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import StorageError, driver_errors, first_line

if TYPE_CHECKING:
    import psycopg

# psycopg is imported where a PostgreSQL branch needs it, not here: a command on SQLite never loads it
# (~50 ms of `wcsync status`).


class Reads(Protocol):
    """What the projections' database (projection_db.Database) offers the reads below."""

    dialect: str

    def fetchall(
        self, statement: str, params: Sequence[Any] = (), binary: bool = False
    ) -> list[tuple[Any, ...]]: ...


# ----- the event store's bulk reads ----------------------------------------------------------------------


def select_events_of(
    recorder: Any, backend: str, ids: Sequence[UUID], latest_only: bool = False, first_only: bool = False
) -> list[StoredEvent]:
    """The stored events of these aggregates (only the latest of each with ``latest_only``, only the first
    with ``first_only``: what names a customer, SyncApplication.customers_named), in one query, on the
    application's own connection (``recorder``: its ApplicationRecorder)."""
    table = recorder.events_table_name
    if backend == SQLITE:
        placeholders = ",".join("?" * len(ids))
        statement = (
            f"SELECT originator_id, originator_version, topic, state FROM {table} AS e "
            f"WHERE originator_id IN ({placeholders})"
        )
        if first_only:
            statement += " AND originator_version = 1"
        if latest_only:
            statement += (
                f" AND originator_version = (SELECT MAX(originator_version) FROM {table} "
                "WHERE originator_id = e.originator_id)"
            )
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(statement, [i.hex for i in ids])
            return [
                StoredEvent(
                    originator_id=UUID(row["originator_id"]),
                    originator_version=row["originator_version"],
                    topic=row["topic"],
                    state=row["state"],
                )
                for row in curs.fetchall()
            ]
    from psycopg.sql import SQL, Identifier

    # One index probe per id (LATERAL ... LIMIT), whatever the planner believes: during a first big
    # sync the events table has no statistics yet, and `= ANY(...)` was planned as a bitmap scan
    # (plus JIT) at ~100 ms a page instead of ~1 ms.
    statement_pg = SQL(
        "SELECT e.originator_id, e.originator_version, e.topic, e.state "
        "FROM unnest(%s::uuid[]) AS k(id) CROSS JOIN LATERAL ("
        "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
        "WHERE originator_id = k.id"
        + (" AND originator_version = 1" if first_only else "")
        + " ORDER BY originator_version DESC"
        + (" LIMIT 1" if latest_only else "")
        + ") AS e"
    ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(table))
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement_pg, (list(ids),))
        return [
            StoredEvent(
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            for row in curs.fetchall()
        ]


def select_heads_of(
    recorder: Any, backend: str, ids: Sequence[UUID], tail_bytes: int
) -> list[tuple[UUID, int, str, bytes]]:
    """(aggregate id, version, topic, the last ``tail_bytes`` of the stored state) of the latest event of
    each of these aggregates, in one query: what a re-sync needs to find each customer's digest (the
    event's last fields) without the ~1.5 KB record before it crossing the connection. On PostgreSQL in
    binary, so the bytes are not sent as hex text and decoded again."""
    table = recorder.events_table_name
    if backend == SQLITE:
        placeholders = ",".join("?" * len(ids))
        statement = (
            f"SELECT originator_id, originator_version, topic, substr(state, -{int(tail_bytes)}) AS tail "
            f"FROM {table} AS e WHERE originator_id IN ({placeholders}) AND originator_version = "
            f"(SELECT MAX(originator_version) FROM {table} WHERE originator_id = e.originator_id)"
        )
        by_hex = {i.hex: i for i in ids}  # the caller's UUIDs, not new ones parsed from each row
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(statement, list(by_hex))
            return [
                (by_hex[row["originator_id"]], row["originator_version"], row["topic"], bytes(row["tail"]))
                for row in curs.fetchall()
            ]
    from psycopg.rows import tuple_row
    from psycopg.sql import SQL, Identifier

    # As select_events_of: one index probe per id. Each row names its id by its place in the list sent
    # (WITH ORDINALITY): the caller's UUIDs are reused instead of a new one loaded from every row.
    statement_pg = SQL(
        "SELECT k.n, e.originator_version, e.topic, "
        "substring(e.state FROM greatest(1, length(e.state) - %s::int + 1)) "
        "FROM unnest(%s::uuid[]) WITH ORDINALITY AS k(id, n) CROSS JOIN LATERAL ("
        "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
        "WHERE originator_id = k.id ORDER BY originator_version DESC LIMIT 1) AS e"
    ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(table))
    with recorder.datastore.get_connection() as conn, conn.cursor(binary=True, row_factory=tuple_row) as curs:
        curs.execute(statement_pg, (tail_bytes, list(ids)), prepare=True)
        return [(ids[n - 1], version, topic, bytes(tail)) for n, version, topic, tail in curs.fetchall()]


def select_positions_after(
    recorder: Any, backend: str, position: int, limit: int
) -> list[tuple[UUID, int, str]]:
    """(aggregate id, position, topic) of the events stored after ``position`` (a notification id), in
    order, ``limit`` at most, without their states: one range of the notification id index. What a re-sync
    asks to learn which customers changed since an earlier scan began (SyncApplication.changed_after). The
    log's positions become visible in order (PostgreSQL: pgstore inserts under the table lock; SQLite: one
    writer), so nothing stored later can take a position at or below one already seen."""
    table = recorder.events_table_name
    if backend == SQLITE:
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(
                f"SELECT originator_id, rowid AS position, topic FROM {table} WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?",
                [position, limit],
            )
            return [(UUID(row["originator_id"]), row["position"], row["topic"]) for row in curs.fetchall()]
    from psycopg.rows import tuple_row
    from psycopg.sql import SQL, Identifier

    statement_pg = SQL(
        "SELECT originator_id, notification_id, topic FROM {schema}.{table} WHERE notification_id > %s "
        "ORDER BY notification_id LIMIT %s"
    ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(table))
    with recorder.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as curs:
        curs.execute(statement_pg, (position, limit), prepare=True)
        return [(oid, n, topic) for oid, n, topic in curs.fetchall()]


# ----- the projections' reads ----------------------------------------------------------------------------


def select_notifications(
    conn: psycopg.Connection[Any],
    events_table: str,
    start: int,
    stop: int,
    topics: Sequence[str],
    limit: int,
    states: bool = True,
    stateless: Sequence[str] = (),
) -> list[Notification]:
    """PostgreSQL: the application's notifications in (start, stop], as ``app.recorder.select_notifications``
    returns them, but fetched in binary: event states travel as raw bytes instead of hex text (the
    library's own query spends most of a catch-up's reading time decoding hex).

    Without ``states``: ids and topics only (every state empty). Events of the ``stateless`` topics come
    without their state (empty) too, except those with a NUL character escaped in their JSON (which
    PostgreSQL's jsonb refuses: see Projection.in_database_topics): they come whole."""
    params: list[Any] = [start, stop, list(topics), limit]
    if not states:
        state = "''::bytea"
    elif stateless:
        state = "CASE WHEN topic = ANY(%s) AND position(%s IN state) = 0 THEN ''::bytea ELSE state END"
        params[:0] = [list(stateless), NUL_ESCAPE]
    else:
        state = "state"
    statement = (
        f"SELECT notification_id, originator_id, originator_version, topic, {state} FROM {events_table} "
        "WHERE notification_id > %s AND notification_id <= %s AND topic = ANY(%s) "
        "ORDER BY notification_id LIMIT %s"
    )
    with conn.cursor(binary=True) as cur:
        rows = cur.execute(statement, params).fetchall()
    return [
        Notification(id=nid, originator_id=oid, originator_version=version, topic=topic, state=bytes(state))
        for nid, oid, version, topic, state in rows
    ]


def select_for_ledger(db: Reads, after: int, upto: int) -> tuple[list[tuple[Any, ...]], bool]:
    """Every stored event in (after, upto], in order, whatever its topic, as (position, aggregate id,
    version, topic, X), and whether X is the SHA-256 digest of the stored state (PostgreSQL, which hashes
    the states itself: 32 bytes an event cross the connection instead of the whole state) rather than the
    stored state bytes (SQLite). Aggregate ids: a UUID on PostgreSQL, hex text on SQLite."""
    events, id_column = EVENTS_TABLE[db.dialect], EVENTS_ID_COLUMN[db.dialect]
    # Binary: ids and bytes arrive as such (in text, bytea comes as hex, and decoding that was a fifth of
    # the ledger's time).
    hashed = db.dialect == POSTGRES
    state = "sha256(state)" if hashed else "state"
    rows = db.fetchall(
        f"SELECT {id_column}, originator_id, originator_version, topic, {state} FROM {events} "
        f"WHERE {id_column} > %s AND {id_column} <= %s ORDER BY {id_column}",
        [after, upto],
        binary=True,
    )
    return rows, hashed


def _head_statement(dialect: str) -> str:
    return f"SELECT MAX({EVENTS_ID_COLUMN[dialect]}) FROM {EVENTS_TABLE[dialect]}"


def head_position(db: Reads) -> int:
    """The position (notification id) of the last stored event, 0 when there is none."""
    return int(db.fetchall(_head_statement(db.dialect))[0][0] or 0)


def last_position_of(db: Reads, originator_id: UUID) -> int:
    """The position (notification id) of the last stored event of one aggregate, 0 when it has none: one
    probe of the (originator_id, originator_version) index."""
    key: Any = originator_id if db.dialect == POSTGRES else originator_id.hex
    rows = db.fetchall(
        f"SELECT {EVENTS_ID_COLUMN[db.dialect]} FROM {EVENTS_TABLE[db.dialect]} WHERE originator_id = %s "
        "ORDER BY originator_version DESC LIMIT 1",
        [key],
    )
    return int(rows[0][0]) if rows else 0


def postgres_head_position(conn: psycopg.Connection[Any]) -> int:
    """``head_position`` on a PostgreSQL connection of the caller's own (bench/lag_bench.py polls one)."""
    row = conn.execute(_head_statement(POSTGRES)).fetchone()
    return int(row[0] or 0) if row else 0


# PostgreSQL: the stored state, as jsonb, of each event of one topic among some notification ids (for SQL
# that makes read-model rows from them in the server: projections/customers.py). Columns: originator_id,
# originator_version, j. Parameters: the first and the last of the ids (the range lets the notification id
# index find them), the ids, the topic.
JSONB_STATES = (
    "SELECT originator_id, originator_version, convert_from(state, 'UTF8')::jsonb AS j "
    f"FROM {EVENTS_TABLE[POSTGRES]} WHERE notification_id >= %s AND notification_id <= %s "
    "AND notification_id = ANY(%s::bigint[]) AND topic = %s"
)


# ----- is it a wcsync database ---------------------------------------------------------------------------


def sqlite_has_events_table(path: Path) -> bool:
    """Whether the SQLite file holds wcsync's events table. The file is opened without being created
    (mode=rw), and closed at once: SQLite removes the -wal/-shm files of a WAL database when its last
    connection closes. Raises sqlite3.Error when it cannot be read."""
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=rw", uri=True, timeout=30)
    try:
        row = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (EVENTS_TABLE[SQLITE],)
        ).fetchone()
    finally:
        conn.close()
    return row is not None


def postgres_has_events_table(recorder: Any) -> bool:
    """Whether the application's schema holds its events table (``recorder``: its ApplicationRecorder)."""
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present",
            (f"{recorder.datastore.schema}.{recorder.events_table_name}",),
        )
        row = curs.fetchone()
        return bool(row and row["present"])


# ----- the audit's view of the log -----------------------------------------------------------------------

FETCH_ROWS = 5_000

# (position, aggregate id, version, topic, stored state)
RawEvent = tuple[int, UUID, int, str, bytes]
# (position, seq, aggregate id, version, topic, state hash, event hash, chain hash)
LedgerRow = tuple[int, int, UUID, int, str, str, str, str]


class LogReader:
    """One consistent, read-only view of the events table, the ledger and its checkpoints, streamed."""

    def __init__(self, database: DatabaseConfig) -> None:
        self.database = database
        self.dialect = POSTGRES if database.backend == "postgres" else SQLITE
        self.events_table = EVENTS_TABLE[self.dialect]
        self.id_column = EVENTS_ID_COLUMN[self.dialect]
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        self._cursors = 0

    @contextmanager
    def snapshot(self) -> Iterator[LogReader]:
        try:
            if self.dialect == POSTGRES:
                import psycopg

                self._pg = psycopg.connect(**self.database.pg_connect_kwargs())
                self._pg.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            else:
                path = self.database.sqlite_path
                if path is None or not path.exists():
                    raise StorageError(f"no database at {self.database.display}")
                self._sqlite = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30
                )
                self._sqlite.execute("BEGIN")
        except driver_errors() as error:
            self.close()
            raise StorageError(
                f"cannot read the database {self.database.display}: {first_line(error)}"
            ) from None
        try:
            yield self
        except driver_errors() as error:
            raise StorageError(f"reading {self.database.display} failed: {first_line(error)}") from None
        finally:
            self.close()

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None

    def _rows(self, statement: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        if self._pg is not None:
            self._cursors += 1
            with self._pg.cursor(name=f"audit_{self._cursors}", binary=True) as cur:
                cur.itersize = FETCH_ROWS
                cur.execute(statement, params)
                while rows := cur.fetchmany(FETCH_ROWS):
                    yield from rows
            return
        assert self._sqlite is not None
        cursor = self._sqlite.execute(statement.replace("%s", "?"), params)
        while rows := cursor.fetchmany(FETCH_ROWS):
            yield from rows

    def _one(self, statement: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        if self._pg is not None:
            return self._pg.execute(statement, params).fetchone()
        assert self._sqlite is not None
        row: tuple[Any, ...] | None = self._sqlite.execute(statement.replace("%s", "?"), params).fetchone()
        return row

    def table_exists(self, name: str) -> bool:
        if self._pg is not None:
            row = self._one("SELECT to_regclass(%s) IS NOT NULL", [name])
            return bool(row and row[0])
        return self._one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", [name]) is not None

    def events(self) -> Iterator[RawEvent]:
        for nid, oid, version, topic, state in self.raw_events():
            yield int(nid), as_uuid(oid), int(version), topic, bytes(state)

    def raw_events(self) -> Iterator[tuple[int, Any, int, str, bytes]]:
        """events() without converting aggregate ids (a UUID on PostgreSQL, hex text on SQLite)."""
        if not self.table_exists(self.events_table):
            return
        statement = (
            f"SELECT {self.id_column}, originator_id, originator_version, topic, state FROM {self.events_table} "
            f"ORDER BY {self.id_column}"
        )
        yield from self._rows(statement)

    def ledger(self) -> Iterator[LedgerRow]:
        if not self.table_exists(LEDGER_TABLE_NAME):
            return
        statement = (
            "SELECT position, seq, originator_id, originator_version, topic, state_hash, event_hash, chain_hash "
            f"FROM {LEDGER_TABLE_NAME} ORDER BY position"
        )
        for position, seq, oid, version, topic, s_hash, e_hash, c_hash in self._rows(statement):
            yield int(position), int(seq), as_uuid(oid), int(version), topic, s_hash, e_hash, c_hash

    def ledger_head(self) -> tuple[int, str] | None:
        if not self.table_exists(LEDGER_TABLE_NAME):
            return None
        row = self._one(
            f"SELECT position, chain_hash FROM {LEDGER_TABLE_NAME} ORDER BY position DESC LIMIT 1"
        )
        return (int(row[0]), str(row[1])) if row else None

    def ledger_chain_at(self, position: int) -> str | None:
        if not self.table_exists(LEDGER_TABLE_NAME):
            return None
        row = self._one(f"SELECT chain_hash FROM {LEDGER_TABLE_NAME} WHERE position = %s", [position])
        return str(row[0]) if row else None

    def checkpoints(self) -> list[tuple[int, str, int, str, str | None]]:
        if not self.table_exists(CHECKPOINT_TABLE_NAME):
            return []
        statement = (
            f"SELECT position, chain_hash, events, recorded_at, signature FROM {CHECKPOINT_TABLE_NAME} "
            "ORDER BY position"
        )
        return [(int(p), str(c), int(n), str(t), s) for p, c, n, t, s in self._rows(statement)]
