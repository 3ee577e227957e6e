"""Background runs: the syncs a long-lived process (``wcsync serve``) has in flight, as asyncio tasks.

``BackgroundRuns`` admits a start / retry / resume (at most MAX_RUNS at once, at most MAX_RUNS_PER_ORG of
one org, never two of one queue), launches it on the running loop and waits until it has saved its first
batch (so the queue exists and a status read finds it) or has ended, whichever is first, and at the latest
``start_confirm_s``. It knows which queues are running, remembers the starts a store refused before
anything was saved (so a client polling that queue id learns why), refuses a force-done of a queue that
is running, and stops every run after its current batch on shutdown.

Each refusal is a WcsyncError of this module whose class carries its HTTP status and code; no interface
type is known here. The log events keep the names of the HTTP API that launches the runs (``api.*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar
from uuid import UUID

import structlog

from domain.errors import EXIT_INTERNAL, EXIT_USAGE, WcsyncError
from domain.queue_terms import QueueOptions
from infrastructure.adapters.leases import LEASE_STALE_S
from infrastructure.adapters.woocommerce import ClientOptions, StoreCredentials, StoreError
from infrastructure.services.sync import RunStopped, SyncEngine, SyncOutcome
from infrastructure.support.config import StoreSettings
from infrastructure.support.errors import QueueBusyError, QueueNotFoundError
from projections import queries

log = structlog.get_logger("wcsync.api")
T = TypeVar("T")

# Runs at once in one server: each holds a worker thread while it saves; beyond this a start is 503.
MAX_RUNS = 8
# Runs at once of one org: beyond this a start of that org is 429, so one org cannot take every run.
MAX_RUNS_PER_ORG = 2
# A refused admission tells the client to try again after this many seconds.
RETRY_AFTER_S = 5
# A shutdown waits this long for runs to stop at their next batch boundary (SIGTERM must end within 10 s).
SHUTDOWN_GRACE_S = 7.0
# Refused starts remembered so a client polling a queue id that was never saved learns why.
REFUSED_STARTS_KEPT = 1000

RUN_ACTIONS = frozenset({"start", "retry", "resume"})


# ----- refusals ------------------------------------------------------------------------------------------


class AdmissionRefused(WcsyncError):
    """A start refused for want of room (not for anything in the request): the client is told to try again
    after RETRY_AFTER_S."""

    exit_code = EXIT_USAGE

    def http_details(self) -> dict[str, Any]:
        return {"retryAfterS": RETRY_AFTER_S}


class OrgBusyError(AdmissionRefused):
    """The org already runs MAX_RUNS_PER_ORG syncs here: one org cannot take every run for other orgs."""

    http_status = 429
    error_code = "org_busy"

    def __init__(self, org_id: str) -> None:
        super().__init__(
            f"org {org_id!r} already runs {MAX_RUNS_PER_ORG} syncs in this server; "
            "try again when one has finished"
        )


class ServerBusyError(AdmissionRefused):
    """The process already runs MAX_RUNS syncs."""

    http_status = 503
    error_code = "server_busy"

    def __init__(self) -> None:
        super().__init__(f"this server already runs {MAX_RUNS} syncs; try again when one has finished")


def _busy(run: BackgroundRun, queue_id: UUID) -> QueueBusyError:
    """A run of the queue is in flight in this process: refused at once, before any database read, in the
    words the queue's lease uses for a run of another process (which the engine refuses itself)."""
    return QueueBusyError(queue_id, run.holder, run.since, LEASE_STALE_S, org_id=run.org_id)


class StoreMismatchError(WcsyncError):
    """A retry or resume named a store URL other than its queue's."""

    exit_code = EXIT_USAGE
    http_status = 400
    error_code = "invalid_field"

    def __init__(self, queue_id: UUID) -> None:
        super().__init__(f"the store URL given is not the store of queue {queue_id}")
        self.queue_id = queue_id

    def http_message(self) -> str:
        return f"config.url is not the store of queue {self.queue_id}; leave it out or send the queue's store URL"


class RunCrashedError(WcsyncError):
    """A run ended before saving anything by an error nobody foresaw (the log names its type: the message
    could quote what the request carried)."""

    exit_code = EXIT_INTERNAL
    http_status = 500
    error_code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal error; the server log has the details")


# ----- runs ----------------------------------------------------------------------------------------------


class EngineFactory(Protocol):
    """A sync engine for one org and actor (``Services.engine``); ``stop`` set: stop after the batch."""

    def __call__(
        self, org_id: str, actor: str = ..., *, stop: threading.Event | None = None
    ) -> SyncEngine: ...


@dataclass(frozen=True)
class RunRequest:
    """A start, retry or resume to run in the background. ``store_url`` None: the queue's own store (retry
    and resume; a start needs one). ``options`` is a start's."""

    action: str
    org_id: str
    actor: str
    credentials: StoreCredentials
    store_url: str | None = None
    queue_id: UUID | None = None
    options: QueueOptions | None = None

    def __post_init__(self) -> None:
        if self.action not in RUN_ACTIONS:
            raise ValueError(f"not a background run: {self.action!r}")
        if self.action == "start" and (self.store_url is None or self.options is None):
            raise ValueError("a start needs a store URL and options")
        if self.action != "start" and self.queue_id is None:
            raise ValueError(f"a {self.action} needs a queue id")

    def store(self, url: str) -> StoreSettings:
        return StoreSettings(
            url=url,
            consumer_key=self.credentials.consumer_key,
            consumer_secret=self.credentials.consumer_secret,
        )


@dataclass
class BackgroundRun:
    org_id: str
    action: str
    store_url: str | None
    stop: threading.Event = field(default_factory=threading.Event)  # set: stop after the current batch
    named: asyncio.Event = field(default_factory=asyncio.Event)  # queue_id is known
    saved: asyncio.Event = field(default_factory=asyncio.Event)  # the run has saved a batch
    task: asyncio.Task[SyncOutcome] | None = None
    queue_id: UUID | None = None
    holder: str = ""  # its engine's, as its queue's lease names it
    since: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def running(self) -> bool:
        return self.task is None or not self.task.done()


class BackgroundRuns:
    """The runs in flight on one event loop (plain dicts: only the loop's thread touches them).

    ``engine`` makes each run's engine; ``executor`` runs the short database reads of a launch and of a
    force-done (a queue's state), never on the loop. The runs themselves save on the loop's default
    executor."""

    def __init__(
        self,
        engine: EngineFactory,
        executor: Executor,
        client_options: ClientOptions,
        start_confirm_s: float,
    ) -> None:
        self._engine = engine
        self._executor = executor
        self._client_options = client_options
        self._start_confirm_s = start_confirm_s
        self._runs: dict[UUID, BackgroundRun] = {}
        self._refused_starts: OrderedDict[UUID, tuple[str, StoreError]] = OrderedDict()
        # Runs admitted and not ended, by org (in all at most MAX_RUNS, per org at most MAX_RUNS_PER_ORG).
        self._org_slots: Counter[str] = Counter()

    # ----- what runs ---------------------------------------------------------------------------------

    def in_flight(self, org_id: str, queue_id: UUID) -> BackgroundRun | None:
        """The run of this org's queue in flight here, if any (another org's is never shown)."""
        run = self._runs.get(queue_id)
        return run if run is not None and run.org_id == org_id and run.running else None

    def refused_start(self, org_id: str, queue_id: UUID) -> StoreError | None:
        """Why the store refused this org's start of ``queue_id`` before anything was saved, if it did."""
        refused = self._refused_starts.get(queue_id)
        return refused[1] if refused is not None and refused[0] == org_id else None

    def running_count(self) -> int:
        return sum(1 for run in self._runs.values() if run.running)

    async def status(
        self,
        org_id: str,
        queue_id: UUID,
        read_status: Callable[[], Awaitable[dict[str, Any] | None]],
    ) -> dict[str, Any]:
        """The status of this org's queue with ``isRunning``: what ``read_status`` reads from the read
        models (caught up), else the draft of a start in flight that has saved nothing yet. Raises the
        store's error for a start it refused before anything was saved, else QueueNotFoundError (the same
        answer for another org's queue: it is not even confirmed to exist)."""
        # Whether a run is in flight is read before the read: once it is not, every event is saved.
        run = self.in_flight(org_id, queue_id)
        status = await read_status()
        if status is None:
            if run is not None:
                # Started, first page not saved yet (the start answered after start_confirm_s).
                return {**queries.draft_status(org_id, queue_id, run.store_url), "isRunning": True}
            refused = self.refused_start(org_id, queue_id)
            if refused is not None:
                raise refused.with_traceback(None)  # raised at each poll: no traceback piling up
            raise QueueNotFoundError(f"no queue {queue_id} in org {org_id!r}")
        return {**status, "isRunning": run is not None}

    # ----- launch ------------------------------------------------------------------------------------

    async def launch(self, request: RunRequest) -> UUID | None:
        """Admit and start the run; its queue id once it has saved its first batch, ended, or run for
        ``start_confirm_s`` (None only for a start cancelled before it named its queue). A run that ended before saving anything raises its error (a store that
        refused a new queue, an unknown queue, nothing to retry...), RunCrashedError for an unforeseen
        one; a refused admission raises OrgBusyError, ServerBusyError or QueueBusyError."""
        if request.queue_id is not None:
            self.refuse_if_running(request.org_id, request.queue_id)
        if self._org_slots[request.org_id] >= MAX_RUNS_PER_ORG:
            raise OrgBusyError(request.org_id)
        if self._org_slots.total() >= MAX_RUNS:
            raise ServerBusyError()
        # Given back when the run's task ends (_finished), or here if it never starts.
        self._org_slots[request.org_id] += 1
        run = BackgroundRun(org_id=request.org_id, action=request.action, store_url=request.store_url)
        try:
            return await self._launch_admitted(request, run)
        finally:
            if run.task is None:
                self._release(run)

    async def _launch_admitted(self, request: RunRequest, run: BackgroundRun) -> UUID | None:
        engine = self._engine(request.org_id, request.actor, stop=run.stop)
        run.holder = engine.holder
        engine.keep_new_queue_on_stop = True  # the caller names the queue: a stopped start must leave it
        self._watch_saves(engine, run)
        if request.action == "start":
            assert request.store_url is not None and request.options is not None

            def created(queue_id: UUID) -> None:
                run.queue_id = queue_id
                self._runs[queue_id] = run
                run.named.set()

            coroutine: Coroutine[Any, Any, SyncOutcome] = engine.start(
                request.store(request.store_url), request.options, self._client_options, on_created=created
            )
        else:
            assert request.queue_id is not None
            queue_id = request.queue_id
            chosen = await self._in_thread(engine.queue_store, queue_id, request.store_url)
            if not chosen.matches:
                raise StoreMismatchError(queue_id)
            store = request.store(chosen.url)
            # Again: another request may have launched it meanwhile.
            self.refuse_if_running(request.org_id, queue_id)
            run.queue_id, run.store_url = queue_id, chosen.queue_url
            self._runs[queue_id] = run
            run.named.set()
            run_engine = engine.resume if request.action == "resume" else engine.retry
            coroutine = run_engine(queue_id, store, self._client_options)
        task = asyncio.create_task(coroutine, name=f"wcsync-{request.action}")
        run.task = task
        task.add_done_callback(lambda finished: self._finished(run, finished))
        # A start names its queue in its first step (on_created); the answer needs that name at least.
        await _first_of(task, run.named.wait())
        await _first_of(task, run.saved.wait(), within_s=self._start_confirm_s)
        if not run.saved.is_set() and task.done() and not task.cancelled():
            error = task.exception()
            if isinstance(error, WcsyncError):
                raise error
            if error is not None:
                raise RunCrashedError() from error
        log.info(
            "api.sync_launched", action=request.action, org_id=request.org_id, queue_id=str(run.queue_id)
        )
        return run.queue_id

    def refuse_if_running(self, org_id: str, queue_id: UUID) -> None:
        # Another org's run is not even confirmed: the engine answers that queue as one that does not exist.
        run = self.in_flight(org_id, queue_id)
        if run is not None:
            raise _busy(run, queue_id)

    def _watch_saves(self, engine: SyncEngine, run: BackgroundRun) -> None:
        """Signal the run's first save to the waiting launch. On the loop's own thread (the end of a run)
        the engine's inline catch-up is skipped: the app-wide follower and every status read's own
        catch-up keep the tables current, and a catch-up there would stall everything on the loop."""
        inner = engine.on_saved
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def saved(force: bool) -> None:
            if threading.get_ident() == loop_thread:
                run.saved.set()
                return
            if inner is not None:
                inner(force)
            with contextlib.suppress(RuntimeError):  # the loop closed under a run cancelled at shutdown
                loop.call_soon_threadsafe(run.saved.set)

        engine.on_saved = saved

    def _release(self, run: BackgroundRun) -> None:
        self._org_slots[run.org_id] -= 1
        if not self._org_slots[run.org_id]:
            del self._org_slots[run.org_id]

    def _finished(self, run: BackgroundRun, task: asyncio.Task[SyncOutcome]) -> None:
        self._release(run)
        if run.queue_id is not None and self._runs.get(run.queue_id) is run:
            del self._runs[run.queue_id]
        if task.cancelled():
            log.warning("api.sync_cancelled", action=run.action, queue_id=str(run.queue_id))
            return
        error = task.exception()
        if error is None:
            outcome = task.result()
            log.info(
                "api.sync_finished",
                action=run.action,
                queue_id=str(outcome.queue_id),
                state=outcome.state,
                seconds=round(outcome.seconds, 3),
                store_error=None if outcome.store_error is None else str(outcome.store_error),
            )
            return
        if isinstance(error, RunStopped):
            log.info("api.sync_stopped", action=run.action, queue_id=str(run.queue_id), message=str(error))
            return
        if isinstance(error, StoreError) and not run.saved.is_set() and run.queue_id is not None:
            self._refused_starts[run.queue_id] = (run.org_id, error)
            while len(self._refused_starts) > REFUSED_STARTS_KEPT:
                self._refused_starts.popitem(last=False)
        log.warning(
            "api.sync_failed",
            action=run.action,
            queue_id=str(run.queue_id),
            error=str(error) if isinstance(error, WcsyncError) else type(error).__name__,
        )

    # ----- force-done --------------------------------------------------------------------------------

    async def force_done(self, org_id: str, actor: str, queue_id: UUID, reason: str) -> None:
        """Force-done the queue, refused (QueueBusyError) while a run of it is in flight here."""
        run = self.in_flight(org_id, queue_id)
        if run is not None:
            raise _busy(run, queue_id)
        engine = self._engine(org_id, actor)
        await self._in_thread(engine.force_done, queue_id, reason)

    # ----- stopping ----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask every run in flight to stop after its current batch."""
        for run in self._runs.values():
            run.stop.set()

    async def shutdown(self) -> None:
        """Stop the runs in flight after their current batch (each saved batch is kept, the queue records
        why it stopped, and `resume` continues) and wait for them; a run still busy after SHUTDOWN_GRACE_S
        (a request to a slow store) is cancelled."""
        self.stop()
        tasks = [run.task for run in self._runs.values() if run.task is not None and not run.task.done()]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(func, *args))


async def _first_of(
    task: asyncio.Task[Any], awaited: Coroutine[Any, Any, Any], within_s: float | None = None
) -> None:
    """Until ``task`` ends or ``awaited`` completes (or ``within_s`` passes); ``task`` keeps running."""
    waiter = asyncio.create_task(awaited)
    try:
        await asyncio.wait({task, waiter}, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
