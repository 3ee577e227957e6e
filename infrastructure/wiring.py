"""Wires the adapters together: event store, projections, sync engine. The one place that does.

Every command opens its services here, so this module imports at its top only what every command needs
(the event store, the projections, wcsync's own small tables); each service, and the WooCommerce client
(aiohttp: a tenth of a second), is imported by the method that builds it. `wcsync status` on SQLite then
loads no HTTP client, job queue, cron parser or cipher (tests/e2e/test_startup_imports.py checks it).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

import structlog

from infrastructure.adapters.eventlog import postgres_has_events_table, sqlite_has_events_table
from infrastructure.adapters.eventstore import SyncApplication, require_database
from infrastructure.adapters.leases import QueueLeases, default_holder, pid_exists, this_machine
from infrastructure.adapters.localjobs import LocalJobs
from infrastructure.adapters.migrations import apply_migrations
from infrastructure.adapters.positions import LogPositions
from infrastructure.adapters.schedules import ScheduleTable
from infrastructure.adapters.secrets import SecretKey, StoreSecrets
from infrastructure.adapters.tokens import ApiTokens
from infrastructure.services.schedules import MIN_EVERY_S
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import StorageError, database_errors, storage_error
from projections import queries as projection_queries
from projections.names import CUSTOMERS
from projections.runner import (
    DATABASE_URL_VARIABLE,
    FOLLOW_COMMAND,
    FOLLOWER_PARENT_VARIABLE,
    LIVE_POLL_S,
    WORKER_MODULE,
    ProjectionRunner,
    Reconnecting,
)

if TYPE_CHECKING:  # imported where they are built (see the module's docstring)
    from infrastructure.adapters.woocommerce import (
        ActivitySink,
        ClientOptions,
        StoreCredentials,
        WooCommerceClient,
    )
    from infrastructure.services.deliveries import DeliveryApplier, WebhookReceiver
    from infrastructure.services.jobs import JobWorker, SyncJobRunner, SyncJobs, WorkerSettings
    from infrastructure.services.localjobs import LocalJobWorker, LocalSyncJobs
    from infrastructure.services.runs import BackgroundRuns
    from infrastructure.services.schedules import ScheduleRunner, Schedules
    from infrastructure.services.stores import StoreRegistry
    from infrastructure.services.sync import Progress, SyncEngine
    from infrastructure.services.webhooks import StoreWebhooks

# The longest a caller that needs the read models current (a status request, the end of a run) waits for
# the live follower to apply what was saved before it asked; then it reads what is there.
CATCH_UP_WAIT_S = 30.0
# The longest a write waits for its turn at the write gate (SQLite) before it fails as "database busy".
WRITE_GATE_TIMEOUT_S = 60.0
# The longest a stopping follower is waited for (it stops between catch-up batches).
FOLLOWER_JOIN_S = 5.0

# The live follower process on PostgreSQL: ``python -m cli.processes follow`` (WORKER_MODULE, the interface
# layer's entry points, named by string), the database in its environment (DATABASE_URL_VARIABLE) with the
# pid of the sync it follows; WCSYNC_LIVE_PROCESS=0 keeps the follower a thread instead.
LIVE_PROCESS_VARIABLE = "WCSYNC_LIVE_PROCESS"
# The name the webhook deliveries' applier keeps its position in the log under (wcsync_positions).
DELIVERIES_POSITION = "webhook-deliveries"
# The turn of the worker that looks at the stores' installed webhooks (a row of wcsync_positions, no position).
WATCH_TURN = "webhook-watch"

log = structlog.get_logger("wcsync.bootstrap")


class WriteGate:
    """The turn of each SQLite writer of this process, granted in the order asked: reentrant, exclusive.

    SQLite has one writer at a time, and its busy handler is no queue: a waiting connection sleeps and polls.
    The event store's writers hand the write lock to one another without a gap (its pool queues them on a
    lock of its own), so with several runs saving batches the projection follower, polling, lost every time:
    it waited out the 30 s busy timeout, failed with "database is locked", the run that needed it current
    (the deleted-customer pass) died with it, and every request waiting on the read models waited too. Every
    save of this process and every transaction of the live follower take this gate first, so each gets its
    turn and the follower's wait is one run's batch, not a timeout."""

    def __init__(self, timeout_s: float = WRITE_GATE_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._waiting: deque[object] = deque()

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            ticket = object()
            self._waiting.append(ticket)
            deadline = time.monotonic() + self.timeout_s
            while self._owner is not None or self._waiting[0] is not ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._waiting.remove(ticket)
                    self._cond.notify_all()
                    raise StorageError(
                        f"the database stayed busy for {self.timeout_s:.0f} s (other writes of this "
                        "process held it); try again when fewer syncs run"
                    )
                self._cond.wait(remaining)
            self._waiting.popleft()
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("the write gate is released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._cond.notify_all()

    def __enter__(self) -> WriteGate:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Follower:
    """The live follower's loop (ProjectionRunner.follow's, plus two things): it says how far it has applied
    the log, so a caller that needs the read models current waits for it (``wait_until_current``) instead of
    running a catch-up of its own beside it; and such a caller wakes it at once instead of after a poll."""

    def __init__(self, runner: ProjectionRunner) -> None:
        self.runner = runner
        self._cond = threading.Condition()
        self._applied_to = 0  # every notification up to here is applied
        self._wake = threading.Event()
        self._stopped = False

    def _head(self) -> int:
        return int(self.runner.app.recorder.max_notification_id() or 0)

    def run(self) -> None:
        backoff = Reconnecting(self.runner.db, LIVE_POLL_S)
        while not self._stopped:
            self._wake.clear()
            try:
                head = self._head()
                applied = self.runner.catch_up()
            except Exception as error:  # never die: a dead follower would leave every reader waiting
                self._wake.wait(backoff.failed(error))
                continue
            backoff.succeeded()
            with self._cond:
                self._applied_to = max(self._applied_to, head)
                self._cond.notify_all()
            if not applied:
                self._wake.wait(LIVE_POLL_S)

    def wait_until_current(self, timeout_s: float) -> bool:
        """Until every event saved before this call is applied (True), or ``timeout_s`` passed (False)."""
        target = self._head()
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._applied_to < target and not self._stopped:
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, LIVE_POLL_S))
        return self._applied_to >= target

    def wake(self) -> None:
        """Look at the log now rather than at the next poll (something was saved)."""
        self._wake.set()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._wake.set()


@dataclass
class Services:
    database: DatabaseConfig
    app: SyncApplication
    projections: ProjectionRunner
    closed: bool = field(default=False)
    _follower: threading.Thread | None = field(default=None, repr=False)
    # SQLite: every write of this process takes its turn here (see WriteGate); PostgreSQL needs none.
    write_gate: WriteGate | None = field(default=None, repr=False)
    _live: _Follower | None = field(default=None, repr=False)  # the live follower thread's loop
    _catch_up_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _opened: list[StoreSecrets | ApiTokens | LocalJobs | ScheduleTable | LogPositions | DeliveryApplier] = (
        field(default_factory=list, repr=False)
    )
    _tokens: ApiTokens | None = field(default=None, repr=False)
    _leases: QueueLeases | None = field(default=None, repr=False)
    _pickup: tuple[StoreRegistry, SyncJobs | LocalSyncJobs] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.database.backend == "sqlite" and self.write_gate is None:
            # Every save of this process's application (the engine's batches, force-done, deletions).
            self.write_gate = self.app.write_gate = WriteGate()

    def engine(
        self,
        org_id: str,
        actor: str = "wcsync",
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        holder: str | None = None,
    ) -> SyncEngine:
        """An engine for ``org_id``; its runs hold their queue's lease as ``holder`` (default pid@host)."""
        from infrastructure.services.sync import SyncEngine

        return SyncEngine(
            self.app,
            org_id,
            client_factory=_store_client,
            actor=actor,
            on_saved=self._saved,
            absent_customer_ids=lambda org, store, seen: projection_queries.absent_customer_ids(
                self.projections, org, store, seen
            ),
            store_queue_ids=lambda org, store: projection_queries.store_queue_ids(
                self.projections, org, store
            ),
            customers_projected_through=lambda position: self.projections.applied_through(
                CUSTOMERS, position
            ),
            store_has_customers=lambda org, store: projection_queries.store_has_customers(
                self.projections, org, store
            ),
            progress=progress,
            stop=stop,
            leases=self.queue_leases(),
            holder=holder,
        )

    def queue_leases(self) -> QueueLeases:
        """The queue leases on these services' database: one object for every engine (one connection and
        one heartbeat thread, both started at the first lease), closed with the services; on SQLite its
        writes take their turn at the process's write gate."""
        if self._leases is None:
            self._leases = QueueLeases(self.database, write_gate=self.write_gate)
        return self._leases

    def background_runs(
        self, executor: Executor, client_options: ClientOptions, start_confirm_s: float
    ) -> BackgroundRuns:
        """The runs a long-lived process (`wcsync serve`) keeps in flight, each on an engine of these
        services; ``executor`` runs their short database reads (see BackgroundRuns)."""
        from infrastructure.services.runs import BackgroundRuns

        return BackgroundRuns(self.engine, executor, client_options, start_confirm_s)

    def store_registry(self, key: SecretKey | None, client_options: ClientOptions | None) -> StoreRegistry:
        """The org stores' registry over these services: its secrets under ``key`` (None: a command that
        only lists), a store checked with one request of the WooCommerce client (None: none checked)."""
        from infrastructure.services.stores import StoreRegistry

        # Without a key the secrets can still be deleted (a store removed), never read or written.
        secrets = StoreSecrets(self.database, key)
        self._opened.append(secrets)  # closed with the services
        check = None if client_options is None else partial(_check_store, client_options)
        return StoreRegistry(self.app, self.projections, secrets, check, self.catch_up)

    def store_webhooks(self, key: SecretKey, client_options: ClientOptions) -> StoreWebhooks:
        """`wcsync webhooks install | status | uninstall`: a registered store's webhooks, through the
        WooCommerce client with its credentials (and its webhook secret) from the registry under ``key``."""
        from infrastructure.adapters.woocommerce import WooCommerceClient
        from infrastructure.services.webhooks import StoreWebhooks

        return StoreWebhooks(
            self.store_registry(key, None),
            lambda url, credentials: WooCommerceClient(url, credentials, client_options),
            self._webhook_summary,
        )

    def _webhook_summary(self, org_id: str, store_id: UUID) -> dict[str, Any]:
        self.catch_up()
        return projection_queries.webhook_summary(self.projections, org_id, store_id)

    def sync_jobs(self) -> SyncJobs | LocalSyncJobs:
        """Durable sync jobs on this database: defer a start, retry or resume for the workers, list the jobs
        and the workers. procrastinate's on PostgreSQL; on SQLite the one-machine table's."""
        from infrastructure.services.jobs import SyncJobs
        from infrastructure.services.localjobs import LocalSyncJobs

        if self.database.backend == "sqlite":
            return LocalSyncJobs(self.database)
        return SyncJobs(self.database)

    def job_runner(self, key: SecretKey, client_options: ClientOptions) -> SyncJobRunner:
        """What a `wcsync worker` runs each job with: an engine of these services per job (the job's stop
        event; the worker's name as the queue lease's holder) and the store's credentials from the registry
        under ``key``."""
        from infrastructure.services.jobs import SyncJobRunner

        return SyncJobRunner(
            lambda org, actor, stop, holder: self.engine(org, actor=actor, stop=stop, holder=holder),
            self.store_registry(key, None),
            client_options,
        )

    def job_worker(
        self,
        key: SecretKey,
        client_options: ClientOptions,
        settings: WorkerSettings,
        clock: Callable[[], float] = time.time,
    ) -> JobWorker | LocalJobWorker:
        """A `wcsync worker`: procrastinate's worker on this database (SQLite: the local job table's)
        running each job with ``job_runner``, and the due schedules by ``clock``."""
        from infrastructure.services.jobs import JobWorker, SideSteps
        from infrastructure.services.localjobs import LocalJobWorker

        runner = self.job_runner(key, client_options)
        due = self.schedule_runner(clock).run_due
        applier = self.delivery_applier()

        hooks = self.store_webhooks(key, client_options)
        watcher = f"worker {default_holder()}"

        async def deliveries() -> int:
            return await asyncio.to_thread(applier.step)

        watch_turn = LogPositions(self.database, write_gate=self.write_gate)
        self._opened.append(watch_turn)
        holder = f"{os.getpid()}@{this_machine()}"

        async def webhooks() -> dict[UUID, bool]:
            # One worker of all looks (its turn held from look to look, taken over when it goes silent).
            stale_s = 3 * settings.webhook_check_s
            mine = await asyncio.to_thread(
                watch_turn.claim, WATCH_TURN, holder, time.time(), stale_s, _dead_here
            )
            if not mine:
                return {}
            stores = await asyncio.to_thread(self._stores_with_webhooks)
            return await hooks.watch(stores, watcher)

        side = SideSteps(due, deliveries, webhooks)
        if self.database.backend == "sqlite":
            jobs = LocalJobs(self.database)
            self._opened.append(jobs)
            return LocalJobWorker(jobs, runner, settings, side)
        return JobWorker(self.database, runner, settings, side)

    def _stores_with_webhooks(self) -> list[tuple[str, UUID]]:
        self.catch_up()
        return projection_queries.stores_with_webhooks(self.projections)

    def delivery_applier(self) -> DeliveryApplier:
        """The step that applies the recorded webhook deliveries to their customers (every worker runs it
        beside its jobs), its position in the log kept in the database."""
        from infrastructure.services.deliveries import APPLIER_STALE_S, DeliveryApplier

        positions = LogPositions(self.database, write_gate=self.write_gate)
        holder = f"{os.getpid()}@{this_machine()}"
        applier = DeliveryApplier(
            self.app,
            lambda: positions.get(DELIVERIES_POSITION),
            lambda position: positions.put_if_holder(DELIVERIES_POSITION, holder, position),
            claim=lambda: positions.claim(
                DELIVERIES_POSITION, holder, time.time(), APPLIER_STALE_S, _dead_here
            ),
            release=lambda: positions.release(DELIVERIES_POSITION, holder),
        )
        # Closed with the services, the applier first: it gives its turn up through the positions' connection.
        self._opened.extend([applier, positions])
        return applier

    def webhook_receiver(self, key: SecretKey) -> WebhookReceiver:
        """`wcsync serve`'s webhook receiver: a store's webhook secret from the registry under ``key``."""
        from infrastructure.services.deliveries import WebhookReceiver

        return WebhookReceiver(self.app, self.store_registry(key, None).webhook_target)

    def _schedule_table(self) -> ScheduleTable:
        table = ScheduleTable(self.database, write_gate=self.write_gate)
        self._opened.append(table)  # closed with the services
        return table

    def _registered(self, org_id: str, store_id: UUID) -> dict[str, Any] | None:
        self.catch_up()
        return projection_queries.store(self.projections, org_id, store_id)

    def schedules(self, clock: Callable[[], float] = time.time, min_every_s: int = MIN_EVERY_S) -> Schedules:
        """`wcsync schedule add | list | remove` on this database (a store must be registered in the org)."""
        from infrastructure.services.schedules import Schedules

        return Schedules(self._schedule_table(), self._registered, clock, min_every_s)

    def schedule_runner(self, clock: Callable[[], float] = time.time) -> ScheduleRunner:
        """A worker's look at the due schedules: each period's sync started once, as `start --detach`."""
        from infrastructure.services.localjobs import LocalSyncJobs
        from infrastructure.services.schedules import ScheduleRunner

        jobs = self.sync_jobs()
        if isinstance(jobs, LocalSyncJobs):
            self._opened.append(jobs.table)
        return ScheduleRunner(
            self._schedule_table(),
            lambda org, actor: self.engine(org, actor=actor),
            jobs,
            self._registered,
            self.app.get_queue,
            clock,
        )

    def pickup_abandoned(self, key: SecretKey) -> list[UUID]:
        """Give each queue a process that died left processing (stale lease, no job, a registered store) a
        resume job (infrastructure.services.localjobs.pickup_abandoned); the queues picked up. Called again
        and again by a server: its registry and job queue are made once and closed with the services."""
        from infrastructure.services.localjobs import LocalSyncJobs, pickup_abandoned

        if self._pickup is None:
            jobs = self.sync_jobs()
            if isinstance(jobs, LocalSyncJobs):
                self._opened.append(jobs.table)
            self._pickup = (self.store_registry(key, None), jobs)
        registry, jobs = self._pickup
        return pickup_abandoned(
            self.queue_leases().stale_leases(), self.app.get_queue, registry.registered_id, jobs
        )

    def api_tokens(self) -> ApiTokens:
        """The API tokens on these services' database (one object, thread-safe, closed with the services);
        on SQLite its one write, a token's last use, takes its turn at the process's write gate."""
        if self._tokens is None:
            self._tokens = ApiTokens(self.database, self.write_gate)
            self._opened.append(self._tokens)
        return self._tokens

    def catch_up(self, timeout_s: float = CATCH_UP_WAIT_S) -> None:
        """Bring the read models up to every event saved before this call. With a live follower thread,
        wait for it (at most ``timeout_s``, then read what is there) rather than catch up beside it: on
        SQLite a second writer of projections only competes for the one write lock, and concurrent
        catch-ups of a long log each started a rebuild of their own. Otherwise one catch-up at a time
        (waiting at most ``timeout_s`` for another thread's)."""
        live = self._live
        if live is not None:
            if not live.wait_until_current(timeout_s):
                log.warning("projections.follower_behind", waited_s=timeout_s)
            return
        if not self._catch_up_lock.acquire(timeout=timeout_s):
            # Another thread's catch-up holds it (it applies what this caller needs too, mostly).
            log.info("projections.catch_up_busy", waited_s=timeout_s)
            return
        try:
            self.projections.catch_up()
        except database_errors() as error:
            # e.g. a full disk: the read models cannot take the new events (the events are safe).
            raise storage_error(error, f"the database {self.database.display}") from None
        finally:
            self._catch_up_lock.release()

    def _saved(self, force: bool) -> None:
        # With a live follower the tables follow by themselves (the thread is woken instead of waiting for
        # its next poll); a caller that needs them now catches up.
        live = self._live  # read once: the main thread clears it when the follower stops
        if force or self._follower is None:
            self.catch_up()
        elif live is not None:
            live.wake()

    @contextmanager
    def live_projections(self, server: bool = False) -> Iterator[None]:
        """Keep the read models following the log meanwhile. ``server``: for `wcsync serve`, whose runs
        overlap: the follower never starts parallel catch-up processes (on SQLite they would only queue
        for the one write lock behind the runs) and a stop does not wait for a final catch-up."""
        if self.database.backend == "postgres" and os.environ.get(LIVE_PROCESS_VARIABLE, "1") == "1":
            with self._live_projections_process(final_catch_up=not server):
                yield
            return
        with self._live_projections_thread(parallel=not server, final_catch_up=not server):
            yield

    @contextmanager
    def _live_projections_process(self, final_catch_up: bool = True) -> Iterator[None]:
        """On PostgreSQL the follower runs as a separate process: it uses the other core instead of
        competing with the sync for this process's interpreter lock. Its entry point is the interface
        layer's, named (cli/processes.py, `follow`): the database in its environment, never on argv."""
        env = {
            **os.environ,
            DATABASE_URL_VARIABLE: self.database.url,
            FOLLOWER_PARENT_VARIABLE: str(os.getpid()),
        }
        follower = subprocess.Popen(  # noqa: S603 - this interpreter, our module, our command
            [sys.executable, "-m", WORKER_MODULE, FOLLOW_COMMAND],
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
            if final_catch_up:
                self.catch_up()

    @contextmanager
    def _live_projections_thread(self, parallel: bool = True, final_catch_up: bool = True) -> Iterator[None]:
        """Keep the read models following the log from a background thread while a sync runs, so
        `status`, `queues` and SQL show live progress without slowing the sync's own thread. The follower
        has its own connection; on SQLite its transactions take the write gate like every save, and
        meanwhile catch_up() waits for it instead of catching up beside it."""
        runner = ProjectionRunner(self.app, parallel=parallel)
        if self.write_gate is not None:
            # Its connection's lock (one thread at a time on it) becomes the gate: exclusive, reentrant too.
            runner.db.lock = self.write_gate  # type: ignore[assignment]
        live = _Follower(runner)
        follower = threading.Thread(target=live.run, name="wcsync-projections", daemon=True)
        self._follower, self._live = follower, live
        follower.start()
        try:
            yield
        finally:
            live.stop()
            follower.join(timeout=FOLLOWER_JOIN_S)
            self._follower = self._live = None
            if follower.is_alive():
                # A long catch-up batch: the daemon thread ends with the process; the next catch-up resumes.
                log.warning("projections.follower_still_busy", waited_s=FOLLOWER_JOIN_S)
            else:
                runner.close()
            if final_catch_up:
                self.catch_up()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for secrets in self._opened:
                secrets.close()
            if self._leases is not None:
                self._leases.close()
            self.projections.close()
            self.app.close()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _dead_here(holder: str) -> bool:
    """Whether an applier's holder (``pid@machine``) was a process of this machine that is gone."""
    pid, _, machine = holder.partition("@")
    return machine == this_machine() and pid.isdigit() and not pid_exists(int(pid))


def _store_client(
    url: str, credentials: StoreCredentials, options: ClientOptions, on_activity: ActivitySink
) -> WooCommerceClient:
    """The engine's store client: the WooCommerce REST client."""
    from infrastructure.adapters.woocommerce import WooCommerceClient

    return WooCommerceClient(url, credentials, options, on_activity=on_activity)


async def _check_store(options: ClientOptions, url: str, credentials: StoreCredentials) -> None:
    """One request to the store with these credentials (read access), before they are registered."""
    from infrastructure.adapters.woocommerce import WooCommerceClient

    async with WooCommerceClient(url, credentials, options) as client:
        await client.probe()


def migrate(database: DatabaseConfig) -> None:
    """Create every table once: the event store's, the projections' and, by their versioned migrations,
    wcsync's own (infrastructure/adapters/migrations.py)."""
    app = SyncApplication(database, create_tables=True)
    try:
        runner = ProjectionRunner(app)
        try:
            runner.migrate()
        finally:
            runner.close()
        apply_migrations(database)
    except database_errors() as error:
        raise storage_error(error, f"the database {database.display}") from None
    finally:
        app.close()


def open_services(database: DatabaseConfig, read_only: bool = False) -> Services:
    """Open the store for a command. SQLite (the embedded default) creates its file and tables on first
    use; PostgreSQL expects `wcsync db migrate` to have run, so that workers never race on DDL.

    ``read_only`` is for commands that only read (status, queues, audit ...): a SQLite database that does
    not exist is then an error (StorageError, exit 4) and nothing is created, no file and no directory."""
    if read_only:
        require_wcsync_tables(database)
    create = database.backend == "sqlite" and not read_only
    app = SyncApplication(database, create_tables=create)
    try:
        if database.backend == "postgres" and not _postgres_tables_exist(app):
            raise StorageError(
                f"the database {database.display} has no wcsync tables yet: run `wcsync db migrate` once"
            )
        runner = ProjectionRunner(app)
        if create:
            runner.migrate()
            apply_migrations(database)  # a no-op (one read) when current
    except database_errors() as error:
        app.close()
        raise storage_error(error, f"the database {database.display}") from None
    except BaseException:
        app.close()
        raise
    return Services(database=database, app=app, projections=runner)


def open_event_log(database: DatabaseConfig) -> SyncApplication:
    """The event store of an existing wcsync database, to read (audit export): creates nothing, and says
    so (StorageError) when the database holds no wcsync tables."""
    require_wcsync_tables(database)
    return SyncApplication(database, create_tables=False)


def require_wcsync_tables(database: DatabaseConfig) -> None:
    """For commands that only read, on an existing SQLite file: it holds wcsync's events table, or it is
    refused (StorageError, exit 4) before anything creates a table in it (another application's database,
    an empty file), without creating anything itself (eventlog.sqlite_has_events_table). A database that
    does not exist is refused first (eventstore.require_database)."""
    require_database(database)
    path = database.sqlite_path
    if (
        database.backend != "sqlite"
        or path is None
        or str(path) == ":memory:"
        or str(path).startswith("file:")
    ):
        return
    try:
        present = sqlite_has_events_table(path)
    except sqlite3.Error as error:
        raise storage_error(error, f"the database {database.display}") from None
    if not present:
        raise StorageError(
            f"{path} is not a wcsync database (no wcsync tables); run `wcsync db migrate` on it first, "
            "or point --database-url at a wcsync database"
        )


def _postgres_tables_exist(app: SyncApplication) -> bool:
    return postgres_has_events_table(app.recorder)
