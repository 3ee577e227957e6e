"""The sync engine: the application service that the CLI (and any HTTP front) calls.

start / resume / retry / force-done of a queue. Fetching is concurrent (the WooCommerce client keeps
several pages in flight); recording and processing are serial, in a worker thread, one page at a time in
page order, each batch saved atomically (the queue's events and the customers' events in one transaction).
A process killed at any instant leaves a contiguous prefix of pages recorded and every line either draft
or finished; `resume` continues from there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import random
import threading
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, partial
from typing import Any, Protocol, TypeVar
from uuid import UUID

import structlog

from domain.customer import Customer, CustomerHead, customer_key
from domain.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, SyncError, WcsyncError
from domain.lines import DRAFT, IdSet
from domain.queue import SyncQueue
from domain.queue_terms import Q_DONE, Q_DRAFT, QueueOptions
from domain.sync import customer_keys, customer_keys_of, split_unchanged, sync_batch
from domain.validation import RejectedRecord, check_record, check_records, customer_id_of
from infrastructure.adapters.eventstore import ConcurrentWriteError, SyncApplication, chunks
from infrastructure.adapters.leases import Lease, QueueLeases, default_holder
from infrastructure.adapters.transcoder import canonical_bytes
from infrastructure.adapters.woocommerce import (
    ANSWER_DIGEST_BYTES,
    ActivitySink,
    ClientOptions,
    KnownPage,
    Page,
    ScanAhead,
    ScanResult,
    StoreCredentials,
    StoreError,
    StoreRefused,
    WooCommerceClient,
)
from infrastructure.support.config import StoreSettings
from infrastructure.support.errors import (
    QueueBusyError,
    QueueNotFoundError,
    StorageError,
    first_line,
    storage_error,
    storage_failures,
)
from infrastructure.support.failpoints import failpoint

log = structlog.get_logger("wcsync.engine")

# How often (at most) the in-process projections are brought up to date while a sync runs.
PROJECTION_REFRESH_S = 0.5
# How long the worker waits, its pages recorded, for the store's next page before it saves the pages waiting
# to be saved with later ones (_record_pages_then_idle). Longer than a fast store's gap between two pages.
IDLE_SAVE_S = 0.05
# A page's last batch waits in memory (its LinesAdded, its lines' outcomes, its customers' events) and is
# saved with the pages after it, in one transaction, until this many pages wait, or the oldest has waited
# this long, or the lines processed (created, updated, failed: not unchanged) would pass SAVE_LINES (or
# the queue's batch_size, if larger); or with the run's next save of any kind. A re-sync of an unchanged
# store so commits a few dozen times, not once a page, one where 1% changed not much more, and a first sync
# once every 5 pages of 100: each commit is a few round trips and a WAL flush the recording thread waits
# for (measured: 60% of its time with a commit a page). A process killed meanwhile loses only pages that
# resume fetches again. With a batch delay every batch is saved at once, as before.
PAGES_PER_SAVE = 50
PAGES_SAVE_MAX_S = 1.0
SAVE_LINES = 500
# Pages fetched while the worker thread records earlier ones wait for it, at most this many (then the fetch
# waits too); they are recorded in its next step, their customers' heads read in one query.
RECORD_PAGES_AT_ONCE = 10
# How many of a store's latest queues a scan looks through for one whose pages it can compare with.
KNOWN_QUEUE_CANDIDATES = 5
# Known pages are vouched for by the log (SyncApplication.changed_after) while at most this many events, plus
# one in KNOWN_CHANGED_SHARE of the known pages' lines, were stored since the earlier scan began; past that
# every known customer's head is read instead.
KNOWN_CHANGED_EVENTS = 10_000
KNOWN_CHANGED_SHARE = 5
# A batch whose save loses a race with another writer is reloaded and redone at most this many times.
MAX_CONFLICT_ATTEMPTS = 10
CONFLICT_BACKOFF_S = 0.05
# How often a run awaiting the store looks at its stop event (a stop cancels that wait).
STOP_POLL_S = 0.1


T = TypeVar("T")

# How the engine gets a store client (the composition root passes WooCommerceClient's): the store's URL,
# its credentials, the client's options and where the client reports incidents (retries, fallbacks).
StoreClientFactory = Callable[
    [str, StoreCredentials, ClientOptions, ActivitySink], AbstractAsyncContextManager[WooCommerceClient]
]


class RunStopped(WcsyncError):
    """A run stopped on request (Ctrl-C, SIGTERM, a server shutting down) after its last saved batch."""

    exit_code = EXIT_INTERRUPTED
    http_status = 503
    error_code = "server_stopping"

    def __init__(self, queue_id: UUID | None, saved: bool) -> None:
        if queue_id is not None and saved:
            message = (
                f"stopped after the last saved batch; every saved batch is kept — "
                f"`wcsync resume {queue_id}` continues"
            )
        else:
            message = "stopped before anything was saved; nothing is left behind"
        super().__init__(message)
        self.queue_id = queue_id

    def http_message(self) -> str:
        return f"this server is shutting down: {self}"


class RunFailed(WcsyncError):
    """A run ended by a failure nobody foresaw; its saved batches are kept and it can be resumed."""

    exit_code = EXIT_INTERNAL


class Progress(Protocol):
    def set_total(self, total: int) -> None: ...
    def advance(self, lines: int) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def set_total(self, total: int) -> None:
        pass

    def advance(self, lines: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class SyncOutcome:
    queue_id: UUID
    state: str
    counts: dict[str, int]
    is_action_required: bool
    action_required_reason: str | None
    seconds: float
    store_error: StoreError | None = None
    # Pages this run recorded from the last scan's digests, without parsing the store's answer.
    known_pages: int = 0
    partly_known_pages: int = 0  # pages whose answer changed, recorded with only the changed customers read


class _Encodings:
    """canonical_bytes that remembers what it encoded during one worker step: check_records encodes every
    record for its checks, and the digest of the same record (split_unchanged, sync_batch) reuses those
    bytes instead of encoding the record again. Holds the records it encoded until it is dropped."""

    def __init__(self) -> None:
        self._encoded: dict[int, tuple[Mapping[str, Any], bytes]] = {}
        self._digests: dict[int, tuple[Mapping[str, Any], str]] = {}
        # Records taken as unchanged without the boundary's checks (_Run.as_fetched): by id, with the record.
        self.unchecked: dict[int, Mapping[str, Any]] = {}

    def __call__(self, record: Mapping[str, Any]) -> bytes:
        encoded = canonical_bytes(record)
        self._encoded[id(record)] = (record, encoded)
        return encoded

    def again(self, record: Mapping[str, Any]) -> bytes:
        """The record's canonical bytes: remembered when this very object was encoded, else encoded now."""
        known = self._encoded.get(id(record))
        if known is not None and known[0] is record:
            return known[1]
        return canonical_bytes(record)

    def digest(self, record: Mapping[str, Any]) -> str:
        """The record's digest (SHA-256 of its canonical bytes), computed once a step."""
        known = self._digests.get(id(record))
        if known is not None and known[0] is record:
            return known[1]
        digest = hashlib.sha256(self.again(record)).hexdigest()
        self._digests[id(record)] = (record, digest)
        return digest


@dataclass(frozen=True)
class _Known:
    """A page of an earlier scan of the same listing (SyncQueue.LinesAdded with a body digest): what the
    client compares its answers with (``page``: the answer's digest and the ids on it), and the digest of
    every customer on it as that scan left it (``digests``: 32 bytes each, in page order, 4x smaller than
    the hex). When the customers are still mirrored so, the same answer is all of them unchanged."""

    page: KnownPage
    digests: bytes

    @classmethod
    def of(cls, body_digest: str, pairs: Sequence[tuple[int, str]], answers: bytes | None = None) -> _Known:
        """From a page's (customer id, digest) pairs, in id order, and its customers' answer digests in the
        same order (KnownPage.answers; None: none, or not one for each pair); ValueError when a digest is
        not 64 hex digits."""
        # One conversion a page, not one a line (100,000 lines to load for a 100k re-sync); a digest of
        # another length, or with spaces (which fromhex skips), leaves the total short.
        if any(len(digest) != 64 for _, digest in pairs):
            raise ValueError("a line's digest is not a SHA-256")
        digests = bytes.fromhex("".join(digest for _, digest in pairs))
        if len(digests) != 32 * len(pairs):
            raise ValueError("a line's digest is not a SHA-256")
        if answers is not None and len(answers) != ANSWER_DIGEST_BYTES * len(pairs):
            answers = None
        return cls(KnownPage(body_digest, array("q", (cid for cid, _ in pairs)), answers), digests)

    def answers_text(self) -> str | None:
        """The page's answer digests as LinesAdded.answers has them (for lines in page order)."""
        answers = self.page.answers
        return None if answers is None else base64.b64encode(answers).decode("ascii")

    @cached_property
    def places(self) -> dict[int, int]:
        """Where each customer is on the page, by id (read by a step's heads and by _same_as_known)."""
        return {cid: index for index, cid in enumerate(self.page.ids)}

    def digest(self, index: int) -> str:
        """The digest (hex) of the customer at ``index`` on the page."""
        return self.digests[32 * index : 32 * index + 32].hex()

    def pairs(self) -> list[tuple[int, str]]:
        """(customer id, digest in hex) of every customer on the page, in page order."""
        text = self.digests.hex()
        return [(cid, text[64 * index : 64 * index + 64]) for index, cid in enumerate(self.page.ids)]


@dataclass
class _Vouched:
    """The log's word on the customers of known pages (SyncApplication.changed_after): every customer of the
    store not in ``changed`` (WooCommerce ids) has had no event since the earlier scan whose pages these are
    began, so it is still exactly as that scan left it and its line's digest is that scan's. ``looked_at``:
    the aggregates with such an event already named (SyncApplication.customers_named); ``position``: how
    far the log was read; ``budget``: how many more events it may read before reading heads is cheaper."""

    changed: set[int] = field(default_factory=set)
    looked_at: set[UUID] = field(default_factory=set)
    position: int = 0
    budget: int = 0


@dataclass
class _Run:
    """What one processing run of a queue holds in memory."""

    queue: SyncQueue
    progress: Progress
    # Filled by the client on the event loop, drained by the worker thread: a deque pops atomically.
    incidents: deque[tuple[str, str, str, dict[str, Any]]] = field(default_factory=deque)
    saved: bool = False  # has this run stored anything yet (a new queue is saved with its first page)
    # A new queue's first events (Created, ProcessingStarted): what to go back to if its first save
    # loses a race, since there is nothing in the store to reload it from.
    initial_events: list[Any] = field(default_factory=list)
    batches: int = 0  # batches saved by this run (the batch delay comes before every later one)
    # Pages recorded in memory and not saved yet (see PAGES_PER_SAVE): what each was recorded from, (page,
    # records, refused records), so a reload after a lost race can record them again; the customers they
    # changed (saved with them) and how many lines they processed.
    unsaved_pages: list[tuple[int, list[dict[str, Any]], list[RejectedRecord]]] = field(default_factory=list)
    unsaved_since: float = 0.0
    unsaved_customers: list[Customer] = field(default_factory=list)
    unsaved_lines: int = 0
    # Set by the scan (event loop) when it has pages for the worker or waits for its step to end: a step
    # idling before an idle save (_record_pages_then_idle) then returns at once.
    worker_wanted: threading.Event = field(default_factory=threading.Event)
    # Whether the queue was reloaded after a lost race since the unsaved pages were last recorded again:
    # only then can they be missing from it or have draft lines (looking costs a line lookup per record
    # of every waiting page, on every page: 8% of an unchanged re-sync).
    reloaded: bool = False
    # The lost pages _record_unsaved_again has still to record again (page, records, refused records).
    recording_again: list[tuple[int, list[dict[str, Any]], list[RejectedRecord]]] = field(
        default_factory=list
    )
    encodings: _Encodings = field(default_factory=_Encodings)  # of the worker step under way
    # The pages of the last scan of this listing (by number) whose answers this scan need not parse
    # (_load_known_pages), and the known pages recorded and not saved yet, to record again after a lost race.
    known: dict[int, _Known] = field(default_factory=dict)
    known_waiting: dict[int, Page] = field(default_factory=dict)
    known_read: set[int] = field(default_factory=set)  # pages recorded from known ids, nothing parsed
    partly_read: set[int] = field(default_factory=set)  # pages recorded with Page.same_ids not parsed
    # The customers of known pages that the log cannot vouch for (None: none it can, read every head).
    vouched: _Vouched | None = None
    log_position: int | None = None  # the log's position as the run began (ProcessingStarted's)
    # The customers this run saved changes of, while the log vouches for known pages' customers (_Vouched):
    # kept for nothing else (a million-customer first sync held a million UUIDs, 240 bytes each).
    own_customers: set[UUID] = field(default_factory=set)
    # The store had no customer when the run began (_is_new_store): its pages' customers are new, no head
    # is read. Only a hint: a customer another writer registered meanwhile makes a save conflict (its first
    # event exists), and the step is redone with heads read; the hint is dropped then.
    new_store: bool = False
    # When this run began: what it fetches was read after it, so a customer another writer (a webhook
    # delivery) changed since is not put back by an older copy of it (Customer.sync).
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class QueueStore:
    """The store a resume or retry of a queue uses (SyncEngine.queue_store): ``url``, the one given or else
    the queue's own; ``queue_url``, the queue's. Each interface says a mismatch in its own words."""

    queue_id: UUID
    queue_url: str
    url: str

    @property
    def matches(self) -> bool:
        return self.url == self.queue_url


class SyncEngine:
    def __init__(
        self,
        app: SyncApplication,
        org_id: str,
        client_factory: StoreClientFactory,
        actor: str = "wcsync",
        on_saved: Callable[[bool], None] | None = None,
        absent_customer_ids: Callable[[str, str, IdSet], Iterable[int]] | None = None,
        progress: Progress | None = None,
        store_queue_ids: Callable[[str, str], list[UUID]] | None = None,
        stop: threading.Event | None = None,
        leases: QueueLeases | None = None,
        holder: str | None = None,
        customers_projected_through: Callable[[int], bool] | None = None,
        store_has_customers: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.app = app
        # Whoever runs a queue holds its lease (None: no lease is taken); ``holder`` names this run to
        # anyone refused meanwhile: pid@host by default, a worker passes its own words.
        self.leases = leases
        self.holder = holder or default_holder()
        self.client_factory = client_factory
        # Set from any thread to stop a run between batches (its batch delay waits on it too).
        self.stop = stop if stop is not None else threading.Event()
        # A new queue stopped before its first save is saved anyway, with why it stopped (the HTTP API: its
        # client was told the queue id, so the queue must exist and resume); the CLI leaves nothing behind.
        self.keep_new_queue_on_stop = False
        self.org_id = org_id
        self.actor = actor
        self.on_saved = on_saved
        # The store's mirrored customers not among a scan's ids (a read model's answer, ascending).
        self.absent_customer_ids = absent_customer_ids
        # The org's queues of a store, newest first (a read model's answer: only a hint of which queue's
        # pages a scan may compare its answers with; the customers' heads decide, see _Known).
        self.store_queue_ids = store_queue_ids
        # Whether the customers read model has applied every event up to a log position (known_customer_ids
        # then names every customer mirrored before it: the deletion check need not wait for a catch-up).
        self.customers_projected_through = customers_projected_through
        # Whether the read model holds any customer of a store (a first sync's scan then reads no heads).
        self.store_has_customers = store_has_customers
        self.progress: Progress = progress or NoProgress()
        self._last_refresh = 0.0

    # ----- commands ------------------------------------------------------------------------------------

    def new_queue(self, store_url: str, options: QueueOptions, queue_name: str | None = None) -> SyncQueue:
        """A queue not saved yet: it is saved with its first page, so a store that refuses us at once
        (wrong key, wrong URL) leaves nothing behind."""
        return SyncQueue(
            org_id=self.org_id,
            queue_name=queue_name or f"customers {store_url}",
            store_url=store_url,
            options=options.as_dict(),
            started_by=self.actor,
        )

    async def start(
        self,
        store: StoreSettings,
        options: QueueOptions,
        client_options: ClientOptions,
        queue_name: str | None = None,
        on_created: Callable[[UUID], None] | None = None,
        ahead: ScanAhead | None = None,
    ) -> SyncOutcome:
        """A new queue's first run. ``ahead``: its scan begun already (a first `wcsync start`): its client
        is taken over when it is the one this run would make (same store, credentials and options)."""
        queue = self.new_queue(store.url, options, queue_name)
        if on_created is not None:
            on_created(queue.id)
        async with self._leased(queue.id):
            return await self._run(queue, store, client_options, mode="start", ahead=ahead)

    def create_draft(self, store_url: str, options: QueueOptions, queue_name: str | None = None) -> UUID:
        """A new queue saved at once as a draft, nothing fetched (a detached start): its id is answered
        before a worker runs it (``start_draft``), and `status` finds it meanwhile."""
        queue = self.new_queue(store_url, options, queue_name)
        self.app.save_batch(queue)
        self._refresh(force=True)
        return queue.id

    async def start_draft(
        self, queue_id: UUID, store: StoreSettings, client_options: ClientOptions
    ) -> SyncOutcome:
        """The first run of a queue saved by ``create_draft`` (recorded as a start); a queue already past
        its draft (its first run was stopped or its worker died) is resumed instead."""
        async with self._leased(queue_id):
            queue = await self._in_worker(self.get_queue, queue_id)
            if queue.state != Q_DRAFT:
                return await self._resume(queue_id, store, client_options)
            self._check_store(queue, store)
            return await self._run(queue, store, client_options, mode="start")

    async def resume(
        self, queue_id: UUID, store: StoreSettings, client_options: ClientOptions
    ) -> SyncOutcome:
        async with self._leased(queue_id):
            return await self._resume(queue_id, store, client_options)

    async def _resume(
        self, queue_id: UUID, store: StoreSettings, client_options: ClientOptions
    ) -> SyncOutcome:
        queue = await self._in_worker(self.get_queue, queue_id)
        if queue.state == Q_DONE:
            raise SyncError(f"queue {queue_id} is already done; nothing to resume")
        self._check_store(queue, store)
        return await self._run(queue, store, client_options, mode="resume")

    async def retry(self, queue_id: UUID, store: StoreSettings, client_options: ClientOptions) -> SyncOutcome:
        async with self._leased(queue_id):
            queue = await self._in_worker(self.get_queue, queue_id)
            self._check_store(queue, store)
            queue.request_retry(self.actor)  # saved by _run, with the run's ProcessingStarted
            return await self._run(queue, store, client_options, mode="retry")

    def force_done(self, queue_id: UUID, reason: str) -> SyncOutcome:
        """Refused (QueueBusyError) while a run of the queue holds its lease; holds it meanwhile itself, so
        no run starts between the check and the save."""
        started = time.monotonic()
        with self._holding(queue_id):
            queue = self.get_queue(queue_id)
            queue.force_done(reason, self.actor)
            self.app.save_batch(queue)
        self._refresh(force=True)
        return self._outcome(queue, started)

    def check_deferrable(self, action: str, queue_id: UUID) -> SyncQueue:
        """Refuse now what a deferred retry or resume of ``queue_id`` would refuse when its job runs, so the
        caller is told at once: another org's or no queue (QueueNotFoundError), a queue a run holds
        (QueueBusyError), a resume of a done queue, a retry with nothing to retry. Returns the queue."""
        queue = self.get_queue(queue_id)
        if self.leases is not None:
            lease = self.leases.lease_of(queue_id)
            if lease is not None and not self.leases.is_stale(lease):
                raise self.leases.busy(lease)
        if action == "resume" and queue.state == Q_DONE:
            raise SyncError(f"queue {queue_id} is already done; nothing to resume")
        if action == "retry":
            queue.request_retry(self.actor)  # on this copy, never saved: refused as the job's run would be
        return queue

    def queue_store(self, queue_id: UUID, url: str | None = None) -> QueueStore:
        """Which store a resume or retry of ``queue_id`` uses: ``url`` when one is given, else the store
        the queue syncs (the CLI and the API alike). Reads the queue: QueueNotFoundError as get_queue."""
        queue = self.get_queue(queue_id)
        return QueueStore(queue_id=queue.id, queue_url=queue.store_url, url=url or queue.store_url)

    def get_queue(self, queue_id: UUID) -> SyncQueue:
        # One answer, word for word, for a missing queue and another org's: the latter is not even confirmed.
        missing = QueueNotFoundError(f"no queue {queue_id} in org {self.org_id!r}")
        try:
            queue = self.app.get_queue(queue_id)
        except QueueNotFoundError:
            raise missing from None
        if queue.org_id != self.org_id:
            raise missing
        return queue

    # ----- the queue's lease ---------------------------------------------------------------------------

    def _take_lease(self, queue_id: UUID, held: list[Lease]) -> None:
        """The queue's lease, put in ``held`` (so a caller cancelled while this thread works still releases
        it). Taken before the queue is read: what a run reads then is what the last holder left. A live
        lease of another org's run is the answer for a queue that does not exist (QueueNotFoundError). A
        lease lost meanwhile (taken over once our heartbeat went stale) stops the run after its batch."""
        if self.leases is None:
            return
        try:
            held.append(self.leases.acquire(queue_id, self.org_id, self.holder, on_lost=self.stop.set))
        except QueueBusyError as busy:
            if busy.org_id != self.org_id:
                raise QueueNotFoundError(f"no queue {queue_id} in org {self.org_id!r}") from None
            raise

    @contextlib.asynccontextmanager
    async def _leased(self, queue_id: UUID) -> AsyncIterator[None]:
        """Hold the queue's lease around a run, released however the run ends (its database calls in a
        worker thread, as every step's)."""
        held: list[Lease] = []
        try:
            await self._in_worker(self._take_lease, queue_id, held)
            yield
        finally:
            for lease in held:
                await self._in_worker(lease.release)

    @contextlib.contextmanager
    def _holding(self, queue_id: UUID) -> Iterator[None]:
        """``_leased`` for a command of the calling thread (force-done)."""
        held: list[Lease] = []
        try:
            self._take_lease(queue_id, held)
            yield
        finally:
            for lease in held:
                lease.release()

    # ----- one processing run --------------------------------------------------------------------------

    async def _run(
        self,
        queue: SyncQueue,
        store: StoreSettings,
        client_options: ClientOptions,
        mode: str,
        ahead: ScanAhead | None = None,
    ) -> SyncOutcome:
        started = time.monotonic()
        options = queue.queue_options
        client_options = client_options.for_queue(options)
        saved = mode != "start" or not queue.pending_events  # a draft's start (start_draft) is saved already
        position = await self._log_position()
        queue.start_processing(mode, position)
        run = _Run(
            queue=queue,
            progress=self.progress,
            saved=saved,
            initial_events=list(queue.pending_events),
            log_position=position,
        )
        try:
            if run.saved:
                await self._in_worker(self.app.save_batch, queue)
            store_error = await self._process_run(run, store, client_options, mode, ahead)
        except storage_failures() as error:
            raise await self._storage_failure(run, error) from None
        except (WcsyncError, SyncError):
            raise
        except Exception as error:
            raise await self._unexpected_failure(run, error) from error
        await self._in_worker(self._refresh, True)
        outcome = self._outcome(run.queue, started)
        outcome.store_error = store_error
        outcome.known_pages = len(run.known_read)
        outcome.partly_known_pages = len(run.partly_read)
        return outcome

    async def _log_position(self) -> int | None:
        """The log's position as a run begins, before it reads any customer (ProcessingStarted.log_position);
        None when the database does not answer (only a hint for later scans: the run's own saves report a
        database that is gone)."""
        try:
            return await self._in_worker(self.app.log_position)
        except storage_failures() as error:
            log.info("queue.log_position_unavailable", error=first_line(error))
            return None

    async def _process_run(
        self,
        run: _Run,
        store: StoreSettings,
        client_options: ClientOptions,
        mode: str,
        ahead: ScanAhead | None = None,
    ) -> StoreError | None:
        queue = run.queue
        run.progress.set_total(queue.lines.total)
        run.progress.advance(queue.lines.total - queue.lines.count(DRAFT))
        log.info("queue.run", queue_id=str(queue.id), mode=mode, store=store.url, lines=queue.lines.total)
        credentials = StoreCredentials(store.consumer_key, store.consumer_secret)
        store_error: StoreError | None = None
        opened: AbstractAsyncContextManager[WooCommerceClient]
        if ahead is not None and ahead.serves(store.url, credentials, client_options):
            run.incidents = ahead.incidents  # what its client reported before this run began, and from now
            opened = contextlib.nullcontext(ahead.client)
        else:
            if ahead is not None:
                await ahead.close()  # begun for another store or other options: its requests cancelled now
            opened = self.client_factory(
                store.url, credentials, client_options, lambda *a: run.incidents.append(a)
            )
        try:
            async with opened as client:
                await self._until_stopped(run, self._steps(run, client, mode))
        except StoreError as error:
            store_error = error
            if not run.saved and isinstance(error, StoreRefused):
                # Refused before the first page: nothing was saved and nothing is left half-written.
                raise
            await self._in_worker(self._record_fetch_failure, run, error)
        except RunStopped:
            if run.saved or self.keep_new_queue_on_stop:
                await self._in_worker(self._record_stop, run)
            await self._in_worker(self._refresh, True)
            raise RunStopped(run.queue.id, run.saved) from None
        finally:
            run.progress.close()
        if store_error is None:
            await self._in_worker(self._finish, run)
        return store_error

    async def _steps(self, run: _Run, client: WooCommerceClient, mode: str) -> None:
        if mode == "retry":
            await self._refetch_drafts(run, client)
            # Every draft's record was fetched again just now, by this run.
            await self._in_worker(self._process_recorded_drafts, run, run.started_at)
        else:
            # Lines recorded but not finished before a crash: their records are in the log.
            await self._in_worker(self._process_recorded_drafts, run)
        if not run.queue.fetch_finished:
            await self._fetch(run, client)

    async def _until_stopped(self, run: _Run, steps: Coroutine[Any, Any, None]) -> None:
        """Await a run's steps. A stop while they wait for the store cancels that wait (a worker step in
        flight ends first, at its batch: see _in_worker), so a slow or silent store cannot hold a stop up;
        the run then ends with RunStopped like a stop seen between batches."""
        task = asyncio.ensure_future(steps)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=STOP_POLL_S)
                if self.stop.is_set() and not task.done():
                    task.cancel()
                    break
        except asyncio.CancelledError:
            task.cancel()
            await _until_done(task)
            raise
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this run itself is being cancelled, not stopped
            raise RunStopped(run.queue.id, run.saved) from None

    async def _in_worker(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a worker thread (asyncio.to_thread: the loop's executor). Cancelled meanwhile,
        it still waits for the step to end before it unwinds (a thread cannot be interrupted; a step stops at
        its next batch once the stop is set): a run never moves on while a thread changes its queue."""
        future = asyncio.ensure_future(asyncio.to_thread(func, *args))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await _until_done(future)
            error = None if future.cancelled() else future.exception()
            if error is not None:
                raise error from None
            raise

    async def _unexpected_failure(self, run: _Run, error: Exception) -> RunFailed:
        """A failure nobody foresaw under a run: the queue must not be left processing with no word of
        why. The traceback goes to the debug log; the queue's activity and the error name the resume."""
        log.debug("queue.run_failed", queue_id=str(run.queue.id), exc_info=error)
        cause = f"unexpected error: {type(error).__name__}: {first_line(error)[:200]}"
        if not run.saved:
            return RunFailed(f"{cause}; nothing of queue {run.queue.id} was saved")
        told = await self._tell_queue(run, f"of an {cause}", "unexpected")
        return RunFailed(f"{cause} — {told} (the log has the traceback: -vv)")

    async def _storage_failure(self, run: _Run, error: BaseException) -> StorageError:
        """The database failed under the run (busy past its timeouts, full, gone). The batches saved stay
        saved; the queue says so in its activity if it can still be written, and the error names the resume
        command either way (never a raw driver error: the run's queue is what the user needs)."""
        failure = error if isinstance(error, StorageError) else storage_error(error)
        if not run.saved:
            return StorageError(
                f"{failure}; nothing of queue {run.queue.id} was saved: run `wcsync start` again"
            )
        told = await self._tell_queue(run, f"the database failed ({failure})", "database")
        return StorageError(f"{failure} — {told}")

    async def _tell_queue(self, run: _Run, because: str, reason: str) -> str:
        """Record in the queue's activity why its run stopped, if the database still takes it; returns the
        words for the user's error, with the resume command either way."""
        queue_id = run.queue.id
        try:
            await self._in_worker(self._record_failure, run, because, reason)
        except Exception as again:  # the failure that stopped the run can stop this save too
            log.info("queue.stop_not_recorded", queue_id=str(queue_id), error=type(again).__name__)
            said = ""
        else:
            said = ", and its activity says why it stopped"
        return f"queue {queue_id} keeps every saved batch{said}: resume it with `wcsync resume {queue_id}`"

    async def _fetch(self, run: _Run, client: WooCommerceClient) -> None:
        queue = run.queue
        # Every id of this scan (and of the queue's earlier runs): compact, a million of them is 8 MB.
        seen = IdSet(queue.lines)
        totals: set[int] = set()
        pages = queue.pages_recorded
        scan = ScanResult()
        # Pages are recorded in the worker thread while the next ones are fetched; those that arrive while
        # it is busy wait (RECORD_PAGES_AT_ONCE at most) and are recorded together in its next step.
        waiting: list[Page] = []
        recording: asyncio.Future[None] | None = None
        run.known = await self._in_worker(self._load_known_pages, run)
        if not run.known:
            run.new_store = await self._in_worker(self._is_new_store, run)
        known = {number: entry.page for number, entry in run.known.items()}
        scanned = client.pages(start_page=queue.next_page, seen_ids=seen, result=scan, known=known)
        arrival: asyncio.Future[Page | None] | None = None  # the scan's next page, awaited

        async def record_waiting() -> None:
            """The pages waiting, recorded in a worker step of their own once the last step has ended."""
            nonlocal recording, waiting
            if recording is not None:
                await recording
            run.worker_wanted.clear()
            recording = asyncio.ensure_future(self._in_worker(self._record_pages_then_idle, run, waiting))
            waiting = []
            if self.stop.is_set() or not run.saved:
                # A new queue is saved with its first page before the next is taken: from then on it
                # exists (`status` finds it, a run killed later leaves it to resume).
                run.worker_wanted.set()
                await recording
            if self.stop.is_set():
                raise RunStopped(queue.id, run.saved)

        try:
            while True:
                if arrival is None:
                    arrival = asyncio.ensure_future(anext(scanned, None))
                if recording is not None and not recording.done():
                    # The worker's step may end before the store's next answer: the pages that wait are then
                    # handed over, and a step that failed (a save) fails the run, without waiting for it.
                    await asyncio.wait((arrival, recording), return_when=asyncio.FIRST_COMPLETED)
                if recording is not None and recording.done() and not arrival.done():
                    await recording  # a failed step's error, now
                    if waiting:
                        await record_waiting()
                        continue
                page, arrival = await arrival, None
                if page is None:
                    break
                if page.total is not None:
                    totals.add(page.total)
                    run.progress.set_total(max(page.total, run.queue.lines.total))
                failpoint("page_fetched")
                waiting.append(page)
                run.worker_wanted.set()  # a worker step idling for more (_record_pages_then_idle) returns
                pages = page.number
                if recording is not None and not recording.done() and len(waiting) < RECORD_PAGES_AT_ONCE:
                    continue
                await record_waiting()
            run.worker_wanted.set()
            if recording is not None:
                await recording
            if waiting:
                await self._in_worker(self._record_pages, run, waiting)
        except BaseException as error:
            # A step in flight ends before the run moves on (no two threads ever change the queue). A store
            # that failed mid-scan: the pages it did send are recorded first, as they were before.
            run.worker_wanted.set()
            if arrival is not None:
                arrival.cancel()  # the scan's finally cancels its requests in flight
                await _until_done(arrival)
                if not arrival.cancelled():
                    arrival.exception()  # retrieved (the store's failure is this one, or comes second)
            # The scan ended now, not when collected: its requests in flight are cancelled before the run ends.
            with contextlib.suppress(Exception):
                await scanned.aclose()
            if recording is not None:
                await _until_done(recording)
                failed = None if recording.cancelled() else recording.exception()
                if failed is not None and failed is not error:
                    raise failed from None  # the step's own failure, as _in_worker raises it
                if waiting and isinstance(error, StoreError):
                    await self._in_worker(self._record_pages, run, waiting)
            raise
        # A store that changed while we paged (totals moved) can have shifted a customer across a page
        # boundary: list every id and fetch the ones the scan missed.
        last_total = max(totals) if totals else None
        if len(totals) > 1 or (last_total is not None and last_total != len(seen)):
            await self._reconcile(run, client, seen)
        # Only a scan that reached the store's end may mark customers missing from it as deleted.
        await self._in_worker(self._record_fetch_finished, run, pages, scan.complete, seen)

    async def _reconcile(self, run: _Run, client: WooCommerceClient, seen: IdSet) -> None:
        store_ids = await client.all_ids()
        missing = sorted(store_ids - seen)
        run.incidents.append(
            (
                "store_changed_during_scan",
                "warning",
                f"The store changed while it was read; listed every id again and found {len(missing)} "
                "customer(s) the page scan had missed",
                {"missing": len(missing), "store_total": len(store_ids)},
            )
        )
        if missing:
            oversized: list[RejectedRecord] = []
            found, _gone = await client.customers_by_id(missing, rejected=oversized)
            records = [found[cid] for cid in missing if cid in found]
            seen.update(found)
            seen.update(r.customer_id for r in oversized if r.customer_id is not None)
            await self._in_worker(self._record_page, run, None, records, oversized)

    async def _refetch_drafts(self, run: _Run, client: WooCommerceClient) -> None:
        ids = list(run.queue.draft_ids())
        if not ids:
            return
        oversized: list[RejectedRecord] = []
        found, gone = await client.customers_by_id(ids, rejected=oversized)
        checked = check_records((found[cid] for cid in ids if cid in found), canonical_bytes)
        rejected = [*checked.rejected, *oversized]

        def refetched() -> None:
            queue = run.queue
            records = [r for r in checked.records if _is_draft(queue, r["id"])]
            for chunk in chunks(records, 100):
                queue.refetch_lines(chunk)
            failures = {
                r.customer_id: r.error
                for r in rejected
                if r.customer_id is not None and _is_draft(queue, r.customer_id)
            }
            queue.fail_lines(failures)
            still_gone = [cid for cid in gone if _is_draft(queue, cid)]
            if still_gone:
                queue.cancel_lines(still_gone, "customer no longer exists in WooCommerce (deleted)")
                run.progress.advance(len(still_gone))
            self._drain_incidents(run)
            self._save(run)

        await self._in_worker(self._until_saved, run, refetched)

    # ----- worker-thread steps (never run two at once for one run) ------------------------------------

    def _load_known_pages(self, run: _Run) -> dict[int, _Known]:
        """The pages of the latest other queue of this store that listed it the same way (per page, role)
        and recorded its pages' digests: what this scan compares its answers with (_record_known). Empty
        when there is none. Only a hint: each known page is checked against the mirror's heads."""
        queue = run.queue
        if self.store_queue_ids is None:
            return {}
        try:
            candidates = self.store_queue_ids(queue.org_id, queue.store_url)[:KNOWN_QUEUE_CANDIDATES]
        except storage_failures() as error:  # a hint only: the scan reads every page instead
            log.warning("queue.known_pages_unavailable", queue_id=str(queue.id), error=first_line(error))
            return {}
        options = queue.queue_options
        for queue_id in candidates:
            if queue_id == queue.id:
                continue
            created = self.app.queue_created(queue_id)
            if created is None or (created.org_id, created.store_url) != (queue.org_id, queue.store_url):
                continue
            other = QueueOptions.from_dict(created.options)
            if (other.per_page, other.role) != (options.per_page, options.role):
                continue
            known: dict[int, _Known] = {}
            runs: list[int | None] = []
            for event in self.app.digested_pages(queue_id, runs=runs):
                if event.page is None or event.body_digest is None or event.records:
                    continue
                # In id order (the page's order in an id-ordered listing): a page with changed customers
                # names them first, and lines added out of order cost the queue's line book its fast path.
                named = [(int(cid), str(digest)) for cid, digest in [*event.processed, *event.unchanged]]
                answers = _answer_digests(event.answers, len(named))
                if answers is None:
                    pairs, ordered = sorted(named), None
                else:
                    size = ANSWER_DIGEST_BYTES
                    triples = sorted(
                        (cid, digest, answers[size * i : size * i + size])
                        for i, (cid, digest) in enumerate(named)
                    )
                    pairs = [(cid, digest) for cid, digest, _ in triples]
                    ordered = b"".join(answer for _, _, answer in triples)
                try:
                    known[event.page] = _Known.of(event.body_digest, pairs, ordered)
                except ValueError:  # not a digest this version writes: the page is read as any other
                    continue
            if known:
                run.vouched = self._vouched(run, runs, sum(len(k.page.ids) for k in known.values()))
                log.info(
                    "queue.known_pages",
                    queue_id=str(queue.id),
                    source=str(queue_id),
                    pages=len(known),
                    vouched=None if run.vouched is None else len(run.vouched.changed),
                )
                return known
        return {}

    def _is_new_store(self, run: _Run) -> bool:
        """Whether the store had no customer when the run began: the customers read model, current to the
        run's start, holds none of it (a first sync). Anything unknown: False (heads are read)."""
        position = run.log_position
        if position is None or self.store_has_customers is None or self.customers_projected_through is None:
            return False
        queue = run.queue
        try:
            return self.customers_projected_through(position) and not self.store_has_customers(
                queue.org_id, queue.store_url
            )
        except storage_failures() as error:  # a hint only
            log.info("queue.new_store_unknown", queue_id=str(queue.id), error=first_line(error))
            return False

    def _vouched(self, run: _Run, runs: list[int | None], lines: int) -> _Vouched | None:
        """What the log says of the known pages' customers: those with an event since the earliest run of
        the earlier scan began (``runs``: its runs' log positions) are the ones whose heads must be read.
        None (read every head) when a run has no position (an older version's) or too much happened since."""
        if not runs or None in runs:
            return None
        since = min(position for position in runs if position is not None)
        budget = KNOWN_CHANGED_EVENTS + lines // KNOWN_CHANGED_SHARE
        try:
            found = self.app.changed_after(since, budget)
            if found is None:
                return None
            changed, position = found
            vouched = _Vouched(position=position, budget=budget - (position - since))
            self._name_changed(run, vouched, changed)
        except storage_failures() as error:  # a hint only: every head is read instead
            log.warning("queue.vouching_unavailable", queue_id=str(run.queue.id), error=first_line(error))
            return None
        return vouched

    def _name_changed(self, run: _Run, vouched: _Vouched, changed: set[UUID]) -> None:
        """Add to ``vouched.changed`` the WooCommerce ids of the store's customers among these aggregates
        with events since (their Registered events name them: no UUID is computed for the customers of the
        pages, the cost was a SHA-1 each). The run's own saves are left out: their customers are its lines
        already, which nothing of this run records twice."""
        new = changed - vouched.looked_at - run.own_customers
        if not new:
            return
        queue = run.queue
        store = (queue.org_id, queue.store_url)
        for org_id, store_url, woo_id in self.app.customers_named(list(new)).values():
            if (org_id, store_url) == store:
                vouched.changed.add(woo_id)
        vouched.looked_at |= new

    def _refresh_vouched(self, run: _Run) -> None:
        """Add what was stored since the log was last read (another writer's changes during this run, a
        webhook delivery's, are so seen before the pages they touch are recorded)."""
        vouched = run.vouched
        if vouched is None:
            return
        try:
            found = self.app.changed_after(vouched.position, max(vouched.budget, 0))
            if found is not None:
                changed, position = found
                self._name_changed(run, vouched, changed)  # before the position moves: all or nothing
                vouched.budget -= position - vouched.position
                vouched.position = position
        except storage_failures() as error:  # a hint only: every head is read from now on
            log.warning("queue.vouching_unavailable", queue_id=str(run.queue.id), error=first_line(error))
            found = None
        if found is None:
            run.vouched = None
            run.own_customers = set()

    def _record_pages_then_idle(self, run: _Run, pages: list[Page]) -> None:
        """The scan's worker step: record ``pages`` (_record_pages); then, when pages wait to be saved with
        later ones (_may_wait) and none comes within IDLE_SAVE_S (a slow store, or the end of its pages in
        flight), save them: they reach the log, `status` and the read models while the run waits for the
        store anyway, instead of with the pages after them. A store that keeps the worker busy sees no
        extra save: its next page is there (``worker_wanted``, set by the scan) before the wait ends."""
        self._record_pages(run, pages)
        if not run.unsaved_pages or self.stop.is_set():
            return
        if run.worker_wanted.wait(IDLE_SAVE_S) or self.stop.is_set():
            return  # more to record; or the stop's own save says what becomes of them (_record_stop)
        self._last_refresh = 0.0  # the read models hear of this save, however recent the last word
        self._until_saved(run, partial(self._save_unsaved, run))

    def _record_pages(self, run: _Run, pages: list[Page]) -> None:
        """Record pages fetched while the worker was busy with earlier ones, in page order, each as
        _record_page does (a known page as _record_known does); the heads of all their customers are read
        in one query first."""
        run.encodings = _Encodings()
        heads, unvouched = self._step_heads(run, pages)
        checked = {
            page.number: self._checked_page(
                run, page.number, page.records, page.rejected, heads, strict_json=page.strict_json
            )
            for page in pages
            if page.known_ids is None
        }
        # The mirrored customers whose records changed, of every page at once (one query, not one a page).
        unchecked = run.encodings.unchecked
        changed = [
            record
            for good, _ in checked.values()
            for record in good
            if record["id"] in heads and unchecked.get(id(record)) is not record
        ]
        customers = self._mirrored(run.queue, changed) if changed else {}
        not_vouched = None if unvouched is None else set(unvouched)
        for page in pages:
            hint = [heads]  # for the first attempt only: after a lost race the heads are read again
            if page.known_ids is not None:
                known_hint = [(heads, not_vouched)]
                self._until_saved(run, partial(self._record_known, run, page, known_hint))
                continue
            good, with_id = checked[page.number]
            if page.same_ids:
                partly = [(heads, not_vouched, good, with_id, customers)]
                self._until_saved(run, partial(self._record_partly_known, run, page, partly))
                continue
            step = partial(
                self._record_checked,
                run,
                page.number,
                good,
                with_id,
                hint,
                page.body_digest,
                [customers],
                answers=page.answers,
            )
            self._until_saved(run, step)

    def _step_heads(self, run: _Run, pages: list[Page]) -> tuple[dict[int, CustomerHead], list[int] | None]:
        """The heads of the customers of a step's pages (those not lines already), in one query, and which
        customers of its known pages the log does not vouch for (_unvouched; None: none it vouches for).

        A customer the log vouches for is as the earlier scan left it, so its head is not read: on a known
        page it needs none; on a page whose answer changed (a customer on it did), a record the earlier scan
        had on the same page gets that scan's digest as its head (the same as the stored head's, which it
        has not changed since), so only the page's other customers are read. A 1%-changed re-sync reads two
        pages in three, and so read every head of them."""
        lines = run.queue.lines
        known_ids: list[int] = []
        parsed_ids: list[int] = []
        earlier: dict[int, str] = {}  # parsed pages' customers on the earlier scan's same page: its digest
        for page in pages:
            if page.known_ids is not None:
                known_ids += page.known_ids
                continue
            known_ids += page.same_ids  # as they were on the known page: heads only for those not vouched
            page_ids = [cid for cid in map(customer_id_of, page.records) if cid is not None]
            parsed_ids += page_ids
            known = run.known.get(page.number)
            if known is not None and run.vouched is not None:
                places = known.places
                for cid in page_ids:
                    index = places.get(cid)
                    if index is not None:
                        earlier[cid] = known.digest(index)
        unvouched = self._unvouched(run, [*known_ids, *earlier])
        if run.new_store:  # no customer of the store existed as the run began (known_ids is empty too)
            return {}, unvouched
        if unvouched is None:
            read = [*parsed_ids, *known_ids]
            vouched_heads: dict[int, CustomerHead] = {}
        else:
            not_vouched = set(unvouched)
            read = [cid for cid in parsed_ids if cid not in earlier or cid in not_vouched]
            read += (cid for cid in known_ids if cid in not_vouched)
            vouched_heads = {
                cid: CustomerHead(version=0, digest=digest, deleted=False)  # no event read: the log's word
                for cid, digest in earlier.items()
                if cid not in not_vouched and cid not in lines
            }
        heads = self._heads(run.queue, [cid for cid in read if cid not in lines])
        heads.update(vouched_heads)
        return heads, unvouched

    def _unvouched(self, run: _Run, ids: list[int]) -> list[int] | None:
        """Of these customers of known pages, those whose heads must be read: the ones with an event since
        the earlier scan began (_Vouched), after reading the log up to now. None: the log vouches for none of
        them (every head is read)."""
        if not ids:
            return []
        self._refresh_vouched(run)
        vouched = run.vouched
        if vouched is None:
            return None
        changed = vouched.changed
        return [cid for cid in ids if cid in changed] if changed else []

    def _record_known(
        self, run: _Run, page: Page, heads_read: list[tuple[dict[int, CustomerHead], set[int] | None]]
    ) -> None:
        """The worker step of a page whose answer is byte for byte a page the last scan read (Page.known_ids):
        when every customer on it is still mirrored as that scan left it (_Known.digests), its lines are
        added unchanged, with nothing parsed or checked; otherwise the answer is read and recorded as any
        other page (_record_checked). ``heads_read``: the step's heads of the page's customers, and those the
        log does not vouch for (_unvouched; None: not one, every head was read): a customer it vouches for
        has had no event since that scan began, so it is as that scan left it. Run again, whole, after a lost
        race (every head read again then)."""
        self._record_unsaved_again(run)
        queue = run.queue
        assert page.known_ids is not None
        ids = page.known_ids
        if page.number <= queue.pages_recorded:
            return  # recorded already, by another writer that won a save: nothing of it is draft
        heads, unvouched = heads_read.pop() if heads_read else (self._heads(queue, ids), None)
        known = run.known.get(page.number)
        pairs: list[tuple[int, str]] | None = None  # None: read as any other page
        if known is not None and list(known.page.ids) == ids and not queue.lines.has_any(ids):
            if unvouched is not None and unvouched.isdisjoint(ids):
                pairs = known.pairs()  # no event since that scan began for any of them: as it left them
            else:
                pairs = _same_as_known(known, ids, heads, unvouched)
        if known is None or pairs is None:
            read = page.parsed()
            good, with_id = self._checked_page(run, read.number, read.records, read.rejected, heads)
            # The heads of the records as parsed (read again: the known ids are only the last scan's word).
            answers = known.page.answers_by_id() if known is not None else None  # the same answer's
            self._record_checked(run, read.number, good, with_id, [], read.body_digest, answers=answers)
            return
        queue.add_lines(
            [], page=page.number, unchanged=pairs, body_digest=page.body_digest, answers=known.answers_text()
        )
        run.known_read.add(page.number)
        run.progress.advance(len(pairs))
        if run.saved:
            run.known_waiting[page.number] = page
        self._process(run, [], {}, (page.number, [], []) if run.saved else None)

    def _record_partly_known(
        self,
        run: _Run,
        page: Page,
        read: list[
            tuple[
                dict[int, CustomerHead],
                set[int] | None,
                list[dict[str, Any]],
                list[RejectedRecord],
                dict[int, Customer],
            ]
        ],
    ) -> None:
        """The worker step of a page whose answer changed but holds customers byte for byte as the known
        page had them (Page.same_ids, not parsed): those are as the earlier scan left them when the log
        vouches for them or their heads say so, and their lines are added unchanged with that scan's
        digests; the parsed records are recorded as on any page. ``read``: what _record_pages read for
        the first attempt (heads, the customers the log does not vouch for, the parsed records checked
        and refused, the mirrored customers of the changed ones). When one of the others is not as that
        scan left it, and after a lost race, the answer is read whole and recorded as any other page."""
        self._record_unsaved_again(run)
        queue = run.queue
        known = run.known.get(page.number)
        pairs: list[tuple[int, str]] | None = None
        if read and known is not None and not queue.lines.has_any(page.same_ids):
            heads, unvouched, good, with_id, customers = read.pop()
            pairs = _same_as_known(known, page.same_ids, heads, unvouched)
        if pairs is None:
            run.partly_read.discard(page.number)
            whole = page.parsed()
            good, with_id = self._checked_page(run, whole.number, whole.records, whole.rejected)
            self._record_checked(
                run, whole.number, good, with_id, [], whole.body_digest, answers=whole.answers
            )
            return
        self._record_checked(
            run,
            page.number,
            good,
            with_id,
            [heads],
            page.body_digest,
            [customers],
            known_unchanged=pairs,
            answers=page.answers,
        )
        run.partly_read.add(page.number)
        if run.saved:
            # Recorded again from its answer after a lost race (its ``good`` are only the parsed records).
            # Set once its lines are: a save of the pages before it, which _record_checked may make first,
            # keeps only the entries of pages it records again.
            run.known_waiting[page.number] = page

    def _record_page(
        self,
        run: _Run,
        page: int | None,
        records: list[dict[str, Any]],
        refused: Iterable[RejectedRecord] = (),
    ) -> None:
        """Record a page (or a reconciliation's records): each record through the boundary first
        (domain.validation.check_record), so what is stored is what may be stored; a record refused there
        fails its own line, with an excerpt and a digest in the log instead of the record."""
        run.encodings = _Encodings()
        good, with_id = self._checked_page(run, page, records, refused)
        self._until_saved(run, partial(self._record_checked, run, page, good, with_id, []))

    def _checked_page(
        self,
        run: _Run,
        page: int | None,
        records: list[dict[str, Any]],
        refused: Iterable[RejectedRecord],
        heads: Mapping[int, CustomerHead] | None = None,
        strict_json: bool = False,
    ) -> tuple[list[dict[str, Any]], list[RejectedRecord]]:
        """A page's records through the boundary: (the good ones, the refused ones with a customer id);
        the refused ones without an id become an incident of the run. With ``heads`` (the mirrored
        customers'), a record exactly as its customer was last synced skips the checks (_as_synced).
        ``strict_json``: the records were read by orjson (Page.strict_json, check_record's)."""
        good: list[dict[str, Any]] = []
        checked_rejected: list[RejectedRecord] = []
        for raw in records:
            if heads and self._as_synced(run, raw, heads):
                good.append(raw)
            else:
                _check_into(run, raw, good, checked_rejected, strict_json)
        rejected = [*checked_rejected, *refused]
        without_id = [r for r in rejected if r.customer_id is None]
        with_id = [r for r in rejected if r.customer_id is not None]
        if without_id:
            where = f"page {page}" if page is not None else "the reconciliation"
            named = "; ".join(r.error.removeprefix("id: ") for r in without_id[:5])
            run.incidents.append(
                (
                    "records_without_id",
                    "warning",
                    f"{len(without_id)} record(s) on {where} had no usable customer id and were skipped: "
                    f"{named}{' ...' if len(without_id) > 5 else ''}",
                    {
                        "page": page,
                        "count": len(without_id),
                        "records": [
                            {"error": r.error, "excerpt": r.excerpt, "digest": r.digest, "bytes": r.size}
                            for r in without_id[:20]
                        ],
                    },
                )
            )
        return good, with_id

    def _heads(self, queue: SyncQueue, ids: list[int]) -> dict[int, CustomerHead]:
        """What is mirrored of these customers (their latest events' heads), by WooCommerce id."""
        keys = dict(zip(customer_keys_of(queue, ids), ids, strict=True))
        return {keys[key]: head for key, head in self.app.customer_heads(list(keys)).items()}

    def _as_synced(self, run: _Run, raw: Any, heads: Mapping[int, CustomerHead]) -> bool:
        """Whether a fetched record is, byte for byte in canonical form, what its mirrored customer's
        digest names. Such a record passed the boundary's checks when it was stored (the digest is of what
        was stored, after cleaning), so checking it again can only agree: a re-sync skips that, the most
        expensive step of an unchanged record (text to clean, a NUL or a lone surrogate, gives other bytes
        or none). Not for what the canonical form cannot tell apart: a float the stdlib read as infinity
        is written `null`, so bytes with a null are checked. Such a record's line is unchanged; if a lost
        race finds it changed after all, it is checked then (_late_checked)."""
        cid = customer_id_of(raw)
        head = heads.get(cid) if cid is not None else None
        if head is None or head.deleted or head.digest is None:
            return False
        try:
            encoded = run.encodings(raw)
        except (TypeError, ValueError, OverflowError, RecursionError):
            return False
        if b"null" in encoded or run.encodings.digest(raw) != head.digest:
            return False
        run.encodings.unchecked[id(raw)] = raw
        return True

    def _late_checked(
        self, run: _Run, records: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[RejectedRecord]]:
        """Records to process, each through the boundary's checks if _as_synced let it skip them."""
        unchecked = run.encodings.unchecked
        if not unchecked:
            return records, []
        good: list[dict[str, Any]] = []
        rejected: list[RejectedRecord] = []
        for record in records:
            if unchecked.get(id(record)) is not record:
                good.append(record)
            else:
                _check_into(run, record, good, rejected)
        return good, rejected

    def _record_checked(
        self,
        run: _Run,
        page: int | None,
        good: list[dict[str, Any]],
        with_id: list[RejectedRecord],
        heads_read: list[dict[int, CustomerHead]],
        body_digest: str | None = None,
        customers_read: list[dict[int, Customer]] | None = None,
        known_unchanged: Sequence[tuple[int, str]] = (),
        answers: Mapping[int, bytes] | None = None,
    ) -> None:
        """The worker step of _record_page, once its records are checked (``with_id``: the refused ones
        with a customer id; ``heads_read``: the heads of its customers when _record_pages read them, used
        once; ``body_digest``: the page's answer's, when all its customers are in ``good``;
        ``customers_read``: the mirrored customers of its changed records, loaded by _record_pages, used
        once; ``known_unchanged``: (id, digest) of customers on the page that are lines unchanged without
        a record, _record_partly_known's; ``answers``: the page's answer digests, LinesAdded.answers). Run
        again, whole, after a lost race (_until_saved).

        Without a batch delay a page is saved whole, in one transaction: its LinesAdded names the lines
        it processes by id and digest, and their records are stored once, in the customers' events saved
        with it. With a delay each batch is saved on its own, and the records wait in LinesAdded."""
        self._record_unsaved_again(run)
        queue = run.queue
        if page is not None and page <= queue.pages_recorded:
            # Recorded already (by us before a lost race, or by another process): finish its drafts.
            drafts, late = self._late_checked(run, [r for r in good if _is_draft(queue, r["id"])])
            queue.fail_lines({r.customer_id: r.error for r in late if r.customer_id is not None})
            self._process(run, drafts, checked=True)
            return
        fresh = [r for r in good if r["id"] not in queue.lines]
        fresh_rejected = [r.as_entry() for r in with_id if r.customer_id not in queue.lines]
        if page is None and not fresh and not fresh_rejected:
            return
        # Heads read by _record_pages cover every record of the page: one missing is a customer not mirrored.
        heads = heads_read.pop() if heads_read else self._heads(queue, [r["id"] for r in fresh])
        to_process, unchanged = split_unchanged(fresh, heads, digest_of=run.encodings.digest)
        unchanged += known_unchanged
        to_process, late = self._late_checked(run, to_process)
        fresh_rejected += [r.as_entry() for r in late]
        # Only customers that exist and changed need replaying; new ones need nothing loaded.
        changed = [r for r in to_process if r["id"] in heads]
        loaded = customers_read.pop() if customers_read else None
        if loaded is not None and all(r["id"] in loaded for r in changed):
            customers = loaded
        else:
            customers = self._mirrored(queue, changed) if changed else {}
        options = queue.queue_options
        whole = page is not None and not options.batch_delay_ms
        if whole and to_process:
            if run.batches and self.stop.is_set():
                # Before the page is recorded: resume fetches it again (nothing of it may be saved half).
                raise RunStopped(queue.id, run.saved)
            if run.unsaved_lines and run.unsaved_lines + len(to_process) > _save_lines(options):
                self._save_batch(run)  # the waiting pages on their own first: a save's lines are bounded
        if with_id or late or len(fresh) != len(good):
            body_digest = None  # the page's customers are not all lines of this LinesAdded
        if whole:
            digest = run.encodings.digest
            processed = [(r["id"], digest(r)) for r in to_process]
            answer_text = _answers_text(answers, processed, unchanged) if body_digest is not None else None
            queue.add_lines(
                [],
                page=page,
                unchanged=unchanged,
                processed=processed,
                body_digest=body_digest,
                answers=answer_text,
            )
        else:
            queue.add_lines(to_process, page=page, unchanged=unchanged, body_digest=None)
        queue.reject_lines(fresh_rejected, page=page)
        run.progress.advance(len(unchanged) + len(fresh_rejected))
        later = (page, good, with_id) if page is not None and run.saved else None
        self._process(run, to_process, customers, later, whole=whole, checked=True)

    def _may_wait(
        self, run: _Run, page: tuple[int, list[dict[str, Any]], list[RejectedRecord]], lines: int
    ) -> bool:
        """Whether a page's last batch (``lines`` processed) may wait to be saved with the pages after it
        (PAGES_PER_SAVE); if so it is counted among the unsaved ones."""
        options = run.queue.queue_options
        now = time.monotonic()
        if not run.unsaved_pages:
            run.unsaved_since = now
        if (
            options.batch_delay_ms
            or len(run.unsaved_pages) + 1 >= PAGES_PER_SAVE
            or now - run.unsaved_since >= PAGES_SAVE_MAX_S
            or run.unsaved_lines + lines >= _save_lines(options)
        ):
            return False
        run.unsaved_pages.append(page)
        run.unsaved_lines += lines
        return True

    def _save_unsaved(self, run: _Run) -> None:
        """A worker step: the pages waiting to be saved (recorded again first after a lost race)."""
        self._record_unsaved_again(run)
        self._save_batch(run)

    def _save_batch(self, run: _Run) -> None:
        failpoint("before_batch_save")
        self._save(run)
        run.batches += 1
        failpoint("after_batch_save")

    def _record_unsaved_again(self, run: _Run) -> None:
        """After a lost race the queue was reloaded without what this run had recorded and not saved yet:
        the pages not recorded at all, and the last batches of pages whose first batches were saved (their
        lines draft again). Record those pages again, or process their drafts, first (each as it would be
        now), in page order. Otherwise (the queue in memory holds them) nothing."""
        if not run.reloaded:
            return
        run.reloaded = False
        queue = run.queue
        lost = [
            entry
            for entry in run.unsaved_pages
            if entry[0] > queue.pages_recorded or any(_is_draft(queue, record["id"]) for record in entry[1])
        ]
        if not lost:
            return
        # Each page leaves the list to record again only once recorded: a save in between that loses a
        # race too reloads the queue, and _reload puts the rest back beside the ones waiting again.
        run.unsaved_pages, run.recording_again = [], lost
        while run.recording_again:
            page, good, with_id = run.recording_again[0]
            known = run.known_waiting.get(page)
            if known is not None and known.known_ids is not None:
                self._record_known(run, known, [])
            elif known is not None:
                self._record_partly_known(run, known, [])
            else:
                self._record_checked(run, page, good, with_id, [])
            run.recording_again.pop(0)

    def _process_recorded_drafts(self, run: _Run, read_after: datetime | None = None) -> None:
        """The draft lines' latest records from the log, processed. ``read_after``: when they were fetched
        at the earliest (default: the queue's creation; an earlier run of the queue fetched them)."""
        if not run.queue.lines.count(DRAFT):
            return
        read_after = read_after or run.queue.created_on
        for batch in chunks(self._draft_records(run.queue), 1000):
            if self.stop.is_set():
                raise RunStopped(run.queue.id, run.saved)
            self._until_saved(run, partial(self._process, run, batch, read_after=read_after))

    def _draft_records(self, queue: SyncQueue) -> Iterator[dict[str, Any]]:
        """The latest fetched record of every draft line, read back from the queue's own events."""
        drafts = set(queue.draft_ids())
        latest: dict[int, dict[str, Any]] = {}
        for event in self.app.queue_events(queue.id):
            if isinstance(event, SyncQueue.LinesAdded | SyncQueue.LinesRefetched):
                for record in event.records:
                    if record["id"] in drafts:
                        latest[record["id"]] = record
        return iter(latest.values())

    def _process(
        self,
        run: _Run,
        records: list[dict[str, Any]],
        customers: Mapping[int, Customer] | None = None,
        later: tuple[int, list[dict[str, Any]], list[RejectedRecord]] | None = None,
        read_after: datetime | None = None,
        whole: bool = False,
        checked: bool = False,
    ) -> None:
        """Process records whose lines are draft, in batches; each batch is one atomic save, or with
        ``whole`` (a page recorded without its records, _record_checked) all of them one save, with no
        stop between them. With ``later`` (the page being recorded, as _record_checked has it), its last
        batch may wait to be saved with the next pages' (_may_wait). Raises ConcurrentWriteError when
        another writer got there first (the caller reloads and calls again). ``checked``: every record
        passed the boundary's checks in this step (check_record or _late_checked), so sync_batch need not
        validate them again; not so for records read back from the log (older rules may have stored them)."""
        options = run.queue.queue_options
        delay_s = options.batch_delay_ms / 1000.0
        # An empty page still saves once: its LinesAdded (and any incidents) must be stored.
        batches = list(chunks(records, options.batch_size)) or [[]]
        page_lines = 0
        for index, batch in enumerate(batches):
            # The pause comes between any two batches of the run, across pages too (batch_size >= per_page
            # made it no pause at all). A stop before a page's first batch leaves the page's lines recorded
            # and draft (RunStopped's incident saves them): resume processes them.
            if (
                not whole
                and (index or run.batches)
                and (self.stop.is_set() or (delay_s and self.stop.wait(delay_s)))
            ):
                raise RunStopped(run.queue.id, run.saved)
            queue = run.queue
            todo = [r for r in batch if _is_draft(queue, r["id"])]
            if not whole and run.unsaved_lines and run.unsaved_lines + len(todo) > _save_lines(options):
                self._save_batch(run)  # the waiting pages' lines first: a save's lines are bounded
            known = customers if customers is not None else self._mirrored(queue, todo)
            outcome = sync_batch(
                queue,
                todo,
                known,
                canonical=run.encodings.again,
                read_after=read_after or run.started_at,
                checked=checked,
                digest_of=run.encodings.digest,  # computed once a step (a page saved whole names it too)
            )
            self._drain_incidents(run)
            run.unsaved_customers.extend(outcome.changed)
            lines = outcome.line_count
            if whole:  # the page's batches are saved together: counted (and shown) once, when saved
                page_lines += lines
                if index < len(batches) - 1:
                    continue
                lines = page_lines
            if later is not None and index == len(batches) - 1 and self._may_wait(run, later, lines):
                run.progress.advance(lines)
                return
            self._save_batch(run)
            run.progress.advance(lines)

    def _mirrored(self, queue: SyncQueue, records: list[dict[str, Any]]) -> dict[int, Customer]:
        """The mirrored customers of these records (one query), by WooCommerce id."""
        loaded = self.app.load_customers(customer_keys(queue, records))
        return {customer.woo_id: customer for customer in loaded.values()}

    def _until_saved(self, run: _Run, step: Callable[[], None]) -> None:
        """Run a step that mutates and saves the queue; when another writer won a save, the queue in
        memory is ahead of the store: reload it and run the step again (it re-derives what is left)."""
        for attempt in range(1, MAX_CONFLICT_ATTEMPTS + 1):
            try:
                step()
                return
            except ConcurrentWriteError:
                log.warning("batch.conflict", queue_id=str(run.queue.id), attempt=attempt)
                run.new_store = False  # another writer is at work on this store: read heads from now on
                self._reload(run)
                # Two writers on the same customers move in lockstep; a random pause lets one get ahead.
                time.sleep(random.uniform(0, CONFLICT_BACKOFF_S * attempt))
        raise SyncError(
            f"queue {run.queue.id}: another writer kept winning the same batch {MAX_CONFLICT_ATTEMPTS} times; "
            "is another wcsync process working on this queue? Resume it later."
        )

    def _reload(self, run: _Run) -> None:
        """After a lost race the queue in memory is ahead of the store: read it back."""
        # What waited to be saved with the queue is not in the store: its pages are recorded again
        # (_record_unsaved_again), their customers read again.
        run.unsaved_customers, run.unsaved_lines = [], 0
        run.reloaded = True
        if run.recording_again:  # a race lost while recording lost pages again: none of them is forgotten
            waiting = {entry[0]: entry for entry in run.unsaved_pages}
            waiting.update({entry[0]: entry for entry in run.recording_again})
            run.unsaved_pages, run.recording_again = [waiting[page] for page in sorted(waiting)], []
        if not run.saved:
            queue: Any = None
            for initial in run.initial_events:
                queue = initial.mutate(queue)
            queue.pending_events.extend(run.initial_events)
            run.queue = queue
            return
        run.queue = self.app.get_queue(run.queue.id)

    def _save(self, run: _Run) -> None:
        # Every save stores all of the queue's pending events and the customers' changed with them: the
        # unsaved pages' too.
        self.app.save_batch(run.queue, *run.unsaved_customers)
        if run.vouched is not None:  # only the log's word needs them (_name_changed): a first sync's are many
            run.own_customers.update(customer.id for customer in run.unsaved_customers)
        run.saved = True
        run.unsaved_pages, run.unsaved_customers, run.unsaved_lines = [], [], 0
        if run.known_waiting:  # saved now, but for those still to record again after a lost race
            again = {entry[0] for entry in run.recording_again}
            run.known_waiting = {n: p for n, p in run.known_waiting.items() if n in again}
        self._refresh()

    def _drain_incidents(self, run: _Run) -> None:
        while run.incidents:
            activity_type, status, message, details = run.incidents.popleft()
            run.queue.record_incident(activity_type, status, message, details)

    def _record_stop(self, run: _Run) -> None:
        """Say in the queue's own log why it stopped processing (it stays resumable: drafts are kept)."""
        self._drain_incidents(run)
        run.queue.record_incident(
            "run_stopped",
            "warning",
            "The run was stopped (interrupted, or the server shut down) after its last saved batch; "
            "resume continues from there.",
            {"draft": run.queue.lines.count(DRAFT)},
        )
        self._save_or_drop_waiting(run, lambda: self._record_stop(run))

    def _save_or_drop_waiting(self, run: _Run, again: Callable[[], None]) -> None:
        """The save of a run's last word (a stop, a store failure). When it loses a race while pages wait
        (a webhook delivery changed one of their customers, say), those pages are dropped (resume fetches
        them again) and the last word is said again on the reloaded queue; otherwise as _save_or_fail."""
        if not run.unsaved_pages:
            self._save_or_fail(run)
            return
        try:
            self._save(run)
        except ConcurrentWriteError:
            log.warning("run.waiting_pages_dropped", queue_id=str(run.queue.id), pages=len(run.unsaved_pages))
            self._reload(run)
            run.unsaved_pages, run.recording_again, run.reloaded = [], [], False
            again()

    def _record_failure(self, run: _Run, because: str, reason: str) -> None:
        """After a failed step the queue in memory may be ahead of the store (a failed save took its
        events): read it back, then say in its log why the run stopped. It stays processing, with its
        drafts: resumable."""
        self._reload(run)
        self._drain_incidents(run)
        run.queue.record_incident(
            "run_stopped",
            "error",
            f"The run stopped because {because}; every saved batch is kept and resume continues from there.",
            {"reason": reason},
        )
        self._save_or_fail(run)

    def _record_fetch_failure(self, run: _Run, error: StoreError) -> None:
        self._drain_incidents(run)
        run.queue.fail_fetch(str(error))
        self._save_or_drop_waiting(run, lambda: self._record_fetch_failure(run, error))

    def _record_fetch_finished(self, run: _Run, pages: int, complete: bool, seen: IdSet) -> None:
        if run.unsaved_pages:
            # Saved first on their own, where a lost race is redone (the fetch's end is not).
            self._until_saved(run, partial(self._save_unsaved, run))
        queue = run.queue
        if queue.pages_recorded < pages:  # never "done" with a page missing: resume fetches it again
            raise SyncError(
                f"queue {queue.id}: {pages - queue.pages_recorded} fetched page(s) were not recorded "
                f"(another writer won their saves); resume it: `wcsync resume {queue.id}`"
            )
        self._drain_incidents(run)
        queue.finish_fetch(pages=pages, total=len(seen), complete=complete)
        self._save_or_fail(run)
        # A new store's run (no customer of it mirrored as the run began, _is_new_store; a lost race clears
        # it) has nothing to mark: a customer absent from its scan was mirrored since the run began, by
        # another writer, which _mark_deleted leaves for the next scan. Its query is spared (on PostgreSQL a
        # million-customer first sync's seen ids sent in 100 ranges; on SQLite every mirrored id read back).
        if complete and self.absent_customer_ids is not None and not run.new_store:
            self._mark_deleted(run, seen)

    def _mark_deleted(self, run: _Run, seen: IdSet) -> None:
        """Customers mirrored earlier but absent from a complete scan were deleted in WooCommerce. "Earlier" is
        before the queue began: a customer another writer (a delivery, another sync) created or changed
        since may be one the scan passed before it existed, so it is left for the next scan; a customer the
        queue itself wrote is one it saw. So the read model need only have applied the log up to the run's
        start (a re-sync's follower has, long since), not the run's own events: waiting for those was half a
        second of an unchanged 100k re-sync."""
        assert self.absent_customer_ids is not None
        position = run.log_position
        if (
            position is None
            or self.customers_projected_through is None
            or not self.customers_projected_through(position)
        ):
            self._refresh(force=True)
        queue = run.queue
        began = queue.created_on
        gone = sorted(self.absent_customer_ids(queue.org_id, queue.store_url, seen))
        deleted: list[int] = []
        for chunk in chunks(gone, 500):
            keys = [customer_key(queue.org_id, queue.store_url, cid) for cid in chunk]
            customers = self.app.load_customers(keys)
            for customer in customers.values():
                if customer.last_queue_id != str(queue.id) and customer.modified_on > began:
                    continue  # another writer's since the queue began: the next complete scan decides
                customer.delete("absent from a complete scan of the store", str(queue.id))
            changed = [c for c in customers.values() if c.pending_events]
            if changed:
                self.app.save_batch(*changed)
                deleted += (c.woo_id for c in changed)
        if deleted:
            deleted.sort()
            queue.record_incident(
                "customers_deleted",
                "info",
                f"{len(deleted)} customer(s) synced earlier are no longer in the store and were marked deleted",
                {"count": len(deleted), "ids": deleted[:100]},
            )
            self._save_or_fail(run)

    def _finish(self, run: _Run) -> None:
        failpoint("before_finish")
        self._drain_incidents(run)
        run.queue.finish()
        self._save_or_fail(run)

    def _save_or_fail(self, run: _Run) -> None:
        try:
            self._save(run)
        except ConcurrentWriteError:
            raise SyncError(
                f"queue {run.queue.id} was changed by another process during this run; "
                "check `wcsync status` and resume it if needed"
            ) from None

    # ----- helpers -------------------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        """Tell the read models there is news: ``force`` when the caller needs them caught up now."""
        if self.on_saved is None:
            return
        now = time.monotonic()
        if force or now - self._last_refresh >= PROJECTION_REFRESH_S:
            self._last_refresh = now
            self.on_saved(force)

    def _check_store(self, queue: SyncQueue, store: StoreSettings) -> None:
        if store.url != queue.store_url:
            raise SyncError(
                f"queue {queue.id} syncs {queue.store_url}, not {store.url}; "
                "pass --url with the queue's store (or leave it out)"
            )

    def _outcome(self, queue: SyncQueue, started: float) -> SyncOutcome:
        return SyncOutcome(
            queue_id=queue.id,
            state=queue.state,
            counts=queue.counts(),
            is_action_required=queue.is_action_required,
            action_required_reason=queue.action_required_reason,
            seconds=time.monotonic() - started,
        )


async def _until_done(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` to end whatever cancels the waiter meanwhile."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({future})


def _check_into(
    run: _Run,
    record: Any,
    good: list[dict[str, Any]],
    rejected: list[RejectedRecord],
    strict_json: bool = False,
) -> None:
    """A record through the boundary's checks (with the step's encoder): the checked record to ``good``, or
    the refusal to ``rejected``. ``strict_json``: as check_record's."""
    outcome = check_record(record, run.encodings, strict_json=strict_json)
    if isinstance(outcome, RejectedRecord):
        rejected.append(outcome)
    else:
        good.append(outcome)


def _answer_digests(text: str | None, lines: int) -> bytes | None:
    """LinesAdded.answers as bytes, when it holds one answer digest for each of its ``lines``."""
    if text is None:
        return None
    try:
        answers = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return answers if len(answers) == ANSWER_DIGEST_BYTES * lines else None


def _answers_text(
    answers: Mapping[int, bytes] | None,
    processed: Sequence[tuple[int, str]],
    unchanged: Sequence[tuple[int, str]],
) -> str | None:
    """LinesAdded.answers for these lines (processed, then unchanged): None unless each has one."""
    if answers is None:
        return None
    try:
        joined = b"".join(answers[cid] for cid, _ in [*processed, *unchanged])
    except KeyError:
        return None
    return base64.b64encode(joined).decode("ascii")


def _same_as_known(
    known: _Known, ids: Sequence[int], heads: Mapping[int, CustomerHead], unvouched: set[int] | None
) -> list[tuple[int, str]] | None:
    """(id, the earlier scan's digest) of customers whose bytes are as the known page had them, when each
    is still mirrored as that scan left it: the log vouches for it, or its head has that digest. None when
    one is not (or is not on the known page)."""
    places = known.places
    pairs: list[tuple[int, str]] = []
    for cid in ids:
        index = places.get(cid)
        if index is None:
            return None
        digest = known.digest(index)
        if unvouched is None or cid in unvouched:
            head = heads.get(cid)
            if head is None or head.deleted or head.digest != digest:
                return None
        pairs.append((cid, digest))
    return pairs


def _save_lines(options: QueueOptions) -> int:
    """How many processed lines the pages waiting to be saved together may hold (PAGES_PER_SAVE)."""
    return max(SAVE_LINES, options.batch_size)


def _is_draft(queue: SyncQueue, customer_id: int) -> bool:
    line = queue.lines.get(customer_id)
    return line is not None and line.state == DRAFT
