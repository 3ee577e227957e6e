"""`wcsync start | resume | retry | force-done`: the sync use cases (infrastructure.services.sync)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from cli import common
from cli.arguments import UsageError
from cli.output import error, print_json, render_status, status_exit
from cli.progress import ProgressBar
from domain.errors import EXIT_OK, EXIT_STORE, StoreNotFoundError, WcsyncError
from domain.queue_terms import QueueOptions
from infrastructure.adapters.woocommerce import ClientOptions, ScanAhead, StoreCredentials, StoreRefused
from infrastructure.support.config import StoreSettings, check_store_url

if TYPE_CHECKING:
    # Loaded once a command opens its services (common.services): a start's first requests are sent by then.
    from infrastructure.services.sync import SyncOutcome
    from infrastructure.wiring import Services

T = TypeVar("T")


def start(args: argparse.Namespace) -> int:
    if args.detach:
        return _start_detached(args)
    return _run(args, "start")


NOT_REGISTERED = "a detached start needs a registered store (wcsync stores add)"


def _start_detached(args: argparse.Namespace) -> int:
    """`start --detach`: the queue saved as a draft and its sync deferred to the workers; answers at once.
    Needs no key in this environment: the worker reads the registered store's credentials."""
    actor = common.actor()
    org = common.org(args)
    try:
        options = QueueOptions(**common.fields_from(args, QueueOptions))
    except ValueError as problem:
        raise UsageError(str(problem)) from None
    database = common.database(args)
    if database.sqlite_path is not None and not database.sqlite_path.exists():
        raise UsageError(NOT_REGISTERED)  # no database, no registered store: and none is created for nothing
    with common.services(args) as services:
        store_id, store_url = _registered_store(services, org, args.url, args.store)
        queue_id, job_id = services.sync_jobs().start_sync(
            services.engine(org, actor=actor), store_id, store_url, options, args.queue_name
        )
    if args.json:
        print_json({"queueId": str(queue_id), "jobId": job_id})
    else:
        print(f"queue      {queue_id}")
        print(f"job        {job_id} (a `wcsync worker` runs it; `wcsync status {queue_id}` follows it)")
    return EXIT_OK


def _registered_store(
    services: Services, org: str, url: str | None, store_id: UUID | None
) -> tuple[UUID, str]:
    """The registered store a detached start syncs (--store, or --url / WOO_URL of a registered store):
    its id and URL. Credentials given inline are not taken: the worker reads them from the registry."""
    if store_id is not None and url is not None:
        raise UsageError("give --store or --url, not both (a registered store has its URL)")
    from projections import queries

    services.catch_up()
    target = url or os.environ.get("WOO_URL")
    found: dict[str, Any] | None = None
    if store_id is not None:
        found = queries.store(services.projections, org, store_id)
        if found is None:
            raise StoreNotFoundError(store_id, org)
    elif target:
        found = queries.store_by_url(services.projections, org, check_store_url(target))
    if found is None:
        raise UsageError(NOT_REGISTERED)
    return UUID(str(found["storeId"])), str(found["url"])


def resume(args: argparse.Namespace) -> int:
    return _run(args, "resume")


def retry(args: argparse.Namespace) -> int:
    return _run(args, "retry")


def _run(args: argparse.Namespace, action: str) -> int:
    actor = common.actor()
    org = common.org(args)
    client_options = common.client_options(args)
    loop = _Loop()
    try:
        if action == "start":
            _scan_ahead(loop, args, client_options)
        with common.services(args) as services:
            try:
                return _run_on(loop, services, args, action, actor, org, client_options)
            finally:
                loop.end()  # its tasks and worker threads ended while the database is open
    finally:
        loop.end()


class _Loop:
    """The event loop of a sync command: one loop for the scan sent ahead (``ahead``) and the run. It ends as
    asyncio.run's did, once, and more carefully: the interrupted run's task cancelled and awaited first (its
    steps end, a worker thread's included, and its lease is given back), then every other task, then the
    scan sent ahead closed and the loop's worker threads ended; right after an interrupted run (``run``),
    else before the services close."""

    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self.ahead: ScanAhead | None = None
        self._main: asyncio.Task[Any] | None = None  # the task of the last run
        self._ended = False

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._ended:
            raise RuntimeError("the sync command's loop is closed")
        try:
            return self.runner.run(self._tracked(coroutine))
        except BaseException:
            self.end()
            raise

    async def _tracked(self, coroutine: Coroutine[Any, Any, T]) -> T:
        self._main = asyncio.current_task()
        return await coroutine

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            if self._main is not None or self.ahead is not None:
                self.runner.run(self._wind_down())
        finally:
            self.runner.close()

    async def _wind_down(self) -> None:
        main = self._main
        if main is not None and not main.done():
            # Alone first: cancelling every task at once would cancel the worker steps' own futures too,
            # and the run would move on while a thread still changes its queue (SyncEngine._in_worker).
            main.cancel()
            await asyncio.wait({main})
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        if self.ahead is not None:
            await self.ahead.close()


def _scan_ahead(loop: _Loop, args: argparse.Namespace, client_options: ClientOptions) -> None:
    """A start's scan, begun before the database is opened (``loop.ahead``): its first requests are on the
    wire while the event store loads, the database opens and the queue is prepared (a store answering in
    300 ms costs that much less). Only for a store given with its key and secret (a registered store's are
    in the database); a setting that does not check out is left for the run to say, where it always has."""
    if getattr(args, "store", None) is not None or not _key_in_environment():
        return
    try:
        options = _queue_options(args)
        store = StoreSettings.load(args.url)
    except WcsyncError:
        return
    credentials = StoreCredentials(store.consumer_key, store.consumer_secret)
    loop.ahead = ScanAhead(store.url, credentials, client_options.for_queue(options))
    loop.run(loop.ahead.begin())


def _queue_options(args: argparse.Namespace) -> QueueOptions:
    try:
        return QueueOptions(**common.fields_from(args, QueueOptions))
    except ValueError as problem:
        raise UsageError(str(problem)) from None


def _run_on(
    loop: _Loop,
    services: Services,
    args: argparse.Namespace,
    action: str,
    actor: str,
    org: str,
    client_options: ClientOptions,
) -> int:
    json_out = bool(getattr(args, "json", False))
    with common.stop_on_signals() as stop:
        progress = None if json_out else ProgressBar(action)
        engine = services.engine(org, actor=actor, progress=progress, stop=stop)
        outcome: SyncOutcome
        if action == "start":
            options = _queue_options(args)
            store = _store(services, org, args.url, getattr(args, "store", None))
            if not json_out:
                sys.stderr.write(f"database   {services.database.display}\n")

            def announce(queue_id: UUID) -> None:
                if not json_out:
                    sys.stderr.write(f"queue      {queue_id}\n")

            try:
                with services.live_projections():
                    outcome = loop.run(
                        engine.start(
                            store,
                            options,
                            client_options,
                            args.queue_name,
                            on_created=announce,
                            ahead=loop.ahead,
                        )
                    )
            except StoreRefused as refused:
                # Refused before the first page: the queue was never saved.
                raise StoreRefused(
                    f"{refused.message}; nothing was saved, fix this and run `wcsync start` again",
                    code=refused.code,
                    status=refused.status,
                    hint=refused.hint,
                ) from None
        else:
            store = _store(services, org, engine.queue_store(args.queue_id, args.url).url, None)
            run = engine.resume if action == "resume" else engine.retry
            with services.live_projections():
                outcome = loop.run(run(args.queue_id, store, client_options))
        status = common.queue_status_or_fail(services, org, outcome.queue_id)
        if json_out:
            document = dict(status)
            document["seconds"] = round(outcome.seconds, 3)
            if outcome.store_error is not None:
                document["error"] = str(outcome.store_error)
            print_json(document)
        else:
            print(render_status(status))
            print(f"took       {outcome.seconds:.2f} s")
        if outcome.store_error is not None:
            error(
                f"{outcome.store_error} — the queue is saved; continue with `wcsync resume {outcome.queue_id}`"
            )
            return EXIT_STORE
        return status_exit(status)


def force_done(args: argparse.Namespace) -> int:
    actor = common.actor()
    org = common.org(args)
    with common.services(args) as services:
        engine = services.engine(org, actor=actor)
        engine.force_done(args.queue_id, args.reason)
        status = common.queue_status_or_fail(services, org, args.queue_id)
        print_json(status) if args.json else print(render_status(status))
        return EXIT_OK


def _store(services: Services, org: str, url: str | None, store_id: UUID | None) -> StoreSettings:
    """The store a run reads: a registered one (--store), else the URL with the key and secret of the
    environment, else (no key in the environment) that URL's registered credentials."""
    from infrastructure.adapters.secrets import SECRET_KEY_VARIABLE, SecretKey

    if store_id is not None:
        if url is not None:
            raise UsageError("give --store or --url, not both (a registered store has its URL)")
        return services.store_registry(SecretKey.from_environment(), None).settings(org, store_id)
    if not _key_in_environment():
        target = url or os.environ.get("WOO_URL")
        if target and os.environ.get(SECRET_KEY_VARIABLE):
            registered = services.store_registry(SecretKey.from_environment(), None).settings_for_url(
                org, target
            )
            if registered is not None:
                return registered
    return StoreSettings.load(url)


def _key_in_environment() -> bool:
    """Whether the environment gives a store's key or secret: a run then reads the store with them
    (StoreSettings.load), not with a registered store's."""
    return bool(os.environ.get("WOO_CONSUMER_KEY") or os.environ.get("WOO_CONSUMER_SECRET"))
