"""Who is calling the HTTP API: the bearer token of each request, its role and its org, and a limit on
failed attempts per client address.

``auth_middleware`` puts the request's ``Principal`` (infrastructure.adapters.tokens) in
``request["principal"]``, or raises: the server's envelope middleware (outside this one) turns each of the
errors below, WcsyncError subclasses, into its answer. A missing, malformed, unknown or revoked token is one
answer, byte for byte (``Unauthorized``): the caller learns nothing about which it was, and a 401 carries
``WWW-Authenticate: Bearer`` (``bearer_challenge``, a response hook: the envelope builds the answer).

Failed attempts are limited per client address (``FailureLimiter``; an IPv6 address counts as its /64,
which one host or subscriber usually has whole, ``client_address``). An address over the limit still has
its token looked up: a valid one passes, and only a failure is answered 429 (and counted). So a shared
address (a load balancer's, a NAT's) that someone guesses from does not lock out the clients behind it,
and telling a valid token from another gives a guesser nothing: tokens are 256 random bits.

Handlers then ask ``require_role`` (403 ``forbidden``) and ``request_org`` (the token's org; a body or query
org_id naming another is 403 ``org_mismatch``). With ``no_auth`` (local development) every request passes
with no principal (None) and names its org itself, as before tokens existed.

No-auth mode listens on loopback only, but a web page the developer visits can still reach it: a
cross-origin ``text/plain`` POST needs no CORS preflight, and DNS rebinding makes the page's own name
resolve to 127.0.0.1. So in that mode (``local_request``) a request whose Host is not a loopback name or
address (``localhost``, ``127.x.y.z``, ``[::1]``, any port) is 403 ``forbidden_host``, and a body sent with
any method but GET, HEAD and OPTIONS (POST, DELETE) must be ``Content-Type: application/json`` (415
``unsupported_media_type``), which a browser sends cross-origin only after a preflight this server never
grants.

This module must not import infrastructure.api.http, which imports it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from domain.errors import WcsyncError
from infrastructure.adapters.tokens import Principal, Role
from infrastructure.support.errors import quoted

__all__ = [
    "FAILURE_WINDOW_S",
    "MAX_AUTHORIZATION_LENGTH",
    "MAX_FAILURES",
    "MAX_TRACKED_ADDRESSES",
    "PRINCIPAL_KEY",
    "SIGNED_KEY",
    "Authenticate",
    "FailureLimiter",
    "Forbidden",
    "ForbiddenHost",
    "OrgMismatch",
    "OrgRequired",
    "Principal",
    "Role",
    "TooManyAttempts",
    "Unauthorized",
    "UnsupportedMediaType",
    "auth_middleware",
    "bearer_challenge",
    "bearer_token",
    "client_address",
    "local_host",
    "local_request",
    "loopback_host",
    "request_org",
    "require_role",
]

log = structlog.get_logger("wcsync.api.auth")

# request[PRINCIPAL_KEY]: the Principal, or None in no-auth mode.
PRINCIPAL_KEY: web.RequestKey[Principal | None] = web.RequestKey("principal")
# request[SIGNED_KEY]: True for a request to a signed route (a webhook receiver): no bearer token asked.
SIGNED_KEY: web.RequestKey[bool] = web.RequestKey("signed")
# An Authorization header longer than this is not read at all (a token is 47 characters).
MAX_AUTHORIZATION_LENGTH = 512
# More than MAX_FAILURES failed attempts from one address within FAILURE_WINDOW_S seconds: that address's
# failures are answered 429 until the oldest of them is FAILURE_WINDOW_S old (a sliding window, which each
# further failure moves on); its valid tokens still pass.
MAX_FAILURES = 10
FAILURE_WINDOW_S = 60.0
# The most addresses whose failures are remembered (each costs at most MAX_FAILURES + 1 timestamps); past
# it, the expired ones are forgotten first, then the least recently failing.
MAX_TRACKED_ADDRESSES = 10_000

# RFC 6750's credentials: the scheme (any case), one or more spaces, a b64token.
_BEARER = re.compile(r"([A-Za-z]+) +([A-Za-z0-9\-._~+/]+=*)")

# Looks a token up; may block (a database read): auth_middleware runs it in an executor.
Authenticate = Callable[[str], Principal | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Unauthorized(WcsyncError):
    """No valid token: missing, malformed, unknown or revoked, one message for all four."""

    http_status = 401
    error_code = "unauthorized"
    MESSAGE = (
        "a valid API token is required: send Authorization: Bearer <token> "
        "(create one with `wcsync tokens create`)"
    )

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class Forbidden(WcsyncError):
    """The token is valid but its role is below what the request needs."""

    http_status = 403
    error_code = "forbidden"

    def __init__(self, required: Role, principal: Principal) -> None:
        super().__init__(
            f"this needs the {required} role; token {quoted(principal.name)} has {principal.role}"
        )
        self.required = required
        self.role = principal.role

    def http_details(self) -> dict[str, Any]:
        return {"requiredRole": self.required.value, "tokenRole": self.role.value}


class OrgMismatch(WcsyncError):
    """The request names an org other than its token's."""

    http_status = 403
    error_code = "org_mismatch"

    def __init__(self, token_org: str, requested_org: str) -> None:
        super().__init__(
            f"the token acts for org {quoted(token_org)}, not {quoted(requested_org)}: "
            "send the token's org_id or none"
        )


class OrgRequired(WcsyncError):
    """No-auth mode only: with no token to take the org from, the request must name it."""

    http_status = 400
    error_code = "missing_field"

    def __init__(self) -> None:
        super().__init__("org_id is required (the server runs without tokens: each request names its org)")


class TooManyAttempts(WcsyncError):
    """Too many failed attempts from the client's address; it may try again in ``retry_after_s``."""

    http_status = 429
    error_code = "too_many_attempts"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            f"too many failed authentication attempts from this address; try again in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s

    def http_details(self) -> dict[str, Any]:
        return {"retryAfterS": self.retry_after_s}  # the envelope makes it a Retry-After header


class ForbiddenHost(WcsyncError):
    """No-auth mode only: the request's Host is not a loopback name or address (a DNS-rebound page's)."""

    http_status = 403
    error_code = "forbidden_host"

    def __init__(self) -> None:
        super().__init__(
            "the server runs without tokens and answers only requests to a loopback Host "
            "(localhost, 127.0.0.1, [::1], any port)"
        )


class UnsupportedMediaType(WcsyncError):
    """No-auth mode only: a body that is not sent as application/json (a cross-site form or text/plain)."""

    http_status = 415
    error_code = "unsupported_media_type"

    def __init__(self) -> None:
        super().__init__("the request body must be sent with Content-Type: application/json")


# ----- the header ------------------------------------------------------------------------------------


def bearer_token(values: list[str]) -> str | None:
    """The token of a request's Authorization header values, or None for anything but exactly one header
    ``Bearer <token>`` (scheme in any case), printable ASCII, at most MAX_AUTHORIZATION_LENGTH long."""
    if len(values) != 1:
        return None
    value = values[0]
    if len(value) > MAX_AUTHORIZATION_LENGTH or not value.isascii() or not value.isprintable():
        return None
    found = _BEARER.fullmatch(value)
    if found is None or found.group(1).lower() != "bearer":
        return None
    return found.group(2)


# ----- failed attempts ---------------------------------------------------------------------------------

# An IPv6 client counts as its /64: one host or subscriber usually has a whole /64 and could otherwise
# guess from a new address each time.
IPV6_PREFIX = 64


def client_address(remote: str | None) -> str:
    """The address whose failures are counted together: an IPv4 address as it is (an IPv4-mapped IPv6
    one as the IPv4), an IPv6 address as its /64 (``2001:db8:1:2::/64``), anything else as given."""
    if remote is None:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])  # no zone: fe80::1%eth0
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class FailureLimiter:
    """Failed attempts per client address, in bounded memory. Thread-safe. ``clock`` is monotonic seconds
    (a test's own clock in tests)."""

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # least recently failing first
        self._lock = threading.Lock()

    def tracked(self) -> int:
        """How many addresses' failures are remembered (not __len__: an empty limiter would be falsy)."""
        with self._lock:
            return len(self._failures)

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until ``address`` may try again (at least 1), or None when it may now."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(address)
            if times is None or len(times) <= self.max_failures:
                return None
            wait = times[0] + self.window_s - now
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, address: str) -> None:
        """One more failed attempt from ``address``."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(address)
            if times is None:
                if len(self._failures) >= self.max_addresses:
                    self._make_room(now)
                times = self._failures[address] = deque(maxlen=self.max_failures + 1)
            else:
                self._failures.move_to_end(address)
            times.append(now)

    def _make_room(self, now: float) -> None:
        """Forget every address whose last failure is out of the window; if none is, the least recent."""
        expired = [a for a, times in self._failures.items() if now - times[-1] >= self.window_s]
        for address in expired:
            del self._failures[address]
        if len(self._failures) >= self.max_addresses:
            self._failures.popitem(last=False)


# ----- no-auth mode's own checks ----------------------------------------------------------------------

# Methods whose body no-auth mode does not check (a browser sends none cross-origin with them).
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_PORT = re.compile(r"(:[0-9]*)?")


def loopback_host(value: str) -> bool:
    """Whether a Host header names this machine's loopback: ``localhost`` (any case, a trailing dot too),
    an IPv4 address in 127/8 or the IPv6 ``[::1]``, each with or without a port."""
    if value.startswith("["):
        inside, bracket, port = value[1:].partition("]")
        if not bracket or _PORT.fullmatch(port) is None:
            return False
        try:
            return ipaddress.IPv6Address(inside).is_loopback
        except ValueError:
            return False
    name, colon, port = value.partition(":")
    if _PORT.fullmatch(colon + port) is None:
        return False
    if name.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def local_host(request: web.Request) -> None:
    """No-auth mode's refusal of a request whose Host is not loopback (ForbiddenHost, 403; exactly one Host
    header): a DNS-rebound page's. The dashboard's pages get this check alone (their forms are CSRF-checked,
    so they may be sent as forms)."""
    hosts = request.headers.getall("Host", [])
    if len(hosts) != 1 or not loopback_host(hosts[0]):
        log.info("api.host_refused", remote=request.remote, path=request.path)
        raise ForbiddenHost()


def local_request(request: web.Request) -> None:
    """No-auth mode's refusals of what a web page could send: a Host that is not loopback (ForbiddenHost,
    403; exactly one Host header), then a body not sent as application/json (UnsupportedMediaType, 415)."""
    local_host(request)
    if (
        request.method not in _BODYLESS_METHODS
        and request.body_exists
        and request.content_type != "application/json"
    ):
        raise UnsupportedMediaType()


# ----- the middleware ----------------------------------------------------------------------------------


def auth_middleware(
    authenticate: Authenticate,
    public_paths: frozenset[str],
    no_auth: bool,
    limiter: FailureLimiter | None = None,
    executor: Executor | None = None,
    signed_prefixes: tuple[str, ...] = (),
    page_path: Callable[[str], bool] | None = None,
) -> Middleware:
    """The middleware that authenticates every request but those to ``public_paths`` (exact paths) and
    under ``signed_prefixes`` (the webhook receivers, whose handler checks each request's signature: no
    token, and no-auth mode's refusals do not apply, a store being no web page):
    ``request["principal"]`` is the token's Principal, or None with ``no_auth``. A request without a valid
    token raises Unauthorized (401) or, from an address with too many failures already (``limiter``, one of
    its own by default; ``client_address``), TooManyAttempts (429); either is counted. A valid token passes
    whatever its address's failures. ``authenticate`` runs in ``executor`` (None: the loop's default). Put
    it inside the envelope middleware, and ``bearer_challenge`` in on_response_prepare. With ``no_auth``
    every request, to a public path too, first passes ``local_request`` (403 / 415).

    ``page_path``: the dashboard's paths (infrastructure/api/dashboard), which ask no bearer token: their
    handlers take the browser's session cookie instead. The cookie is read there only, so it never
    authorises anything else (with no_auth these paths pass ``local_host`` alone: their forms are
    CSRF-checked)."""
    failures = limiter if limiter is not None else FailureLimiter()

    @web.middleware
    async def authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
        if signed_prefixes and request.path.startswith(signed_prefixes):
            request[SIGNED_KEY] = True
            return await handler(request)
        if page_path is not None and page_path(request.path):
            if no_auth:
                local_host(request)
            return await handler(request)
        if no_auth:
            local_request(request)
        if request.path in public_paths:
            return await handler(request)
        if no_auth:
            request[PRINCIPAL_KEY] = None
            return await handler(request)
        principal = await _principal(request, authenticate, executor)
        if principal is None:
            address = client_address(request.remote)
            wait = failures.retry_after(address)  # over the limit before this failure?
            failures.failed(address)
            if wait is not None:
                raise TooManyAttempts(failures.retry_after(address) or wait)
            raise Unauthorized()
        request[PRINCIPAL_KEY] = principal
        return await handler(request)

    return authenticated


async def _principal(
    request: web.Request, authenticate: Authenticate, executor: Executor | None
) -> Principal | None:
    token = bearer_token(request.headers.getall("Authorization", []))
    if token is None:
        log.info("api.auth_refused", reason="no bearer token", remote=request.remote, path=request.path)
        return None
    principal = await asyncio.get_running_loop().run_in_executor(executor, authenticate, token)
    if principal is None:
        log.info("api.auth_refused", reason="unknown token", remote=request.remote, path=request.path)
    return principal


async def bearer_challenge(request: web.Request, response: web.StreamResponse) -> None:
    """app.on_response_prepare: every 401 answer says how to authenticate (RFC 6750); a signed route's
    does not ask for a bearer token (its 401 is about the signature)."""
    if response.status == 401 and not request.get(SIGNED_KEY, False):
        response.headers["WWW-Authenticate"] = "Bearer"


# ----- what handlers ask -------------------------------------------------------------------------------


def _principal_of(request: web.Request) -> Principal | None:
    """The request's principal (None: no-auth mode). A request the middleware did not see (a public path,
    a route wired without it) has none: refused, never let through."""
    if PRINCIPAL_KEY not in request:
        raise Unauthorized()
    return request[PRINCIPAL_KEY]


def require_role(request: web.Request, role: Role) -> None:
    """Refuse (Forbidden, 403) a token whose role is below ``role``; no-auth mode allows everything."""
    principal = _principal_of(request)
    if principal is not None and not principal.role.allows(role):
        raise Forbidden(role, principal)


def request_org(request: web.Request, body_org: str | None) -> str:
    """The org the request acts for: its token's. ``body_org`` (the body's or query's org_id, already
    checked as an identifier, None when absent) may only repeat it (else OrgMismatch, 403). In no-auth mode
    ``body_org`` is the org, and required (OrgRequired, 400)."""
    principal = _principal_of(request)
    if principal is None:
        if body_org is None:
            raise OrgRequired()
        return body_org
    if body_org is not None and body_org != principal.org_id:
        raise OrgMismatch(principal.org_id, body_org)
    return principal.org_id
