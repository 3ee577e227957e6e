"""Database errors become one StorageError line: the cause in the database's own words, then what to do.

The SQLite full disk is also met for real in tests/e2e/test_cli_errors.py (a tiny tmpfs); PostgreSQL's is
not (it would need a server of its own on a tiny filesystem), so its exact messages are checked here.
"""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from eventsourcing.persistence import OperationalError

from infrastructure.adapters.eventstore import retry_storage
from infrastructure.support.errors import (
    StorageError,
    is_disk_full,
    is_permanent,
    server_message,
    storage_error,
)


def wrapped(error: Exception) -> OperationalError:
    """As eventsourcing raises it: its own error, caused by the driver's."""
    try:
        raise OperationalError(str(error)) from error
    except OperationalError as outer:
        return outer


PG_DISK_FULL = [
    psycopg.errors.DiskFull('could not extend file "base/16384/16397": No space left on device'),
    psycopg.OperationalError('could not write to file "pg_wal/xlogtemp.4242": No space left on device'),
    psycopg.errors.DiskFull(
        'could not extend file "base/5/1259" with FileFallocate(): No space left on device'
    ),
]


@pytest.mark.parametrize(
    "error",
    [sqlite3.OperationalError("database or disk is full"), *PG_DISK_FULL],
    ids=["sqlite", "pg DiskFull", "pg WAL", "pg fallocate"],
)
def test_a_full_disk_is_named_with_what_to_do_and_not_retried(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert is_disk_full(error) and is_disk_full(wrapped(error)) and is_permanent(wrapped(error))
    converted = storage_error(wrapped(error), "the database sqlite:///x.db")
    assert converted.exit_code == 4
    text = str(converted)
    assert text.startswith("the disk holding the database sqlite:///x.db is full (")
    assert "free some space" in text and "wcsync resume" in text and "\n" not in text

    pauses: list[float] = []
    monkeypatch.setattr("infrastructure.adapters.eventstore.time.sleep", pauses.append)
    calls: list[int] = []

    def save() -> None:
        calls.append(1)
        raise wrapped(error)

    with pytest.raises(StorageError, match="is full"):
        retry_storage(save)
    assert calls == [1] and pauses == []  # waiting does not free the disk


@pytest.mark.parametrize(
    ("message", "cause", "advice"),
    [
        (
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
            'password authentication failed for user "app"',
            'password authentication failed for user "app"',
            "check the user, password and database name",
        ),
        (
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '
            'role "nobody" does not exist',
            'role "nobody" does not exist',
            "check the user, password and database name",
        ),
        (
            'connection failed: connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?",
            "Connection refused",
            "check that the database server is running",
        ),
        (
            "connection failed: Multiple connection attempts failed. All failures were:\n"
            "- host: 'localhost', port: '1', hostaddr: '::1': connection failed: connection to server at "
            '"::1", port 1 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n"
            "- host: 'localhost', port: '1', hostaddr: '127.0.0.1': connection failed: connection to server "
            'at "127.0.0.1", port 1 failed: Connection refused',
            "Connection refused",
            "check that the database server is running",
        ),
    ],
    ids=["wrong password", "unknown role", "refused", "refused on two addresses"],
)
def test_a_postgres_connection_failure_says_the_servers_first_line(
    message: str, cause: str, advice: str
) -> None:
    error = psycopg.OperationalError(message)
    assert server_message(error) == cause
    text = str(storage_error(error, "the database postgresql://app:***@db/x"))
    assert cause in text and advice in text and "\n" not in text


def test_sqlite_messages_get_their_own_advice() -> None:
    readonly = storage_error(sqlite3.OperationalError("attempt to write a readonly database"))
    assert "is read-only" in str(readonly) and "writable" in str(readonly)
    locked = storage_error(wrapped(sqlite3.OperationalError("database is locked")), attempts=4)
    assert str(locked).startswith("the database failed 4 times: database is locked; another wcsync")
    not_db = storage_error(sqlite3.DatabaseError("file is not a database"))
    assert "is not a wcsync database or is damaged" in str(not_db)
