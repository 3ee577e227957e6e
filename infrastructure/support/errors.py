"""The infrastructure's errors (under domain.errors.WcsyncError, the one root), the one conversion of
database library errors into them, and how an error line quotes user input."""

from __future__ import annotations

import re
import sqlite3
import sys
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from domain.errors import EXIT_DATABASE, EXIT_USAGE, WcsyncError


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line (library messages go on with detail and hints), or its
    type's name when it has none."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


QUOTED_LENGTH = 60  # the most of one piece of user input an error line echoes


def quoted(text: str, limit: int = QUOTED_LENGTH) -> str:
    """User input as an error line shows it: in quotes, every control or non-printable character escaped
    (repr's \\x1b, \\n, \\udcff: a terminal never receives the raw character), and at most ``limit``
    characters of it, the middle cut out (a path keeps its file name)."""
    return repr(shortened(text, limit))


def shortened(text: str, limit: int = QUOTED_LENGTH) -> str:
    """At most ``limit`` characters of ``text``, the middle cut out."""
    if len(text) <= limit:
        return text
    keep = (limit - 1) // 2
    return f"{text[:keep]}…{text[-keep:]}"


def printable(text: str) -> str:
    """A line for the terminal: every control or non-printable character (ESC, a newline, an undecodable
    byte) written as its escape (\\x1b, \\n, \\udcff), whatever put it in the message."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigurationError(WcsyncError):
    """The configuration is incomplete or invalid; the message says which setting and how to fix it."""

    exit_code = EXIT_USAGE
    http_status = 500
    error_code = "server_misconfigured"


class QueueNotFoundError(WcsyncError):
    """No such queue for this org (another org's queue is the same answer)."""

    exit_code = EXIT_USAGE
    http_status = 404
    error_code = "queue_not_found"


class QueueBusyError(WcsyncError):
    """Another run is processing the queue (in this process or another, on any machine: whoever holds its
    lease, adapters/leases.py): no second run of it and no force-done until that run ends. Names the holder
    and since when, so a person knows whom to wait for; ``org_id`` is the org of the run holding it."""

    exit_code = EXIT_USAGE
    http_status = 409
    error_code = "queue_busy"

    def __init__(
        self, queue_id: UUID, holder: str, since: datetime, stale_after_s: float, org_id: str | None = None
    ) -> None:
        self.queue_id = queue_id
        self.holder = printable(shortened(holder, 120))  # a worker's own words: never raw to a terminal
        self.since = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.org_id = org_id
        super().__init__(
            f"queue {queue_id} is being processed by {self.holder} since {self.since}; wait for it to finish "
            f"(a lease left by a process that died is taken over after {stale_after_s:g} s)"
        )

    def http_details(self) -> dict[str, Any]:
        return {"holder": self.holder, "since": self.since}


class StorageError(WcsyncError):
    """The database could not be reached or refused the operation."""

    exit_code = EXIT_DATABASE
    http_status = 503
    error_code = "storage_unavailable"


# ----- one conversion of database library errors --------------------------------------------------------

# How SQLite and PostgreSQL say that the disk is full (SQLITE_FULL; SQLSTATE 53100 and the OS's ENOSPC).
_DISK_FULL = (
    "database or disk is full",
    "no space left on device",
    "could not extend file",
    "disk full",
    "disk quota exceeded",
)
_READ_ONLY = ("attempt to write a readonly database", "read-only file system", "readonly database")
_LOGIN_REFUSED = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "password is required",
    "no password supplied",
    "permission denied for database",
)
_UNREACHABLE = (
    "connection refused",
    "could not translate host name",
    "name or service not known",
    "temporary failure in name resolution",
    "no route to host",
    "network is unreachable",
    "timeout expired",
    "could not connect",
    "server closed the connection",
    "the database system is starting up",
    "the database system is shutting down",
)


def loaded_errors(*names: str) -> tuple[type[BaseException], ...]:
    """The exception classes named ``"module:Class"`` whose module is already imported, for an except
    clause or isinstance: ``except (sqlite3.Error, *loaded_errors("psycopg:Error")):``. A library that was
    never imported cannot have raised, and importing psycopg only to name its errors would cost every
    SQLite-only command ~50 ms (``wcsync status``). An except clause evaluates its expression when an
    exception reaches it, so a function call there sees what is loaded by then."""
    found: list[type[BaseException]] = []
    for name in names:
        module, _, attribute = name.partition(":")
        kind = getattr(sys.modules.get(module), attribute, None)  # None too while the module is half imported
        if isinstance(kind, type) and issubclass(kind, BaseException):
            found.append(kind)
    return tuple(found)


def driver_errors() -> tuple[type[BaseException], ...]:
    """What the database drivers raise, for an except clause (``except driver_errors() as error:``):
    sqlite3's, and psycopg's once it is loaded (only PostgreSQL loads it)."""
    return (sqlite3.Error, *loaded_errors("psycopg:Error"))


def database_errors() -> tuple[type[BaseException], ...]:
    """What the database libraries raise: the drivers', and eventsourcing's persistence errors (under the
    event store) once loaded. The composition root and the services turn each into one StorageError
    (storage_error)."""
    return (*driver_errors(), *loaded_errors("eventsourcing.persistence:PersistenceError"))


def storage_failures() -> tuple[type[BaseException], ...]:
    """A database library's error or one already turned into a StorageError, for an except clause: what a
    write or a run stops on (the next step, batch or request tries again)."""
    return (StorageError, *database_errors())


def _chain(error: BaseException) -> list[BaseException]:
    """The error and what caused it (eventsourcing wraps the driver's error), outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _texts(error: BaseException) -> str:
    return " ".join(str(e) for e in _chain(error)).lower()


def is_disk_full(error: BaseException) -> bool:
    """Whether a database error says the disk (or the quota) is full, on SQLite or PostgreSQL."""
    for e in _chain(error):
        if getattr(e, "sqlstate", None) in ("53100", "53400") or getattr(e, "sqlite_errorcode", None) == 13:
            return True
    text = _texts(error)
    return any(marker in text for marker in _DISK_FULL)


# PostgreSQL refusing a login for a role or a database it does not have (not "relation ... does not exist").
_NO_SUCH_LOGIN = re.compile(r'\b(role|database) "[^"]*" does not exist')


def _kind(error: BaseException) -> str | None:
    """What a database error is, for the cases that are not worth retrying: "disk_full", "read_only",
    "login_refused"; None for the others."""
    if is_disk_full(error):
        return "disk_full"
    text = _texts(error)
    if any(marker in text for marker in _READ_ONLY):
        return "read_only"
    if any(marker in text for marker in _LOGIN_REFUSED) or _NO_SUCH_LOGIN.search(text):
        return "login_refused"
    return None


def is_permanent(error: BaseException) -> bool:
    """Whether retrying cannot help: a full disk, a read-only file, refused credentials."""
    return _kind(error) is not None


def server_message(error: BaseException) -> str:
    """The database's own first line: for PostgreSQL without libpq's 'connection failed: connection to
    server at "h", port p failed: FATAL:' preamble, e.g. 'password authentication failed for user "x"'."""
    for e in _chain(error):
        for line in str(e).strip().splitlines():
            cause = line.strip().lstrip("- ")
            while True:
                found = re.search(r"\bfailed:\s*(.*)$", cause)
                if not found or not found.group(1).strip():
                    break
                cause = found.group(1).strip()
            cause = re.sub(r"^(FATAL|ERROR|PANIC):\s+", "", cause).strip()
            if cause and not cause.lower().startswith(
                ("is the server running", "multiple connection attempts")
            ):
                return cause
    return first_line(error)


def storage_error(error: BaseException, where: str = "the database", attempts: int = 0) -> StorageError:
    """A database library's error (sqlite3, psycopg, eventsourcing's) as one line: the cause in the
    database's own words, then what to do. ``where`` names the database (its display URL or path);
    ``attempts`` says how often a transient error was tried."""
    cause = server_message(error)
    text = _texts(error)
    kind = _kind(error)
    url = "--database-url / WCSYNC_DATABASE_URL"
    if kind == "disk_full":
        return StorageError(
            f"the disk holding {where} is full ({cause}); free some space, then run the command again "
            "(a sync that stopped continues with `wcsync resume QUEUE_ID`; `wcsync queues` lists them)"
        )
    if kind == "read_only":
        return StorageError(
            f"{where} is read-only ({cause}); make the file and its directory writable, or choose another "
            f"path with {url}"
        )
    if kind == "login_refused":
        return StorageError(
            f"{where} refused the connection: {cause}; check the user, password and database name in {url}"
        )
    if "unable to open database file" in text:
        return StorageError(
            f"cannot open {where} ({cause}); check that its directory exists and is writable, or choose "
            f"another path with {url}"
        )
    if "file is not a database" in text or "database disk image is malformed" in text:
        return StorageError(
            f"{where} is not a wcsync database or is damaged ({cause}); check the path in {url}"
        )
    what = f"failed {attempts} times" if attempts > 1 else "failed"
    if any(marker in text for marker in _UNREACHABLE):
        todo = f"check that the database server is running and that {url} names its host and port"
        if attempts <= 1:
            return StorageError(f"cannot reach {where}: {cause}; {todo}")
    elif "database is locked" in text or "database table is locked" in text:
        todo = "another wcsync command holds the write lock: try again when it ends"
    else:
        todo = "check the database, then run the command again"
    return StorageError(f"{where} {what}: {cause}; {todo}")
