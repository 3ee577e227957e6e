"""The event store: eventsourcing's Application configured for wcsync, on SQLite or PostgreSQL.

Library errors stop here and become the project's own (StorageError, ConcurrentWriteError).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import structlog
from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    JSONTranscoder,
    OperationalError,
    PersistenceError,
    StoredEvent,
    Transcoder,
    Transcoding,
)
from eventsourcing.utils import get_topic

from domain.customer import Customer, CustomerHead
from domain.errors import WcsyncError
from domain.lines import LineBook
from domain.queue import SyncQueue
from infrastructure.adapters import eventlog
from infrastructure.adapters.transcoder import FastJSONTranscoder
from infrastructure.support.config import APP_NAME, DatabaseConfig
from infrastructure.support.errors import (
    QueueNotFoundError,
    StorageError,
    first_line,
    is_permanent,
    storage_error,
)

log = structlog.get_logger("wcsync.eventstore")

T = TypeVar("T")


# A queue is snapshotted every this many events, from the aggregate in memory (the library's own
# snapshotting re-reads the aggregate from the store: for a big queue that costs more than the save).
QUEUE_SNAPSHOT_INTERVAL = 200


class ConcurrentWriteError(WcsyncError):
    """Another writer saved the same aggregate version first: reload and run the command again."""


class LineBookTranscoding(Transcoding):
    type = LineBook
    name = "line_book"

    def encode(self, obj: LineBook) -> dict[str, Any]:
        return obj.to_compact()

    def decode(self, data: dict[str, Any] | list[list[Any]]) -> LineBook:
        # Snapshots taken before the compact form hold one row per line.
        return LineBook.from_rows(data) if isinstance(data, list) else LineBook.from_compact(data)


class SyncApplication(Application[UUID]):
    name = APP_NAME
    is_snapshotting_enabled = True

    def __init__(
        self, database: DatabaseConfig, create_tables: bool = True, extra_env: dict[str, str] | None = None
    ):
        self.database = database
        # SQLite: every write of the process takes its turn at this lock (bootstrap.WriteGate), held for
        # each attempt only, never through retry_storage's pauses between attempts.
        self.write_gate: AbstractContextManager[Any] = nullcontext()
        env = database.eventsourcing_env(create_tables=create_tables)
        if extra_env:
            env.update(extra_env)
        if database.backend == "sqlite" and database.sqlite_path is not None:
            if create_tables:
                prepare_sqlite_file(database.sqlite_path)
            else:
                require_database(database)
        elif database.backend == "postgres":
            probe_postgres(database)
        try:
            super().__init__(env=env)
        except PersistenceError as e:
            raise storage_error(e, f"the event store at {database.display}") from None

    def construct_transcoder(self) -> Transcoder:
        transcoder = FastJSONTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(LineBookTranscoding())

    # ----- queues --------------------------------------------------------------------------------------

    def get_queue(self, queue_id: UUID) -> SyncQueue:
        try:
            queue: Any = retry_storage(lambda: self.repository.get(queue_id))
        except AggregateNotFoundError:
            raise QueueNotFoundError(f"no queue {queue_id}") from None
        if not isinstance(queue, SyncQueue):
            raise QueueNotFoundError(f"no queue {queue_id}")
        return queue

    def save_batch(self, *aggregates: Aggregate) -> None:
        """Save pending events of all aggregates in one transaction, retrying transient storage errors.

        Raises ConcurrentWriteError when another writer got there first (nothing of this save is stored).
        """
        counts = [(a, len(a.pending_events)) for a in aggregates]
        # Application.save() checks every object against runtime Protocols (~30 us each: a third of a
        # 100k-customer sync); the aggregates here are known, so collect their events directly. Collected
        # once, outside the retry: a retried attempt must write the same events, not an empty save.
        processing = ProcessingEvent[UUID]()
        for aggregate in aggregates:
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate.id] = aggregate

        def save() -> None:
            try:
                with self.write_gate:
                    recordings = self._record(processing)
                self._notify(recordings)
            except IntegrityError:
                # Nothing of this save is stored; the caller reloads the aggregates and redoes its step.
                raise ConcurrentWriteError("another writer saved first") from None

        retry_storage(save)
        for aggregate, pending in counts:
            if isinstance(aggregate, SyncQueue) and pending:
                version = aggregate.version
                if version // QUEUE_SNAPSHOT_INTERVAL > (version - pending) // QUEUE_SNAPSHOT_INTERVAL:
                    self.snapshot_from_memory(aggregate)

    def snapshot_from_memory(self, aggregate: Aggregate) -> None:
        if self.snapshots is None:
            return
        snapshot = Snapshot.take(aggregate)
        snapshots = self.snapshots

        def put() -> None:
            with self.write_gate:
                snapshots.put([snapshot])

        retry_storage(put)

    # ----- customers in bulk ---------------------------------------------------------------------------

    def load_customers(self, ids: Sequence[UUID]) -> dict[UUID, Customer]:
        """Current state of many customers in one query (a batch must not cost a query per customer)."""
        if not ids:
            return {}
        rows = retry_storage(lambda: self._select_events_of(ids))
        by_id: dict[UUID, list[StoredEvent]] = {}
        for stored in rows:
            oid = (
                stored.originator_id
                if isinstance(stored.originator_id, UUID)
                else UUID(str(stored.originator_id))
            )
            by_id.setdefault(oid, []).append(stored)
        customers: dict[UUID, Customer] = {}
        for oid, stored_events in by_id.items():
            aggregate: Any = None
            for stored in sorted(stored_events, key=lambda s: s.originator_version):
                aggregate = self.mapper.to_domain_event(stored).mutate(aggregate)  # type: ignore[attr-defined]
            if isinstance(aggregate, Customer):
                customers[oid] = aggregate
        return customers

    def customer_heads(self, ids: Sequence[UUID]) -> dict[UUID, CustomerHead]:
        """The latest event of each of these customers (no replay), as a CustomerHead.

        A re-sync asks this of every customer of every page, so only the tail of each stored state is read
        (HEAD_TAIL_BYTES: the event's own last fields, its digest among them); an event whose digest is not
        there (a Changed naming many fields, an encrypted or compressed store) is read whole and decoded,
        in a second query for those only."""
        if not ids:
            return {}
        if self.mapper.cipher is not None or self.mapper.compressor is not None:
            return self._decoded_heads(ids)
        heads: dict[UUID, CustomerHead] = {}
        unread: list[UUID] = []
        rows = retry_storage(
            lambda: eventlog.select_heads_of(self.recorder, self.database.backend, ids, HEAD_TAIL_BYTES)
        )
        for oid, version, topic, tail in rows:
            if topic == _DELETED_TOPIC:
                heads[oid] = CustomerHead(version=version, digest=None, deleted=True)
                continue
            digest = _stored_digest(tail)
            if digest is None:
                unread.append(oid)
            else:
                heads[oid] = CustomerHead(version=version, digest=digest, deleted=False)
        if unread:
            heads.update(self._decoded_heads(unread))
        return heads

    def log_position(self) -> int:
        """The event log's position now: the notification id of the last event stored (0: none yet)."""
        return int(retry_storage(self.recorder.max_notification_id) or 0)

    def changed_after(self, position: int, limit: int) -> tuple[set[UUID], int] | None:
        """The customers (aggregate ids) with an event stored after ``position``, and the position of the
        last event looked at (``position`` when there is none): every customer outside that set is, in the
        log, as it was at ``position``. None when more than ``limit`` events of any kind were stored since:
        too many to read for a hint, the caller reads the customers' heads instead. Reads positions and
        topics only (eventlog.select_positions_after), never a state."""
        rows = retry_storage(
            lambda: eventlog.select_positions_after(self.recorder, self.database.backend, position, limit + 1)
        )
        if len(rows) > limit:
            return None
        changed = {oid for oid, _, topic in rows if topic in _CUSTOMER_TOPICS}
        return changed, (rows[-1][1] if rows else position)

    def customers_named(self, ids: Sequence[UUID]) -> dict[UUID, tuple[str, str, int]]:
        """The (org, store URL, WooCommerce id) of each of these aggregates that is a customer, from its
        Registered event, a query per 500 (SQLite takes a bounded number of variables a statement); others
        (queues, stores, unknown ids) are left out."""
        rows: list[StoredEvent] = []
        for chunk in chunks(ids, 500):
            rows += retry_storage(
                partial(
                    eventlog.select_events_of, self.recorder, self.database.backend, chunk, first_only=True
                )
            )
        named: dict[UUID, tuple[str, str, int]] = {}
        for stored in rows:
            if stored.topic != _REGISTERED_TOPIC:
                continue
            event = self.mapper.to_domain_event(stored)
            if isinstance(event, Customer.Registered):
                named[event.originator_id] = (event.org_id, event.store_url, int(event.woo_id))
        return named

    def _decoded_heads(self, ids: Sequence[UUID]) -> dict[UUID, CustomerHead]:
        """customer_heads the long way: each latest event read whole and decoded."""
        heads: dict[UUID, CustomerHead] = {}
        for stored in retry_storage(lambda: self._select_events_of(ids, latest_only=True)):
            oid = (
                stored.originator_id
                if isinstance(stored.originator_id, UUID)
                else UUID(str(stored.originator_id))
            )
            deleted = stored.topic == _DELETED_TOPIC
            digest = None if deleted else getattr(self.mapper.to_domain_event(stored), "digest", None)
            heads[oid] = CustomerHead(version=stored.originator_version, digest=digest, deleted=deleted)
        return heads

    def _select_events_of(self, ids: Sequence[UUID], latest_only: bool = False) -> list[StoredEvent]:
        return eventlog.select_events_of(self.recorder, self.database.backend, ids, latest_only)

    # ----- reading the log -----------------------------------------------------------------------------

    def queue_events(self, queue_id: UUID) -> Iterator[Any]:
        """The queue's events in order, read in slices so a big queue never sits in memory whole."""
        for item in self._stored_queue_events(queue_id):
            yield self.mapper.to_domain_event(item)

    def _stored_queue_events(self, queue_id: UUID, first: int = 200) -> Iterator[StoredEvent]:
        """The queue's stored events in order, ``first`` then 200 at a time."""
        position, limit = 0, first
        while True:
            stored: Sequence[StoredEvent] = retry_storage(
                partial(self.recorder.select_events, queue_id, gt=position, limit=limit)
            )
            if not stored:
                return
            yield from stored
            position, limit = stored[-1].originator_version, 200

    def queue_created(self, queue_id: UUID) -> SyncQueue.Created | None:
        """A queue's first event (its org, store and options), or None when there is no such queue."""
        stored = retry_storage(partial(self.recorder.select_events, queue_id, lte=1, limit=1))
        event = self.mapper.to_domain_event(stored[0]) if stored else None
        return event if isinstance(event, SyncQueue.Created) else None

    def digested_pages(
        self, queue_id: UUID, give_up_after: int = 3, runs: list[int | None] | None = None
    ) -> Iterator[SyncQueue.LinesAdded]:
        """The queue's LinesAdded events that carry their page's body digest, in order. The others are
        skipped unread where states are plain; a queue whose first ``give_up_after`` pages carry none (run
        with a batch delay, or by an older version, whose first sync holds every record in them) is given
        up at once: read in small slices first, so that costs a few events, not the whole queue. ``runs``
        gets the log position of each run met on the way (ProcessingStarted.log_position, None when it has
        none)."""
        plain = self.mapper.cipher is None and self.mapper.compressor is None
        undigested = digested = 0
        for item in self._stored_queue_events(queue_id, first=8):
            if item.topic == _PROCESSING_STARTED_TOPIC:
                started = self.mapper.to_domain_event(item) if runs is not None else None
                if isinstance(started, SyncQueue.ProcessingStarted):
                    assert runs is not None
                    runs.append(started.log_position)
                continue
            if item.topic != _LINES_ADDED_TOPIC:
                continue
            event = (
                None if plain and _BODY_DIGEST_KEY not in item.state else self.mapper.to_domain_event(item)
            )
            if isinstance(event, SyncQueue.LinesAdded) and event.body_digest is not None:
                digested += 1
                yield event
            else:
                undigested += 1
                if not digested and undigested >= give_up_after:
                    return


_DELETED_TOPIC = get_topic(Customer.Deleted)
_REGISTERED_TOPIC = get_topic(Customer.Registered)
# Every event class of a customer (what SyncApplication.changed_after counts as a change).
_CUSTOMER_TOPICS = frozenset(
    get_topic(cls)
    for cls in vars(Customer).values()
    if isinstance(cls, type) and issubclass(cls, Customer.Event)
)
_PROCESSING_STARTED_TOPIC = get_topic(SyncQueue.ProcessingStarted)
_LINES_ADDED_TOPIC = get_topic(SyncQueue.LinesAdded)
_BODY_DIGEST_KEY = b'"body_digest":"'
# How much of the end of a customer's latest stored event customer_heads reads: a Registered event's
# digest starts 127 bytes before its end (`"digest":"<64 hex>","queue_id":"<uuid>"}`), a Changed event's
# that plus its list of changed field names.
HEAD_TAIL_BYTES = 384
_DIGEST_KEY = b'"digest":"'
_DIGEST_VALUE = re.compile(rb'"digest":"([0-9a-f]{64})"')


def _stored_digest(state: bytes) -> str | None:
    """The digest of a stored Registered/Changed event, read without parsing its ~1.5 KB record, from the
    whole stored state or from its tail (its last bytes).

    A re-sync asks this of every customer: parsing the whole record was a second of a 100k re-sync. The
    event's own `digest` field is written after its `record` (field order), and no string in the JSON can
    hold an unescaped quote, so the last `"digest":"` is the event's; in a tail, an occurrence found is the
    last of the whole state (an occurrence cut by the tail's start has none after it). Anything
    unexpected: None, and the caller decodes the event properly."""
    at = state.rfind(_DIGEST_KEY)
    if at < 0:
        return None
    # One C-level match (a set test per byte was 2 us a customer).
    found = _DIGEST_VALUE.match(state, at)
    return found.group(1).decode("ascii") if found else None


def retry_storage(func: Callable[[], T], max_retries: int = 3, backoff_s: float = 1.0) -> T:
    """The one retry helper for storage: transient errors (lost connection, locked database) are retried
    with exponential backoff and jitter (1 s, 2 s, 4 s ...); a full disk, a read-only file or refused
    credentials become a StorageError at once (waiting will not fix them); anything else is raised as is."""
    attempt = 0
    while True:
        try:
            return func()
        except (OperationalError, InterfaceError) as e:
            attempt += 1
            if is_permanent(e):
                raise storage_error(e) from None
            if attempt > max_retries:
                raise storage_error(e, attempts=attempt) from None
            delay = backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
            log.warning("storage.retry", attempt=attempt, delay_s=round(delay, 2), error=first_line(e))
            time.sleep(delay)


def require_database(database: DatabaseConfig) -> None:
    """For commands that only read: a SQLite database that does not exist is an error, and nothing (no
    file, no directory) is created. PostgreSQL databases are checked when opened (`wcsync db migrate`)."""
    path = database.sqlite_path
    if database.backend != "sqlite" or path is None or _in_memory(path):
        return
    if not path.is_file():
        what = (
            f"{path} is a directory, not a wcsync database"
            if path.is_dir()
            else f"no wcsync database at {path}"
        )
        raise StorageError(
            f"{what}; run `wcsync start` (or `wcsync db migrate`) first, "
            "or point --database-url / WCSYNC_DATABASE_URL at an existing one"
        )


def prepare_sqlite_file(path: Path) -> None:
    """Make the SQLite file's directory and the file itself, so that a path that cannot hold a database
    says why (permission, read-only filesystem, a file where a directory should be) instead of SQLite's
    "unable to open database file"."""
    if _in_memory(path):
        return
    fix = "choose a writable path with --database-url sqlite:///PATH or WCSYNC_DATABASE_URL"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StorageError(
            f"cannot create the SQLite database {path}: a part of {path.parent} is a file, not a directory; {fix}"
        ) from None
    except OSError as error:
        raise StorageError(
            f"cannot create the directory {path.parent} for the SQLite database "
            f"({error.strerror or type(error).__name__}); {fix}"
        ) from None
    if path.is_dir():
        raise StorageError(
            f"the SQLite database path {path} is a directory; give a file in it, e.g. sqlite:///{path / 'wcsync.db'}"
        )
    try:
        # Opened as SQLite would (read-write, created 0644 less the umask), to learn why it cannot be.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as error:
        raise StorageError(
            f"cannot create the SQLite database {path} ({error.strerror or type(error).__name__}); {fix}"
        ) from None


def _in_memory(path: Path) -> bool:
    return str(path) == ":memory:" or str(path).startswith("file:")


def probe_postgres(database: DatabaseConfig) -> None:
    """One direct connection before the pool is made: a refused login or an unreachable server fails now,
    in the server's own words, instead of after the pool's 10 s wait as "couldn't get a connection"."""
    import psycopg  # PostgreSQL only: a command on SQLite never pays for its import

    try:
        psycopg.connect(**database.pg_connect_kwargs()).close()
    except psycopg.Error as error:
        raise storage_error(error, f"the database {database.display}") from None


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
