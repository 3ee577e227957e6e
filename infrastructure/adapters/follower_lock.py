"""One live follower per PostgreSQL schema at a time, however many processes want one.

Every `wcsync worker`, `wcsync serve` and CLI sync on PostgreSQL starts a live follower process (the
read models follow the log while it writes). Several of them catching up the same projections gain
nothing (the runner lets only one batch of each projection win) and cost a follower's CPU each: measured,
three workers' followers used 3x one's CPU for the same events on two cores. So a follower first takes a
session-level advisory lock of the schema; the others wait on stand-by, looking again every
STANDBY_POLL_S, and take over when its holder ends (its connection closes and PostgreSQL releases the
lock, a killed process included).
"""

from __future__ import annotations

import threading
import zlib

import psycopg
import structlog

from infrastructure.support.config import DatabaseConfig

log = structlog.get_logger("wcsync.projections")

STANDBY_POLL_S = 1.0


def _key(database: DatabaseConfig) -> int:
    return zlib.crc32(f"wcsync live follower:{database.pg_schema}".encode()) & 0x7FFFFFFF


class FollowerLock:
    """The schema's follower lock (PostgreSQL): ``wait`` until it is ours or ``stop`` is set."""

    def __init__(self, database: DatabaseConfig) -> None:
        self.database = database
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def wait(self, stop: threading.Event, poll_s: float = STANDBY_POLL_S) -> bool:
        """True once the lock is held; False if ``stop`` was set first. A database that cannot be reached
        is tried again at the next poll (the follower's own retries take over once it runs)."""
        announced = False
        while not stop.is_set():
            if self._try():
                return True
            if not announced:
                log.info("projections.follower_standby", reason="another process follows this schema")
                announced = True
            stop.wait(poll_s)
        return False

    def _try(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(**self.database.pg_connect_kwargs(), autocommit=True)
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (_key(self.database),)).fetchone()
        except psycopg.Error:
            self.release()
            return False
        return bool(row and row[0])

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
