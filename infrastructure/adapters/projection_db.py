"""The projections' own connection to the events' database: SQLite (same file) or PostgreSQL (same schema).

Statements are written once with ``%s`` placeholders and run on either backend. Values cross this boundary
as Python objects (UUID, aware datetime, dict, bool) and are converted per column kind here, so projection
code never sees a backend's representation.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import orjson
import structlog

from domain.errors import WcsyncError
from infrastructure.adapters.schema import (
    BIGINT,
    BOOL,
    INT,
    JSON,
    NUL_ESCAPE,
    POSTGRES,
    SQLITE,
    TEXT,
    TS,
    UUID_,
    Table,
    as_uuid,
)
from infrastructure.adapters.schema import iso as iso  # the projections' form of a time (queries, quarantine)
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import loaded_errors

if TYPE_CHECKING:
    import psycopg

# psycopg is imported by the PostgreSQL branches that use it: a command on SQLite never loads it.

Row = tuple[Any, ...]

log = structlog.get_logger("wcsync.projections")


def connection_errors() -> tuple[type[BaseException], ...]:
    """Errors after which the connection is thrown away and opened again (follow() backs off and retries),
    for an except clause or isinstance: SQLite's, and psycopg's once it is loaded."""
    return (*_pg_connection_errors(), sqlite3.OperationalError)


def _pg_connection_errors() -> tuple[type[BaseException], ...]:
    return loaded_errors("psycopg:OperationalError", "psycopg:InterfaceError")


SQLITE_MAX_VARIABLES = 900  # well under every SQLite build's limit


class ConcurrentUpdate(WcsyncError):
    """Another runner moved a tracking position between our read and our lock: read again."""


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:  # what orjson refuses (integers past 64 bits, odd keys) the stdlib still writes
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


def _pg_encode() -> dict[str, Callable[[Any], Any]]:
    from psycopg.types.json import Jsonb

    return {JSON: _opt(Jsonb)}


_PG_DECODE: dict[str, Callable[[Any], Any]] = {}

# Rows are written to PostgreSQL with COPY in binary format, typed per column: psycopg's C dumpers format
# them (measured on 20,000 customer rows: 8.9 us a row including the server's work, against 24 us for COPY
# text formatted in Python). Reads of a batch's rows (``load``) parse COPY text, the fastest way back.
_PG_COPY_TYPES = {
    TEXT: "text",
    INT: "int4",
    BIGINT: "int8",
    BOOL: "bool",
    UUID_: "uuid",
    TS: "timestamptz",
    JSON: "jsonb",
}
_COPY_UNESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_COPY_ESCAPED = re.compile(r"\\(.)")
NULL = "\\N"


def _pg_text(value: Any) -> Any:
    """A text value as PostgreSQL can store it (no NUL), anything else as it is."""
    return _without_nul(value) if value.__class__ is str and NUL in value else value


# Kinds whose converted values repeat within a batch (a queue id, an event's timestamp): converted once.
_MEMO_KINDS = frozenset({UUID_, TS})


def _json_bytes(value: Any) -> bytes:
    """JSON for a jsonb column (jsonb keeps its own key order, so keys need no sorting here)."""
    try:
        data = orjson.dumps(value)
    except TypeError:  # what orjson refuses (integers past 64 bits, odd keys) the stdlib still writes
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")
    return _NUL_IN_JSON.sub(rb"\1\\ufffd", data) if NUL_ESCAPE in data else data


# PostgreSQL stores no NUL character, in text or jsonb: one from a store (a customer's name, an error message
# quoting it) would fail its whole batch, and the projection would stop there for good. On PostgreSQL a NUL
# is written as U+FFFD, the replacement character (SQLite keeps it). In JSON: a \u0000 escape after an even
# number of backslashes (after an odd number, it is the text "\u0000" itself).
NUL = "\x00"
REPLACEMENT = "\ufffd"
_NUL_IN_JSON = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


def _without_nul(value: str) -> str:
    return value.replace(NUL, REPLACEMENT) if NUL in value else value


def _uncopy_text(text: str) -> str:
    if "\\" not in text:
        return text
    return _COPY_ESCAPED.sub(lambda m: _COPY_UNESCAPES.get(m.group(1), m.group(1)), text)


_COPY_PARSE: dict[str, Callable[[str], Any]] = {
    TEXT: _uncopy_text,
    INT: int,
    BIGINT: int,
    BOOL: lambda text: text == "t",
    UUID_: UUID,
    TS: datetime.fromisoformat,
    JSON: lambda text: json.loads(_uncopy_text(text)),
}


class Database:
    """One connection, used under a lock (a runner may follow in one thread and answer queries in another)."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.dialect = POSTGRES if config.backend == "postgres" else SQLITE
        self.lock = threading.RLock()
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Row] | None = None
        self._stages: set[str] = set()
        self._in_transaction = False
        encode = _pg_encode() if self.dialect == POSTGRES else _SQLITE_ENCODE
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
            import psycopg
            from psycopg.types.json import set_json_dumps

            self._stages.clear()  # temporary tables die with their connection
            self._pg = psycopg.connect(**self.config.pg_connect_kwargs(), autocommit=True)
            set_json_dumps(_json_bytes, context=self._pg)
        return self._pg

    def reset(self) -> None:
        """Forget the connection (after it broke); the next statement opens a new one."""
        with self.lock:
            self.close()

    def close(self) -> None:
        with self.lock:
            self._stages.clear()
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
                self._in_transaction = True
                try:
                    with self._connect_pg().transaction():
                        yield self
                except BaseException:
                    self._stages.clear()  # a staging table created in the failed transaction is gone
                    raise
                finally:
                    self._in_transaction = False

    @contextmanager
    def savepoint(self) -> Iterator[Database]:
        """A savepoint inside ``transaction()``: an exception rolls back what the block wrote (and only that),
        then goes on up; the transaction stays usable (on PostgreSQL too, where an error aborts it)."""
        with self.lock:
            assert self.dialect == POSTGRES or self._connect_sqlite().in_transaction, "no transaction"
            stages = set(self._stages)
            try:
                if self.dialect == SQLITE:
                    conn = self._connect_sqlite()
                    conn.execute("SAVEPOINT wcsync_apply")
                    try:
                        yield self
                    except BaseException:
                        conn.execute("ROLLBACK TO wcsync_apply")
                        conn.execute("RELEASE wcsync_apply")
                        raise
                    conn.execute("RELEASE wcsync_apply")
                else:
                    assert self._in_transaction, "no transaction"
                    with self._connect_pg().transaction():
                        yield self
            except BaseException:
                self._stages &= stages  # a staging table created under the savepoint went with it
                raise

    @contextmanager
    def reading(self) -> Iterator[Database]:
        with self.lock:
            yield self

    # ----- statements ----------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self.dialect == POSTGRES else statement.replace("%s", "?")

    def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        if self.dialect == SQLITE:
            return self._connect_sqlite().execute(self._sql(statement), params).rowcount
        with self._connect_pg().cursor() as cur:
            cur.execute(statement, params)
            return cur.rowcount

    def fetchall(self, statement: str, params: Sequence[Any] = (), binary: bool = False) -> list[Row]:
        """``binary``: PostgreSQL sends values in binary (bytea as raw bytes rather than hex text to decode)."""
        if self.dialect == SQLITE:
            return self._connect_sqlite().execute(self._sql(statement), params).fetchall()
        conn = self._connect_pg()
        try:
            if binary:
                with conn.cursor(binary=True) as cur:
                    return cur.execute(statement, params).fetchall()
            return conn.execute(statement, params).fetchall()
        except _pg_connection_errors():
            # A read outside a transaction on a connection that went away (server restart, terminated
            # session) is simply tried once more on a new connection.
            if not conn.broken or self._in_transaction:
                raise
            log.warning("projections.connection_lost", retrying=True)
            return self._connect_pg().execute(statement, params).fetchall()

    def executemany(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        if self.dialect == SQLITE:
            self._connect_sqlite().executemany(self._sql(statement), rows)
        else:
            with self._connect_pg().cursor() as cur:
                cur.executemany(statement, rows)

    def table_exists(self, name: str) -> bool:
        if self.dialect == POSTGRES:
            return self.fetchall("SELECT to_regclass(%s)", [name])[0][0] is not None
        return bool(self.fetchall("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s", [name]))

    def in_clause(self, column: str, values: Sequence[Any], kind: str) -> Iterator[tuple[str, list[Any]]]:
        """``column IN (...)`` conditions with their parameters, chunked where the backend needs it."""
        encode = self._encode.get(kind, _identity)
        if self.dialect == POSTGRES:
            # Typed as the column: psycopg sends a list of small integers as int4[], and a bigint column
            # compared with int4 elements is filtered element by element, never hashed (measured: 10.5 s
            # to find 50,000 lines among 100,000, against 20 ms as bigint[]).
            yield f"{column} = ANY(%s::{_PG_COPY_TYPES.get(kind, kind)}[])", [[encode(v) for v in values]]
            return
        for start in range(0, len(values), SQLITE_MAX_VARIABLES):
            chunk = [encode(v) for v in values[start : start + SQLITE_MAX_VARIABLES]]
            yield f"{column} IN ({', '.join(['%s'] * len(chunk))})", chunk

    @contextmanager
    def pg_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """PostgreSQL: this database's connection, held for the block (the lock), for statements written
        by another adapter on a connection (eventlog.select_notifications)."""
        assert self.dialect == POSTGRES
        with self.lock:
            yield self._connect_pg()

    # ----- values --------------------------------------------------------------------------------------

    def encoder(self, kinds: Sequence[str]) -> Callable[[Sequence[Any]], Row]:
        """A function converting a row of Python values for this backend (one per batch: it memoises)."""
        funcs = [(i, self._encode[k], k in _MEMO_KINDS) for i, k in enumerate(kinds) if k in self._encode]
        memo: dict[Any, Any] = {}

        def encode(values: Sequence[Any]) -> Row:
            out = list(values)
            for i, func, memoised in funcs:
                value = out[i]
                if value is None:
                    continue
                if memoised:
                    found = memo.get(value)
                    if found is None:
                        found = memo[value] = func(value)
                    out[i] = found
                else:
                    out[i] = func(value)
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
        names = table.column_names
        rows: list[dict[str, Any]] = []
        for condition, values in self.in_clause(key_column, keys, kind):
            statement = f"{table.select(suffix)} WHERE {condition}" + (f" AND {where}" if where else "")
            if self.dialect == POSTGRES:
                found = self._copy_out(statement, [*values, *params], table.kinds)
            else:
                decode = self.decoder(table.kinds)
                found = [decode(row) for row in self.fetchall(statement, [*values, *params])]
            rows.extend(dict(zip(names, row, strict=True)) for row in found)
        return rows

    def insert(self, table: Table, suffix: str, rows: Iterable[Sequence[Any]]) -> None:
        """Append rows (tuples in column order) that are new by construction: a duplicate key is an error."""
        if self.dialect == POSTGRES:
            self._copy_in(f"{table.name}{suffix}", table, rows)
            return
        encode = self.encoder(table.kinds)
        values = [encode(row) for row in rows]
        if values:
            placeholders = ", ".join(["?"] * len(table.columns))
            self.executemany(
                f"INSERT INTO {table.name}{suffix} ({', '.join(table.column_names)}) VALUES ({placeholders})",
                values,
            )

    def insert_columns(
        self, table: Table, suffix: str, same: Mapping[str, Any], each: Mapping[str, Sequence[Any]]
    ) -> None:
        """Append rows that are new by construction, given by column: ``same`` the columns every row has
        the same value in, ``each`` those with a value per row (lists of one length); every column is in one
        of the two. PostgreSQL builds the rows itself from one array per varying column (INSERT ... SELECT
        FROM unnest): no row crosses the connection or is built in Python (a re-sync's 100,000 unchanged
        lines were a dict and a COPY row each). SQLite: rows built and inserted as ``insert`` does."""
        names = table.column_names
        if set(same) | set(each) != set(names) or set(same) & set(each):
            raise ValueError(f"insert_columns: every column of {table.name} in exactly one of same/each")
        lengths = {len(values) for values in each.values()}
        if len(lengths) != 1:
            raise ValueError(f"insert_columns: the varying columns of {table.name} differ in length")
        if not lengths.pop():
            return
        if self.dialect == SQLITE:
            columns = [each.get(n) for n in names]
            fixed = [same.get(n) for n in names]
            count = len(next(iter(each.values())))
            self.insert(
                table,
                suffix,
                (
                    [col[i] if col is not None else fixed[j] for j, col in enumerate(columns)]
                    for i in range(count)
                ),
            )
            return
        kinds = dict(zip(names, table.kinds, strict=True))
        # Each varying column crosses as one text parameter that PostgreSQL splits (string_to_array): the
        # driver dumps a list element by element in Python (a 100,000-line re-sync's timestamps took 0.4 s
        # that way). Whole numbers go as they are; any other column as a dictionary: its distinct values in
        # an array and each row's 1-based place in it (a line's timestamp is its event's: a few hundred).
        selected: list[str] = []
        selected_params: list[Any] = []
        arrays: list[str] = []
        array_params: list[str] = []
        for name in names:
            pg_type = _PG_COPY_TYPES[kinds[name]]
            if name in same:
                selected.append(f"%s::{pg_type}")
                selected_params.append(_pg_text(self.value(kinds[name], same[name])))
                continue
            values = each[name]
            if kinds[name] in (INT, BIGINT) and all(type(v) is int for v in values):
                arrays.append(f"string_to_array(%s, ',')::{pg_type}[]")
                array_params.append(",".join(map(str, values)))
                selected.append(f"u.{name}")
                continue
            places: dict[Any, int] = {}
            arrays.append("string_to_array(%s, ',')::int4[]")
            array_params.append(",".join(str(places.setdefault(v, len(places) + 1)) for v in values))
            selected.append(f"(%s::{pg_type}[])[u.{name}]")
            selected_params.append([_pg_text(self.value(kinds[name], v)) for v in places])
        varying = [n for n in names if n in each]
        statement = (
            f"INSERT INTO {table.name}{suffix} ({', '.join(names)}) SELECT {', '.join(selected)} "
            f"FROM unnest({', '.join(arrays)}) AS u({', '.join(varying)})"
        )
        with self._connect_pg().cursor() as cur:
            cur.execute(statement, [*selected_params, *array_params])

    def insert_dicts(self, table: Table, suffix: str, rows: Iterable[dict[str, Any]]) -> None:
        names = table.column_names
        self.insert(table, suffix, ([row[n] for n in names] for row in rows))

    def upsert(self, table: Table, suffix: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write rows (dicts with every column) in bulk, replacing rows with the same primary key."""
        names = table.column_names
        tuples = [[row[n] for n in names] for row in rows]
        if not tuples:
            return
        if self.dialect == SQLITE:
            encode = self.encoder(table.kinds)
            self.executemany(table.upsert(suffix), [encode(row) for row in tuples])
            return
        # COPY into a staging table, then one INSERT ... SELECT ... ON CONFLICT.
        stage = self._stage(table, suffix)
        self._copy_in(stage, table, tuples)
        columns = ", ".join(names)
        updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n not in table.primary_key)
        with self._connect_pg().cursor() as cur:
            cur.execute(
                f"INSERT INTO {table.name}{suffix} ({columns}) SELECT {columns} FROM {stage} "
                f"ON CONFLICT ({', '.join(table.primary_key)}) DO UPDATE SET {updates}"
            )
            cur.execute(f"TRUNCATE {stage}")

    def update(
        self, table: Table, suffix: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        """Set ``columns`` of existing rows: each row is its primary key's values, then the columns' values.
        PostgreSQL: one statement joining the table with the rows sent as arrays (a hash join for a large
        batch, index lookups for a small one); SQLite: a statement per row."""
        if not rows:
            return
        kinds = {c.name: c.kind for c in table.columns}
        names = [*table.primary_key, *columns]
        if self.dialect == SQLITE:
            encode = self.encoder([kinds[n] for n in names])
            keys = " AND ".join(f"{n} = ?" for n in table.primary_key)
            assignments = ", ".join(f"{n} = ?" for n in columns)
            count = len(table.primary_key)
            self.executemany(
                f"UPDATE {table.name}{suffix} SET {assignments} WHERE {keys}",
                [(*values[count:], *values[:count]) for values in map(encode, rows)],
            )
            return
        # %b: the arrays travel in binary (as text, the server parsed 50,000 uuids and timestamps a batch).
        arrays = ", ".join(f"%b::{_PG_COPY_TYPES[kinds[n]]}[]" for n in names)
        assignments = ", ".join(f"{n} = u.{n}" for n in columns)
        keys = " AND ".join(f"t.{n} = u.{n}" for n in table.primary_key)
        encoders = [
            _without_nul if kinds[n] == TEXT else self._encode.get(kinds[n], _identity) for n in names
        ]
        params = [
            [None if v is None else encode(v) for v in column]
            for encode, column in zip(encoders, zip(*rows, strict=True), strict=True)
        ]
        self.execute(
            f"UPDATE {table.name}{suffix} AS t SET {assignments} "
            f"FROM unnest({arrays}) AS u({', '.join(names)}) WHERE {keys}",
            params,
        )

    def _stage(self, table: Table, suffix: str) -> str:
        # One temporary staging table per target and connection, created once (its rows never outlive
        # a transaction). Forgotten with the connection, and after a failed transaction that created it.
        stage = f"_stage_{table.name}{suffix}"
        if stage not in self._stages:
            self.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table.name}{suffix} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS"
            )
            self._stages.add(stage)
        return stage

    def _copy_in(self, target: str, table: Table, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        # A UUID may arrive as its text (an event's queue_id): the binary dumper needs the object.
        uuids = [i for i, kind in enumerate(table.kinds) if kind == UUID_]
        texts = [i for i, kind in enumerate(table.kinds) if kind == TEXT]
        memo: dict[Any, UUID] = {}
        statement = f"COPY {target} ({', '.join(table.column_names)}) FROM STDIN (FORMAT BINARY)"
        with self._connect_pg().cursor() as cur, cur.copy(statement) as copy:
            copy.set_types([_PG_COPY_TYPES[kind] for kind in table.kinds])
            for values in rows:
                row: Any = values
                for i in uuids:
                    value = row[i]
                    if value is not None and type(value) is not UUID:
                        if row is values:
                            row = list(values)
                        found = memo.get(value)
                        if found is None:
                            found = memo[value] = as_uuid(value)
                        row[i] = found
                for i in texts:
                    value = row[i]
                    if value.__class__ is str and NUL in value:
                        if row is values:
                            row = list(values)
                        row[i] = _without_nul(value)
                copy.write_row(row)

    def _copy_out(self, query: str, params: Sequence[Any], kinds: Sequence[str]) -> list[list[Any]]:
        parsers = [_COPY_PARSE[kind] for kind in kinds]
        conn = self._connect_pg()
        from psycopg import ClientCursor

        statement = ClientCursor(conn).mogrify(query, params)
        chunks: list[bytes] = []
        with conn.cursor() as cur, cur.copy(f"COPY ({statement}) TO STDOUT") as copy:
            for chunk in copy:
                chunks.append(bytes(chunk))
        lines = b"".join(chunks).decode("utf-8").split("\n")[:-1]  # every row ends with a newline
        return [
            [None if v == NULL else p(v) for p, v in zip(parsers, line.split("\t"), strict=True)]
            for line in lines
        ]
