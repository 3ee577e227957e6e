"""The seed's HTTP endpoint (`wcsync serve`), on aiohttp.web, over the same services as the CLI.

``POST /api/v1/integrations/woocommerce/sync/customers`` takes the seed's body (``config`` or ``store_id``,
``org_id``, ``user_id``, ``action``, ``queue_id``, ``reason``, ``options``); ``GET /api/v1/queues[/{id}[/failed|
/activity]]`` read the projections; ``POST/GET/DELETE /api/v1/stores`` manage the org's registered stores;
``GET /healthz`` says the process is alive. Every answer is ``{"success": true, "data": ...}`` or
``{"success": false, "error": {"code", "message"}}``.

Every route but PUBLIC_PATHS needs ``Authorization: Bearer TOKEN`` (infrastructure.api.auth): the token
names the org (a body or query ``org_id`` that differs is 403 org_mismatch) and the role (viewer reads;
operator also starts, retries, resumes and force-finishes; admin also manages stores). Another org's queue
or store is answered exactly as one that does not exist. The recorded actor is the body's ``user_id``, else
the token's name.

start / retry / resume run the engine as an asyncio task in the server's loop and answer ``202`` once the
run has saved its first batch (so the queue exists and ``status`` finds it) or has ended, whichever is
first, and at the latest after ``start_confirm_s``. A store that refuses a new queue before anything was
saved is so answered with ``502`` and leaves nothing behind, like ``wcsync start``; later store errors are
recorded in the queue by the engine and ``status`` shows it ``failed``.

The store's key and secret live in the request's StoreSettings only (or, for a registered store, sealed in
the registry): never logged, never echoed, never stored in an event (the engine records the store URL, not
credentials). The access log names method, path, status, size and time, never a body or a header.

The same application serves the operator's dashboard (infrastructure/api/dashboard, docs/DASHBOARD.md):
its pages take a browser's session cookie instead of a bearer token, and their forms act through
``SyncApi.queue_action`` / ``act``, this module's own path for every action.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import parse_qs
from uuid import UUID

import orjson
import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler

from domain import bounds
from domain.errors import StoreNotFoundError, WcsyncError
from domain.queue_terms import QueueOptions
from domain.store import store_key
from infrastructure.adapters.secrets import SECRET_KEY_VARIABLE, SecretKey
from infrastructure.adapters.woocommerce import ClientOptions, StoreCredentials
from infrastructure.api import auth, operations
from infrastructure.api.auth import PRINCIPAL_KEY, Principal, Role
from infrastructure.api.dashboard import guard as dashboard_guard
from infrastructure.api.dashboard.pages import Dashboard
from infrastructure.services.deliveries import (
    MAX_DELIVERY_BYTES,
    SignatureRefused,
    UnknownStoreError,
    WebhookReceiver,
)
from infrastructure.services.jobs import SyncJobs
from infrastructure.services.localjobs import LocalSyncJobs
from infrastructure.services.runs import MAX_RUNS, RunRequest, StoreMismatchError
from infrastructure.services.stores import StoreRegistry
from infrastructure.services.webhooks import RECEIVER_ROOT
from infrastructure.support.config import (
    MAX_STORE_URL_LENGTH,
    StoreSettings,
    StoreUrlSizeError,
    check_store_url,
)
from infrastructure.support.errors import ConfigurationError, QueueNotFoundError
from infrastructure.wiring import Services
from projections import queries
from projections.names import QUEUES

log = structlog.get_logger("wcsync.api")
T = TypeVar("T")

SYNC_PATH = "/api/v1/integrations/woocommerce/sync/customers"
HEALTH_PATH = "/healthz"
# The routes anyone may call: liveness, readiness and the API's description (every other needs a token).
PUBLIC_PATHS = operations.PUBLIC_PATHS | {HEALTH_PATH}
# The stores' webhook receivers (+ store id): no token (WooCommerce sends none), the signature instead.
WEBHOOK_ROOT = RECEIVER_ROOT
SIGNED_PREFIXES = (WEBHOOK_ROOT,)
# Its own threads: a delivery is answered however busy the readers are (WooCommerce waits 60 s at most).
DELIVERY_THREADS = 4
ACTIONS = ("start", "status", "retry", "resume", "force-done")
BACKGROUND_ACTIONS = frozenset({"start", "retry", "resume"})
# The seed's camelCase option names -> QueueOptions fields.
OPTION_FIELDS = {
    "batchSize": "batch_size",
    "batchDelayMs": "batch_delay_ms",
    "maxRetries": "max_retries",
    "perPage": "per_page",
    "role": "role",
}
# The seed's body is a few hundred bytes; nothing a client needs comes near these.
MAX_BODY_BYTES = 64 * 1024
MAX_BODY_DEPTH = 8
MAX_CREDENTIAL_LENGTH = 256


@dataclass(frozen=True)
class ApiSettings:
    client_options: ClientOptions = field(default_factory=ClientOptions)
    # The longest a start/retry/resume request waits for its run's first save before answering 202.
    start_confirm_s: float = 10.0
    default_actor: str = "api"
    # No token asked for (local development; `wcsync serve --no-auth` refuses any address but loopback): the
    # org is the request's own org_id, as before authentication.
    no_auth: bool = False
    # The key of the registered stores' secrets (WCSYNC_SECRET_KEY): None, the routes that need a stored
    # secret (store_id in a sync, POST /api/v1/stores) answer 503 not_configured.
    secret_key: SecretKey | None = field(default=None, repr=False)
    # Where browsers see the dashboard behind a reverse proxy that rewrites Host (`--public-origin`,
    # dashboard.guard.parse_public_origin): its forms' Origin is accepted, and https makes cookies Secure.
    public_origin: str | None = None


class ApiError(WcsyncError):
    """An answer other than success: HTTP status, a stable code, and a message safe to show."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = self.http_status = status
        self.code = self.error_code = code
        self.message = message
        self.extra = extra


class NotConfiguredError(WcsyncError):
    """A route that needs the stores' secrets on a server started without WCSYNC_SECRET_KEY."""

    http_status = 503
    error_code = "not_configured"

    def __init__(self) -> None:
        super().__init__(
            f"this server has no {SECRET_KEY_VARIABLE}, so it cannot reach registered stores' secrets; "
            f"start `wcsync serve` with {SECRET_KEY_VARIABLE} set (the key `wcsync stores add` used)"
        )


def _bad_request(message: str, code: str = "invalid_field") -> ApiError:
    return ApiError(400, code, message)


# ----- request parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncRequest:
    action: str
    org_id: str | None  # the body's; the token's org decides (auth.request_org)
    actor: str | None  # the body's user_id; else the token's name
    queue_id: UUID | None
    reason: str | None
    store_url: str | None
    # Kept out of repr so a logged or printed request never shows them.
    consumer_key: str | None = field(default=None, repr=False)
    consumer_secret: str | None = field(default=None, repr=False)
    options: QueueOptions | None = None
    store_id: UUID | None = None  # a registered store instead of config

    def run_request(self, org_id: str, actor: str, store: StoreSettings | None = None) -> RunRequest:
        """A start, retry or resume as the runs service takes it, for the org and actor the request was
        authenticated as: with the registered ``store`` when the body named one by store_id, else
        config's (retry and resume without config.url: the queue's own store)."""
        key: str | None = self.consumer_key
        secret: str | None = self.consumer_secret
        url: str | None = self.store_url
        if store is not None:
            key, secret, url = store.consumer_key, store.consumer_secret, store.url
        if key is None or secret is None or (self.action == "start" and url is None):
            raise _bad_request("config.url is required", "missing_field")
        return RunRequest(
            action=self.action,
            org_id=org_id,
            actor=actor,
            credentials=StoreCredentials(key, secret),
            store_url=url,
            queue_id=self.queue_id,
            options=self.options,
        )


def decode_body(raw: bytes) -> Any:
    """The request body as JSON, checked before anything reads it: size, UTF-8 and string validity (orjson
    refuses unpaired surrogates), depth. An ApiError for a client's mistake, never anything else."""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # No detail from the parser: it could quote the body, and the body holds the secret.
        raise _bad_request(
            "the request body is not valid JSON (UTF-8, no unpaired surrogates)", "invalid_json"
        ) from None
    if _depth(body) > MAX_BODY_DEPTH:
        raise _bad_request(
            f"the request body is nested more than {MAX_BODY_DEPTH} levels deep", "invalid_json"
        )
    return body


def _depth(value: Any) -> int:
    """How deeply objects and lists nest in a parsed JSON value (iteratively: no recursion to exhaust)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth > MAX_BODY_DEPTH:
                return depth
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _name(value: Any, name: str, required: bool) -> str | None:
    """An org or user id, by domain.bounds' one rule (printable, NFC, no control characters)."""
    if value is None:
        if required:
            raise _bad_request(f"{name} is required", "missing_field")
        return None
    try:
        return bounds.check_identifier(value, name)
    except bounds.BoundError as error:
        raise _bad_request(str(error)) from None


def _uuid(value: Any, name: str, what: str = "a queue id (a UUID, as returned by action 'start')") -> UUID:
    if value is None:
        raise _bad_request(f"{name} is required", "missing_field")
    if isinstance(value, str) and len(value) <= 64:
        with contextlib.suppress(ValueError):
            return UUID(value)
    raise _bad_request(f"{name} must be {what}")


STORE_ID_IS = "a store id (a UUID, as `wcsync stores list` or GET /api/v1/stores show it)"


def _store_url(value: Any, where: str = "config.") -> str:
    """config.url (``where`` + url) by the one store-URL rule (check_store_url), its refusals in the
    API's words. Never echoes the value: a pasted URL can carry a password."""
    size = f"{where}url must be a non-empty string of at most {MAX_STORE_URL_LENGTH} characters"
    # The bound is on the field as sent; check_store_url measures the URL without surrounding blanks.
    if not isinstance(value, str) or len(value) > MAX_STORE_URL_LENGTH:
        raise _bad_request(size)
    try:
        return check_store_url(value)
    except StoreUrlSizeError:
        raise _bad_request(size) from None
    except ConfigurationError:
        raise _bad_request(
            f"{where}url must be the store's site root: http:// or https://, a host, a port from 1 to 65535 "
            f"if any, no credentials, query string or spaces (send the key and secret as {where}consumerKey "
            f"and {where}consumerSecret)"
        ) from None


def _credential(config: Mapping[str, Any], name: str, where: str = "config.") -> str:
    # Never echo the value, in any form.
    value = config.get(name)
    if value is None:
        raise _bad_request(f"{where}{name} is required", "missing_field")
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_CREDENTIAL_LENGTH
        or not all(" " < c < "\x7f" for c in value)
    ):
        raise _bad_request(
            f"{where}{name} must be printable ASCII without spaces, at most {MAX_CREDENTIAL_LENGTH} "
            "characters (as WooCommerce issues keys: ck_... / cs_...)"
        )
    return value


def _options(value: Any) -> QueueOptions:
    if value is None:
        return QueueOptions()
    if not isinstance(value, dict):
        raise _bad_request("options must be an object", "invalid_options")
    unknown = sorted(str(k) for k in set(value) - set(OPTION_FIELDS))
    if unknown:
        raise _bad_request(
            f"options.{unknown[0][:40]} is not an option (known: {', '.join(OPTION_FIELDS)})",
            "invalid_options",
        )
    fields: dict[str, Any] = {name: value[key] for key, name in OPTION_FIELDS.items() if key in value}
    try:
        return QueueOptions(**fields)
    except bounds.BoundError as error:
        key = next(k for k, name in OPTION_FIELDS.items() if name == error.field)
        raise _bad_request(f"options.{key} {error.problem}", "invalid_options") from None


def parse_sync_request(body: Any, org_required: bool = False) -> SyncRequest:
    """The seed's body, checked field by field; an ApiError (400) names the first bad field. org_id is
    required only without authentication (``org_required``): a token names its org."""
    if not isinstance(body, dict):
        raise _bad_request("the request body must be a JSON object", "invalid_json")
    action = body.get("action", "start")
    if not isinstance(action, str) or action not in ACTIONS:
        raise _bad_request(
            f"action must be one of {', '.join(ACTIONS)}"
            + (f", not {action!r}" if isinstance(action, str) and len(action) <= 40 else ""),
            "invalid_action",
        )
    org_id = _name(body.get("org_id"), "org_id", required=org_required)
    actor = _name(body.get("user_id"), "user_id", required=False)
    queue_id = _uuid(body.get("queue_id"), "queue_id") if action != "start" else None
    reason = None
    if action == "force-done":
        raw_reason = body.get("reason")
        if raw_reason is None:
            raise _bad_request(
                "reason is required for force-done (it is recorded in the audit log)", "missing_field"
            )
        try:
            reason = bounds.check_text(raw_reason, "reason", bounds.MAX_REASON_LENGTH)
        except bounds.BoundError as error:
            raise _bad_request(str(error)) from None
    store_url = key = secret = None
    options = None
    store_id = None
    if action in BACKGROUND_ACTIONS:
        config = body.get("config")
        if body.get("store_id") is not None:
            if config is not None:
                raise _bad_request("give either store_id (a registered store) or config, not both")
            store_id = _uuid(body["store_id"], "store_id", STORE_ID_IS)
        elif config is None and action == "start":
            raise _bad_request(
                "config (url, consumerKey, consumerSecret) or store_id (a registered store) is required",
                "missing_field",
            )
        elif config is not None and not isinstance(config, dict):
            raise _bad_request("config must be an object with url, consumerKey and consumerSecret")
        # retry and resume default to the queue's own store, as the CLI does.
        if config is not None and (config.get("url") is not None or action == "start"):
            if config.get("url") is None:
                raise _bad_request("config.url is required", "missing_field")
            store_url = _store_url(config["url"])
        if config is not None:
            key = _credential(config, "consumerKey")
            secret = _credential(config, "consumerSecret")
        if action == "start":
            options = _options(body.get("options"))
    return SyncRequest(
        action=action,
        org_id=org_id,
        actor=actor,
        queue_id=queue_id,
        reason=reason,
        store_url=store_url,
        consumer_key=key,
        consumer_secret=secret,
        options=options,
        store_id=store_id,
    )


@dataclass(frozen=True)
class StoreRequest:
    """POST /api/v1/stores: a store to register (or whose credentials to rotate)."""

    org_id: str | None
    actor: str | None
    url: str
    name: str | None
    consumer_key: str = field(repr=False)
    consumer_secret: str = field(repr=False)


STORE_FIELDS = frozenset({"org_id", "user_id", "url", "name", "consumerKey", "consumerSecret"})


def parse_store_request(body: Any, org_required: bool = False) -> StoreRequest:
    """The body of POST /api/v1/stores: url, name (optional), consumerKey, consumerSecret, and the
    seed's org_id / user_id. An ApiError (400) names the first bad field, never a value."""
    if not isinstance(body, dict):
        raise _bad_request("the request body must be a JSON object", "invalid_json")
    unknown = sorted(str(k) for k in set(body) - STORE_FIELDS)
    if unknown:
        raise _bad_request(
            f"{unknown[0][:40]} is not a field of a store (known: {', '.join(sorted(STORE_FIELDS))})"
        )
    if body.get("url") is None:
        raise _bad_request("url is required", "missing_field")
    name = body.get("name")
    if name is not None:
        try:
            name = bounds.check_text(name, "name", bounds.MAX_REASON_LENGTH)
        except bounds.BoundError as error:
            raise _bad_request(str(error)) from None
    return StoreRequest(
        org_id=_name(body.get("org_id"), "org_id", required=org_required),
        actor=_name(body.get("user_id"), "user_id", required=False),
        url=_store_url(body["url"], where=""),
        name=name,
        consumer_key=_credential(body, "consumerKey", ""),
        consumer_secret=_credential(body, "consumerSecret", ""),
    )


def _query(request: web.Request, name: str) -> str | None:
    """A query parameter, decoded strictly: aiohttp turns bytes that are not UTF-8 (``%ff``) into U+FFFD,
    and ``org_id=evil%FForg`` would then read org ``evil\ufffdorg``."""
    try:
        values = parse_qs(request.rel_url.raw_query_string, keep_blank_values=True, errors="strict").get(name)
    except UnicodeDecodeError:
        raise _bad_request(f"{name} (query parameter) is not valid UTF-8 once percent-decoded") from None
    return values[0] if values else None


def _query_org(request: web.Request) -> str:
    """The org a read is for: the token's (a query org_id, if any, must be the same)."""
    given = _name(_query(request, "org_id"), "org_id (query parameter)", required=_no_auth(request))
    return auth.request_org(request, given)


def _no_auth(request: web.Request) -> bool:
    return request.get(PRINCIPAL_KEY) is None


def _actor(request: web.Request, user_id: str | None, default: str) -> str:
    """Who is recorded as having acted: the body's user_id, else the token's name."""
    principal: Principal | None = request.get(PRINCIPAL_KEY)
    return user_id or (principal.name if principal is not None else default)


def _query_limit(request: web.Request, default: int) -> int:
    text = _query(request, "limit")
    if text is None:
        return default
    try:
        value: int = bounds.LIMIT.parse(text)
    except bounds.BoundError as error:
        raise _bad_request(str(error)) from None
    return value


# ----- the server ------------------------------------------------------------------------------------


# Request handlers' database work has threads of its own, so runs can never starve reads or /healthz.
READ_THREADS = 8
# In-flight requests get this long to answer once a shutdown begins (aiohttp's own default is 60 s).
REQUEST_SHUTDOWN_S = 2.0
# A read waits at most this long for the projection follower to apply what was saved before it asked, then
# answers from the tables as they are: a reader never holds one of the READ_THREADS for long.
READ_CATCH_UP_S = 5.0
# /healthz reads the projections' positions on a thread of its own for at most this long (then lag: null).
HEALTH_READ_S = 0.5
# `wcsync serve` exits at the latest this long after SIGINT/SIGTERM, whatever still runs (saved is saved).
SERVE_STOP_S = 9.5


class SyncApi:
    """The handlers: parse the request, call a service, render the answer. The runs in flight are
    ``self.runs`` (infrastructure.services.runs: admission, launch, stop).

    Database work runs in threads, never on the loop: a slow query or a catch-up must not hold up other
    requests or the syncs' own fetching. Handlers use a pool of their own (``_reads``); runs use the loop's
    default executor, sized for MAX_RUNS, so neither can exhaust the other's threads."""

    def __init__(self, services: Services, settings: ApiSettings) -> None:
        self.services = services
        self.settings = settings
        self._reads = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="wcsync-api")
        self.runs = services.background_runs(self._reads, settings.client_options, settings.start_confirm_s)
        # /healthz: one thread and at most one read in flight, so it answers whatever the others wait on.
        self._health = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wcsync-health")
        self._health_read: asyncio.Future[list[dict[str, Any]]] | None = None
        self._stores: StoreRegistry | None = None
        self._keyless: StoreRegistry | None = None
        # The durable jobs (procrastinate's on PostgreSQL, the local table on SQLite): opened with the server
        # when it has the stores' key (runs of registered stores need their secrets).
        self._jobs: SyncJobs | LocalSyncJobs | None = None
        self._deliveries = ThreadPoolExecutor(max_workers=DELIVERY_THREADS, thread_name_prefix="wcsync-hooks")
        self._receiver: WebhookReceiver | None = None
        # Requests refused for their signature, per address and store; unknown store ids, per address.
        self._refused = auth.FailureLimiter()
        self._unknown = auth.FailureLimiter()

    async def open_jobs(self) -> None:
        if self.settings.secret_key is not None:
            jobs = self.services.sync_jobs()
            await jobs.open_async()
            self._jobs = jobs

    async def close_jobs(self) -> None:
        if self._jobs is not None:
            await self._jobs.close_async()
            self._jobs = None

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, partial(func, *args))

    # ----- POST /api/v1/integrations/woocommerce/sync/customers ------------------------------------------

    async def sync_customers(self, request: web.Request) -> web.Response:
        body = decode_body(await _read_body(request))
        sync = parse_sync_request(body, org_required=_no_auth(request))
        auth.require_role(request, Role.VIEWER if sync.action == "status" else Role.OPERATOR)
        org_id = auth.request_org(request, sync.org_id)
        actor = _actor(request, sync.actor, self.settings.default_actor)
        status, data = await self.act(sync, org_id, actor)
        return _ok(data, status=status)

    async def act(self, sync: SyncRequest, org_id: str, actor: str) -> tuple[int, dict[str, Any]]:
        """Carry out a checked sync request for the org and actor it was authenticated as (the role already
        checked): the one path of every action, for the JSON route and the dashboard's forms alike. Returns
        the answer's HTTP status and data; refusals are raised (WcsyncError, ApiError)."""
        if sync.action == "status":
            assert sync.queue_id is not None
            return 200, await self._status(org_id, sync.queue_id)
        if sync.action == "force-done":
            assert sync.queue_id is not None and sync.reason is not None
            await self.runs.force_done(org_id, actor, sync.queue_id, sync.reason)
            return 200, await self._status(org_id, sync.queue_id)
        if sync.consumer_key is None and sync.store_id is None and self.settings.secret_key is None:
            # Without the stores' key the queue's registered store is out of reach: the request must bring one.
            raise _bad_request(
                "config (url, consumerKey, consumerSecret) is required: this server has no WCSYNC_SECRET_KEY "
                "to run registered stores",
                "missing_field",
            )
        if sync.consumer_key is None:
            # A registered store (store_id, or a retry/resume of a queue whose store is registered): a durable
            # job, run by a worker; inline credentials are never stored, so their runs stay in this process.
            return 202, await self._defer(sync, org_id, actor)
        queue_id = await self.runs.launch(sync.run_request(org_id, actor))
        return 202, {"queueId": str(queue_id), "action": sync.action}

    async def queue_action(
        self, org_id: str, actor: str, body: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """A sync request's body as the dashboard's forms send it (``action``, ``queue_id``, ``reason``) for
        an org and actor authenticated by a session: through the JSON route's own parser and ``act``, so a
        form is checked and carried out exactly as the API's body would be."""
        return await self.act(parse_sync_request(dict(body)), org_id, actor)

    def rerun_refusal(self, org_id: str, store_url: str) -> str | None:
        """Why a retry or resume that brings no credentials (the dashboard's forms) cannot run for a queue of
        the org's store at ``store_url``, in words for a person; None when it can: the server has the
        stores' key and the store is registered (``act`` then defers it as a job, as ``_defer`` does).
        Blocking (a handler's thread)."""
        if self.settings.secret_key is None:
            return (
                f"Retry and resume run the queue's registered store as a job, and this server has no "
                f"{SECRET_KEY_VARIABLE} to open its secrets: start `wcsync serve` with it, or run "
                "`wcsync retry QUEUE_ID` / `wcsync resume QUEUE_ID` with the store's key in the environment."
            )
        wanted = str(store_key(org_id, store_url))
        if not any(str(row["storeId"]) == wanted for row in self._store_list(org_id)):
            return (
                "Retry and resume need the queue's store registered in this organisation "
                f"(`wcsync stores add --url {store_url}`), or run `wcsync retry QUEUE_ID` with the store's key "
                "in the environment."
            )
        return None

    async def queue_status(self, org_id: str, queue_id: UUID) -> dict[str, Any]:
        """The queue's status with ``isRunning``, as the status action answers it (QueueNotFoundError for
        an unknown queue or another org's)."""
        return await self._status(org_id, queue_id)

    async def in_thread(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` on the handlers' own threads (database work never runs on the loop)."""
        return await self._in_thread(func, *args)

    async def _defer(self, sync: SyncRequest, org_id: str, actor: str) -> dict[str, Any]:
        """A start, retry or resume of a registered store, deferred as a job: the queue exists (a new one as
        a draft) before the answer, and whatever the job would refuse at once is refused now."""
        registry = self._registry()
        jobs = self._jobs
        if jobs is None:
            raise NotConfiguredError()
        engine = self.services.engine(org_id, actor=actor)
        if sync.action == "start":
            assert sync.store_id is not None and sync.options is not None
            store = await self._in_thread(registry.settings, org_id, sync.store_id)
            queue_id, job_id = await jobs.start(engine, sync.store_id, store.url, sync.options)
        else:
            assert sync.queue_id is not None
            queue_id = sync.queue_id
            self.runs.refuse_if_running(org_id, queue_id)
            queue = await self._in_thread(engine.check_deferrable, sync.action, queue_id)
            store_id = sync.store_id or store_key(org_id, queue.store_url)
            store = await self._in_thread(self._registered, registry, org_id, store_id, sync.store_id is None)
            if store.url != queue.store_url:
                raise StoreMismatchError(queue_id)
            job_id = await jobs.defer(sync.action, org_id, queue_id, actor, store_id)
        log.info(
            "api.sync_deferred", action=sync.action, org_id=org_id, queue_id=str(queue_id), job_id=job_id
        )
        return {"queueId": str(queue_id), "action": sync.action, "jobId": job_id}

    @staticmethod
    def _registered(registry: StoreRegistry, org_id: str, store_id: UUID, implied: bool) -> StoreSettings:
        """The registered store's settings; for a store implied by the queue's URL, a missing one is the
        request's mistake: it needs config or a store_id."""
        try:
            return registry.settings(org_id, store_id)
        except StoreNotFoundError:
            if implied:
                raise _bad_request(
                    "config (url, consumerKey, consumerSecret) or store_id is required: the queue's store is "
                    "not registered (POST /api/v1/stores registers it)",
                    "missing_field",
                ) from None
            raise

    # ----- POST /api/v1/webhooks/woocommerce/{store_id} (signed, no token) -----------------------------

    async def webhook(self, request: web.Request) -> web.Response:
        """A store's webhook delivery: 200 once it is durable (or was already, or for the ping); 401 for a
        missing or wrong signature, 404 for no such store. A good signature is never refused for what
        others sent: the refusals are counted per address and store (10 in 60 s: 429 from then on for that
        store from that address), the unknown store ids per address (the same)."""
        address = auth.client_address(request.remote)
        try:
            store_id = UUID(request.match_info["store_id"])
        except ValueError:
            raise self._unknown_store(address) from None
        if self.settings.secret_key is None:
            raise NotConfiguredError()
        if self._receiver is None:
            self._receiver = self.services.webhook_receiver(self.settings.secret_key)
        if (request.content_length or 0) > MAX_DELIVERY_BYTES:
            raise ApiError(
                413, "payload_too_large", f"a webhook delivery is at most {MAX_DELIVERY_BYTES} bytes"
            )
        body = await request.read()
        loop = asyncio.get_running_loop()
        try:
            receipt = await loop.run_in_executor(
                self._deliveries, self._receiver.receive, store_id, request.headers, body
            )
        except UnknownStoreError:
            raise self._unknown_store(address) from None
        except SignatureRefused:
            key = f"{address} {store_id}"
            self._refused.failed(key)
            wait = self._refused.retry_after(key)
            if wait is not None:
                raise auth.TooManyAttempts(wait) from None
            raise
        return _ok({"outcome": receipt.outcome})

    def _unknown_store(self, address: str) -> WcsyncError:
        self._unknown.failed(address)
        wait = self._unknown.retry_after(address)
        if wait is not None:
            return auth.TooManyAttempts(wait)
        return ApiError(404, "not_found", "no registered store of this id")

    # ----- /api/v1/stores (admin) ----------------------------------------------------------------------

    def _registry(self) -> StoreRegistry:
        if self.settings.secret_key is None:
            raise NotConfiguredError()
        if self._stores is None:
            self._stores = self.services.store_registry(
                self.settings.secret_key, self.settings.client_options
            )
        return self._stores

    async def add_store(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.ADMIN)
        body = decode_body(await _read_body(request))
        store = parse_store_request(body, org_required=_no_auth(request))
        org_id = auth.request_org(request, store.org_id)
        actor = _actor(request, store.actor, self.settings.default_actor)
        registry = self._registry()

        def add() -> dict[str, Any]:
            # The registry checks the store (a request on a loop of this thread) and saves; never on the loop.
            return asyncio.run(
                registry.add(org_id, store.url, store.consumer_key, store.consumer_secret, store.name, actor)
            )

        document = await self._in_thread(add)
        return _ok(document, status=201 if document.get("action") != "rotated" else 200)

    async def list_stores(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.ADMIN)
        org_id = _query_org(request)
        rows = await self._in_thread(self._store_list, org_id)
        return _ok(rows)

    def store_rows(self, org_id: str) -> list[dict[str, Any]]:
        """The org's registered stores, the read models caught up first (blocking: on a handler's thread)."""
        return self._store_list(org_id)

    def _store_list(self, org_id: str) -> list[dict[str, Any]]:
        self.services.catch_up(READ_CATCH_UP_S)
        return queries.list_stores(self.services.projections, org_id)

    async def store(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.ADMIN)
        org_id, store_id = _query_org(request), _path_store_id(request)
        return _ok(await self._in_thread(self._known_store, org_id, store_id))

    def _known_store(self, org_id: str, store_id: UUID) -> dict[str, Any]:
        self.services.catch_up(READ_CATCH_UP_S)
        row = queries.store(self.services.projections, org_id, store_id)
        if row is None:
            raise StoreNotFoundError(store_id, org_id)
        return row

    async def remove_store(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.ADMIN)
        org_id, store_id = _query_org(request), _path_store_id(request)
        actor = _actor(request, None, self.settings.default_actor)
        # No key needed: a removal deletes the sealed secret unread (a lost key must not keep stores registered).
        registry = self._registry() if self.settings.secret_key is not None else self._keyless_registry()
        await self._in_thread(registry.remove, org_id, store_id, actor)
        return _ok({"storeId": str(store_id), "removed": True})

    def _keyless_registry(self) -> StoreRegistry:
        if self._keyless is None:
            self._keyless = self.services.store_registry(None, None)
        return self._keyless

    async def stop_runs(self, _: web.Application | None = None) -> None:
        """Ask every run in flight to stop after its current batch (app.on_shutdown: before aiohttp waits
        for the requests in flight, a start waiting for its first save among them)."""
        self.runs.stop()

    async def shutdown(self) -> None:
        """Stop the runs in flight after their current batch and wait for them (BackgroundRuns.shutdown),
        then for the worker threads before the database is closed."""
        await self.runs.shutdown()
        await asyncio.get_running_loop().shutdown_default_executor()
        self._reads.shutdown(wait=True)
        self._deliveries.shutdown(wait=True)
        self._health.shutdown(wait=False, cancel_futures=True)

    async def _status(self, org_id: str, queue_id: UUID) -> dict[str, Any]:
        leased = False

        def read() -> dict[str, Any] | None:
            # A queue a run holds (this server's, a worker's, a CLI's: its lease) is answered from the tables
            # as they are: its counts move anyway, and waiting for the read models to reach a log the runs
            # keep extending made every poll as slow as the write load. So is a queue whose every event the
            # queues projection has applied (a draft waiting for a worker, a finished queue). Otherwise (not
            # found yet, or its run just ended) the read models first catch up with what was saved before.
            nonlocal leased
            status = queries.queue_status(self.services.projections, org_id, queue_id)
            leased = self._leased(queue_id)
            if status is not None and (leased or self.services.projections.applied_all_of(QUEUES, queue_id)):
                return status  # running, or every event of the queue is in the tables already
            self.services.catch_up(READ_CATCH_UP_S)
            return queries.queue_status(self.services.projections, org_id, queue_id)

        async def read_status() -> dict[str, Any] | None:
            return await self._in_thread(read)

        status = await self.runs.status(org_id, queue_id, read_status)
        status["isRunning"] = status["isRunning"] or leased
        return status

    def _leased(self, queue_id: UUID) -> bool:
        leases = self.services.queue_leases()
        lease = leases.lease_of(queue_id)
        return lease is not None and not leases.is_stale(lease)

    # ----- GET ------------------------------------------------------------------------------------------

    async def list_queues(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.VIEWER)
        return _ok(await self.queue_rows(_query_org(request), _query_limit(request, 50)))

    async def queue_rows(self, org_id: str, limit: int, caught_up: bool = True) -> list[dict[str, Any]]:
        """The org's queues, newest first, each with ``isRunning`` as status says it: this server's run, or
        anyone's live lease (a worker's, a CLI's), the page's leases read in one query. ``caught_up``: the
        read models first reach what was saved before (a poll every second or two does without: waiting
        for them to reach a log the runs keep extending would make each poll as slow as the write load)."""
        if caught_up:
            await self._in_thread(self.services.catch_up, READ_CATCH_UP_S)
        rows = await self._in_thread(queries.list_queues, self.services.projections, org_id, limit)
        queue_ids = [UUID(row["queueId"]) for row in rows]
        leased = await self._in_thread(self.services.queue_leases().live, queue_ids)
        for row, queue_id in zip(rows, queue_ids, strict=True):
            row["isRunning"] = queue_id in leased or self.runs.in_flight(org_id, queue_id) is not None
        return rows

    async def queue(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.VIEWER)
        return _ok(await self._status(_query_org(request), _path_queue_id(request)))

    async def failed(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.VIEWER)
        org_id, queue_id = _query_org(request), _path_queue_id(request)
        await self._known_queue(org_id, queue_id)
        return _ok(await self._in_thread(queries.failed_lines, self.services.projections, org_id, queue_id))

    async def activity(self, request: web.Request) -> web.Response:
        auth.require_role(request, Role.VIEWER)
        org_id, queue_id = _query_org(request), _path_queue_id(request)
        limit = _query_limit(request, 1000)
        await self._known_queue(org_id, queue_id)
        return _ok(
            await self._in_thread(queries.activity, self.services.projections, org_id, queue_id, limit)
        )

    async def health(self, request: web.Request) -> web.Response:
        """Answers at once whatever the runs hold: no catch-up, and the projections' positions are read on a
        thread of its own for at most HEALTH_READ_S (``projectionLag`` is null when that read is slower)."""
        lag: int | None = None
        if self._health_read is None or self._health_read.done():
            loop = asyncio.get_running_loop()
            self._health_read = loop.run_in_executor(self._health, self.services.projections.status)
        with contextlib.suppress(TimeoutError):
            rows = await asyncio.wait_for(asyncio.shield(self._health_read), HEALTH_READ_S)
            lag = max((row["lag"] for row in rows), default=0)
        return _ok(
            {
                "status": "ok",
                "database": operations.backend_name(self.services.database),  # a public route: no location
                "running": self.runs.running_count(),
                "projectionLag": lag,
            }
        )

    async def _known_queue(self, org_id: str, queue_id: UUID) -> None:
        await self._in_thread(self.services.catch_up, READ_CATCH_UP_S)
        if await self._in_thread(queries.queue_status, self.services.projections, org_id, queue_id) is None:
            # Same answer for a missing queue and another org's: another org's queues are not even confirmed.
            raise QueueNotFoundError(f"no queue {queue_id} in org {org_id!r}")


async def _read_body(request: web.Request) -> bytes:
    """The raw body, refused above MAX_BODY_BYTES before it is read."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return await request.read()
    except web.HTTPException:
        raise
    except Exception as error:  # a body that does not decode as its Content-Encoding says, say
        log.info("api.unreadable_body", error=type(error).__name__)
        raise _bad_request(
            "the request body could not be read (is its Content-Encoding right?)", "invalid_json"
        ) from None


def _path_store_id(request: web.Request) -> UUID:
    text = request.match_info["store_id"]
    try:
        return UUID(text)
    except ValueError:
        raise _bad_request(f"the store id in the path must be {STORE_ID_IS}") from None


def _path_queue_id(request: web.Request) -> UUID:
    text = request.match_info["queue_id"]
    try:
        return UUID(text)
    except ValueError:
        raise _bad_request("the queue id in the path must be a UUID") from None


def _as_api_error(error: BaseException | None) -> ApiError:
    if isinstance(error, ApiError):
        return error
    if isinstance(error, WcsyncError):
        # Each error class carries its status and code (domain.errors): this is the one mapping.
        return ApiError(error.http_status, error.error_code, error.http_message(), **error.http_details())
    return ApiError(500, "internal_error", "internal error; the server log has the details")


# ----- responses and middleware ------------------------------------------------------------------------


def _dumps(document: Any) -> str:
    return json.dumps(document, ensure_ascii=False, default=str)


def _ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response({"success": True, "data": data}, status=status, dumps=_dumps)


def _failure(error: ApiError) -> web.Response:
    body = {"success": False, "error": {"code": error.code, "message": error.message, **error.extra}}
    retry_after = error.extra.get("retryAfterS")
    headers = {"Retry-After": str(retry_after)} if isinstance(retry_after, int) else None
    return web.json_response(body, status=error.status, dumps=_dumps, headers=headers)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


@web.middleware
async def _envelope(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every answer in the seed's envelope, aiohttp's own errors (unknown path, wrong method) included."""
    try:
        return await handler(request)
    except ApiError as error:
        return _failure(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_CODES.get(error.status, "http_error")
        return _failure(ApiError(error.status, code, error.reason))
    except WcsyncError as error:
        return _failure(_as_api_error(error))
    except Exception as error:
        # Type and route only: the message of an unexpected error could quote what the request carried.
        log.error("api.internal_error", error=type(error).__name__, path=request.path, method=request.method)
        return _failure(_as_api_error(error))


class AccessLogger(AbstractAccessLogger):
    """One structured line per request (method, path, status, size, time); never a body or a header."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info(
            "api.request",
            method=request.method,
            path=request.path,
            status=response.status,
            bytes=response.body_length,
            ms=round(time * 1000, 1),
            remote=request.remote,
        )


# ----- the application -----------------------------------------------------------------------------------


def create_app(services: Services, settings: ApiSettings | None = None) -> web.Application:
    """The aiohttp application. ``services`` stay the caller's to close (after the app's cleanup)."""
    settings = settings or ApiSettings()
    api = SyncApi(services, settings)
    # One count of failed attempts per address for the API's tokens and the dashboard's sign-ins alike: a
    # guesser gets no second allowance by switching from one to the other.
    failures = auth.FailureLimiter()
    # The envelope outermost, so the authentication's refusals are answered like every other error; the
    # dashboard's middleware inside it answers its own paths' errors as pages. The token lookups run on the
    # handlers' threads, never on the loop.
    authenticate = auth.auth_middleware(
        services.api_tokens().authenticate,
        PUBLIC_PATHS,
        no_auth=settings.no_auth,
        limiter=failures,
        executor=api._reads,
        signed_prefixes=SIGNED_PREFIXES,
        page_path=dashboard_guard.is_page_path,
    )
    site = dashboard_guard.Site(settings.public_origin)
    dashboard = Dashboard(api, services, settings.no_auth, failures, site=site)
    app = web.Application(middlewares=[_envelope, dashboard.middleware, authenticate])
    app.on_response_prepare.append(auth.bearer_challenge)
    dashboard.add_routes(app)
    app.router.add_post(SYNC_PATH, api.sync_customers)
    app.router.add_get("/api/v1/queues", api.list_queues)
    app.router.add_get("/api/v1/queues/{queue_id}", api.queue)
    app.router.add_get("/api/v1/queues/{queue_id}/failed", api.failed)
    app.router.add_get("/api/v1/queues/{queue_id}/activity", api.activity)
    app.router.add_post("/api/v1/stores", api.add_store)
    app.router.add_get("/api/v1/stores", api.list_stores)
    app.router.add_get("/api/v1/stores/{store_id}", api.store)
    app.router.add_delete("/api/v1/stores/{store_id}", api.remove_store)
    app.router.add_get(HEALTH_PATH, api.health)
    app.router.add_post(WEBHOOK_ROOT + "{store_id}", api.webhook)
    operations.add_operation_routes(app, services)

    async def lifetime(_: web.Application) -> AsyncIterator[None]:
        # One projection follower for the server's whole life rather than one per run: runs overlap here,
        # and Services keeps a single follower slot, so per-run followers would stop each other's. Idle,
        # it costs one small query per poll interval. Status requests and the end of a run wait for it to
        # reach what was saved before they asked (Services.catch_up) instead of catching up beside it, and
        # it starts no parallel catch-up processes: on SQLite they would only queue for the write lock.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=MAX_RUNS + 2, thread_name_prefix="wcsync-run")
        )
        with services.live_projections(server=True):
            await api.open_jobs()
            try:
                yield
                await api.shutdown()
            finally:
                await api.close_jobs()

    app.on_shutdown.append(api.stop_runs)
    app.cleanup_ctx.append(lifetime)
    return app


class _EnvelopedRequestHandler(RequestHandler):
    """Answers what aiohttp's HTTP parser refuses (a body longer than its Content-Length read as the next
    request, a request line over 8 KiB, ...) in the API's envelope. aiohttp's own answer quotes the bytes it
    could not parse, and those can be the previous request's body, credentials and all; its log line
    carries them and a traceback. Here: the status, a fixed message, and a log line with the error's type."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.warning("api.unreadable_request", status=status, error=type(exc).__name__ if exc else None)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer was being sent already; the connection is closed")
        code = {400: "bad_request", 413: "payload_too_large", 504: "timeout"}.get(status, "internal_error")
        text = "the request could not be read as HTTP" if status < 500 else "internal error"
        response = _failure(ApiError(status, code, text))
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _EnvelopedRequestHandler(self, loop=self._loop, **self._kwargs)


class _AppRunner(web.AppRunner):
    """An AppRunner whose connections are handled by _EnvelopedRequestHandler."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        return server


@dataclass(frozen=True)
class RunningApi:
    url: str
    app: web.Application


@asynccontextmanager
async def running_api(
    services: Services, host: str = "127.0.0.1", port: int = 0, settings: ApiSettings | None = None
) -> AsyncIterator[RunningApi]:
    """Listen on host:port (0 = any free port) and yield once connections are accepted."""
    app = create_app(services, settings)
    runner = _AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=REQUEST_SHUTDOWN_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        yield RunningApi(url=f"http://{url_host}:{bound_port}", app=app)
    finally:
        await runner.cleanup()


async def serve(
    services: Services,
    host: str,
    port: int,
    on_listening: Callable[[str], None],
    settings: ApiSettings | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; ``on_listening`` gets the URL once connections are accepted.

    A signal stops the runs after their current batch and the server as soon as they have; whatever still
    holds on (a database wait in a worker thread) the process exits SERVE_STOP_S after the signal, or at
    once on a second signal: every saved batch is kept either way, and `resume` continues the queues."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled() -> None:
        if stop.is_set():
            _exit_now("stopped at once (a second signal)")
        stop.set()
        watchdog = threading.Timer(SERVE_STOP_S, _exit_now, args=(f"still stopping after {SERVE_STOP_S} s",))
        watchdog.daemon = True
        watchdog.start()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, signalled)
    async with running_api(services, host, port, settings) as api:
        on_listening(api.url)
        await stop.wait()


def _exit_now(why: str) -> None:
    """End the process without waiting for its threads: every batch saved is kept (SQLite and PostgreSQL
    commit whole transactions), and a queue a run had started stays processing, resumable."""
    log.warning("api.exit_now", reason=why)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(0)
