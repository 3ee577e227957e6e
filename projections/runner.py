"""Keeping the read models up to date with the event log, exactly once.

Every batch of notifications is applied in ONE transaction that also moves the projections' tracking
positions, after locking their tracking rows and checking the positions are still the ones the batch was
read from (another runner may have got there first: then the batch is dropped and read again). A crash at
any point leaves tables and positions of the last committed batch.

Projections at the same position share one read of the log (the union of their topics), and each gets
only the events of its own topics. A position moves past every notification up to the end of what was
read, whether or not a projection cared about it, so gaps in notification ids and unknown topics are simply
walked over.

A rebuild replays the log into fresh ``<table>__rebuild`` tables (tracked under ``<name>__rebuild``, in
batches, so SQLite writers are never locked out for long) and swaps them in with one transaction of
renames: readers see the old tables or the new ones, never a half-built one.

An event a projection cannot apply (a data error in ``apply``, not the database's or the connection's) does
not stop it: the batch is rolled back and applied again event by event under savepoints, and each event
that still fails is quarantined (projections/quarantine.py) in the transaction that moves the position past
it. Nothing of this runs while batches apply: the happy path is the batch as it always was.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from eventsourcing.persistence import InterfaceError, OperationalError

from domain.errors import WcsyncError
from domain.queue import SyncQueue
from infrastructure.adapters import eventlog
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.adapters.projection_db import ConcurrentUpdate, Database, connection_errors
from infrastructure.adapters.schema import (
    POSTGRES,
    QUARANTINE,
    QUARANTINE_TABLE,
    REBUILD_SUFFIX,
    TRACKING,
    TRACKING_TABLE,
    TS,
)
from infrastructure.support.config import CIPHER_KEY_VARIABLE, DatabaseConfig
from infrastructure.support.errors import StorageError, first_line
from projections import quarantine
from projections.activity import ActivityProjection
from projections.base import Projection
from projections.customers import CustomersProjection
from projections.ledger import LedgerProjection
from projections.quarantine import Quarantined
from projections.queues import QueuesProjection
from projections.stores import StoresProjection
from projections.webhooks import WebhooksProjection

log = structlog.get_logger("wcsync.projections")

# In this order: a long catch-up runs the first group of projections in this process and the others in
# child processes, which start working ~0.4 s later (their imports). Customers goes first: one event per
# customer makes it the longest pass of a sync's log.
PROJECTION_CLASSES: tuple[type[Projection], ...] = (
    CustomersProjection,
    QueuesProjection,
    ActivityProjection,
    LedgerProjection,
    StoresProjection,
    WebhooksProjection,
)
# PROJECTION_NAMES (projections/names.py) lists these classes' names, in this order (a unit test checks).

DEFAULT_BATCH_SIZE = 1000
REBUILD_BATCH_SIZE = 2000
_MIGRATE_LOCK_KEY = 0x77637379  # "wcsy": serialises concurrent migrations on PostgreSQL
MAX_BACKOFF_S = 30.0
PERSISTENT_FAILURE_S = 2.0  # follow() warns of a database failure once its backoff has grown this long
# A batch stops early past this many bytes of stored events (a page of 100 customers is ~100 KB).
MAX_BATCH_BYTES = 32 * 1024 * 1024
# Behind by at least this many notifications, independent groups of projections catch up in parallel.
PARALLEL_MIN_LAG = 20_000


class Reconnecting:
    """A follower's backoff while its database is away: each failure logs and returns how long to wait
    (doubling up to MAX_BACKOFF_S) and drops the connection; the first success after it says so."""

    def __init__(self, db: Database, poll_interval: float) -> None:
        self.db = db
        self.poll_interval = poll_interval
        self.delay = poll_interval
        self.failing = False

    def failed(self, error: BaseException) -> float:
        # A warning only once it lasts: a sync that meets the same failure says so itself, in one line, and
        # a follower's first retry would only repeat it on stderr.
        report = log.warning if self.delay >= PERSISTENT_FAILURE_S else log.info
        report("projections.database_unavailable", error=first_line(error), retry_in_s=round(self.delay, 2))
        self.failing = True
        self.db.reset()
        delay = self.delay
        self.delay = min(max(self.delay, 0.1) * 2, MAX_BACKOFF_S)
        return delay

    def succeeded(self) -> None:
        if self.failing:
            log.info("projections.database_reconnected")
            self.failing = False
        self.delay = self.poll_interval


class UnknownProjectionError(WcsyncError, ValueError):
    """No projection of that name."""


class _ApplyFailed(Exception):
    """A target's apply of a whole batch raised a data error: redo the batch event by event."""

    def __init__(self, target: _Target, error: BaseException) -> None:
        super().__init__(target.tracking_name)
        self.target = target
        self.error = error


# What the runner does with each event it quarantines, once its transaction has committed.
Report = Callable[[Quarantined], None]


@dataclass(frozen=True)
class _Selection:
    """What a pass reads of the log: its topics, at most ``batch_size`` notifications a batch, whether it
    decodes events at all (Projection.reads_events), the topics whose records come trimmed to their ids
    (Projection.record_ids_only) and those read without their state (Projection.in_database_topics)."""

    topics: list[str]
    batch_size: int
    reads_events: bool
    trimmed: frozenset[str]
    stateless: frozenset[str]


@dataclass
class _Read:
    """A batch read from the log: notifications up to ``end`` (``count`` of them), decoded."""

    head: int
    end: int
    count: int
    full: bool
    selection: _Selection
    decoded: list[tuple[int, str, Any]]


@dataclass
class _Target:
    """A projection writing to its live tables (suffix "") or to its rebuild copy."""

    projection: Projection
    suffix: str = ""
    topics: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.topics = frozenset(self.projection.topics)

    @property
    def tracking_name(self) -> str:
        return self.projection.name + self.suffix


class ProjectionRunner:
    """Builds and follows wcsync's read models in the events' own database (see module docstring)."""

    def __init__(self, app: SyncApplication, parallel: bool = True) -> None:
        self.app = app
        self.parallel = parallel  # may a long catch-up run groups of projections in other processes
        self.db = Database(app.database)
        self.projections: dict[str, Projection] = {cls.name: cls() for cls in PROJECTION_CLASSES}
        # May projections apply their in_database_topics in the database (plain JSON states on PostgreSQL)?
        mapper: Any = app.mapper
        self.in_database = self.db.dialect == POSTGRES and mapper.cipher is None and mapper.compressor is None
        self._migrated = False
        # PostgreSQL: the connection and thread reading the next batch while one is applied (see _run_group).
        self._reader: Database | None = None
        self._executor: ThreadPoolExecutor | None = None

    # ----- public API ----------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create missing tables and tracking; rebuild any projection whose table definitions changed."""
        stale: list[str] = []
        with self.db.transaction() as db:
            if db.dialect == POSTGRES:
                db.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATE_LOCK_KEY])
            db.execute(TRACKING.create_table(db.dialect))
            self._create_quarantine()
            tracked = self._tracking_rows(list(self.projections))
            for name, projection in self.projections.items():
                row = tracked.get(name)
                if row is None:
                    # Tables without a tracking row are of unknown provenance: start them afresh.
                    self._create_tables(projection, "", drop_first=True)
                    db.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE projection = %s", [name])
                    db.execute(
                        f"INSERT INTO {TRACKING_TABLE} (name, position, version, updated_at) VALUES (%s, 0, %s, %s)",
                        [name, projection.version, self._now()],
                    )
                elif row[1] != projection.version or not self._tables_exist(projection):
                    stale.append(name)
        self._migrated = True
        if stale:
            log.info("projections.rebuild_needed", projections=stale)
            self.rebuild(stale)

    def catch_up(self, names: Sequence[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Apply every event not yet applied; returns the number of notifications applied."""
        selected = self._select(names)
        if not self._migrated:
            self.migrate()
        tracked = self._tracking_rows([p.name for p in selected])
        stale = [p.name for p in selected if p.name not in tracked or tracked[p.name][1] != p.version]
        # A projection that has applied nothing yet and is far behind (the first catch-up of a long log) is
        # built as a rebuild is: into fresh copies whose indexes are made once at the end, then swapped in.
        # Maintaining the indexes row by row was a fifth of the customers' first catch-up (0.7 s of 4 s for
        # 100,000 customers); readers see the empty tables until the swap instead of partial ones.
        unapplied = [p.name for p in selected if p.name not in stale and tracked[p.name][0] == 0]
        if unapplied and self._head() >= PARALLEL_MIN_LAG:
            stale += unapplied
        applied = self.rebuild(stale) if stale else 0
        return applied + self._run([_Target(p) for p in selected], batch_size)

    def follow(self, stop: threading.Event, poll_interval: float = 0.5) -> None:
        """Catch up in a loop until ``stop`` is set, reconnecting (with backoff) when the database goes away."""
        backoff = Reconnecting(self.db, poll_interval)
        while not stop.is_set():
            try:
                applied = self.catch_up()
            except transient_errors() as error:
                if stop.wait(backoff.failed(error)):
                    break
                continue
            backoff.succeeded()
            if applied:
                log.debug("projections.applied", events=applied)
            else:
                stop.wait(poll_interval)

    def rebuild(self, names: Sequence[str] | None = None, batch_size: int = REBUILD_BATCH_SIZE) -> int:
        """Replay the whole log into fresh tables and swap them in; returns the notifications replayed.
        The rebuilt projection's quarantine is what the replay set aside: events that apply now are healed."""
        selected = self._select(names)
        if not self._migrated:
            self._migrated = True  # migrate() may be what called us; it only needs the tracking table
            with self.db.transaction() as db:
                db.execute(TRACKING.create_table(db.dialect))
                self._create_quarantine()
        with self.db.transaction() as db:
            for projection in selected:
                self._create_tables(projection, REBUILD_SUFFIX, drop_first=True)
                db.execute(
                    f"DELETE FROM {TRACKING_TABLE} WHERE name = %s", [projection.name + REBUILD_SUFFIX]
                )
                # The copy's quarantine starts empty: what still fails is set aside again as it replays.
                db.execute(
                    f"DELETE FROM {QUARANTINE_TABLE} WHERE projection = %s",
                    [projection.name + REBUILD_SUFFIX],
                )
                db.execute(
                    f"INSERT INTO {TRACKING_TABLE} (name, position, version, updated_at) VALUES (%s, 0, %s, %s)",
                    [projection.name + REBUILD_SUFFIX, projection.version, self._now()],
                )
        log.info("projections.rebuild_started", projections=[p.name for p in selected])
        targets = [_Target(p, REBUILD_SUFFIX) for p in selected]
        applied = self._run(targets, batch_size)
        self._swap(selected)
        log.info("projections.rebuild_finished", projections=[p.name for p in selected], events=applied)
        return applied

    def status(self) -> list[dict[str, Any]]:
        with self.db.reading():
            head = self._head()
            names = [*self.projections, *(n + REBUILD_SUFFIX for n in self.projections)]
            tracked = self._tracking_rows(names) if self.db.table_exists(TRACKING_TABLE) else {}
            set_aside = (
                quarantine.counts(self.db, list(self.projections)) if quarantine.exists(self.db) else {}
            )
        result = []
        for name, projection in self.projections.items():
            position, version = tracked.get(name, (0, None))
            result.append(
                {
                    "name": name,
                    "version": version,
                    "codeVersion": projection.version,
                    "position": position,
                    "head": head,
                    "lag": max(0, head - position),
                    "rebuilding": name + REBUILD_SUFFIX in tracked,
                    "quarantined": set_aside.get(name, 0),
                }
            )
        return result

    def applied_all_of(self, name: str, originator_id: UUID) -> bool:
        """Whether projection ``name`` has applied every event of one aggregate stored so far (its position
        is at or past the aggregate's last event): a read of that aggregate's rows is then current, with no
        catch-up to wait for. Two index probes."""
        with self.db.reading():
            last = eventlog.last_position_of(self.db, originator_id)
            tracked = self._tracking_rows([name])
        return tracked.get(name, (0, 0))[0] >= last

    def applied_through(self, name: str, position: int) -> bool:
        """Whether projection ``name`` has applied every event up to log ``position`` (its tracked position
        is at or past it): one probe of the tracking table."""
        with self.db.reading():
            tracked = self._tracking_rows([name])
        return tracked.get(name, (0, 0))[0] >= position

    def quarantined(self, names: Sequence[str] | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The events the projections (all, or those named) have set aside and walked past, by projection
        and position: the first ``limit`` of them (``status()`` counts them all)."""
        selected = [p.name for p in self._select(names)]
        with self.db.reading():
            if not quarantine.exists(self.db):
                return []
            return [row.as_dict() for row in quarantine.listed(self.db, selected, limit)]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.db.close()

    # ----- the loop ------------------------------------------------------------------------------------

    def _run(self, targets: list[_Target], batch_size: int) -> int:
        groups = _groups(targets)
        if len(groups) < 2 or not self.parallel or self._lag(targets) < PARALLEL_MIN_LAG:
            return _applied(
                groups, [self._run_group(group, batch_size, _log_quarantined) for group in groups]
            )
        # Far behind (a first catch-up, a rebuild): groups read disjoint topics and track their own rows, so
        # the others run in processes of their own (threads measured slower: the work holds the GIL). A child
        # is a fresh interpreter (never a fork: this process's connections are not the child's to share).
        # The application's settings (cipher, compressor) without CREATE_TABLE: a child only reads the store,
        # and children creating its tables at once collided on PostgreSQL's catalog ("type already exists",
        # "tuple concurrently updated") and retried with pauses that showed as slow catch-ups.
        env = {key: value for key, value in self.app.env.items() if not key.endswith("CREATE_TABLE")}
        children = [_GroupProcess(self.app.database, env, group, batch_size) for group in groups[1:]]
        try:
            applied = self._run_group(groups[0], batch_size, _log_quarantined)
            counts = [applied]
            for child in children:
                child_applied, set_aside = child.result()
                for row in set_aside:  # logged here: the child's output is its result
                    _log_quarantined(row)
                counts.append(child_applied)
            return _applied(groups, counts)
        finally:
            for child in children:
                child.stop()

    def _lag(self, targets: Sequence[_Target]) -> int:
        with self.db.reading():
            tracked = self._tracking_rows([t.tracking_name for t in targets])
        positions = [tracked[t.tracking_name][0] for t in targets if t.tracking_name in tracked]
        return self._head() - min(positions, default=0)

    def _run_group(self, targets: list[_Target], batch_size: int, report: Report) -> int:
        """Catch one group of targets up; ``report`` gets each event quarantined, once committed."""
        applied = 0
        min_window = window = 2 * batch_size
        max_window = 64 * batch_size
        # The next batch, read (and decoded) on a second connection while this one is applied and committed:
        # (the tracking rows it was read for, its future). Only a guess that this batch commits: the next
        # transaction checks the locked positions against it like any other read, and drops it if not.
        pending: tuple[dict[str, tuple[int, int]], Future[_Read | None]] | None = None
        while targets:
            batch: _Read | None = None
            if pending is not None:
                tracked, future = pending
                pending = None
                batch = future.result()
                behind = targets
            if batch is None:
                with self.db.reading():
                    tracked = self._tracking_rows([t.tracking_name for t in targets])
                # A rebuild copy that disappeared was swapped in by another runner: nothing left to do for it.
                targets = [t for t in targets if t.tracking_name in tracked]
                head = self._head()
                behind = [t for t in targets if tracked[t.tracking_name][0] < head]
                if not behind:
                    break
                start = min(tracked[t.tracking_name][0] for t in behind)
                selection = _Selection(
                    topics=sorted(set().union(*(t.topics for t in behind))),
                    batch_size=batch_size,
                    reads_events=any(t.projection.reads_events for t in behind),
                    trimmed=_trimmed_topics(targets),
                    stateless=_in_database_topics(targets) if self.in_database else frozenset(),
                )
                batch = self._read(self.db, start, head, window, selection)
            # Read a bounded range of ids: on an events table without statistics PostgreSQL scans the whole
            # range before applying LIMIT. The range widens while it holds few of the group's topics.
            if batch.full:
                window = max(min_window, window // 2)
            elif batch.count < batch_size // 2:
                window = min(window * 2, max_window)
            end, decoded = batch.end, batch.decoded
            if (
                self.db.dialect == POSTGRES
                and end < batch.head
                and len(behind) == len(targets)
                and all(tracked[t.tracking_name][0] < end for t in behind)
            ):
                # Every target will be at ``end`` once this batch commits: read on from there meanwhile.
                expected = {t.tracking_name: (end, tracked[t.tracking_name][1]) for t in behind}
                pending = (expected, self._prefetcher().submit(self._prefetch, end, window, batch.selection))
            try:
                try:
                    set_aside = self._commit(behind, tracked, end, decoded, careful=False)
                except _ApplyFailed as failed:
                    # Rolled back whole; again event by event, setting aside only the events that fail.
                    log.info(
                        "projections.batch_failed",
                        projection=failed.target.tracking_name,
                        after=tracked[failed.target.tracking_name][0],
                        end=end,
                        reason=quarantine.reason(failed.error),
                    )
                    set_aside = self._commit(behind, tracked, end, decoded, careful=True)
            except ConcurrentUpdate:
                log.debug("projections.concurrent_update", targets=[t.tracking_name for t in behind])
                pending = None  # read for positions that did not happen
                continue
            except BaseException:
                pending = None
                raise
            for row in set_aside:
                report(row)
            applied += len(decoded)
        self._index_copies(targets)
        return applied

    def _commit(
        self,
        behind: Sequence[_Target],
        tracked: dict[str, tuple[int, int]],
        end: int,
        decoded: Sequence[tuple[int, str, Any]],
        careful: bool,
    ) -> list[Quarantined]:
        """Apply a batch to every target behind and move their positions to ``end``, in one transaction.

        Not ``careful``: each target's events in one apply, as fast as it goes; a data error raises
        _ApplyFailed (after the rollback). ``careful``: each target's apply under a savepoint, split until the
        events that fail are found alone; those are quarantined in this transaction. Returns them."""
        set_aside: list[Quarantined] = []
        with self.db.transaction() as db:
            if db.dialect == POSTGRES and all(t.suffix == REBUILD_SUFFIX for t in behind):
                _asynchronous_commit(db)
            locked = self._tracking_rows([t.tracking_name for t in behind], lock=True)
            if any(locked.get(t.tracking_name) != tracked[t.tracking_name] for t in behind):
                raise ConcurrentUpdate
            now = self._now()
            for target in behind:
                position = tracked[target.tracking_name][0]
                if end <= position:
                    continue
                mine = [item for item in decoded if item[0] > position and item[1] in target.topics]
                if mine and careful:
                    self._apply_isolating(db, target, mine, set_aside)
                elif mine:
                    try:
                        target.projection.apply(db, target.suffix, [(nid, event) for nid, _, event in mine])
                    except Exception as error:
                        if not _data_error(error):
                            raise
                        raise _ApplyFailed(target, error) from error
                db.execute(
                    f"UPDATE {TRACKING_TABLE} SET position = %s, updated_at = %s WHERE name = %s",
                    [end, now, target.tracking_name],
                )
            if set_aside:
                quarantine.record(db, set_aside)
        return set_aside

    def _apply_isolating(
        self,
        db: Database,
        target: _Target,
        items: Sequence[tuple[int, str, Any]],
        set_aside: list[Quarantined],
    ) -> None:
        """Apply ``items`` under a savepoint; if that fails with a data error, each half the same way, down to
        single events, which are quarantined. Halves apply in order, and a projection gives the same rows
        whatever the batches (its batches are arbitrary already), so what applies is as if nothing failed.
        Failing events cost about two applies each of the levels above them, not one apply per event."""
        try:
            with db.savepoint():
                target.projection.apply(db, target.suffix, [(nid, event) for nid, _, event in items])
            return
        except Exception as error:
            if not _data_error(error):
                raise
            if len(items) == 1:
                set_aside.append(self._quarantined(db, target, items[0], error))
                return
        middle = len(items) // 2
        self._apply_isolating(db, target, items[:middle], set_aside)
        self._apply_isolating(db, target, items[middle:], set_aside)

    def _quarantined(
        self, db: Database, target: _Target, item: tuple[int, str, Any], error: BaseException
    ) -> Quarantined:
        """What the quarantine records of an event: its place, its aggregate, its queue, why (no content)."""
        nid, topic, event = item
        originator_id: Any = None
        version: int | None = None
        if event is None:  # left to the database, or a projection that reads no events: read it back
            stored = self._select_notifications(
                db,
                nid - 1,
                nid,
                _Selection(
                    topics=[topic],
                    batch_size=1,
                    reads_events=True,
                    trimmed=frozenset(),
                    stateless=frozenset(),
                ),
            )
            if stored:
                originator_id, version = stored[0].originator_id, int(stored[0].originator_version)
                # Undecodable: its queue and time stay unknown; the row still says which event it is.
                with suppress(Exception):
                    event = self.app.mapper.to_domain_event(stored[0])
        queue_id: Any = None
        event_at: datetime | None = None
        if event is not None:
            originator_id, version = event.originator_id, int(event.originator_version)
            # A queue's own event, or a customer's change, which names the queue that wrote it.
            queue_id = (
                originator_id if isinstance(event, SyncQueue.Event) else getattr(event, "queue_id", None)
            )
            timestamp = getattr(event, "timestamp", None)
            event_at = timestamp if isinstance(timestamp, datetime) else None
        return Quarantined(
            projection=target.tracking_name,
            position=nid,
            originator_id=_uuid_or_none(originator_id),
            originator_version=version,
            topic=topic,
            queue_id=_uuid_or_none(queue_id),
            reason=quarantine.reason(error),
            event_at=event_at,
            quarantined_at=datetime.now(UTC),
        )

    def _index_copies(self, targets: Sequence[_Target]) -> None:
        """PostgreSQL: build the indexes of the rebuild copies this pass has filled, here rather than in the
        swap (a pass in its own process builds them beside the others instead of all in turn at the end).
        Under the copy's tracking row lock, as the swap takes it: a copy already swapped in is left alone."""
        copies = [t for t in targets if t.suffix == REBUILD_SUFFIX]
        if self.db.dialect != POSTGRES or not copies:
            return
        for target in copies:
            with self.db.transaction() as db:
                if not self._tracking_rows([target.tracking_name], lock=True):
                    continue
                for table in target.projection.tables:
                    for statement in table.create_indexes(REBUILD_SUFFIX):
                        db.execute(statement)

    def _read(self, db: Database, start: int, head: int, window: int, selection: _Selection) -> _Read:
        stop = min(head, start + window)
        notifications = self._select_notifications(db, start, stop, selection)
        count = len(notifications)
        full = count == selection.batch_size
        end = notifications[-1].id if full else stop
        size = 0
        for index, notification in enumerate(notifications):
            size += len(notification.state)
            if size > MAX_BATCH_BYTES and index > 0:  # bound the memory of decoded events
                notifications = notifications[:index]
                end = notifications[-1].id
                break
        if selection.reads_events:
            decoded = _decode(self.app.mapper, notifications, selection.trimmed, selection.stateless)
        else:
            decoded = [(n.id, n.topic, None) for n in notifications]
        return _Read(head, end, count, full, selection, decoded)

    def _prefetch(self, start: int, window: int, selection: _Selection) -> _Read | None:
        """The batch after ``start`` on the reader's connection (in the prefetch thread); None at the head."""
        head = self._head()
        if head <= start:
            return None
        reader = self._reader
        assert reader is not None
        return self._read(reader, start, head, window, selection)

    def _prefetcher(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._reader = Database(self.app.database)
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wcsync-prefetch")
        return self._executor

    def _swap(self, projections: Sequence[Projection]) -> None:
        with self.db.transaction() as db:
            names = [p.name for p in projections]
            locked = self._tracking_rows([*names, *(n + REBUILD_SUFFIX for n in names)], lock=True)
            now = self._now()
            for projection in projections:
                rebuilt = locked.get(projection.name + REBUILD_SUFFIX)
                if rebuilt is None:  # another runner swapped this rebuild in already
                    continue
                for table in projection.tables:
                    for statement in table.swap_in(db.dialect, REBUILD_SUFFIX):
                        db.execute(statement)
                db.execute(
                    f"DELETE FROM {TRACKING_TABLE} WHERE name IN (%s, %s)",
                    [projection.name, projection.name + REBUILD_SUFFIX],
                )
                # The copy's quarantine becomes the projection's: what applies now is healed.
                db.execute(f"DELETE FROM {QUARANTINE_TABLE} WHERE projection = %s", [projection.name])
                db.execute(
                    f"UPDATE {QUARANTINE_TABLE} SET projection = %s WHERE projection = %s",
                    [projection.name, projection.name + REBUILD_SUFFIX],
                )
                db.execute(
                    f"INSERT INTO {TRACKING_TABLE} (name, position, version, updated_at) VALUES (%s, %s, %s, %s)",
                    [projection.name, rebuilt[0], projection.version, now],
                )

    # ----- helpers -------------------------------------------------------------------------------------

    def _select(self, names: Sequence[str] | None) -> list[Projection]:
        if names is None:
            return list(self.projections.values())
        unknown = [n for n in names if n not in self.projections]
        if unknown:
            raise UnknownProjectionError(
                f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(self.projections)}"
            )
        return [self.projections[n] for n in dict.fromkeys(names)]

    def _select_notifications(
        self, db: Database, start: int, stop: int, selection: _Selection
    ) -> Sequence[Any]:
        topics, limit = selection.topics, selection.batch_size
        if db.dialect == POSTGRES:
            recorder: Any = self.app.recorder
            table = f"{recorder.datastore.schema}.{recorder.events_table_name}"
            stateless = sorted(selection.stateless)
            with db.pg_connection() as conn:
                return eventlog.select_notifications(
                    conn, table, start, stop, topics, limit, selection.reads_events, stateless
                )
        return self.app.recorder.select_notifications(
            start, limit, stop=stop, topics=topics, inclusive_of_start=False
        )

    def _head(self) -> int:
        head = self.app.recorder.max_notification_id()
        return int(head or 0)

    def _tracking_rows(self, names: Sequence[str], lock: bool = False) -> dict[str, tuple[int, int]]:
        """name -> (position, version) for the names that have a row (locked FOR UPDATE on PostgreSQL)."""
        if not names:
            return {}
        result: dict[str, tuple[int, int]] = {}
        for condition, params in self.db.in_clause("name", list(names), "text"):
            statement = (
                f"SELECT name, position, version FROM {TRACKING_TABLE} WHERE {condition} ORDER BY name"
            )
            if lock and self.db.dialect == POSTGRES:
                statement += " FOR UPDATE"
            for name, position, version in self.db.fetchall(statement, params):
                result[name] = (int(position), int(version))
        return result

    def _create_tables(self, projection: Projection, suffix: str, drop_first: bool) -> None:
        for table in projection.tables:
            if drop_first:
                self.db.execute(table.drop(suffix))
            self.db.execute(table.create_table(self.db.dialect, suffix))
            if not suffix:  # a rebuild's copy gets its indexes when it is swapped in
                for statement in table.create_indexes():
                    self.db.execute(statement)

    def _create_quarantine(self) -> None:
        self.db.execute(QUARANTINE.create_table(self.db.dialect))
        for statement in QUARANTINE.create_indexes():
            self.db.execute(statement)

    def _tables_exist(self, projection: Projection) -> bool:
        return all(self.db.table_exists(table.name) for table in projection.tables)

    def _now(self) -> Any:
        return self.db.value(TS, datetime.now(UTC))


# ----- groups caught up in processes of their own ----------------------------------------------------------

# The entry point of those processes: ``python -m cli.processes projection-worker`` (cli/processes.py, the
# interface layer, named here by string: projections import nothing of it). Its arguments are on argv (the
# projections' names, --rebuild, --batch-size), the database and the application's settings in its
# environment (never a password on argv), its outcome one JSON object on stdout.
WORKER_MODULE = "cli.processes"
WORKER_COMMAND = "projection-worker"
# The live follower is started the same way (infrastructure/wiring.py) and told its parent's pid.
FOLLOW_COMMAND = "follow"
# How often a live follower (the thread on SQLite, the process on PostgreSQL) looks for new events while a
# sync runs: the tables lag at most about this much plus one catch-up batch.
LIVE_POLL_S = 0.25
FOLLOWER_PARENT_VARIABLE = "WCSYNC_FOLLOWER_PARENT"
DATABASE_URL_VARIABLE = "WCSYNC_DATABASE_URL"


class _GroupProcess:
    """One group of projections caught up by a ``projection-worker`` process (see ProjectionRunner._run)."""

    def __init__(
        self, database: DatabaseConfig, env: dict[str, str], targets: Sequence[_Target], batch_size: int
    ) -> None:
        suffixes = {target.suffix for target in targets}
        if not suffixes <= {"", REBUILD_SUFFIX} or len(suffixes) != 1:
            raise ValueError(f"a worker catches up live tables or rebuild copies, not {sorted(suffixes)}")
        arguments = ["--batch-size", str(batch_size), *(["--rebuild"] if REBUILD_SUFFIX in suffixes else [])]
        arguments += [target.projection.name for target in targets]
        # The child opens the application as this one is (its settings, the same database), and the key
        # this database was opened with, or none (DatabaseConfig.from_url reads it from the environment).
        child_env = {
            **os.environ,
            **env,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            DATABASE_URL_VARIABLE: database.url,
        }
        child_env.pop(CIPHER_KEY_VARIABLE, None)
        if database.cipher_key:
            child_env[CIPHER_KEY_VARIABLE] = database.cipher_key
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, our module, our projections' names
            [sys.executable, "-m", WORKER_MODULE, WORKER_COMMAND, *arguments],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=child_env,
        )

    def result(self) -> tuple[int, list[Quarantined]]:
        """The notifications the child applied and the events it quarantined (for the parent to log)."""
        assert self.process.stdout is not None
        output = self.process.stdout.read()
        self.process.wait()
        failed = StorageError(f"a projection process failed (exit status {self.process.returncode})")
        if self.process.returncode != 0 or not output:
            raise failed
        try:
            outcome = json.loads(output)
        except ValueError:
            raise failed from None
        if "error" in outcome:
            raise _error_from_json(outcome["error"])
        return int(outcome["applied"]), [Quarantined.from_dict(row) for row in outcome["quarantined"]]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_worker(
    database_url: str | None, names: Sequence[str], rebuild: bool, batch_size: int
) -> dict[str, Any]:
    """A ``projection-worker`` process's work (cli/processes.py): catch the projections ``names`` up (their
    rebuild copies with ``rebuild``) in the database at ``database_url``, as one group. Returns the outcome
    for its parent's _GroupProcess.result, as JSON: ``{"applied": n, "quarantined": [event, ...]}`` (the
    parent logs the quarantined events, each in its Quarantined.as_dict form), or ``{"error": ...}``, which
    the parent raises."""
    set_aside: list[Quarantined] = []
    try:
        app = _open_app(DatabaseConfig.from_url(database_url))
        runner = ProjectionRunner(app, parallel=False)
        try:
            suffix = REBUILD_SUFFIX if rebuild else ""
            applied = runner._run_group(
                [_Target(runner.projections[name], suffix) for name in names], batch_size, set_aside.append
            )
        finally:
            runner.close()
            app.close()
    except Exception as error:
        return {"error": _error_to_json(error)}
    return {"applied": applied, "quarantined": [row.as_dict() for row in set_aside]}


def _open_app(database: DatabaseConfig, attempts: int = 5) -> SyncApplication:
    """The child's application (its settings come in its environment, CREATE_TABLE off). Children start
    together, and opening the PostgreSQL store runs catalog statements that fail now and then under a
    concurrent twin ("tuple concurrently updated"): try again."""
    for attempt in range(1, attempts + 1):
        try:
            return SyncApplication(database, create_tables=False)
        except StorageError:
            if attempt == attempts:
                raise
            time.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


def _error_to_json(error: Exception) -> dict[str, Any]:
    """A child's error as pickle would send it (its class, the arguments it is made again from, its
    attributes), in JSON: the arguments only if JSON carries them unchanged, attributes JSON does not
    carry left out (a psycopg error's diagnostics: the parent made its own decisions from the class and
    message alone). Else, or for a class the parent cannot name, a StorageError of its first line."""
    cls = type(error)
    reduced = error.__reduce__()
    args = list(reduced[1]) if isinstance(reduced, tuple) and len(reduced) > 1 else []
    state = reduced[2] if isinstance(reduced, tuple) and len(reduced) > 2 and reduced[2] else {}
    if not (isinstance(reduced, tuple) and reduced[0] is cls and _carried(args)):
        cls, args, state = StorageError, [first_line(error)], {}
    return {
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "args": args,
        "attributes": {key: value for key, value in dict(state).items() if _carried(value)},
        "message": first_line(error),
    }


def _error_from_json(data: dict[str, Any]) -> Exception:
    """The error a child sent (_error_to_json), of a class this process has loaded; else a StorageError."""
    module, _, qualname = str(data["class"]).partition(":")
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if isinstance(found, type) and issubclass(found, Exception):
        try:
            error = found(*data["args"])
            error.__dict__.update(data["attributes"])
            return error
        except Exception:  # noqa: S110 - made in another way than pickle's: the message, below
            pass
    return StorageError(str(data["message"]))


def _carried(value: Any) -> bool:
    """Whether JSON carries ``value`` unchanged."""
    try:
        return bool(json.loads(json.dumps(value)) == value)
    except (TypeError, ValueError):
        return False


def _log_quarantined(row: Quarantined) -> None:
    rebuilding = row.projection.endswith(REBUILD_SUFFIX)  # its copy: the projection's once swapped in
    log.error(
        "projections.event_quarantined",
        projection=row.projection.removesuffix(REBUILD_SUFFIX),
        rebuild=rebuilding,
        position=row.position,
        topic=row.topic,
        originator_id=None if row.originator_id is None else str(row.originator_id),
        originator_version=row.originator_version,
        reason=row.reason,
    )


def _uuid_or_none(value: Any) -> UUID | None:
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        return None


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors after which follow() reconnects and tries again rather than stopping (for an except clause)."""
    return (*connection_errors(), OperationalError, InterfaceError, StorageError)


def _data_error(error: BaseException) -> bool:
    """Whether an apply failed on the data (quarantine it) rather than on the database (let it through: a
    follower reconnects and tries again)."""
    return not isinstance(error, transient_errors()) and quarantine.quarantinable(error)


def _trimmed_topics(targets: Sequence[_Target]) -> frozenset[str]:
    """Topics whose records every target reading them needs only the ids of (see Projection.record_ids_only)."""
    return _declared_by_all(targets, lambda projection: projection.record_ids_only)


def _in_database_topics(targets: Sequence[_Target]) -> frozenset[str]:
    """Topics every target reading them can apply in the database (see Projection.in_database_topics)."""
    return _declared_by_all(targets, lambda projection: projection.in_database_topics)


def _declared_by_all(
    targets: Sequence[_Target], declared: Callable[[Projection], tuple[str, ...]]
) -> frozenset[str]:
    readers: dict[str, list[_Target]] = {}
    for target in targets:
        for topic in target.topics:
            readers.setdefault(topic, []).append(target)
    return frozenset(
        topic for topic, group in readers.items() if all(topic in declared(t.projection) for t in group)
    )


def _decode(
    mapper: Any, notifications: Sequence[Any], trimmed: frozenset[str], stateless: frozenset[str]
) -> list[tuple[int, str, Any]]:
    """Decode a batch, trimming records to their ids as each event is decoded (see record_ids_only). Events
    of the ``stateless`` topics read without their state are left to the database: (id, topic, None).

    The collector is paused meanwhile: decoded events hold no reference cycles (refcounting frees them), and
    the tens of thousands of dicts of a batch would otherwise set off collections that scan the whole heap,
    which in a sync's process holds every line of the queue."""
    to_domain_event = mapper.to_domain_event
    decoded: list[tuple[int, str, Any]] = []
    with _gc_paused():
        for notification in notifications:
            topic = notification.topic
            if topic in stateless and not notification.state:
                decoded.append((notification.id, topic, None))
                continue
            event = to_domain_event(notification)
            if topic in trimmed:
                object.__setattr__(event, "records", [{"id": record["id"]} for record in event.records])
            decoded.append((notification.id, topic, event))
    return decoded


def _asynchronous_commit(db: Database) -> None:
    """This transaction's commit does not wait for its WAL to reach disk (PostgreSQL): only for a batch that
    writes nothing but rebuild copies (``__rebuild`` tables, their ``<name>__rebuild`` tracking rows and the
    quarantine rows recorded under those names).

    Why that is safe: a server crash can lose only the last such commits, and each whole (the copy's rows go
    with the tracking row that says how far the copy got, in the same transaction), so the copy is left at an
    earlier batch and its rebuild resumes from there (or a rebuild starts it afresh). Nobody reads a copy
    before the swap, and the swap commits synchronously: its WAL flush takes every earlier commit with it.
    Also in such a batch: the ledger's checkpoints (``ON CONFLICT DO NOTHING``, recomputed if lost).

    Why never for the live tables: once committed, a catch-up is visible to readers (the API, the lag they
    watch, a sync that waits on a position); a crash could then move the read models and their positions
    backwards after the fact. Each commit waiting for its WAL flush is what makes "applied" mean durable."""
    db.execute("SET LOCAL synchronous_commit = off")


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _applied(groups: Sequence[Sequence[_Target]], counts: Sequence[int]) -> int:
    """Notifications applied by a run of these groups: groups that read events read disjoint topics, and a
    group that reads none (Projection.reads_events) walks over everything the others read and more."""
    reading = sum(n for group, n in zip(groups, counts, strict=True) if group[0].projection.reads_events)
    return max(
        [
            reading,
            *(n for group, n in zip(groups, counts, strict=True) if not group[0].projection.reads_events),
        ]
    )


def _groups(targets: list[_Target]) -> list[list[_Target]]:
    """Targets that read some topic in common, together: each group reads the log once for all its members,
    and no event is decoded for two groups."""
    groups: list[list[_Target]] = []
    for target in targets:
        if (
            not target.projection.reads_events
        ):  # decodes nothing: shares no pass (see Projection.reads_events)
            groups.append([target])
            continue
        joined = [
            g for g in groups if g[0].projection.reads_events and any(t.topics & target.topics for t in g)
        ]
        merged = [target]
        for group in joined:
            merged = group + merged
            groups.remove(group)
        groups.append(merged)
    return groups
