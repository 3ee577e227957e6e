"""The operations endpoints: ``GET /readyz`` (may this process take traffic), ``GET /metrics`` (Prometheus)
and ``GET /api/openapi.json`` (the API's description), over the same Services as the rest of the API.

``add_operation_routes`` registers them on the server's application; the server's own middlewares (the
envelope, authentication) apply to them as to every route. /readyz and /api/openapi.json are public paths
(no token); /metrics needs a token like every other route, and reports the syncs and lines of the token's
org only (every org's in no-auth mode).

Neither probe may hang, whatever the database does: each reads on a thread of its own, at most one read
of each kind in flight at a time, and waits for it a bounded time (READY_TIMEOUT_S, SCRAPE_TIMEOUT_S).
A read still running past that is not waited for; the next probe waits for it again instead of starting
one more, so a database that hangs costs one thread, not one per probe.

The probes answer anyone, so they name the database's kind only (``backend_name``: ``postgresql`` or
``sqlite``), never its user, host, database name or file path, and a database error is a fixed message
(its text, which may carry any of those, goes to the log).

This module must not import infrastructure.api.http, which imports it; the answers' envelope
(``{"success": ..., "data" | "error": ...}``) is written here the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import structlog
from aiohttp import web

from domain.errors import WcsyncError
from infrastructure.adapters.jobstats import JobStats
from infrastructure.adapters.migrations import pending_migrations
from infrastructure.adapters.tokens import Role
from infrastructure.api import exposition, openapi
from infrastructure.api.auth import PRINCIPAL_KEY, require_role
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import database_errors
from infrastructure.support.metrics import ProjectionFigures, Snapshot
from infrastructure.wiring import Services
from projections.operations import last_moved, queue_totals, webhook_totals

__all__ = [
    "METRICS_CONTENT_TYPE",
    "METRICS_PATH",
    "OPENAPI_PATH",
    "PUBLIC_PATHS",
    "READY_PATH",
    "Operations",
    "add_operation_routes",
    "backend_name",
]

log = structlog.get_logger("wcsync.api.operations")
T = TypeVar("T")

READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
OPENAPI_PATH = openapi.OPENAPI_PATH
# The paths of this module that need no token (the server's public paths include them).
PUBLIC_PATHS = frozenset({READY_PATH, OPENAPI_PATH})
METRICS_CONTENT_TYPE = exposition.CONTENT_TYPE
# How long /readyz waits for the database to answer before it says not ready.
READY_TIMEOUT_S = 2.0
# How long /metrics waits for its reads before it answers without them (wcsync_database_up 0).
SCRAPE_TIMEOUT_S = 3.0


def _read_errors() -> tuple[type[BaseException], ...]:
    """What a scrape's reads may raise when the database fails them: the scrape then answers without them."""
    return (WcsyncError, *database_errors())


# What an unauthenticated probe says of the database: its kind, nothing that locates it.
_BACKEND_NAMES = {"postgres": "postgresql", "sqlite": "sqlite"}
# /readyz's words for a database it cannot read (the error itself is logged).
UNREADABLE = "the database cannot be read (the server log has the details)"


def backend_name(database: DatabaseConfig) -> str:
    """The database's kind as a public probe shows it: ``postgresql`` or ``sqlite``."""
    return _BACKEND_NAMES.get(database.backend, database.backend)


def _envelope(document: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


class _Bounded:
    """Runs one blocking read at a time on a thread of its own and waits for it at most ``timeout_s``: a
    caller that comes while a read is still in flight waits for that one (see the module docstring)."""

    def __init__(self, name: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wcsync-{name}")
        self._in_flight: asyncio.Future[Any] | None = None
        self._key: object = None

    async def run(self, key: object, read: Callable[[], T]) -> T:
        """``read()``'s result; TimeoutError after timeout_s. A read in flight for the same ``key`` is
        joined; one for another key is waited out first (within the same timeout)."""
        deadline = time.monotonic() + self.timeout_s
        loop = asyncio.get_running_loop()
        while True:
            current = self._in_flight
            if current is None or current.done():
                self._in_flight = current = loop.run_in_executor(self._pool, read)
                self._key = key
                result: T = await asyncio.wait_for(asyncio.shield(current), deadline - time.monotonic())
                return result
            if self._key == key:
                joined: T = await asyncio.wait_for(asyncio.shield(current), deadline - time.monotonic())
                return joined
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(current), deadline - time.monotonic())
            if time.monotonic() >= deadline:
                raise TimeoutError

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class Operations:
    """The handlers of /readyz, /metrics and /api/openapi.json over one process's Services."""

    def __init__(
        self,
        services: Services,
        ready_timeout_s: float = READY_TIMEOUT_S,
        scrape_timeout_s: float = SCRAPE_TIMEOUT_S,
    ) -> None:
        self.services = services
        self._ready = _Bounded("ready", ready_timeout_s)
        self._scrape = _Bounded("metrics", scrape_timeout_s)
        self._jobs = JobStats(services.database)
        self._document = orjson.dumps(openapi.document())

    # ----- GET /readyz ------------------------------------------------------------------------------------

    async def readyz(self, _: web.Request) -> web.Response:
        """200 when the database answers and no migration is pending; 503 ``not_ready`` saying which not."""
        database = self.services.database
        try:
            pending = await self._ready.run(None, lambda: pending_migrations(database))
        except TimeoutError:
            return self._not_ready(f"the database did not answer within {self._ready.timeout_s:g} s", None)
        except WcsyncError as error:  # pending_migrations words every database error as a StorageError
            # The error's text can name the user, host, database or file: the log's, not a public answer's.
            log.warning("api.not_ready_database_error", error=str(error))
            return self._not_ready(UNREADABLE, None)
        if pending:
            versions = ", ".join(str(v) for v in pending)
            return self._not_ready(
                f"{len(pending)} migration{'s' if len(pending) > 1 else ''} pending (version "
                f"{versions}): run `wcsync db migrate`",
                pending,
            )
        data = {"ready": True, "database": backend_name(database), "pendingMigrations": []}
        return _envelope({"success": True, "data": data}, 200)

    def _not_ready(self, why: str, pending: list[int] | None) -> web.Response:
        log.warning("api.not_ready", reason=why)
        error = {
            "code": "not_ready",
            "message": f"not ready: {why}",
            "database": backend_name(self.services.database),
            "pendingMigrations": pending,
        }
        return _envelope({"success": False, "error": error}, 503)

    # ----- GET /metrics -----------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        """The Prometheus text exposition: this process's counters, and the figures read from the database
        now (syncs and lines of the token's org only); without them when the reads fail or time out."""
        require_role(request, Role.VIEWER)
        principal = request[PRINCIPAL_KEY]
        org_id = principal.org_id if principal is not None else None
        started = time.monotonic()
        try:
            snapshot = await self._scrape.run(org_id, lambda: self._read(org_id))
        except TimeoutError:
            log.warning("api.metrics_read_timeout", waited_s=self._scrape.timeout_s)
            snapshot = Snapshot(database_up=False, read_s=time.monotonic() - started)
        except _read_errors() as error:
            log.warning("api.metrics_read_failed", error=type(error).__name__)
            snapshot = Snapshot(database_up=False, read_s=time.monotonic() - started)
        return web.Response(body=exposition.render(snapshot), headers={"Content-Type": METRICS_CONTENT_TYPE})

    def _read(self, org_id: str | None) -> Snapshot:
        """The scrape's reads (on the scrape's thread): a grouped read of the queue table, the projections'
        positions and tracking rows, the job engine's tables."""
        started = time.monotonic()
        runner = self.services.projections
        totals = queue_totals(runner, org_id)
        action_required, deliveries = webhook_totals(runner, org_id)
        positions = runner.status()
        moved = last_moved(runner)
        jobs = self._jobs.read()
        now = datetime.now(UTC)
        lags = [_lag(row["name"], int(row["lag"]), moved.get(row["name"]), now) for row in positions]
        return Snapshot(
            database_up=True,
            syncs=totals.queues,
            lines=totals.lines,
            line_results=totals.line_results,
            jobs=jobs,
            projections=lags,
            read_s=time.monotonic() - started,
            stores_action_required=action_required,
            webhook_deliveries=deliveries,
        )

    # ----- GET /api/openapi.json ----------------------------------------------------------------------------

    async def openapi(self, _: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")

    async def close(self, _: web.Application | None = None) -> None:
        self._ready.close()
        self._scrape.close()
        self._jobs.close()


def _lag(name: str, events: int, moved_at: datetime | None, now: datetime) -> ProjectionFigures:
    """A projection's lag: events behind, and for how long it has not moved while behind."""
    seconds = 0.0
    if events > 0 and moved_at is not None:
        moved = moved_at if moved_at.tzinfo is not None else moved_at.replace(tzinfo=UTC)
        seconds = max(0.0, (now - moved).total_seconds())
    return ProjectionFigures(name=name, lag_events=events, lag_s=seconds)


def add_operation_routes(app: web.Application, services: Services, **settings: float) -> Operations:
    """Register GET /readyz, /metrics and /api/openapi.json on ``app`` (their threads and connection are
    closed with the app: on_cleanup). ``settings``: Operations' timeouts (ready_timeout_s,
    scrape_timeout_s). PUBLIC_PATHS are the ones the authentication must let through."""
    operations = Operations(services, **settings)
    app.router.add_get(READY_PATH, operations.readyz)
    app.router.add_get(METRICS_PATH, operations.metrics)
    app.router.add_get(OPENAPI_PATH, operations.openapi)
    app.on_cleanup.append(operations.close)
    return operations
