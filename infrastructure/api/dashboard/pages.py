"""The dashboard's pages on `wcsync serve` (docs/DASHBOARD.md has the page contract): sign-in, the org's
queues live, one queue (counts, chart, activity, failed lines, retry / resume / force-done), the stores,
the health of the service.

The pages read through the same services as the JSON API and act through the very same path: a form's
action is the seed's body handed to ``SyncApi.queue_action`` (the JSON route's parser and ``act``), so a
page can do nothing the API would not, and says what the API would (``queue_busy``, ``invalid_state`` ...).

Who: a browser signs in with an API token once (``POST /login``); its cookie holds a server-side session
(infrastructure/api/sessions.py), checked on every request, its token's revocation included. The JSON
API never reads that cookie (auth.auth_middleware asks bearer tokens there), so a cookie authorises the
pages only, whose forms are CSRF-checked. Every read is the session's org's; another org's queue is the
same 404 page as an unknown id.

This module must not import infrastructure.api.http, which imports it: the API's handlers come in as a
``DashboardApi``.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar
from uuid import UUID

import jinja2
import structlog
from aiohttp import web

from domain import bounds
from domain.errors import WcsyncError
from infrastructure.adapters.tokens import Principal, Role
from infrastructure.api import auth
from infrastructure.api.dashboard import guard, views
from infrastructure.api.dashboard.guard import (
    CsrfRefused,
    LoginRequired,
    PageNotFound,
)
from infrastructure.api.sessions import (
    DashboardSessions,
    Session,
    csrf_matches,
    csrf_of,
    new_session_id,
    well_formed,
)
from infrastructure.services.webhooks import TOPICS
from infrastructure.support.errors import QueueNotFoundError, StorageError
from infrastructure.wiring import Services
from projections import queries

log = structlog.get_logger("wcsync.dashboard")
T = TypeVar("T")

# The prefix of the names of the dashboard's routes (``dashboard.login`` ...).
ROUTE_PREFIX = "dashboard."
HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
# The queues page lists this many (the newest); the queue page this much activity and this many failures.
QUEUES_SHOWN = 100
ACTIVITY_SHOWN = 100
LIVE_ACTIVITY_SHOWN = ACTIVITY_SHOWN  # the live list replaces the first render's: the same length
FAILED_SHOWN = 500
# The live refresh draws a queue's chart again at most this often; this many queues' charts are kept.
CHART_REFRESH_S = 5.0
CHARTS_KEPT = 256
ACTIONS = ("retry", "resume", "force-done")
# A no-auth session's name (the recorded actor of its actions).
NO_AUTH_NAME = "dashboard"

SESSION_KEY: web.RequestKey[Session | None] = web.RequestKey("dashboard_session")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class DashboardApi(Protocol):
    """What the pages need of the JSON API's handlers (infrastructure.api.http.SyncApi)."""

    async def queue_action(
        self, org_id: str, actor: str, body: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]: ...

    async def queue_status(self, org_id: str, queue_id: UUID) -> dict[str, Any]: ...

    async def queue_rows(self, org_id: str, limit: int, caught_up: bool = True) -> list[dict[str, Any]]: ...

    def store_rows(self, org_id: str) -> list[dict[str, Any]]: ...

    def rerun_refusal(self, org_id: str, store_url: str) -> str | None: ...

    async def in_thread(self, func: Callable[..., T], *args: Any) -> T: ...


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Dashboard:
    """The pages' handlers over one server's API handlers and services."""

    def __init__(
        self,
        api: DashboardApi,
        services: Services,
        no_auth: bool,
        limiter: auth.FailureLimiter,
        sessions: DashboardSessions | None = None,
        site: guard.Site | None = None,
    ) -> None:
        self.api = api
        self.services = services
        self.no_auth = no_auth
        self.limiter = limiter
        self.site = site or guard.Site()
        self.sessions = sessions or DashboardSessions(services.database, services.write_gate)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._jobs: Any = None
        self._schedules: Any = None
        # (org, queue) -> its chart, activity types and failed lines as last read, the least recent first.
        self._charts: OrderedDict[tuple[str, UUID], _SlowReads] = OrderedDict()
        self._charts_lock = threading.Lock()
        self._rates = views.Rates()

    # ----- the application --------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """The pages' routes on the server's application, each resource named ``dashboard.*`` (they are not
        the JSON API's: the OpenAPI document leaves them out)."""
        router = app.router
        router.add_get(guard.LOGIN_PATH, self.login_form, name=ROUTE_PREFIX + "login")
        router.add_post(guard.LOGIN_PATH, self.login, name=ROUTE_PREFIX + "login")
        router.add_post(guard.LOGOUT_PATH, self.logout, name=ROUTE_PREFIX + "logout")
        router.add_get(guard.QUEUES_PATH, self.queues, name=ROUTE_PREFIX + "queues")
        router.add_get(guard.QUEUE_ROOT + "{queue_id}", self.queue, name=ROUTE_PREFIX + "queue")
        router.add_post(
            guard.QUEUE_ROOT + "{queue_id}/{action}", self.queue_post, name=ROUTE_PREFIX + "action"
        )
        router.add_get(guard.STORES_PATH, self.stores, name=ROUTE_PREFIX + "stores")
        router.add_get(guard.HEALTH_PAGE_PATH, self.health, name=ROUTE_PREFIX + "health")
        router.add_get(guard.LIVE_ROOT + "queues", self.live_queues, name=ROUTE_PREFIX + "live_queues")
        router.add_get(
            guard.LIVE_ROOT + "queues/{queue_id}", self.live_queue, name=ROUTE_PREFIX + "live_queue"
        )
        router.add_static(
            guard.STATIC_ROOT,
            STATIC,
            name=ROUTE_PREFIX + "static",
            append_version=False,
            follow_symlinks=False,
        )
        app.on_response_prepare.append(self._headers)
        app.on_cleanup.append(self._close)

    async def _close(self, _: web.Application) -> None:
        self.sessions.shutdown()
        if self._jobs is not None:
            await self._jobs.close_async()

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """app.on_response_prepare: every answer of the dashboard's, and every HTML page, with the security
        headers (assets may be cached, revalidated; nothing else is)."""
        if guard.is_page_path(request.path) or response.content_type == "text/html":
            guard.secure(response, cache=request.path.startswith(guard.STATIC_ROOT))
            # A page's 401 (a wrong token at sign-in, the live JSON's ended session) asks for no bearer token.
            response.headers.popall("WWW-Authenticate", None)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The pages' errors as pages (the live JSON's as JSON), never the API's envelope nor a traceback;
        a browser's unknown path is the 404 page. Other paths pass through untouched."""
        if not guard.is_page_path(request.path):
            unknown = request.match_info.http_exception
            if unknown is not None and unknown.status == 404 and guard.wants_page(request):
                return self._error_page(request, PageNotFound(), heading="Not found")
            return await handler(request)
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            if error.status == 404:
                return self._error_page(request, PageNotFound(), heading="Not found")
            return self._error_page(request, _HttpRefusal(error.status, error.reason))
        except LoginRequired as error:
            if guard.is_live_path(request.path):
                return _json_error(error)
            raise web.HTTPSeeOther(guard.login_redirect(request)) from None
        except StorageError as error:
            log.warning("dashboard.storage_error", path=request.path, error=str(error))
            return self._error_page(request, error)
        except WcsyncError as error:
            return self._error_page(request, error)
        except Exception as error:
            # The traceback, for whoever runs the server (never the form, the cookies or other headers).
            log.error(
                "dashboard.internal_error",
                error=type(error).__name__,
                method=request.method,
                path=request.path,
                exc_info=error,
            )
            return self._error_page(request, error)

    # ----- sessions ---------------------------------------------------------------------------------

    async def _session(self, request: web.Request) -> Session | None:
        if SESSION_KEY not in request:
            value = self.site.cookie(request, guard.SESSION_COOKIE)
            request[SESSION_KEY] = (
                None if value is None else await self.api.in_thread(self.sessions.find, value, self.no_auth)
            )
        return request[SESSION_KEY]

    async def _signed_in(self, request: web.Request) -> Session:
        session = await self._session(request)
        if session is None:
            raise LoginRequired()
        return session

    async def _posted(self, request: web.Request, session: Session) -> dict[str, str]:
        """A state-changing form of the session's: from this server's page, with its CSRF value."""
        form = await guard.read_form(request)
        sent = form.get("csrf", "")
        why = self.site.refusal(request)
        if why is None and not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            why = "token"
        if why is not None:
            log.warning(
                "dashboard.csrf_refused",
                org=session.org_id,
                name=session.principal.name,
                path=request.path,
                reason=why,
                origin=_header_shown(request, "Origin"),
                host=_header_shown(request, "Host"),
            )
            raise CsrfRefused()
        return form

    # ----- sign-in and sign-out -----------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        if await self._session(request) is not None:
            raise web.HTTPSeeOther(guard.safe_next(guard.query_value(request, "next")))
        return self._login_page(request)

    def _login_page(self, request: web.Request, alert: str | None = None, status: int = 200) -> web.Response:
        """The sign-in form, with the pre-session cookie its CSRF value is tied to (kept when the browser
        has one: two tabs of the form both stay valid)."""
        pre = self.site.cookie(request, guard.LOGIN_COOKIE)
        if pre is None or not well_formed(pre):
            pre = new_session_id()
        response = self._render(
            request,
            "login.html",
            title="Sign in",
            status=status,
            session=None,
            alert=alert,
            csrf=csrf_of(pre),
            no_auth=self.no_auth,
            next_path=guard.safe_next(guard.query_value(request, "next")),
        )
        self.site.set_cookie(response, request, guard.LOGIN_COOKIE, pre, max_age=guard.LOGIN_COOKIE_MAX_AGE_S)
        return response

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = await guard.read_form(request)
        pre = self.site.cookie(request, guard.LOGIN_COOKIE)
        why = self.site.refusal(request)
        if why is None and (pre is None or not csrf_matches(pre, form.get("csrf"))):
            why = "token"
        if why is not None:
            log.warning(
                "dashboard.csrf_refused",
                path=request.path,
                remote=request.remote,
                reason=why,
                origin=_header_shown(request, "Origin"),
                host=_header_shown(request, "Host"),
            )
            raise CsrfRefused()
        if self.no_auth:
            principal: Principal | None = self._no_auth_principal(form.get("org"))
            token = None
        else:
            token = form.get("token", "").strip()
            principal = await self._authenticate(token)
        if principal is None:
            return self._refused_sign_in(request)
        previous = self.site.cookie(request, guard.SESSION_COOKIE)
        if previous is not None:  # signing in again (another token, say): the old session ends here
            await self.api.in_thread(self.sessions.close, previous)
        session_id = await self.api.in_thread(self.sessions.open, principal, token)
        log.info("dashboard.signed_in", org=principal.org_id, name=principal.name, role=principal.role.value)
        response = web.HTTPSeeOther(guard.safe_next(guard.query_value(request, "next")))
        self.site.set_cookie(response, request, guard.SESSION_COOKIE, session_id)
        self.site.drop_cookie(response, request, guard.LOGIN_COOKIE)
        raise response

    async def _authenticate(self, token: str) -> Principal | None:
        if not token or len(token) > auth.MAX_AUTHORIZATION_LENGTH or not token.isascii():
            return None
        return await self.api.in_thread(self.services.api_tokens().authenticate, token)

    def _no_auth_principal(self, org: str | None) -> Principal:
        try:
            org_id = bounds.check_identifier(org if org else None, "org")
        except bounds.BoundError as error:
            raise guard.BadForm(f"{error}; name the organisation to look at") from None
        return Principal(org_id, NO_AUTH_NAME, Role.ADMIN)

    def _refused_sign_in(self, request: web.Request) -> web.Response:
        """A wrong token: the form again, 401, counted against the address like the API's failed tokens
        (over the limit: 429 with Retry-After). The token is never echoed nor logged."""
        address = auth.client_address(request.remote)
        wait = self.limiter.retry_after(address)
        self.limiter.failed(address)
        log.info("dashboard.sign_in_refused", remote=request.remote, throttled=wait is not None)
        if wait is not None:
            wait = self.limiter.retry_after(address) or wait
            response = self._login_page(
                request,
                alert=f"Too many failed sign-ins from this address; try again in {wait} s.",
                status=429,
            )
            response.headers["Retry-After"] = str(wait)
            return response
        return self._login_page(
            request,
            alert="That token was not accepted: it is unknown, revoked or mistyped. Check it and try again.",
            status=401,
        )

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Sign-out: the session's row deleted, the cookie dropped. A session already over (expired, its
        token revoked) has nothing to end, but its cookie is dropped all the same."""
        session = await self._session(request)
        response = web.HTTPSeeOther(guard.LOGIN_PATH)
        self.site.drop_cookie(response, request, guard.SESSION_COOKIE)
        if session is None:
            raise response
        await self._posted(request, session)
        value = self.site.cookie(request, guard.SESSION_COOKIE)
        if value is not None:
            await self.api.in_thread(self.sessions.close, value)
        log.info("dashboard.signed_out", org=session.org_id, name=session.principal.name)
        raise response

    # ----- queues -------------------------------------------------------------------------------------

    async def queues(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request)
        queues = await self.api.queue_rows(session.org_id, QUEUES_SHOWN, caught_up=False)
        rows = [self._row(row) for row in queues]
        return self._render(
            request,
            "queues.html",
            title="Queues",
            page="queues",
            session=session,
            rows=rows,
            updated_at=_now_iso(),
        )

    async def live_queues(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request)
        queues = await self.api.queue_rows(session.org_id, QUEUES_SHOWN, caught_up=False)
        return _json({"updatedAt": _now_iso(), "queues": [self._row(row) for row in queues]})

    def _row(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """A queue's row, its rate from the samples this server has seen of it (on the loop's thread)."""
        rate = self._rates.observe(str(status["queueId"]), views.finished_lines(status), time.monotonic())
        return views.queue_row(status, rate)

    async def queue(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request)
        return await self._queue_page(request, session, _queue_id(request))

    async def live_queue(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request)
        queue_id = _queue_id(request)
        try:
            status = await self.api.queue_status(session.org_id, queue_id)
        except QueueNotFoundError:
            raise PageNotFound() from None
        chosen = await self._chosen_type(request, session, queue_id)
        activity, slow = await self.api.in_thread(self._live_reads, session.org_id, queue_id, chosen)
        return _json(
            {
                "updatedAt": _now_iso(),
                "row": self._row(status),
                "state": status["state"],
                "isRunning": bool(status.get("isRunning")),
                "counts": views.queue_counts(status),
                "chart": slow.chart,
                "activity": activity,
                "activityTypes": slow.activity_types,
                "failed": slow.failed,
                "failedTotal": int(status["failedCount"]),
            }
        )

    def _live_reads(
        self, org_id: str, queue_id: UUID, chosen: str | None
    ) -> tuple[list[dict[str, Any]], _SlowReads]:
        source = self.services.projections
        activity = queries.recent_activity(source, org_id, queue_id, LIVE_ACTIVITY_SHOWN, chosen)
        return [views.activity_entry(row) for row in activity], self._slow_reads(org_id, queue_id)

    async def _chosen_type(self, request: web.Request, session: Session, queue_id: UUID) -> str | None:
        """The activity filter of the query string, when it is one of the queue's types (else: all)."""
        wanted = guard.query_value(request, "type")
        if not wanted:
            return None
        known = await self.api.in_thread(
            queries.activity_types, self.services.projections, session.org_id, queue_id
        )
        return wanted if wanted in known else None

    async def _queue_page(
        self,
        request: web.Request,
        session: Session,
        queue_id: UUID,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        status_code: int = 200,
    ) -> web.Response:
        try:
            status = await self.api.queue_status(session.org_id, queue_id)
        except QueueNotFoundError:
            raise PageNotFound() from None
        chosen = await self._chosen_type(request, session, queue_id)
        reads = await self.api.in_thread(self._queue_reads, session.org_id, queue_id, chosen)
        can_act = session.principal.role.allows(Role.OPERATOR)
        rerun_refusal = None
        if can_act:
            rerun_refusal = await self.api.in_thread(
                self.api.rerun_refusal, session.org_id, str(status.get("storeUrl") or "")
            )
        return self._render(
            request,
            "queue.html",
            title=f"Queue {queue_id}",
            page="queue",
            session=session,
            status=status_code,
            row=self._row(status),
            counts=views.queue_counts(status),
            can_act=can_act,
            rerun_refusal=rerun_refusal,
            result=result,
            error=error,
            outcomes=views.OUTCOMES,
            chosen_type=chosen or "",
            updated_at=_now_iso(),
            **reads,
        )

    def _queue_reads(self, org_id: str, queue_id: UUID, chosen: str | None) -> dict[str, Any]:
        source = self.services.projections
        failed = queries.failed_lines(source, org_id, queue_id, limit=FAILED_SHOWN)
        activity = queries.recent_activity(source, org_id, queue_id, ACTIVITY_SHOWN, chosen)
        return {
            "failed": [views.failed_line(row) for row in failed],
            "activity": [views.activity_entry(row) for row in activity],
            "activity_types": queries.activity_types(source, org_id, queue_id),
            "chart": self._chart(org_id, queue_id),
        }

    def _chart(self, org_id: str, queue_id: UUID) -> str:
        return self._slow_reads(org_id, queue_id).chart

    def _slow_reads(self, org_id: str, queue_id: UUID) -> _SlowReads:
        """The queue's chart (the database's sums over at most CHART_POINTS slices of time), its activity
        types and its first FAILED_SHOWN failed lines: read again at most every CHART_REFRESH_S per queue,
        every viewer's page and poll sharing them (a first render reads its failed lines and types fresh)."""
        key = (org_id, queue_id)
        now = time.monotonic()
        with self._charts_lock:
            cached = self._charts.get(key)
        if cached is not None and now - cached.read_at < CHART_REFRESH_S:
            return cached
        source = self.services.projections
        buckets = queries.progress_buckets(source, org_id, queue_id, views.CHART_POINTS)
        reads = _SlowReads(
            read_at=now,
            chart=views.chart_svg(views.progress_points(buckets)),
            activity_types=queries.activity_types(source, org_id, queue_id),
            failed=[
                views.failed_line(row)
                for row in queries.failed_lines(source, org_id, queue_id, limit=FAILED_SHOWN)
            ],
        )
        with self._charts_lock:
            self._charts[key] = reads
            self._charts.move_to_end(key)
            while len(self._charts) > CHARTS_KEPT:
                self._charts.popitem(last=False)
        return reads

    async def queue_post(self, request: web.Request) -> web.StreamResponse:
        """retry / resume / force-done from the queue page's forms: CSRF, then the role, then the API's own
        path; the answer is the queue page with the new state, or with the API's error."""
        session = await self._signed_in(request)
        action = request.match_info["action"]
        if action not in ACTIONS:
            raise PageNotFound()
        queue_id = _queue_id(request)
        form = await self._posted(request, session)
        if not session.principal.role.allows(Role.OPERATOR):
            log.warning(
                "dashboard.action_refused", org=session.org_id, name=session.principal.name, action=action
            )
            raise auth.Forbidden(Role.OPERATOR, session.principal)
        body: dict[str, Any] = {"action": action, "queue_id": str(queue_id)}
        if action == "force-done":
            body["reason"] = form.get("reason")
        try:
            if action != "force-done":
                await self._refuse_rerun(session, queue_id)
            _, data = await self.api.queue_action(session.org_id, session.principal.name, body)
        except QueueNotFoundError:
            raise PageNotFound() from None
        except WcsyncError as error:
            status, code, message, _ = guard.error_words(error)
            _log_action(session, action, queue_id, code)
            return await self._queue_page(
                request, session, queue_id, error={"code": code, "message": message}, status_code=status
            )
        _log_action(session, action, queue_id, "ok")
        result = await self._action_result(session, queue_id, action, data)
        return await self._queue_page(request, session, queue_id, result=result)

    async def _refuse_rerun(self, session: Session, queue_id: UUID) -> None:
        """A retry or resume the page would not offer (a stale page, a forged form): refused in the page's
        words (RerunUnavailable), not the API's request-body wording."""
        status = await self.api.queue_status(session.org_id, queue_id)
        why = await self.api.in_thread(
            self.api.rerun_refusal, session.org_id, str(status.get("storeUrl") or "")
        )
        if why is not None:
            raise RerunUnavailable(why)

    async def _action_result(
        self, session: Session, queue_id: UUID, action: str, data: Mapping[str, Any]
    ) -> dict[str, Any]:
        state = data.get("state")
        if state is None:
            with contextlib.suppress(QueueNotFoundError):
                state = (await self.api.queue_status(session.org_id, queue_id))["state"]
        if action == "force-done":
            message = "Forced done."
        elif data.get("jobId") is not None:
            message = f"{action.capitalize()} queued as job {data['jobId']}; a worker runs it."
        else:
            message = f"{action.capitalize()} started."
        return {"action": action, "state": state or "unknown", "message": message}

    # ----- stores and health ----------------------------------------------------------------------------

    async def stores(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request)
        rows = await self.api.in_thread(self._store_reads, session.org_id)
        return self._render(request, "stores.html", title="Stores", page="stores", session=session, rows=rows)

    def _store_reads(self, org_id: str) -> list[dict[str, Any]]:
        source = self.services.projections
        stores = self.api.store_rows(org_id)
        not_active = queries.store_webhook_states(source, org_id)
        schedules = self._schedule_list(org_id)
        rows = []
        for store in stores:
            store_id = str(store["storeId"])
            summary = queries.webhook_summary(source, org_id, UUID(store_id))
            last_ids = queries.store_queue_ids(source, org_id, store["url"], limit=1)
            last = queries.queue_status(source, org_id, last_ids[0]) if last_ids else None
            rows.append(
                {
                    "storeId": store_id,
                    "url": store["url"],
                    "name": store.get("name") or "",
                    "webhooks": views.webhook_states(store, not_active.get(store_id, {}), TOPICS),
                    "actionRequired": store.get("actionRequired") or "",
                    "lastDelivery": views.utc_iso(summary.get("lastDeliveryAt")),
                    "lastDeliveryTitle": views.utc_title(summary.get("lastDeliveryAt")),
                    "schedules": views.schedule_text([s for s in schedules if s.get("storeId") == store_id]),
                    "lastQueueId": None if last is None else last["queueId"],
                    "lastSync": None if last is None else views.utc_iso(last.get("createdAt")),
                    "lastSyncTitle": "" if last is None else views.utc_title(last.get("createdAt")),
                    "outcome": views.outcome_text(last),
                }
            )
        return rows

    def _schedule_list(self, org_id: str) -> list[dict[str, Any]]:
        if self._schedules is None:
            self._schedules = self.services.schedules()
        rows: list[dict[str, Any]] = self._schedules.list(org_id)
        return rows

    async def health(self, request: web.Request) -> web.StreamResponse:
        session = await self._signed_in(request)
        reads = await self.api.in_thread(self._health_reads, session.org_id)
        return self._render(request, "health.html", title="Health", page="health", session=session, **reads)

    def _health_reads(self, org_id: str) -> dict[str, Any]:
        """Workers (every worker's heartbeat: they serve every org, but only this org's jobs are counted or
        named), this org's jobs, the read models' lag. A part the database cannot answer says so alone."""
        reads: dict[str, Any] = {
            "workers": [],
            "jobs": [],
            "waiting": 0,
            "lag": [],
            "workers_error": None,
            "lag_error": None,
        }
        try:
            if self._jobs is None:
                self._jobs = self.services.sync_jobs()
            jobs = [job for job in self._jobs.jobs() if job.get("org") == org_id]
            mine = {job["jobId"] for job in jobs}
            reads["jobs"] = [_job_row(job) for job in jobs]
            reads["waiting"] = sum(1 for job in jobs if job.get("status") == "waiting")
            reads["workers"] = [_worker_row(worker, mine) for worker in self._jobs.workers()]
        except WcsyncError as error:
            log.warning("dashboard.health_unreadable", part="jobs", error=type(error).__name__)
            reads["workers_error"] = f"the job tables cannot be read just now: {guard.STORAGE_WORDS}"
        try:
            # Each read model's lag, a number: positions, head and set-aside counts are every org's.
            reads["lag"] = [
                {"name": row["name"], "lag": row["lag"]} for row in self.services.projections.status()
            ]
        except WcsyncError as error:
            log.warning("dashboard.health_unreadable", part="projections", error=type(error).__name__)
            reads["lag_error"] = f"the read models' positions cannot be read just now: {guard.STORAGE_WORDS}"
        return reads

    # ----- rendering ------------------------------------------------------------------------------------

    def _render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        context.setdefault("page", "")
        html = self.templates.get_template(template).render(**context)
        response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
        return response

    def _error_page(
        self, request: web.Request, error: BaseException, heading: str | None = None
    ) -> web.Response:
        status, code, message, _ = guard.error_words(error)
        if status >= 500 and not isinstance(error, WcsyncError):
            message = "internal error; the server log has the details"
        if guard.is_live_path(request.path):
            return _json_error(error)
        session = request.get(SESSION_KEY)
        return self._render(
            request,
            "error.html",
            status=status,
            title=heading or _HEADINGS.get(status, "Error"),
            heading=heading or _HEADINGS.get(status, "Something went wrong"),
            session=session,
            code=code,
            message=message,
        )


_HEADINGS = {
    400: "That request could not be read",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Not now",
    429: "Too many attempts",
    503: "Unavailable",
}


@dataclass(frozen=True)
class _SlowReads:
    """What a queue's live refresh reads at most every CHART_REFRESH_S (Dashboard._slow_reads)."""

    read_at: float
    chart: str
    activity_types: list[str]
    failed: list[dict[str, Any]]


class RerunUnavailable(WcsyncError):
    """A retry or resume this server cannot run from a page (no stores' key, the store not registered)."""

    http_status = 409
    error_code = "unavailable"


class _HttpRefusal(WcsyncError):
    """aiohttp's own refusals (405, 413 ...) in a page's words."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.http_status = status
        self.error_code = {405: "method_not_allowed", 413: "payload_too_large"}.get(status, "http_error")


def _header_shown(request: web.Request, name: str) -> str | None:
    """A request header as a log line may show it (an Origin or Host says where the form came from and is
    no secret): printable ASCII, cut at 200 characters."""
    value = request.headers.get(name)
    if value is None:
        return None
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in value[:200])


def _queue_id(request: web.Request) -> UUID:
    """The queue id of the path; anything that is not a UUID is the same 404 as an unknown queue."""
    text = request.match_info["queue_id"]
    if len(text) > 64:
        raise PageNotFound()
    try:
        return UUID(text)
    except ValueError:
        raise PageNotFound() from None


def _job_row(job: Mapping[str, Any]) -> dict[str, Any]:
    when = job.get("deferredAt")
    return {
        "jobId": job["jobId"],
        "status": job.get("status"),
        "action": job.get("action"),
        "queueId": job.get("queueId") or "",
        "attempts": job.get("attempts"),
        "deferred": views.utc_iso(when),
        "deferredTitle": views.utc_title(when),
    }


def _worker_row(worker: Mapping[str, Any], mine: set[Any]) -> dict[str, Any]:
    """A worker as an org's page shows it: the job queue's number for it, its heartbeat (the service's
    health, which every org's syncs share), and how many of the org's jobs it runs (never another's)."""
    age = worker.get("secondsSinceHeartbeat")
    return {
        "workerId": worker["workerId"],
        "heartbeat": views.utc_iso(worker.get("lastHeartbeat")),
        "heartbeatTitle": views.utc_title(worker.get("lastHeartbeat")),
        "age": "running a job (no heartbeat table on SQLite)" if age is None else views.duration(float(age)),
        "jobs": sum(1 for job in worker.get("jobs", []) if job in mine),
    }


def _json(document: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(document, status=status)


def _json_error(error: BaseException) -> web.Response:
    status, code, message, _ = guard.error_words(error)
    return _json({"success": False, "error": {"code": code, "message": message}}, status=status)


def _log_action(session: Session, action: str, queue_id: UUID, outcome: str) -> None:
    """The structured line of an action taken from a page (never the form's reason or any secret)."""
    log.info(
        "dashboard.action",
        org=session.org_id,
        name=session.principal.name,
        action=action,
        queue_id=str(queue_id),
        outcome=outcome,
    )
