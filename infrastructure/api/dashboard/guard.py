"""The dashboard's defences, request by request: its paths, security headers, cookies, the checks of a
posted form (size, encoding, CSRF, Origin / Sec-Fetch-Site), strict query strings, safe redirects, and
the errors a page answers with (WcsyncError subclasses, so a page and the API word the same refusal alike).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, parse_qs, quote, urlsplit

from aiohttp import web

from domain.errors import WcsyncError
from infrastructure.support.errors import ConfigurationError, StorageError

SESSION_COOKIE = "wcsync_session"
LOGIN_COOKIE = "wcsync_login"
# Over TLS the cookies' names carry this prefix: a browser then keeps them only if they are Secure, Path=/
# and have no Domain, so a sibling subdomain (or a plain-HTTP page of the same host) cannot plant one.
HOST_PREFIX = "__Host-"
PUBLIC_ORIGIN_VARIABLE = "WCSYNC_PUBLIC_ORIGIN"
LOGIN_COOKIE_MAX_AGE_S = 600

LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
QUEUES_PATH = "/"
STORES_PATH = "/stores"
HEALTH_PAGE_PATH = "/health"
STATIC_ROOT = "/static/"
LIVE_ROOT = "/live/"
QUEUE_ROOT = "/queues/"
_PAGES = frozenset({QUEUES_PATH, LOGIN_PATH, LOGOUT_PATH, STORES_PATH, HEALTH_PAGE_PATH})
_PREFIXES = (QUEUE_ROOT, STATIC_ROOT, LIVE_ROOT)

# What a page says of a database that failed.
STORAGE_WORDS = "the database did not answer; try again in a moment (the server log has the details)"
# A form is a few hundred bytes (a reason is at most 1,000 characters).
MAX_FORM_BYTES = 16 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"
# Sec-Fetch-Site values of a request this server's own page made (or the user typed).
_OWN_SITES = frozenset({"same-origin", "none"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Where a sign-in may send the browser next: a path of this server, nothing that leaves it.
_NEXT = re.compile(r"/(?:[A-Za-z0-9_-][A-Za-z0-9/_.-]{0,199})?")


def is_page_path(path: str) -> bool:
    """Whether ``path`` is the dashboard's (its pages, their live JSON and static assets): these take the
    browser's session cookie, never a bearer token."""
    return path in _PAGES or path.startswith(_PREFIXES)


def is_live_path(path: str) -> bool:
    """The dashboard's JSON endpoints: their refusals are JSON (401, 404), not pages."""
    return path.startswith(LIVE_ROOT)


def wants_page(request: web.Request) -> bool:
    """Whether an unknown path was asked for by a browser (HTML accepted), outside the JSON API."""
    return "text/html" in request.headers.get("Accept", "") and not request.path.startswith("/api/")


def secure(response: web.StreamResponse, cache: bool = False) -> web.StreamResponse:
    """The headers of every answer of the dashboard's (an asset may be cached; a page never)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["Cache-Control"] = "no-cache" if cache else "no-store"
    return response


def query_value(request: web.Request, name: str) -> str | None:
    """A query parameter decoded strictly (bytes that are not UTF-8 are no value, never U+FFFD)."""
    try:
        values = parse_qs(request.rel_url.raw_query_string, errors="strict").get(name)
    except UnicodeDecodeError:
        return None
    return values[0] if values else None


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a relative path of this server (``/queues/ID``), else ``/``."""
    if value and _NEXT.fullmatch(value) and "//" not in value and ".." not in value:
        return value
    return QUEUES_PATH


def parse_public_origin(text: str, name: str = "--public-origin") -> str:
    """``wcsync serve --public-origin``: the origin browsers see the dashboard at behind a reverse proxy
    (``https://ops.example.com``), normalised (lower-case scheme and host, no default port). Anything with a
    path, query, fragment or credentials is a ConfigurationError (exit 2) naming ``name`` (the flag, or
    the environment variable it came from) and saying what to give."""
    hint = "give the scheme and host the browser's address bar shows, e.g. https://ops.example.com"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{name} {text!r} is not a URL; {hint}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{name} {text!r} needs http:// or https:// and a host; {hint}")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{name} {text!r} must be an origin only (no path, query, credentials); {hint}"
        )
    return _origin(parts, port)


def _origin(parts: SplitResult, port: int | None) -> str:
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    default = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


@dataclass(frozen=True)
class Site:
    """Where browsers see the dashboard. Without ``public_origin`` that is the request's own Host (any
    scheme: a proxy that ends TLS but keeps Host still works). With it (``--public-origin``, for a proxy
    that rewrites Host, such as nginx's default ``proxy_set_header Host $proxy_host``), that origin is
    accepted too, and an https one makes the cookies Secure although the proxy speaks plain HTTP here."""

    public_origin: str | None = None

    def secure(self, request: web.Request) -> bool:
        """Whether the browser reached the dashboard over TLS (so its cookies are Secure)."""
        return request.secure or (self.public_origin or "").startswith("https://")

    def cookie_name(self, request: web.Request, name: str) -> str:
        """The cookie's name: ``__Host-`` prefixed when it is Secure."""
        return HOST_PREFIX + name if self.secure(request) else name

    def set_cookie(
        self,
        response: web.StreamResponse,
        request: web.Request,
        name: str,
        value: str,
        max_age: int | None = None,
    ) -> None:
        """An HttpOnly, SameSite=Strict cookie for the whole server, Secure when the browser uses TLS."""
        response.set_cookie(
            self.cookie_name(request, name),
            value,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=self.secure(request),
            max_age=max_age,
        )

    def drop_cookie(self, response: web.StreamResponse, request: web.Request, name: str) -> None:
        self.set_cookie(response, request, name, "", max_age=0)

    def cookie(self, request: web.Request, name: str) -> str | None:
        """A cookie's value when it is printable ASCII of a sane size (anything else is no cookie)."""
        value = request.cookies.get(self.cookie_name(request, name))
        if value is None or len(value) > 128 or not value.isascii() or not value.isprintable():
            return None
        return value

    def refusal(self, request: web.Request) -> str | None:
        """Why the browser says the request did not come from this server's own pages (``fetch-site``,
        ``origin``), or None: a Sec-Fetch-Site, when sent, of same-origin or none, and an Origin, when sent,
        whose host and port are the request's Host or which is the public origin. The scheme is not
        compared with the Host: a page of another site cannot send this server's host as its Origin."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in _OWN_SITES:
            return "fetch-site"
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:  # "http://[", a port that is not a number: no origin of ours
            return "origin"
        if parts.scheme not in ("http", "https") or parts.path or not parts.hostname:
            return "origin"
        if parts.netloc == request.host or _origin(parts, port) == self.public_origin:
            return None
        return "origin"


def page_of(path: str) -> str:
    """The page a path shows: a queue's action (``/queues/ID/retry``, POST only) is its queue's page."""
    if path.startswith(QUEUE_ROOT):
        parts = path[len(QUEUE_ROOT) :].split("/")
        if len(parts) == 2 and parts[0]:
            return QUEUE_ROOT + parts[0]
    return path


def login_redirect(request: web.Request) -> str:
    """The sign-in page, with the page asked for as ``next`` when it is one a sign-in may go back to: a
    queue's action goes back to its queue's page (a GET), never to the POST-only action."""
    if request.method not in ("GET", "POST"):
        return LOGIN_PATH
    page = page_of(request.path)
    if page != QUEUES_PATH and page != LOGOUT_PATH and safe_next(page) == page:
        return f"{LOGIN_PATH}?next={quote(page, safe='/')}"
    return LOGIN_PATH


async def read_form(request: web.Request) -> dict[str, str]:
    """A posted form's fields (each at most once), checked before anything reads them: its size, its type
    and its encoding. A BadForm (400) otherwise."""
    if (request.content_length or 0) > MAX_FORM_BYTES:
        raise BadForm(f"the form is larger than {MAX_FORM_BYTES} bytes")
    if request.content_type != FORM_TYPE:
        raise BadForm("the form must be sent as application/x-www-form-urlencoded (reload the page)")
    raw = b""
    while chunk := await request.content.read(MAX_FORM_BYTES + 1 - len(raw)):  # a chunk as it arrives
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            raise BadForm(f"the form is larger than {MAX_FORM_BYTES} bytes")
    try:
        fields = parse_qs(raw.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise BadForm("the form is not valid (URL-encoded UTF-8, at most 20 fields)") from None
    form: dict[str, str] = {}
    for name, values in fields.items():
        if len(values) != 1:
            raise BadForm("a field of the form was sent more than once")
        form[name] = values[0]
    return form


# ----- the errors of a page ------------------------------------------------------------------------------


class LoginRequired(WcsyncError):
    """No live session: a page redirects to the sign-in, a live JSON endpoint answers 401."""

    http_status = 401
    error_code = "unauthorized"

    def __init__(self) -> None:
        super().__init__("your session has ended (or you have not signed in): sign in again")


class CsrfRefused(WcsyncError):
    """A form without this page's CSRF value, or posted from another site."""

    http_status = 403
    error_code = "csrf_refused"
    MESSAGE = "the form has expired or was not sent by this page; reload it"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class BadForm(WcsyncError):
    """A form that cannot be read (too big, wrong type, not UTF-8, a field twice)."""

    http_status = 400
    error_code = "invalid_form"


class PageNotFound(WcsyncError):
    """No such page, or a queue that is not the org's: the same page either way."""

    http_status = 404
    error_code = "not_found"

    def __init__(self) -> None:
        super().__init__("there is no such page here (or it is not your organisation's)")


def error_words(error: BaseException) -> tuple[int, str, str, dict[str, Any]]:
    """(HTTP status, code, message, details) of an error a page shows; a database's failure in words of
    its own (a StorageError's text may name the database's address)."""
    if isinstance(error, StorageError):
        return error.http_status, error.error_code, STORAGE_WORDS, {}
    if isinstance(error, WcsyncError):
        return error.http_status, error.error_code, error.http_message(), error.http_details()
    return 500, "internal_error", "internal error; the server log has the details", {}
