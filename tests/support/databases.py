"""SQLite and PostgreSQL databases for tests: ``database_url`` runs a test once per backend; ``postgres_url``
gives a fresh PostgreSQL database cloned from a per-session template; ``sqlite_url`` a file under the test's
tmp_path. The server is started by :mod:`tests.support.pgserver` unless ``WCSYNC_TEST_DATABASE_URL`` names
one."""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

from tests.support import pgserver
from tests.support.pgserver import database_url_for

# Read once, at import (by tests/conftest.py), before the per-test environment scrub removes every
# WCSYNC_* variable.
EXTERNAL_DATABASE_URL = os.environ.get(pgserver.EXTERNAL_URL_VARIABLE, "")

# A test that uses any of these needs a PostgreSQL server (tests/conftest.py marks it `postgres`).
POSTGRES_FIXTURES = frozenset(
    {"pg_server", "pg_instance", "pg_admin", "pg_dropper", "pg_template", "postgres_url"}
)


class AdminConnection:
    """One autocommit connection for CREATE/DROP DATABASE, reopened if a test broke it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[TupleRow] | None = None

    def _connection(self) -> psycopg.Connection[TupleRow]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._conn

    def execute(self, statement: sql.Composable) -> None:
        self._connection().execute(statement)

    @property
    def server_version(self) -> int:
        return self._connection().info.server_version

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class DatabaseDropper:
    """Drops per-test databases on a thread of its own.

    DROP DATABASE waits for the test's just-closed connections to exit, polling every 100 ms: done inline
    that is most of a test's database overhead. The next test never sees the old database either way.
    """

    def __init__(self, url: str) -> None:
        self._admin = AdminConnection(url)
        self._names: queue.Queue[str | None] = queue.Queue()
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="pg-database-dropper", daemon=True)
        self._thread.start()

    def drop(self, name: str) -> None:
        self._names.put(name)

    def _run(self) -> None:
        while (name := self._names.get()) is not None:
            try:
                self._admin.execute(drop_database(name))
            except psycopg.Error as error:
                self.errors.append(f"{name}: {error}")

    def close(self) -> None:
        """Wait for every queued drop (before the server stops)."""
        self._names.put(None)
        self._thread.join(timeout=120)
        self._admin.close()


def drop_database(name: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


@pytest.fixture(scope="session")
def pg_instance() -> Iterator[pgserver.PostgresServer | None]:
    """The server this run started, or None when ``WCSYNC_TEST_DATABASE_URL`` names one."""
    if EXTERNAL_DATABASE_URL:
        yield None
        return
    with pgserver.running_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_server(pg_instance: pgserver.PostgresServer | None) -> str:
    """URL of an admin database on the test server (superuser, or a user allowed to CREATE DATABASE)."""
    return pg_instance.url() if pg_instance is not None else EXTERNAL_DATABASE_URL


@pytest.fixture(scope="session")
def pg_admin(pg_server: str) -> Iterator[AdminConnection]:
    admin = AdminConnection(pg_server)
    yield admin
    admin.close()


@pytest.fixture(scope="session")
def pg_dropper(pg_server: str) -> Iterator[DatabaseDropper]:
    dropper = DatabaseDropper(pg_server)
    yield dropper
    dropper.close()
    assert not dropper.errors, f"test databases left behind: {dropper.errors}"


@pytest.fixture(scope="session")
def pg_template(pg_admin: AdminConnection) -> Iterator[str]:
    """An empty database that per-test databases are cloned from; unique, so runs can share a server."""
    name = f"wcsync_tpl_{uuid.uuid4().hex[:12]}"
    pg_admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    pg_admin.execute(drop_database(name))


@pytest.fixture
def postgres_url(
    pg_server: str, pg_admin: AdminConnection, pg_template: str, pg_dropper: DatabaseDropper
) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test only, dropped afterwards."""
    with cloned_database(pg_server, pg_admin, pg_template, pg_dropper) as url:
        yield url


@contextmanager
def cloned_database(
    pg_server: str, pg_admin: AdminConnection, pg_template: str, pg_dropper: DatabaseDropper
) -> Iterator[str]:
    """A fresh, empty PostgreSQL database cloned from the session's template, dropped at the end (for a
    fixture of a wider scope than ``postgres_url``'s: a module's server, say)."""
    name = f"t_{uuid.uuid4().hex}"
    create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
        sql.Identifier(name), sql.Identifier(pg_template)
    )
    if pg_admin.server_version >= 150000:
        # A file copy of a tiny template beats WAL-logging every block (about 2x on PostgreSQL 15).
        create += sql.SQL(" STRATEGY FILE_COPY")
    pg_admin.execute(create)
    try:
        yield database_url_for(pg_server, name)
    finally:
        pg_dropper.drop(name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/wcsync.db"


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
    ids=["sqlite", "postgres"],
)
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on each backend in turn: the test runs once with SQLite, once with PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url
