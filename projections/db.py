"""The projections' own connection to the events' database: SQLite (same file) or PostgreSQL (same schema).

Statements are written once with ``%s`` placeholders and run on either backend. Values cross this boundary
as Python objects (UUID, aware datetime, dict, bool) and are converted per column kind here, so projection
code never sees a backend's representation.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from infrastructure.config import DatabaseConfig
from projections.schema import BOOL, JSON, POSTGRES, SQLITE, TS, UUID_, Table

Row = tuple[Any, ...]

# Errors after which the connection is thrown away and opened again (follow() backs off and retries).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
)

SQLITE_MAX_VARIABLES = 900  # well under every SQLite build's limit


class ConcurrentUpdate(Exception):
    """Another runner moved a tracking position between our read and our lock: read again."""


def iso(value: datetime) -> str:
    """ISO-8601 in UTC with offset and microseconds: sorts as text in time order."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _identity(value: Any) -> Any:
    return value


def _opt(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else func(value)


def _sqlite_ts_in(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


_SQLITE_ENCODE: dict[str, Callable[[Any], Any]] = {
    UUID_: _opt(str),
    TS: _opt(_sqlite_ts_in),
    JSON: _opt(_dumps),
    BOOL: _opt(int),
}
_SQLITE_DECODE: dict[str, Callable[[Any], Any]] = {
    UUID_: _opt(UUID),
    TS: _opt(datetime.fromisoformat),
    JSON: _opt(json.loads),
    BOOL: _opt(bool),
}
_PG_ENCODE: dict[str, Callable[[Any], Any]] = {JSON: _opt(Jsonb)}
_PG_DECODE: dict[str, Callable[[Any], Any]] = {}


class Database:
    """One connection, used under a lock (a runner may follow in one thread and answer queries in another)."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.dialect = POSTGRES if config.backend == "postgres" else SQLITE
        self.lock = threading.RLock()
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Row] | None = None
        encode = _PG_ENCODE if self.dialect == POSTGRES else _SQLITE_ENCODE
        decode = _PG_DECODE if self.dialect == POSTGRES else _SQLITE_DECODE
        self._encode = encode
        self._decode = decode

    # ----- connection ----------------------------------------------------------------------------------

    def _connect_sqlite(self) -> sqlite3.Connection:
        if self._sqlite is None:
            assert self.config.sqlite_path is not None
            self.config.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.config.sqlite_path), isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._sqlite = conn
        return self._sqlite

    def _connect_pg(self) -> psycopg.Connection[Row]:
        if self._pg is None or self._pg.closed or self._pg.broken:
            c = self.config
            self._pg = psycopg.connect(
                host=c.pg_host,
                port=c.pg_port,
                dbname=c.pg_dbname,
                user=c.pg_user,
                password=c.pg_password or None,
                autocommit=True,
                connect_timeout=10,
                options=f"-c search_path={c.pg_schema} -c timezone=UTC",
            )
        return self._pg

    def reset(self) -> None:
        """Forget the connection (after it broke); the next statement opens a new one."""
        with self.lock:
            self.close()

    def close(self) -> None:
        with self.lock:
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None
            if self._pg is not None:
                self._pg.close()
                self._pg = None

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """One write transaction. SQLite: BEGIN IMMEDIATE (the database's write lock, taken up front)."""
        with self.lock:
            if self.dialect == SQLITE:
                conn = self._connect_sqlite()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                with self._connect_pg().transaction():
                    yield self

    @contextmanager
    def reading(self) -> Iterator[Database]:
        with self.lock:
            yield self

    # ----- statements ----------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self.dialect == POSTGRES else statement.replace("%s", "?")

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        if self.dialect == SQLITE:
            self._connect_sqlite().execute(self._sql(statement), params)
        else:
            self._connect_pg().execute(statement, params)

    def fetchall(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        if self.dialect == SQLITE:
            return self._connect_sqlite().execute(self._sql(statement), params).fetchall()
        return self._connect_pg().execute(statement, params).fetchall()

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        if self.dialect == SQLITE:
            self._connect_sqlite().executemany(self._sql(statement), rows)
        else:
            with self._connect_pg().cursor() as cur:
                cur.executemany(statement, rows)

    def in_clause(self, column: str, values: Sequence[Any], kind: str) -> Iterator[tuple[str, list[Any]]]:
        """``column IN (...)`` conditions with their parameters, chunked where the backend needs it."""
        encode = self._encode.get(kind, _identity)
        if self.dialect == POSTGRES:
            yield f"{column} = ANY(%s)", [[encode(v) for v in values]]
            return
        for start in range(0, len(values), SQLITE_MAX_VARIABLES):
            chunk = [encode(v) for v in values[start : start + SQLITE_MAX_VARIABLES]]
            yield f"{column} IN ({', '.join(['%s'] * len(chunk))})", chunk

    # ----- values --------------------------------------------------------------------------------------

    def encoder(self, kinds: Sequence[str]) -> Callable[[Sequence[Any]], Row]:
        funcs = [(i, self._encode[k]) for i, k in enumerate(kinds) if k in self._encode]

        def encode(values: Sequence[Any]) -> Row:
            out = list(values)
            for i, func in funcs:
                out[i] = func(out[i])
            return tuple(out)

        return encode

    def decoder(self, kinds: Sequence[str]) -> Callable[[Sequence[Any]], list[Any]]:
        funcs = [(i, self._decode[k]) for i, k in enumerate(kinds) if k in self._decode]

        def decode(values: Sequence[Any]) -> list[Any]:
            out = list(values)
            for i, func in funcs:
                out[i] = func(out[i])
            return out

        return decode

    def value(self, kind: str, value: Any) -> Any:
        return self._encode.get(kind, _identity)(value)

    # ----- rows of a table -----------------------------------------------------------------------------

    def load(
        self,
        table: Table,
        suffix: str,
        key_column: str,
        keys: Sequence[Any],
        where: str = "",
        params: Sequence[Any] = (),
    ) -> list[dict[str, Any]]:
        """Rows of ``table`` whose ``key_column`` is one of ``keys`` (and ``where``), as dicts of Python values."""
        if not keys:
            return []
        kind = next(c.kind for c in table.columns if c.name == key_column)
        decode = self.decoder(table.kinds)
        names = table.column_names
        rows: list[dict[str, Any]] = []
        for condition, values in self.in_clause(key_column, keys, kind):
            statement = f"{table.select(suffix)} WHERE {condition}" + (f" AND {where}" if where else "")
            for row in self.fetchall(statement, [*values, *params]):
                rows.append(dict(zip(names, decode(row), strict=True)))
        return rows

    def upsert(self, table: Table, suffix: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write rows (dicts with every column) in bulk, replacing rows with the same primary key."""
        names = table.column_names
        encode = self.encoder(table.kinds)
        values = [encode([row[n] for n in names]) for row in rows]
        if not values:
            return
        if self.dialect == SQLITE:
            self.executemany(table.upsert(suffix), values)
            return
        self._copy_upsert(table, suffix, values)

    def insert(self, table: Table, suffix: str, rows: Iterable[Sequence[Any]]) -> None:
        """Append rows (tuples in column order) that are new by construction."""
        encode = self.encoder(table.kinds)
        values = [encode(row) for row in rows]
        if not values:
            return
        names = ", ".join(table.column_names)
        if self.dialect == SQLITE:
            self.executemany(
                f"INSERT INTO {table.name}{suffix} ({names}) VALUES ({', '.join(['?'] * len(table.columns))})",
                values,
            )
            return
        with (
            self._connect_pg().cursor() as cur,
            cur.copy(f"COPY {table.name}{suffix} ({names}) FROM STDIN") as copy,
        ):
            for row in values:
                copy.write_row(row)

    def _copy_upsert(self, table: Table, suffix: str, values: list[Row]) -> None:
        # COPY into a transaction-scoped staging table, then one INSERT ... SELECT ... ON CONFLICT: an
        # order of magnitude faster than a statement per row.
        stage = f"_stage_{table.name}"
        names = ", ".join(table.column_names)
        updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in table.column_names if n not in table.primary_key)
        conn = self._connect_pg()
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table.name}{suffix} INCLUDING DEFAULTS) "
                "ON COMMIT DROP"
            )
            with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
            cur.execute(
                f"INSERT INTO {table.name}{suffix} ({names}) SELECT {names} FROM {stage} "
                f"ON CONFLICT ({', '.join(table.primary_key)}) DO UPDATE SET {updates}"
            )
            cur.execute(f"DROP TABLE {stage}")
