"""Wires the adapters together: event store, projections, sync engine. The one place that does."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from eventsourcing.persistence import PersistenceError

from infrastructure.config import DatabaseConfig
from infrastructure.engine import Progress, SyncEngine
from infrastructure.errors import StorageError, storage_error
from infrastructure.eventstore import SyncApplication, require_database
from projections import ProjectionRunner
from projections import queries as projection_queries

# What a database library raises; each becomes one StorageError (infrastructure.errors.storage_error).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (PersistenceError, sqlite3.Error, psycopg.Error)

# How often the background follower looks for new events while a sync runs (the tables lag at most
# about this much plus one catch-up batch).
LIVE_POLL_S = 0.25


@dataclass
class Services:
    database: DatabaseConfig
    app: SyncApplication
    projections: ProjectionRunner
    closed: bool = field(default=False)
    _follower: threading.Thread | None = field(default=None, repr=False)

    def engine(
        self,
        org_id: str,
        actor: str = "wcsync",
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> SyncEngine:
        return SyncEngine(
            self.app,
            org_id,
            actor=actor,
            on_saved=self._saved,
            known_customer_ids=lambda org, store: projection_queries.known_customer_ids(
                self.projections, org, store
            ),
            progress=progress,
            stop=stop,
        )

    def catch_up(self) -> None:
        try:
            self.projections.catch_up()
        except DATABASE_ERRORS as error:
            # e.g. a full disk: the read models cannot take the new events (the events themselves are safe).
            raise storage_error(error, f"the database {self.database.display}") from None

    def _saved(self, force: bool) -> None:
        # With a live follower the tables follow by themselves; a caller that needs them now catches up.
        if force or self._follower is None:
            self.catch_up()

    @contextmanager
    def live_projections(self) -> Iterator[None]:
        if self.database.backend == "postgres" and os.environ.get("WCSYNC_LIVE_PROCESS", "1") == "1":
            with self._live_projections_process():
                yield
            return
        with self._live_projections_thread():
            yield

    @contextmanager
    def _live_projections_process(self) -> Iterator[None]:
        """On PostgreSQL the follower runs as a separate process: it uses the other core instead of
        competing with the sync for this process's interpreter lock."""
        env = dict(os.environ, WCSYNC_DATABASE_URL=self.database.url, WCSYNC_FOLLOWER_PARENT=str(os.getpid()))
        follower = subprocess.Popen(
            [sys.executable, "-m", "projections"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        self._follower = follower  # type: ignore[assignment]
        try:
            yield
        finally:
            follower.terminate()
            follower.wait()
            self._follower = None
            self.catch_up()

    @contextmanager
    def _live_projections_thread(self) -> Iterator[None]:
        """Keep the read models following the log from a background thread while a sync runs, so
        `status`, `queues` and SQL show live progress without slowing the sync's own thread. The follower
        has its own connection; the tracking lock keeps it and any inline catch-up from applying twice."""
        stop = threading.Event()
        runner = ProjectionRunner(self.app)
        follower = threading.Thread(
            target=runner.follow, args=(stop, LIVE_POLL_S), name="wcsync-projections", daemon=True
        )
        self._follower = follower
        follower.start()
        try:
            yield
        finally:
            stop.set()
            follower.join()
            self._follower = None
            runner.close()
            self.catch_up()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.projections.close()
            self.app.close()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def migrate(database: DatabaseConfig) -> None:
    """Create every table once: the event store's and the projections'."""
    app = SyncApplication(database, create_tables=True)
    try:
        runner = ProjectionRunner(app)
        try:
            runner.migrate()
        finally:
            runner.close()
    except DATABASE_ERRORS as error:
        raise storage_error(error, f"the database {database.display}") from None
    finally:
        app.close()


def open_services(database: DatabaseConfig, read_only: bool = False) -> Services:
    """Open the store for a command. SQLite (the embedded default) creates its file and tables on first
    use; PostgreSQL expects `wcsync db migrate` to have run, so that workers never race on DDL.

    ``read_only`` is for commands that only read (status, queues, audit ...): a SQLite database that does
    not exist is then an error (StorageError, exit 4) and nothing is created, no file and no directory."""
    if read_only:
        require_database(database)
    create = database.backend == "sqlite"
    app = SyncApplication(database, create_tables=create)
    try:
        if database.backend == "postgres" and not _postgres_tables_exist(app):
            raise StorageError(
                f"the database {database.display} has no wcsync tables yet: run `wcsync db migrate` once"
            )
        runner = ProjectionRunner(app)
        if create:
            runner.migrate()
    except DATABASE_ERRORS as error:
        app.close()
        raise storage_error(error, f"the database {database.display}") from None
    except BaseException:
        app.close()
        raise
    return Services(database=database, app=app, projections=runner)


def _postgres_tables_exist(app: SyncApplication) -> bool:
    recorder: Any = app.recorder
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS present",
            (f"{recorder.datastore.schema}.{recorder.events_table_name}",),
        )
        row = curs.fetchone()
        return bool(row and row["present"])
