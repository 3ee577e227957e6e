"""Versioned migrations of wcsync's own tables (not the event store's, not the projections').

Each migration is a version, a name and its SQL per dialect, written out in full here once and never
edited after release: a later change is a new migration. ``apply_migrations`` applies the missing ones in
order, each in a transaction of its own together with its row in ``wcsync_schema_migrations``, so a
migration is either applied and recorded or not at all, and running it again applies nothing. On
PostgreSQL concurrent runs (two ``wcsync db migrate``, or workers starting) are serialised by a
transaction-level advisory lock; on SQLite by the database's write lock (``BEGIN IMMEDIATE``).

The tables live where the rest of wcsync's do: the SQLite file, or the PostgreSQL schema of the URL's
``?schema=`` (through the connection's search_path, as the projections' connection does).

``Connection`` is this package's connection to these tables (StoreSecrets uses it too): statements are
written once with ``%s`` placeholders and run on either backend.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from infrastructure.adapters.schema import POSTGRES, SQLITE, iso
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import StorageError, driver_errors, storage_error

if TYPE_CHECKING:
    import psycopg

Row = tuple[Any, ...]

log = structlog.get_logger("wcsync.migrations")

MIGRATIONS_TABLE = "wcsync_schema_migrations"
STORE_SECRETS_TABLE = "wcsync_store_secrets"
API_TOKENS_TABLE = "wcsync_api_tokens"
QUEUE_LEASES_TABLE = "wcsync_queue_leases"
LOCAL_JOBS_TABLE = "wcsync_local_jobs"
SCHEDULES_TABLE = "wcsync_schedules"
POSITIONS_TABLE = "wcsync_positions"
DASHBOARD_SESSIONS_TABLE = "wcsync_dashboard_sessions"

# The advisory lock that serialises migrations on PostgreSQL: (this constant, the schema's hash), so runs on
# different schemas of one database do not wait for each other.
_LOCK_KEY = zlib.crc32(MIGRATIONS_TABLE.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: Mapping[str, tuple[str, ...]]  # dialect (schema.POSTGRES / schema.SQLITE) -> its statements
    # dialect -> a script another library owns (procrastinate's schema.sql), read only when the migration is
    # applied (so the library is loaded only then) and run as it is, after ``sql``, in the same transaction.
    scripts: Mapping[str, Callable[[], str]] = field(default_factory=dict)


_CREATE_MIGRATIONS_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


def _store_secrets(binary: str) -> str:
    return (
        f"CREATE TABLE {STORE_SECRETS_TABLE} (\n"
        "  org_id TEXT NOT NULL,\n"
        "  store_id TEXT NOT NULL,\n"
        f"  nonce {binary} NOT NULL,\n"
        f"  ciphertext {binary} NOT NULL,\n"
        "  key_fingerprint TEXT NOT NULL,\n"
        "  updated_at TEXT NOT NULL,\n"
        f"  CONSTRAINT {STORE_SECRETS_TABLE}_pkey PRIMARY KEY (org_id, store_id)\n"
        ")"
    )


# Only a token's SHA-256 is kept. A revoked token keeps its row (revoked_at set): it still answers 401, and
# `tokens list` shows it revoked; a name is unique among an org's tokens that are not revoked.
_API_TOKENS = (
    f"CREATE TABLE {API_TOKENS_TABLE} (\n"
    "  token_hash TEXT NOT NULL,\n"
    "  org_id TEXT NOT NULL,\n"
    "  name TEXT NOT NULL,\n"
    "  role TEXT NOT NULL,\n"
    "  created_at TEXT NOT NULL,\n"
    "  last_used_at TEXT,\n"
    "  revoked_at TEXT,\n"
    f"  CONSTRAINT {API_TOKENS_TABLE}_pkey PRIMARY KEY (token_hash)\n"
    ")",
    f"CREATE UNIQUE INDEX {API_TOKENS_TABLE}_name ON {API_TOKENS_TABLE} (org_id, name) WHERE revoked_at IS NULL",
)


def _queue_leases(seconds: str) -> str:
    # Who processes a queue right now. heartbeat_at is epoch seconds (compared as numbers on both backends);
    # since is UTC ISO text, for people.
    return (
        f"CREATE TABLE {QUEUE_LEASES_TABLE} (\n"
        "  queue_id TEXT NOT NULL,\n"
        "  org_id TEXT NOT NULL,\n"
        "  holder TEXT NOT NULL,\n"
        "  host TEXT NOT NULL,\n"
        "  pid INTEGER NOT NULL,\n"
        "  since TEXT NOT NULL,\n"
        f"  heartbeat_at {seconds} NOT NULL,\n"
        f"  CONSTRAINT {QUEUE_LEASES_TABLE}_pkey PRIMARY KEY (queue_id)\n"
        ")"
    )


# SQLite only: the sync jobs of the one-machine mode, which procrastinate (PostgreSQL only) cannot hold. One
# row per deferred start/retry/resume: waiting -> running (holder, pid, host) -> deleted when it ends, or
# failed with why; a running job of a process that died goes back to waiting.
_LOCAL_JOBS = (
    f"CREATE TABLE {LOCAL_JOBS_TABLE} (\n"
    "  id INTEGER PRIMARY KEY AUTOINCREMENT,\n"
    "  action TEXT NOT NULL,\n"
    "  org_id TEXT NOT NULL,\n"
    "  queue_id TEXT NOT NULL,\n"
    "  actor TEXT NOT NULL,\n"
    "  store_id TEXT NOT NULL,\n"
    "  status TEXT NOT NULL,\n"
    "  attempts INTEGER NOT NULL DEFAULT 0,\n"
    "  deferred_at TEXT NOT NULL,\n"
    "  run_after REAL NOT NULL DEFAULT 0,\n"
    "  started_at TEXT,\n"
    "  holder TEXT,\n"
    "  host TEXT,\n"
    "  pid INTEGER,\n"
    "  error TEXT\n"
    ")",
    f"CREATE INDEX {LOCAL_JOBS_TABLE}_waiting ON {LOCAL_JOBS_TABLE} (status, id)",
)


def _schedules(seconds: str) -> tuple[str, ...]:
    # The periodic syncs of a store (`wcsync schedule add`): every ``every_s`` seconds or at a cron expression's
    # times (one of the two). next_due_at and last_run_at are epoch seconds (compared as numbers); a worker
    # claims a due one by moving next_due_at from the value it read (compare-and-set), so one claims it. One
    # schedule per store of an org: a second would only run the same full scan again beside the first.
    return (
        f"CREATE TABLE {SCHEDULES_TABLE} (\n"
        "  id TEXT NOT NULL,\n"
        "  org_id TEXT NOT NULL,\n"
        "  store_id TEXT NOT NULL,\n"
        "  every_s INTEGER,\n"
        "  cron TEXT,\n"
        f"  next_due_at {seconds} NOT NULL,\n"
        "  created_by TEXT NOT NULL,\n"
        "  created_at TEXT NOT NULL,\n"
        f"  last_run_at {seconds},\n"
        "  last_queue_id TEXT,\n"
        f"  CONSTRAINT {SCHEDULES_TABLE}_pkey PRIMARY KEY (id),\n"
        f"  CONSTRAINT {SCHEDULES_TABLE}_store UNIQUE (org_id, store_id)\n"
        ")",
        f"CREATE INDEX {SCHEDULES_TABLE}_due ON {SCHEDULES_TABLE} (next_due_at)",
    )


# How far a reader of the event log that writes no projection has got (the webhook deliveries' applier):
# a name, the last notification id it is done with (ahead of it lies only what it has still to do), and
# which process reads it now (``holder``, its heartbeat epoch seconds): one at a time, taken over once stale.
def _positions(seconds: str) -> tuple[str, ...]:
    return (
        f"CREATE TABLE {POSITIONS_TABLE} (\n"
        "  name TEXT NOT NULL,\n"
        "  position BIGINT NOT NULL,\n"
        "  updated_at TEXT NOT NULL,\n"
        "  holder TEXT,\n"
        f"  heartbeat_at {seconds},\n"
        f"  CONSTRAINT {POSITIONS_TABLE}_pkey PRIMARY KEY (name)\n"
        ")",
    )


# The dashboard's sign-in sessions (infrastructure/api/sessions.py): the SHA-256 of the random session id the
# cookie holds (never the id itself), the token it was opened with (its SHA-256, the tokens table's key; NULL
# for a no-auth server's session), the org and role it acts for, and its times as epoch seconds (compared as
# numbers). A signed-out session's row is deleted.
def _dashboard_sessions(seconds: str) -> tuple[str, ...]:
    return (
        f"CREATE TABLE {DASHBOARD_SESSIONS_TABLE} (\n"
        "  session_hash TEXT NOT NULL,\n"
        "  token_hash TEXT,\n"
        "  org_id TEXT NOT NULL,\n"
        "  role TEXT NOT NULL,\n"
        "  name TEXT NOT NULL,\n"
        f"  created_at {seconds} NOT NULL,\n"
        f"  last_seen_at {seconds} NOT NULL,\n"
        f"  expires_at {seconds} NOT NULL,\n"
        f"  CONSTRAINT {DASHBOARD_SESSIONS_TABLE}_pkey PRIMARY KEY (session_hash)\n"
        ")",
        f"CREATE INDEX {DASHBOARD_SESSIONS_TABLE}_expires ON {DASHBOARD_SESSIONS_TABLE} (expires_at)",
    )


def _procrastinate_schema() -> str:
    """procrastinate's own schema (its tables, types, functions and triggers, unqualified: they land in the
    URL's schema through the search_path), as the pinned release ships it (pyproject: >=3.10,<3.11). A
    later release's changes to it become a later migration of ours, from its sql/migrations files."""
    from procrastinate.schema import SchemaManager  # loaded only to migrate: it costs every CLI start ~0.1 s

    return SchemaManager.get_schema()


# In order of version, versions 1, 2, 3 ... without a gap.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "store secrets: each registered store's credentials, sealed with AES-256-GCM",
        {POSTGRES: (_store_secrets("BYTEA"),), SQLITE: (_store_secrets("BLOB"),)},
    ),
    Migration(
        2,
        "API tokens: each token's SHA-256, org, name and role",
        {POSTGRES: _API_TOKENS, SQLITE: _API_TOKENS},
    ),
    Migration(
        3,
        "queue leases: which process is processing a queue, and its last heartbeat",
        {POSTGRES: (_queue_leases("DOUBLE PRECISION"),), SQLITE: (_queue_leases("REAL"),)},
    ),
    Migration(
        4,
        "durable jobs: procrastinate's schema (jobs, workers, events, periodic defers); nothing on SQLite",
        {POSTGRES: (), SQLITE: ()},
        scripts={POSTGRES: _procrastinate_schema},
    ),
    Migration(
        5,
        "local jobs: the sync jobs of SQLite's one-machine mode (PostgreSQL keeps them in procrastinate's)",
        {POSTGRES: (), SQLITE: _LOCAL_JOBS},
    ),
    Migration(
        6,
        "schedules: each store's periodic full sync, and when it is due next",
        {POSTGRES: _schedules("DOUBLE PRECISION"), SQLITE: _schedules("REAL")},
    ),
    Migration(
        7,
        "log positions: how far the webhook deliveries' applier has applied the event log",
        {POSTGRES: _positions("DOUBLE PRECISION"), SQLITE: _positions("REAL")},
    ),
    Migration(
        8,
        "dashboard sessions: each signed-in browser's session (its id's SHA-256), token, org, role and expiry",
        {POSTGRES: _dashboard_sessions("DOUBLE PRECISION"), SQLITE: _dashboard_sessions("REAL")},
    ),
)


# ----- the connection ------------------------------------------------------------------------------------


def _missing_table(error: BaseException) -> bool:
    if getattr(error, "sqlstate", None) == "42P01":  # PostgreSQL's undefined_table
        return True
    return isinstance(error, sqlite3.OperationalError) and "no such table" in str(error)


@contextmanager
def storage_errors(database: DatabaseConfig) -> Iterator[None]:
    """A database library's error inside as a StorageError (exit 4) of one line; a table that is not
    there yet as the advice to migrate."""
    try:
        yield
    except driver_errors() as error:
        if _missing_table(error):
            raise StorageError(
                f"the database {database.display} lacks wcsync's tables: run `wcsync db migrate` once"
            ) from None
        raise storage_error(error, f"the database {database.display}") from None


class Connection:
    """One connection to the database of ``database``, opened at the first statement. Not thread-safe: its
    owner serialises its use. ``create``: a SQLite file (and its directory) that does not exist is created;
    otherwise it is a StorageError, and nothing is created."""

    def __init__(self, database: DatabaseConfig, create: bool = False) -> None:
        self.database = database
        self.dialect = POSTGRES if database.backend == "postgres" else SQLITE
        self.create = create
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Row] | None = None
        self._in_transaction = False

    def __repr__(self) -> str:
        return f"Connection({self.database.display})"

    def _sqlite_connection(self) -> sqlite3.Connection:
        if self._sqlite is None:
            path = self.database.sqlite_path
            assert path is not None
            if not path.exists():
                if not self.create:
                    raise StorageError(
                        f"the database {self.database.display} does not exist: run `wcsync db migrate` once"
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
            try:
                # No journal-mode change here: switching to WAL takes an exclusive lock without waiting,
                # so concurrent first runs failed "database is locked". The event store, which always
                # opens the file first in `migrate` and `open_services`, sets WAL (it persists).
                conn.execute("PRAGMA busy_timeout=30000")
            except BaseException:
                conn.close()
                raise
            self._sqlite = conn
        return self._sqlite

    def _pg_connection(self) -> psycopg.Connection[Row]:
        if self._pg is None or self._pg.closed or self._pg.broken:
            import psycopg  # PostgreSQL only: a command on SQLite never pays for its import

            self._pg = psycopg.connect(**self.database.pg_connect_kwargs(), autocommit=True)
        return self._pg

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement (``%s`` placeholders) and return its rows (none for a statement without)."""
        if self.dialect == POSTGRES:
            cursor = self._pg_connection().execute(statement.encode(), params)
            return list(cursor.fetchall()) if cursor.description is not None else []
        sqlite_cursor = self._sqlite_connection().execute(statement.replace("%s", "?"), tuple(params))
        return list(sqlite_cursor.fetchall())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: committed when the block ends, rolled back when it raises. On SQLite it takes
        the write lock at once (BEGIN IMMEDIATE), so a read-then-write inside cannot be overtaken."""
        if self._in_transaction:
            raise RuntimeError("transactions of a Connection do not nest")
        self._in_transaction = True
        try:
            if self.dialect == POSTGRES:
                with self._pg_connection().transaction():
                    yield
                return
            conn = self._sqlite_connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back itself (a full disk, say)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            self._in_transaction = False

    def execute_script(self, script: str) -> None:
        """Run a script of several statements as it is: no placeholders (a ``%`` in it is a ``%``). PostgreSQL
        only: SQLite's executescript would commit the migration's transaction half-way."""
        if self.dialect != POSTGRES:
            raise RuntimeError("a migration's script runs on PostgreSQL only")
        self._pg_connection().execute(script.encode())

    def table_exists(self, name: str) -> bool:
        if self.dialect == POSTGRES:
            rows = self.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        else:
            rows = self.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = %s", (name,)
            )
        return bool(rows[0][0])

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            self._pg.close()
            self._pg = None


# ----- migrating -----------------------------------------------------------------------------------------


def _applied(conn: Connection) -> set[int]:
    if not conn.table_exists(MIGRATIONS_TABLE):
        return set()
    return {int(row[0]) for row in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}


def _missing(applied: set[int]) -> list[Migration]:
    return [m for m in MIGRATIONS if m.version not in applied]


def _lock(conn: Connection) -> None:
    """Inside a transaction on PostgreSQL: wait for any other migration run on this schema to end."""
    if conn.dialect == POSTGRES:
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(current_schema()))", (_LOCK_KEY,))


def _ensure_schema(conn: Connection) -> None:
    """On PostgreSQL, the URL's schema, created when the search_path names none that exists (only then:
    CREATE SCHEMA needs a privilege a migrating user may lack where the schema is already there)."""
    if conn.dialect == POSTGRES and conn.execute("SELECT current_schema()")[0][0] is None:
        # pg_schema is a plain identifier (DatabaseConfig checks it), written unquoted as the search_path is.
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {conn.database.pg_schema}")


def apply_migrations(database: DatabaseConfig) -> list[int]:
    """Apply the migrations the database lacks, in order of version, each in its own transaction with its
    row in wcsync_schema_migrations. Returns the versions applied by this call ([] when current). Safe to run
    again and from several processes at once. A database error is a StorageError (exit 4)."""
    conn = Connection(database, create=True)
    applied_now: list[int] = []
    try:
        with storage_errors(database):
            if not _missing(_applied(conn)):  # the common case, without any lock
                return []
            with conn.transaction():
                _lock(conn)
                _ensure_schema(conn)
                conn.execute(_CREATE_MIGRATIONS_TABLE)
            for migration in MIGRATIONS:
                with conn.transaction():
                    _lock(conn)
                    if migration.version in _applied(conn):  # another run was first
                        continue
                    for statement in migration.sql[conn.dialect]:
                        conn.execute(statement)
                    script = migration.scripts.get(conn.dialect)
                    if script is not None:
                        conn.execute_script(script())
                    conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, iso(datetime.now(UTC))),
                    )
                applied_now.append(migration.version)
                log.info("migration applied", version=migration.version, migration=migration.name)
    finally:
        conn.close()
    return applied_now


def pending_migrations(database: DatabaseConfig) -> list[int]:
    """The versions the database lacks, in order (every one for a SQLite file that does not exist yet).
    Creates nothing. A database error (unreachable, refused) is a StorageError (exit 4)."""
    if database.backend != "postgres":
        assert database.sqlite_path is not None
        if not database.sqlite_path.exists():
            return [m.version for m in MIGRATIONS]
    conn = Connection(database)
    try:
        with storage_errors(database):
            return [m.version for m in _missing(_applied(conn))]
    finally:
        conn.close()


def applied_migrations(database: DatabaseConfig) -> list[tuple[int, str, str]]:
    """The rows of wcsync_schema_migrations (version, name, applied_at), in order of version."""
    conn = Connection(database)
    try:
        with storage_errors(database):
            if not conn.table_exists(MIGRATIONS_TABLE):
                return []
            rows = conn.execute(f"SELECT version, name, applied_at FROM {MIGRATIONS_TABLE} ORDER BY version")
            return [(int(v), str(n), str(a)) for v, n, a in rows]
    finally:
        conn.close()
