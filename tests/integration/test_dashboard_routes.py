"""The dashboard's routes (issue 14, server side) through the real server (running_api, as `wcsync serve`
runs it) over a socket, on SQLite and PostgreSQL, as a hostile browser tries them: signing in with good,
bad and too many tokens; the cookie's flags; signing out and revoking a token ending the session; CSRF
missing, wrong, another session's or from another site; a viewer forging a POST; another org's queue by
URL; the live JSON without a session; a cookie on the JSON API; the security headers; no secret in any
page or log line; and retry / resume / force-done through the pages changing the queue as the API does.

Pages are parsed with the stdlib's html.parser (``Dom``), never with regexes on the layout.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlsplit
from uuid import UUID

import pytest
import structlog

from cli.parser import build_parser
from cli.serve import _public_origin
from domain.queue_terms import QueueOptions
from infrastructure.adapters.leases import QueueLeases
from infrastructure.adapters.migrations import DASHBOARD_SESSIONS_TABLE, Connection
from infrastructure.adapters.secrets import SecretKey
from infrastructure.adapters.tokens import Role
from infrastructure.api.auth import MAX_FAILURES
from infrastructure.api.dashboard import pages
from infrastructure.api.dashboard.guard import PUBLIC_ORIGIN_VARIABLE, STORAGE_WORDS, CsrfRefused
from infrastructure.api.sessions import DashboardSessions
from infrastructure.sandbox import RunningSandbox
from infrastructure.support.errors import ConfigurationError, StorageError
from infrastructure.wiring import Services
from projections import queries
from tests.support.api import SETTINGS, ApiThread
from tests.support.sandbox_admin import admin
from tests.support.services import FAST, run_sync
from tests.support.waiting import wait_until
from tests.support.workers import worker_running

pytestmark = pytest.mark.sandbox(customers=12, invalid=2)

KEY = SecretKey.generate()
WITH_KEY = replace(SETTINGS, secret_key=KEY)
PAGES = ("/", "/stores", "/health")
SESSION = "wcsync_session"


# ----- a page, parsed -----------------------------------------------------------------------------------

VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    def text(self) -> str:
        return " ".join(
            " ".join((child if isinstance(child, str) else child.text()).split()) for child in self.children
        ).strip()

    def iter(self) -> Iterator[Element]:
        for child in self.children:
            if isinstance(child, Element):
                yield child
                yield from child.iter()

    def all(self, tag: str | None = None, **attrs: str | None) -> list[Element]:
        """Descendants with this tag and these attributes (``data_field`` is ``data-field``; None: present)."""
        wanted = {name.replace("_", "-"): value for name, value in attrs.items()}
        return [
            element
            for element in self.iter()
            if (tag is None or element.tag == tag)
            and all(
                name in element.attrs and (value is None or element.attrs[name] == value)
                for name, value in wanted.items()
            )
        ]

    def one(self, tag: str | None = None, **attrs: str | None) -> Element:
        found = self.all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]

    def by_id(self, element_id: str) -> Element:
        return self.one(id=element_id)

    def field(self, name: str) -> str:
        return self.one(data_field=name).text()


class Dom(HTMLParser):
    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self._open = [self.root]
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self._open[-1].children.append(element)
        if tag not in VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._open) - 1, 0, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._open[-1].children.append(data)


# ----- a browser without a browser: cookies kept, forms posted --------------------------------------------


@dataclass
class Page:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def cookies_set(self) -> dict[str, str]:
        """Each Set-Cookie of the answer by cookie name: the whole header (its flags)."""
        found = {}
        for key, value in self.headers:
            if key.lower() == "set-cookie":
                found[value.split("=", 1)[0].strip()] = value
        return found

    @cached_property
    def dom(self) -> Element:
        return Dom(self.body.decode()).root

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def alert(self) -> str:
        return self.dom.one(role="alert").text()


@dataclass
class Browser:
    url: str
    cookies: dict[str, str] = field(default_factory=dict)
    pages: list[Page] = field(default_factory=list)

    def go(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Page:
        address = urlsplit(self.url)
        sent = {"Accept": "text/html"}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        sent.update(headers or {})
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            page = Page(response.status, response.getheaders(), response.read())
        finally:
            connection.close()
        for name, header in page.cookies_set().items():
            morsel = SimpleCookie(header)[name]
            if morsel["max-age"] == "0" or not morsel.value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value
        self.pages.append(page)
        return page

    def get(self, path: str, **headers: str) -> Page:
        return self.go("GET", path, headers=headers)

    def post(self, path: str, form: dict[str, str], **headers: str) -> Page:
        return self.go("POST", path, form, headers)

    def sign_in(self, token: str, next_path: str = "", headers: dict[str, str] | None = None) -> Page:
        login = self.get("/login" + (f"?next={next_path}" if next_path else ""))
        assert login.status == 200, login.body
        csrf = login.dom.by_id("login-form").one("input", name="csrf").attrs["value"]
        return self.post(
            "/login" + (f"?next={next_path}" if next_path else ""),
            {"csrf": csrf, "token": token},
            **(headers or {}),
        )

    def csrf(self) -> str:
        page = self.get("/")
        assert page.status == 200, page.body
        return page.dom.by_id("logout-form").one("input", name="csrf").attrs["value"]

    def everything(self) -> bytes:
        return b"\n".join(b"".join(f"{k}: {v}\n".encode() for k, v in p.headers) + p.body for p in self.pages)


@dataclass
class Server:
    url: str
    services: Services

    def token(self, org: str = "acme", role: Role = Role.OPERATOR, name: str | None = None) -> str:
        secret, _ = self.services.api_tokens().create(
            org, name or f"{role.value}-{uuid.uuid4().hex[:6]}", role
        )
        return secret

    def browser(self) -> Browser:
        return Browser(self.url)

    def signed_in(self, org: str = "acme", role: Role = Role.OPERATOR, name: str | None = None) -> Browser:
        browser = self.browser()
        page = browser.sign_in(self.token(org, role, name))
        assert page.status == 303 and page.header("Location") == "/", page.body
        return browser

    def status(self, org: str, queue_id: str) -> dict[str, Any]:
        self.services.catch_up()
        found = queries.queue_status(self.services.projections, org, UUID(queue_id))
        assert found is not None
        return found


@pytest.fixture
def server(services: Services) -> Iterator[Server]:
    with ApiThread(services, WITH_KEY) as api:
        yield Server(api.url, services)


def _queue(services: Services, sandbox: RunningSandbox, org: str = "acme") -> str:
    return str(run_sync(services, sandbox, org, catch_up=True).queue_id)


def _register(services: Services, store: RunningSandbox, org: str = "acme") -> str:
    registry = services.store_registry(KEY, FAST)
    added = asyncio.run(registry.add(org, store.url, store.consumer_key, store.consumer_secret, None, "ops"))
    return str(added["storeId"])


# ----- signing in ---------------------------------------------------------------------------------------


def test_sign_in_sets_a_strict_http_only_cookie_and_a_wrong_token_is_401_never_echoed(server: Server) -> None:
    browser = server.browser()
    form_page = browser.get("/login")
    assert form_page.status == 200
    form = form_page.dom.by_id("login-form")
    token_input = form.one("input", name="token")
    assert token_input.attrs["type"] == "password"
    assert form.one("label", **{"for": token_input.attrs["id"]}).text() == "API token"
    assert form.one("button", type="submit")
    pre = form_page.cookies_set()["wcsync_login"]
    assert "HttpOnly" in pre and "SameSite=Strict" in pre and "Path=/" in pre

    wrong = "wcs_" + "A" * 43
    refused = browser.post("/login", {"csrf": form.one("input", name="csrf").attrs["value"], "token": wrong})
    assert refused.status == 401 and SESSION not in browser.cookies
    assert refused.header("WWW-Authenticate") is None  # a page asks for no bearer token
    assert "not accepted" in refused.alert()
    assert wrong.encode() not in refused.body and b"AAAAAAAA" not in refused.body
    assert refused.dom.by_id("login-form")  # the form again

    answer = browser.sign_in(server.token())
    assert answer.status == 303 and answer.header("Location") == "/"
    cookie = answer.cookies_set()[SESSION]
    flags = [part.strip().lower() for part in cookie.split(";")[1:]]
    assert {"httponly", "samesite=strict", "path=/"} <= set(flags) and "secure" not in flags, cookie
    assert "wcsync_login" not in browser.cookies  # the pre-session cookie is dropped
    queues = browser.get("/")
    assert queues.status == 200 and queues.dom.one("h1").text() == "Queues"
    assert queues.dom.one("title").text() == "wcsync · Queues"
    assert queues.dom.one("nav").one(data_field="org").text() == "acme"


def test_sign_in_needs_the_login_forms_csrf_and_this_servers_origin(server: Server) -> None:
    token = server.token()
    browser = server.browser()
    csrf = browser.get("/login").dom.one("input", name="csrf").attrs["value"]
    attempts = {
        "no csrf": ({"token": token}, {}),
        "a wrong csrf": ({"token": token, "csrf": csrf[::-1]}, {}),
        "another origin": ({"token": token, "csrf": csrf}, {"Origin": "https://evil.example"}),
        "a malformed origin": ({"token": token, "csrf": csrf}, {"Origin": "http://["}),
        "a cross-site fetch": ({"token": token, "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
    }
    reasons = {
        "no csrf": "token",
        "a wrong csrf": "token",
        "another origin": "origin",
        "a malformed origin": "origin",
        "a cross-site fetch": "fetch-site",
    }
    for what, (form, headers) in attempts.items():
        with structlog.testing.capture_logs() as logs:
            page = browser.post("/login", form, **headers)
        assert page.status == 403, (what, page.body)
        assert page.alert() == CsrfRefused.MESSAGE, what
        assert SESSION not in browser.cookies, what
        # The log says which check refused it (an operator behind a proxy can tell Origin from a stale form).
        [refused] = [line for line in logs if line["event"] == "dashboard.csrf_refused"]
        assert refused["reason"] == reasons[what], what
    # A forged form from another site sends no SameSite=Strict cookie at all: the form's csrf is then nobody's.
    stranger = server.browser()
    page = stranger.post("/login", {"token": token, "csrf": csrf})
    assert page.status == 403 and SESSION not in stranger.cookies
    # This server's own origin, and a same-origin fetch, pass.
    host = urlsplit(server.url).netloc
    page = browser.post(
        "/login", {"token": token, "csrf": csrf}, Origin=f"http://{host}", **{"Sec-Fetch-Site": "same-origin"}
    )
    assert page.status == 303 and SESSION in browser.cookies


@pytest.fixture
def proxied_server(services: Services) -> Iterator[Server]:
    """`wcsync serve --public-origin https://ops.example.com` behind a proxy that rewrites Host to the
    server's own address (nginx's default `proxy_set_header Host $proxy_host`) and ends TLS."""
    with ApiThread(services, replace(WITH_KEY, public_origin=PUBLIC_ORIGIN)) as api:
        yield Server(api.url, services)


PUBLIC_ORIGIN = "https://ops.example.com"
SECURE_SESSION = "__Host-" + SESSION


def test_behind_a_proxy_rewriting_host_the_public_origins_forms_work_and_cookies_are_secure(
    proxied_server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(proxied_server.services, sandbox)
    own = {"Origin": PUBLIC_ORIGIN, "Sec-Fetch-Site": "same-origin"}
    browser = proxied_server.browser()
    login = browser.get("/login")
    assert "Secure" in login.cookies_set()["__Host-wcsync_login"]
    signed = browser.sign_in(proxied_server.token(), headers=own)
    assert signed.status == 303 and signed.header("Location") == "/", signed.body
    cookie = signed.cookies_set()[SECURE_SESSION]
    assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie and "Domain" not in cookie
    assert SESSION not in browser.cookies and SECURE_SESSION in browser.cookies
    assert browser.get("/").status == 200
    csrf = browser.csrf()
    # Another site's Origin is still refused; the public origin's forms work: an action, then the sign-out.
    forged = browser.post(
        f"/queues/{queue_id}/force-done", {"csrf": csrf, "reason": "x"}, Origin="https://evil.example"
    )
    assert forged.status == 403 and forged.alert() == CsrfRefused.MESSAGE
    assert proxied_server.status("acme", queue_id)["state"] == "failed"
    forced = browser.post(f"/queues/{queue_id}/force-done", {"csrf": csrf, "reason": "behind nginx"}, **own)
    assert forced.status == 200, forced.body
    assert forced.dom.by_id("action-result").attrs["data-state"] == "done"
    out = browser.post("/logout", {"csrf": csrf}, **own)
    assert out.status == 303 and SECURE_SESSION not in browser.cookies


def test_serve_takes_the_public_origin_from_its_flag_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def origin(*argv: str) -> str | None:
        return _public_origin(build_parser().parse_args(["serve", *argv]))

    monkeypatch.delenv(PUBLIC_ORIGIN_VARIABLE, raising=False)
    assert origin() is None
    assert origin("--public-origin", "https://Ops.Example.com/") == "https://ops.example.com"
    monkeypatch.setenv(PUBLIC_ORIGIN_VARIABLE, "https://env.example.com")
    assert origin() == "https://env.example.com"
    assert origin("--public-origin", "https://flag.example.com") == "https://flag.example.com"
    monkeypatch.setenv(PUBLIC_ORIGIN_VARIABLE, "")  # set empty: unset
    assert origin() is None
    monkeypatch.setenv(PUBLIC_ORIGIN_VARIABLE, "ftp://env.example.com")  # the error names where it came from
    with pytest.raises(ConfigurationError, match=PUBLIC_ORIGIN_VARIABLE):
        origin()
    with pytest.raises(ConfigurationError, match="--public-origin"):
        origin("--public-origin", "")  # a flag given empty is an error, never the default
    with pytest.raises(ConfigurationError, match="no path"):
        origin("--public-origin", "https://ops.example.com/wcsync")


def test_failed_sign_ins_are_throttled_with_the_apis_failed_tokens_and_a_good_token_still_passes(
    server: Server,
) -> None:
    browser = server.browser()
    csrf = browser.get("/login").dom.one("input", name="csrf").attrs["value"]
    # The API's failures and the sign-ins' count together: half of each.
    for _ in range(MAX_FAILURES // 2):
        connection = http.client.HTTPConnection(
            urlsplit(server.url).hostname or "", urlsplit(server.url).port
        )
        connection.request("GET", "/api/v1/queues", headers={"Authorization": "Bearer nope"})
        assert connection.getresponse().status == 401
        connection.close()
    for _ in range(MAX_FAILURES + 1 - MAX_FAILURES // 2):  # as the API's: the 12th failure is the first 429
        assert browser.post("/login", {"csrf": csrf, "token": "wrong"}).status == 401
    throttled = browser.post("/login", {"csrf": csrf, "token": "wrong"})
    assert throttled.status == 429
    assert int(throttled.header("Retry-After") or "0") >= 1
    assert "try again in" in throttled.alert()
    page = browser.post("/login", {"csrf": csrf, "token": server.token()})
    assert page.status == 303 and SESSION in browser.cookies


def test_a_sign_in_goes_back_to_the_page_asked_for_and_nowhere_else(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.browser()
    asked = browser.get(f"/queues/{queue_id}")
    assert asked.status == 303 and asked.header("Location") == f"/login?next=/queues/{queue_id}"
    assert browser.sign_in(server.token(), f"/queues/{queue_id}").header("Location") == f"/queues/{queue_id}"
    for elsewhere in ("//evil.example/", "https://evil.example/", "/\\evil.example", "/../etc"):
        other = server.browser()
        assert other.sign_in(server.token(), elsewhere).header("Location") == "/", elsewhere


def test_a_form_that_cannot_be_read_is_a_400_page_naming_why(server: Server, sandbox: RunningSandbox) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()
    csrf = browser.csrf()
    path = f"/queues/{queue_id}/force-done"
    too_big = browser.post(path, {"csrf": csrf, "reason": "x" * 20_000})
    assert too_big.status == 400 and "larger than" in too_big.alert()
    twice = browser.go("POST", path, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert twice.status == 403  # no body at all: no csrf
    raw = f"csrf={csrf}&reason=a&reason=b".encode()
    address = urlsplit(server.url)
    for body, kind, words in (
        (raw, "application/x-www-form-urlencoded", "more than once"),
        (b'{"csrf": "x"}', "application/json", "x-www-form-urlencoded"),
        (f"csrf={csrf}&reason=%ff".encode(), "application/x-www-form-urlencoded", "not valid"),
    ):
        connection = http.client.HTTPConnection(address.hostname or "", address.port)
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
        connection.request("POST", path, body=body, headers={"Content-Type": kind, "Cookie": cookie})
        answer = connection.getresponse()
        page = Page(answer.status, answer.getheaders(), answer.read())
        connection.close()
        assert page.status == 400 and words in page.alert(), (body, page.body)
    assert server.status("acme", queue_id)["state"] == "failed"


# ----- sessions end ----------------------------------------------------------------------------------------


def test_signing_out_ends_the_session_on_the_server(server: Server) -> None:
    browser = server.signed_in()
    old = dict(browser.cookies)
    csrf = browser.csrf()
    out = browser.post("/logout", {"csrf": csrf})
    assert out.status == 303 and out.header("Location") == "/login"
    assert SESSION not in browser.cookies
    assert server_sessions(server) == 0  # the row is gone
    replayed = Browser(server.url, cookies=old)  # the old cookie, kept by someone
    page = replayed.get("/")
    assert page.status == 303 and page.header("Location") == "/login"
    live = replayed.get("/live/queues", Accept="application/json")
    assert live.status == 401 and live.json["error"]["code"] == "unauthorized"


def test_signing_in_again_ends_the_old_session_and_signing_out_of_an_ended_one_drops_its_cookie(
    server: Server,
) -> None:
    browser = server.signed_in(name="first")
    first = dict(browser.cookies)
    # A sign-in form loaded before (its pre-session cookie still held), posted while signed in.
    form_tab = server.browser()
    csrf = form_tab.get("/login").dom.one("input", name="csrf").attrs["value"]
    browser.cookies["wcsync_login"] = form_tab.cookies["wcsync_login"]
    again = browser.post("/login", {"csrf": csrf, "token": server.token(name="second")})
    assert again.status == 303 and browser.cookies[SESSION] != first[SESSION]
    assert server_sessions(server) == 1  # the first session's row is gone: one browser, one session
    assert Browser(server.url, cookies=first).get("/").status == 303
    assert browser.get("/").dom.one("nav").one(data_field="org").text() == "acme"
    # The token revoked: the session is over, but sign-out still drops the browser's cookie.
    csrf = browser.csrf()
    server.services.api_tokens().revoke("second", "acme")
    out = browser.post("/logout", {"csrf": csrf})
    assert out.status == 303 and out.header("Location") == "/login"
    assert "Max-Age=0" in out.cookies_set()[SESSION] and SESSION not in browser.cookies


def test_an_action_posted_after_the_session_ended_signs_in_back_to_the_queues_page(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in(name="late")
    csrf = browser.csrf()
    server.services.api_tokens().revoke("late", "acme")
    for action in ("retry", "force-done"):
        page = browser.post(f"/queues/{queue_id}/{action}", {"csrf": csrf, "reason": "late"})
        # Back to the queue's page (a GET), never to the POST-only action (a 405 after signing in).
        assert page.status == 303 and page.header("Location") == f"/login?next=/queues/{queue_id}", action
    assert server.status("acme", queue_id)["state"] == "failed"
    form = server.browser().get(f"/login?next=/queues/{queue_id}").dom.by_id("login-form")
    assert form.attrs["action"].startswith("/login?next=") and form.attrs["action"].endswith(queue_id)


def test_an_unforeseen_error_is_a_500_page_and_its_traceback_is_logged(
    server: Server, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()

    def broken(status: Any) -> dict[str, int]:
        raise RuntimeError("a bug in the counts")

    monkeypatch.setattr(pages.views, "queue_counts", broken)
    with structlog.testing.capture_logs() as logs:
        page = browser.get(f"/queues/{queue_id}")
    assert page.status == 500 and "a bug in the counts" not in page.body.decode()
    assert page.alert().endswith("internal error; the server log has the details")
    [line] = [line for line in logs if line["event"] == "dashboard.internal_error"]
    assert isinstance(line["exc_info"], RuntimeError) and line["path"] == f"/queues/{queue_id}"
    assert browser.cookies[SESSION] not in repr(line)  # never the cookies


def server_sessions(server: Server, org: str = "acme") -> int:
    sessions = DashboardSessions(server.services.database)
    try:
        return sessions.count(org)
    finally:
        sessions.shutdown()


def test_revoking_the_token_ends_the_sessions_opened_with_it(server: Server) -> None:
    browser = server.signed_in(name="night-shift")
    assert browser.get("/").status == 200
    server.services.api_tokens().revoke("night-shift", "acme")
    page = browser.get("/")
    assert page.status == 303 and page.header("Location") == "/login"
    assert browser.get("/live/queues").status == 401
    assert server_sessions(server) == 0  # the row went with it


def test_every_page_and_live_endpoint_needs_a_session_but_the_assets_do_not(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.browser()
    for path in (*PAGES, f"/queues/{queue_id}"):
        page = browser.get(path)
        assert page.status == 303 and (page.header("Location") or "").startswith("/login"), path
    for path in ("/live/queues", f"/live/queues/{queue_id}"):
        page = browser.get(path)
        assert page.status == 401 and page.json["error"]["code"] == "unauthorized", path
    for action in ("retry", "resume", "force-done"):
        page = browser.post(f"/queues/{queue_id}/{action}", {"reason": "x", "csrf": "x"})
        assert page.status == 303 and page.header("Location") == f"/login?next=/queues/{queue_id}", action
    assert server.status("acme", queue_id)["state"] == "failed"  # nothing happened to it
    for asset, kind in (("/static/dashboard.css", "text/css"), ("/static/dashboard.js", "javascript")):
        page = browser.get(asset)
        assert page.status == 200 and kind in (page.header("Content-Type") or ""), asset
    assert browser.get("/static/../pyproject.toml").status == 404
    assert browser.get("/static/nothing.js").status == 404


def test_a_session_cookie_never_authorises_the_json_api(server: Server, sandbox: RunningSandbox) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in(role=Role.ADMIN)
    for method, path in (
        ("GET", "/api/v1/queues"),
        ("GET", f"/api/v1/queues/{queue_id}"),
        ("GET", "/metrics"),
    ):
        page = browser.go(method, path, headers={"Accept": "application/json"})
        assert page.status == 401 and page.json["error"]["code"] == "unauthorized", path
    body = json.dumps({"action": "force-done", "queue_id": queue_id, "reason": "csrf"}).encode()
    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port)
    cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    connection.request(
        "POST",
        "/api/v1/integrations/woocommerce/sync/customers",
        body=body,
        headers={"Cookie": cookie, "Content-Type": "text/plain"},
    )
    assert connection.getresponse().status == 401
    connection.close()
    assert server.status("acme", queue_id)["state"] == "failed"


# ----- CSRF and roles on the actions -----------------------------------------------------------------------


def test_an_action_without_its_sessions_csrf_is_refused_and_changes_nothing(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    mine = server.signed_in()
    theirs = server.signed_in()  # another session of the same org
    other_csrf = theirs.csrf()
    host = urlsplit(server.url).netloc
    with structlog.testing.capture_logs() as logs:
        for what, form, headers in (
            ("missing", {"reason": "r"}, {}),
            ("wrong", {"reason": "r", "csrf": "x" * 43}, {}),
            ("another session's", {"reason": "r", "csrf": other_csrf}, {}),
            ("another origin", {"reason": "r", "csrf": mine.csrf()}, {"Origin": "http://evil.example"}),
            ("a null origin", {"reason": "r", "csrf": mine.csrf()}, {"Origin": "null"}),
            ("cross-site", {"reason": "r", "csrf": mine.csrf()}, {"Sec-Fetch-Site": "same-site"}),
        ):
            page = mine.post(f"/queues/{queue_id}/force-done", form, **headers)
            assert page.status == 403, (what, page.body)
            assert page.alert() == CsrfRefused.MESSAGE, what
            assert server.status("acme", queue_id)["state"] == "failed", what
        page = mine.post("/logout", {"csrf": other_csrf})
        assert page.status == 403 and mine.get("/").status == 200  # still signed in
    refusals = [entry for entry in logs if entry["event"] == "dashboard.csrf_refused"]
    assert len(refusals) == 7 and all(entry["org"] == "acme" for entry in refusals)
    assert all(mine.cookies[SESSION] not in str(entry) for entry in logs)
    page = mine.post(
        f"/queues/{queue_id}/force-done", {"reason": "ok", "csrf": mine.csrf()}, Origin=f"http://{host}"
    )
    assert page.status == 200 and server.status("acme", queue_id)["state"] == "done"


def test_a_viewer_sees_no_action_forms_and_a_forged_post_is_403(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    viewer = server.signed_in(role=Role.VIEWER)
    page = viewer.get(f"/queues/{queue_id}")
    assert page.status == 200
    assert page.dom.all("form", data_action=None) == []
    assert page.dom.all("input", name="reason") == []
    csrf = viewer.csrf()  # the viewer's own, right csrf: the role refuses it
    for action in ("retry", "resume", "force-done"):
        forged = viewer.post(f"/queues/{queue_id}/{action}", {"csrf": csrf, "reason": "forged"})
        assert forged.status == 403, (action, forged.body)
        assert "operator" in forged.alert(), action
    assert server.status("acme", queue_id)["state"] == "failed"
    _register(server.services, sandbox)  # retry and resume are offered for a registered store only
    operator = server.signed_in(role=Role.OPERATOR)
    forms = operator.get(f"/queues/{queue_id}").dom.all("form", data_action=None)
    assert sorted(form.attrs["data-action"] for form in forms) == ["force-done", "resume", "retry"]
    for form in forms:
        assert form.one("input", type="hidden", name="csrf").attrs["value"]
        assert form.one("button", type="submit")
    reason = (
        operator.get(f"/queues/{queue_id}")
        .dom.one("form", data_action="force-done")
        .one("input", name="reason")
    )
    assert "required" in reason.attrs


# ----- org isolation ---------------------------------------------------------------------------------------


def test_another_orgs_queue_is_the_same_404_as_one_that_does_not_exist(
    server: Server, sandbox: RunningSandbox
) -> None:
    theirs = _queue(server.services, sandbox, org="other")
    nowhere = str(uuid.uuid4())
    browser = server.signed_in(org="acme")
    answers = {}
    for queue_id in (theirs, nowhere, "not-a-uuid"):
        page = browser.get(f"/queues/{queue_id}")
        assert page.status == 404, queue_id
        answers[queue_id] = page.body.replace(queue_id.encode(), b"ID")
        live = browser.get(f"/live/queues/{queue_id}")
        assert live.status == 404 and live.json["error"]["code"] == "not_found", queue_id
    assert answers[theirs] == answers[nowhere] == answers["not-a-uuid"]
    assert theirs.encode() not in b"".join(answers.values())
    csrf = browser.csrf()
    for action in ("retry", "resume", "force-done"):
        page = browser.post(f"/queues/{theirs}/{action}", {"csrf": csrf, "reason": "not mine"})
        assert page.status == 404, action
    assert server.status("other", theirs)["state"] == "failed"
    queues = browser.get("/")
    assert queues.dom.by_id("queues").all("tr", data_queue_id=None) == []
    assert theirs not in browser.get("/live/queues").json["queues"].__repr__()


# ----- what the pages show ----------------------------------------------------------------------------------


def test_the_queues_page_and_its_live_json_show_the_orgs_queues_newest_first(
    server: Server, sandbox: RunningSandbox
) -> None:
    first = _queue(server.services, sandbox)
    second = _queue(server.services, sandbox)
    _queue(server.services, sandbox, org="other")
    browser = server.signed_in()
    page = browser.get("/")
    table = page.dom.by_id("queues")
    assert table.attrs["data-updated-at"].endswith("Z")
    rows = table.all("tr", data_queue_id=None)
    assert [row.attrs["data-queue-id"] for row in rows] == [second, first]
    status = server.status("acme", second)
    row = rows[0]
    assert row.field("state") == status["state"] == row.attrs["data-state"]
    assert row.field("store") == sandbox.url
    bar = row.one("progress", data_field="progress")
    processed = status["doneCount"] + status["failedCount"] + status["cancelledCount"]
    assert (int(bar.attrs["value"]), int(bar.attrs["max"])) == (processed, status["totalCount"]) == (12, 12)
    assert (
        (int(row.field("done")), int(row.field("failed")))
        == (status["doneCount"], status["failedCount"])
        == (10, 2)
    )
    # A failed queue does not move: no rate, no time left (the words of views.NOTHING).
    assert (row.field("rate"), row.field("eta")) == ("—", "—")
    assert row.one("a", href=f"/queues/{second}")
    live = browser.get("/live/queues")
    assert live.status == 200 and live.header("Cache-Control") == "no-store"
    assert [q["queueId"] for q in live.json["queues"]] == [second, first]
    assert live.json["queues"][0]["done"] == 10 and live.json["updatedAt"].endswith("Z")


def test_the_queue_page_shows_counts_chart_activity_and_failed_lines(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()
    page = browser.get(f"/queues/{queue_id}")
    dom = page.dom
    assert queue_id in dom.one("h1").text()
    assert dom.one("head").one("title").text() == f"wcsync · Queue {queue_id}"
    counts = dom.by_id("counts")
    status = server.status("acme", queue_id)
    for name in ("created", "updated", "unchanged", "failed", "done", "total"):
        assert int(counts.field(name)) == status[f"{name}Count"], name
    assert counts.attrs["data-updated-at"].endswith("Z")
    assert dom.one(data_field="state").text() == "failed"
    svg = dom.by_id("chart").one("svg")
    outcomes = {path.attrs["data-outcome"]: path.attrs["d"] for path in svg.all("path", data_outcome=None)}
    assert set(outcomes) == {"created", "updated", "unchanged", "failed"}
    assert int(svg.attrs["data-points"]) > 0 and "10 created" in svg.one("desc").text()
    failed = dom.by_id("failed-lines").all("tr", data_line_id=None)
    assert len(failed) == 2
    for row in failed:
        assert row.field("error") and int(row.field("attempts")) >= 1
    items = dom.by_id("activity").all("li", data_type=None)
    types = [item.attrs["data-type"] for item in items]
    assert types[0] in ("queue_failed", "action_required") and types[-1] == "queue_created", (
        types
    )  # newest first
    assert all(item.one("time").attrs["title"].endswith(" UTC") for item in items)
    select = dom.one("select", id="activity-type")
    assert dom.one("label", **{"for": "activity-type"}).text() == "Activity type"
    assert "line_failed" in [option.attrs["value"] for option in select.all("option")]
    filtered = (
        browser.get(f"/queues/{queue_id}?type=line_failed").dom.by_id("activity").all("li", data_type=None)
    )
    assert {item.attrs["data-type"] for item in filtered} == {"line_failed"} and len(filtered) == 2
    unknown = browser.get(f"/queues/{queue_id}?type=%ff%fe").dom.by_id("activity").all("li", data_type=None)
    assert len(unknown) == len(items)  # not a type: all
    live = browser.get(f"/live/queues/{queue_id}").json
    assert live["counts"]["done"] == 10 and live["state"] == "failed" and live["chart"].startswith("<svg")
    assert [entry["type"] for entry in live["activity"]][: len(types[:3])] == types[:3]


def test_a_queue_page_shows_a_limited_page_of_failed_lines_and_says_of_how_many(
    server: Server, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = _queue(server.services, sandbox)
    monkeypatch.setattr(pages, "FAILED_SHOWN", 1)  # the server runs in this process: a page of one line
    dom = server.signed_in().get(f"/queues/{queue_id}").dom
    assert len(dom.by_id("failed-lines").all("tr", data_line_id=None)) == 1
    shown = dom.by_id("failed-shown")
    assert (shown.attrs["data-shown"], shown.attrs["data-total"]) == ("1", "2")
    assert "1 most recent of 2" in shown.text() and f"wcsync failed {queue_id}" in shown.text()
    monkeypatch.setattr(pages, "FAILED_SHOWN", 500)
    dom = server.signed_in().get(f"/queues/{queue_id}").dom
    assert len(dom.by_id("failed-lines").all("tr", data_line_id=None)) == 2
    assert "hidden" in dom.by_id("failed-shown").attrs and "hidden" in dom.by_id("no-failed-lines").attrs


def test_the_live_json_of_a_queue_has_its_failed_lines_and_activity_types_as_the_page(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()
    dom = browser.get(f"/queues/{queue_id}").dom
    live = browser.get(f"/live/queues/{queue_id}", Accept="application/json").json
    rows = dom.by_id("failed-lines").all("tr", data_line_id=None)
    assert [line["lineId"] for line in live["failed"]] == [int(row.attrs["data-line-id"]) for row in rows]
    assert [line["attempts"] for line in live["failed"]] == [int(row.field("attempts")) for row in rows]
    assert live["failedTotal"] == 2 and all(line["error"] for line in live["failed"])
    options = [option.attrs["value"] for option in dom.by_id("activity-type").all("option")][1:]
    assert live["activityTypes"] == options and "line_failed" in options


@pytest.mark.sandbox(customers=6)
def test_the_stores_and_health_pages(server: Server, sandbox: RunningSandbox) -> None:
    store_id = _register(server.services, sandbox)
    server.services.schedules().add("acme", UUID(store_id), "1h", None, "ops")
    queue_id = _queue(server.services, sandbox)
    _register(server.services, sandbox, org="other")
    browser = server.signed_in()
    page = browser.get("/stores")
    assert page.status == 200 and page.dom.one("title").text() == "wcsync · Stores"
    [row] = page.dom.by_id("stores").all("tr", data_store_id=None)
    assert row.attrs["data-store-id"] == store_id
    assert row.field("url") == sandbox.url
    assert row.field("webhooks") == "not installed"
    assert row.field("last-delivery") == "—"
    assert row.field("schedules").startswith("every 1h, next ")
    assert row.one(data_field="last-sync").one("a", href=f"/queues/{queue_id}")
    assert row.field("outcome") == "done"
    health = browser.get("/health")
    assert health.status == 200
    dom = health.dom
    assert dom.by_id("workers") and dom.by_id("jobs").attrs["data-waiting"] == "0"
    lag = dom.by_id("projection-lag").all("tr", data_projection=None)
    assert {"queues", "activity"} <= {row.attrs["data-projection"] for row in lag}
    assert all(int(row.field("lag")) >= 0 for row in lag)
    # Every org's figures are not this org's: no log position, head or set-aside count, only the lag.
    assert all(
        row.all(data_field="position") == [] and row.all(data_field="quarantined") == [] for row in lag
    )
    assert [th.text() for th in dom.by_id("projection-lag").all("th")] == ["Read model", "Events behind"]


def test_a_database_failure_is_a_page_in_words_of_its_own_never_the_errors_text(
    server: Server, sandbox: RunningSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()
    address = "postgresql://wcsync:hunter2@db.internal:5432/wcsync"

    def unreachable(*_: Any, **__: Any) -> Any:
        raise StorageError(f"the database {address} is unreachable: connection refused")

    monkeypatch.setattr(pages.queries, "recent_activity", unreachable)
    with structlog.testing.capture_logs() as logs:
        page = browser.get(f"/queues/{queue_id}")
        live = browser.get(f"/live/queues/{queue_id}", Accept="application/json")
    assert page.status == 503 and page.alert().endswith(STORAGE_WORDS)
    assert live.status == 503 and live.json["error"] == {
        "code": "storage_unavailable",
        "message": STORAGE_WORDS,
    }
    for answer in (page, live):
        assert "db.internal" not in answer.body.decode() and "hunter2" not in answer.body.decode()
    assert any(line["event"] == "dashboard.storage_error" for line in logs)  # the server log keeps the text


@pytest.mark.sandbox(customers=3)
def test_what_a_store_sends_is_shown_as_text_never_as_markup(server: Server, sandbox: RunningSandbox) -> None:
    hostile = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    admin(sandbox, "POST", "/_sandbox/customers", {"first_name": hostile, "email": hostile})
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()
    page = browser.get(f"/queues/{queue_id}")
    [line] = page.dom.by_id("failed-lines").all("tr", data_line_id=None)
    assert "<img src=x" in line.field("error")  # the store's words, as text
    assert page.dom.all("img") == [] and all(
        s.attrs.get("src", "").startswith("/static/") for s in page.dom.all("script")
    )
    assert b"<img src=x" not in page.body and b"<script>alert" not in page.body
    live = browser.get(f"/live/queues/{queue_id}").json
    assert any(
        "<img src=x" in entry["message"] for entry in live["activity"]
    )  # JSON: the page's JS sets text
    assert "<img" not in live["chart"]


def test_the_health_page_lists_the_orgs_own_jobs_only(server: Server, sandbox: RunningSandbox) -> None:
    queues = {}
    for org in ("acme", "other"):
        _register(server.services, sandbox, org=org)
        queues[org] = _queue(server.services, sandbox, org=org)
        browser = server.signed_in(org=org)
        deferred = browser.post(f"/queues/{queues[org]}/retry", {"csrf": browser.csrf()})
        assert "queued as job" in deferred.dom.by_id("action-result").text(), deferred.body
    page = server.signed_in(org="acme").get("/health")
    jobs = page.dom.by_id("jobs")
    [row] = jobs.all("tr", data_job_id=None)
    assert jobs.attrs["data-waiting"] == "1" and row.attrs["data-status"] == "waiting"
    assert row.field("action") == "retry" and row.one("a", href=f"/queues/{queues['acme']}")
    assert queues["other"] not in page.body.decode()


# ----- actions through the pages ------------------------------------------------------------------------------


def test_retry_resume_and_force_done_through_the_pages_change_the_queue_as_the_api_would(
    server: Server, sandbox: RunningSandbox
) -> None:
    _register(server.services, sandbox)
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in(name="night-shift")
    csrf = browser.csrf()

    # A queue another process holds: queue_busy, the API's code and message.
    elsewhere = QueueLeases(server.services.database, host="host-b", pid=4321)
    try:
        lease = elsewhere.acquire(UUID(queue_id), "acme", "worker 9 (pid 4321@host-b)")
        busy = browser.post(f"/queues/{queue_id}/force-done", {"csrf": csrf, "reason": "now"})
        assert busy.status == 409
        error = busy.dom.by_id("action-error")
        assert error.attrs["role"] == "alert" and error.attrs["data-code"] == "queue_busy"
        assert "worker 9" in error.text()
        lease.release()
    finally:
        elsewhere.close()

    # A reason the API's bounds refuse: its words.
    empty = browser.post(f"/queues/{queue_id}/force-done", {"csrf": csrf, "reason": ""})
    assert empty.status == 400 and "reason" in empty.dom.by_id("action-error").text()

    # The store fixes its customers; retry: a job for a worker, which takes the queue to done.
    sandbox.store.fix_invalid()
    retried = browser.post(f"/queues/{queue_id}/retry", {"csrf": csrf})
    assert retried.status == 200, retried.body
    result = retried.dom.by_id("action-result")
    assert result.attrs["role"] == "status" and result.attrs["data-action"] == "retry"
    assert "queued as job" in result.text()
    with worker_running(server.services, KEY):
        wait_until(lambda: server.status("acme", queue_id)["state"] == "done")
    final = server.status("acme", queue_id)
    assert (final["doneCount"], final["failedCount"]) == (12, 0)
    page = browser.get(f"/queues/{queue_id}")
    assert page.dom.one(data_field="state").text() == "done"
    retry_requested = page.dom.by_id("activity").all("li", data_type="retry_requested")
    assert (
        retry_requested and "night-shift" in retry_requested[0].text()
    )  # the token's name, as the API records

    # Nothing left to retry or resume: the API's invalid_state, its message.
    for action in ("retry", "resume"):
        again = browser.post(f"/queues/{queue_id}/{action}", {"csrf": csrf})
        assert again.status == 409, action
        assert again.dom.by_id("action-error").attrs["data-code"] == "invalid_state", action

    # force-done another queue, with a reason.
    sandbox.store.fix_invalid()
    other = _queue(server.services, sandbox)
    assert server.status("acme", other)["state"] == "done"  # nothing failed now: make one that is not done
    draft = str(server.services.engine("acme", actor="ops").create_draft(sandbox.url, QueueOptions()))
    forced = browser.post(f"/queues/{draft}/force-done", {"csrf": csrf, "reason": "store retired"})
    assert forced.status == 200, forced.body
    result = forced.dom.by_id("action-result")
    assert result.attrs["data-state"] == "done" and result.attrs["data-action"] == "force-done"
    assert server.status("acme", draft)["state"] == "done"
    assert "store retired" in browser.get(f"/queues/{draft}").dom.by_id("activity").text()


@pytest.fixture
def keyless_server(services: Services) -> Iterator[Server]:
    """`wcsync serve` without WCSYNC_SECRET_KEY: registered stores' secrets are out of its reach."""
    with ApiThread(services, SETTINGS) as api:
        yield Server(api.url, services)


def _rerun_offer(browser: Browser, queue_id: str) -> tuple[list[str], str]:
    """The actions the queue page offers, and its words on why retry and resume are not offered."""
    dom = browser.get(f"/queues/{queue_id}").dom
    words = [p.text() for p in dom.all(id="rerun-unavailable")]
    return sorted(form.attrs["data-action"] for form in dom.all("form", data_action=None)), " ".join(words)


def test_without_the_stores_key_retry_and_resume_are_not_offered_and_a_forged_one_says_why(
    keyless_server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(keyless_server.services, sandbox)
    browser = keyless_server.signed_in()
    offered, words = _rerun_offer(browser, queue_id)
    assert offered == ["force-done"]
    assert "WCSYNC_SECRET_KEY" in words and "wcsync retry" in words
    csrf = browser.csrf()
    for action in ("retry", "resume"):
        page = browser.post(f"/queues/{queue_id}/{action}", {"csrf": csrf})
        assert page.status == 409, (action, page.body)
        error = page.dom.by_id("action-error")
        assert error.attrs["data-code"] == "unavailable" and "WCSYNC_SECRET_KEY" in error.text(), action
        assert "consumerKey" not in page.body.decode(), action  # never the JSON API's body wording
    assert keyless_server.status("acme", queue_id)["state"] == "failed"


def test_a_queue_whose_store_is_not_registered_is_not_offered_retry_or_resume(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()
    offered, words = _rerun_offer(browser, queue_id)
    assert offered == ["force-done"] and f"wcsync stores add --url {sandbox.url}" in words
    page = browser.post(f"/queues/{queue_id}/retry", {"csrf": browser.csrf()})
    assert page.status == 409 and page.dom.by_id("action-error").attrs["data-code"] == "unavailable"
    assert "consumerKey" not in page.body.decode()
    # Registered, it is offered (and another org's registration of the same URL is not this org's).
    _register(server.services, sandbox, org="other")
    assert _rerun_offer(browser, queue_id)[0] == ["force-done"]
    _register(server.services, sandbox)
    assert _rerun_offer(browser, queue_id) == (["force-done", "resume", "retry"], "")


# ----- headers, errors, secrets -------------------------------------------------------------------------------


def test_every_page_has_the_security_headers_and_no_cache(server: Server, sandbox: RunningSandbox) -> None:
    queue_id = _queue(server.services, sandbox)
    browser = server.signed_in()
    pages = [browser.get(path) for path in (*PAGES, f"/queues/{queue_id}", "/login", "/nowhere")]
    pages.append(server.browser().get("/login"))
    for page in pages:
        csp = page.header("Content-Security-Policy") or ""
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.header("X-Frame-Options") == "DENY"
        assert page.header("Referrer-Policy") == "same-origin"
        assert page.header("Cache-Control") == "no-store"
        assert page.header("X-Content-Type-Options") == "nosniff"
        if page.status == 303:  # /login, signed in already: to the queues
            continue
        assert page.dom.one("html").attrs["lang"] == "en"
        # No inline script: every script is a file of /static/.
        for script in page.dom.all("script"):
            assert script.attrs["src"].startswith("/static/") and not script.text()
    nowhere = pages[-2]
    assert nowhere.status == 404 and nowhere.dom.one("h1").text() == "Not found"
    # The JSON API's unknown path stays the API's answer.
    api = browser.get("/nowhere", Accept="application/json")
    # No bearer token (the cookie opens pages only): the API's 401, before any route is looked up.
    assert api.status == 401 and api.json["success"] is False and api.json["error"]["code"] == "unauthorized"


def test_no_secret_reaches_a_page_or_a_log_line(server: Server, sandbox: RunningSandbox) -> None:
    _register(server.services, sandbox)
    queue_id = _queue(server.services, sandbox)
    token = server.token(name="secret-keeper")
    browser = server.browser()
    with structlog.testing.capture_logs() as logs:
        browser.sign_in("wcs_" + "B" * 43)  # a wrong one
        browser.sign_in(token)
        session_id = browser.cookies[SESSION]
        csrf = browser.csrf()
        for path in (*PAGES, f"/queues/{queue_id}", "/live/queues", f"/live/queues/{queue_id}"):
            assert browser.get(path).status == 200, path
        browser.post(f"/queues/{queue_id}/force-done", {"csrf": csrf, "reason": "done here"})
        browser.post("/logout", {"csrf": csrf})
    seen = browser.everything() + json.dumps([str(entry) for entry in logs]).encode()
    secrets = [token, session_id, csrf, "B" * 43, sandbox.consumer_key, sandbox.consumer_secret]
    sign_in_page = browser.pages[1]  # the form carries the pre-session csrf, its own page's: fine
    for secret in secrets:
        shown = seen.replace(sign_in_page.body, b"")
        if secret == csrf:
            # The session's csrf is in its own pages' forms (that is its point); never in a log line.
            assert secret not in json.dumps([str(entry) for entry in logs]), "csrf logged"
            continue
        if secret == session_id:
            # Its one appearance: the Set-Cookie of the sign-in's answer.
            assert seen.count(secret.encode()) == 1, "the session id is shown beyond its cookie"
            continue
        assert secret.encode() not in shown, secret[:6]
    events = {entry["event"] for entry in logs}
    assert {
        "dashboard.signed_in",
        "dashboard.sign_in_refused",
        "dashboard.signed_out",
        "dashboard.action",
    } <= events
    # The database keeps the session id's hash only, never the id nor the token.
    conn = Connection(server.services.database)
    try:
        assert conn.execute(f"SELECT * FROM {DASHBOARD_SESSIONS_TABLE}") == []  # signed out: gone
    finally:
        conn.close()
    assert server_sessions(server) == 0


def test_a_stored_session_row_holds_hashes_only(server: Server) -> None:
    token = server.token()
    browser = server.browser()
    browser.sign_in(token)
    conn = Connection(server.services.database)
    try:
        rows = conn.execute(f"SELECT * FROM {DASHBOARD_SESSIONS_TABLE}")
    finally:
        conn.close()
    assert len(rows) == 1
    stored = repr(rows)
    assert token not in stored and browser.cookies[SESSION] not in stored


# ----- wcsync serve --no-auth ----------------------------------------------------------------------------------


@pytest.fixture
def no_auth_server(services: Services) -> Iterator[Server]:
    with ApiThread(services, replace(SETTINGS, no_auth=True)) as api:
        yield Server(api.url, services)


def test_a_no_auth_server_signs_in_by_org_and_refuses_another_host(
    no_auth_server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(no_auth_server.services, sandbox, org="lab")
    browser = no_auth_server.browser()
    login = browser.get("/login")
    form = login.dom.by_id("login-form")
    assert form.all("input", name="token") == []
    org = form.one("input", name="org")
    assert form.one("label", **{"for": org.attrs["id"]}).text() == "Organisation"
    csrf = form.one("input", name="csrf").attrs["value"]
    assert browser.post("/login", {"csrf": csrf, "org": ""}).status == 400
    assert browser.post("/login", {"csrf": csrf, "org": "lab"}).status == 303
    rows = browser.get("/").dom.by_id("queues").all("tr", data_queue_id=None)
    assert [row.attrs["data-queue-id"] for row in rows] == [queue_id]
    rebound = browser.get("/", Host="evil.example")
    assert rebound.status == 403
