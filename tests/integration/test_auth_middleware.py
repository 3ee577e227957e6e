"""The API's authentication layer (infrastructure/api/auth.py) in a small aiohttp app over a real socket,
behind the server's own envelope middleware, with real tokens (ApiTokens) on SQLite and PostgreSQL: one
401 for every kind of bad token, roles, the token's org, the failed-attempt limit, hostile headers."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from infrastructure.adapters.migrations import apply_migrations
from infrastructure.adapters.tokens import ApiTokens, Principal, Role
from infrastructure.api import http as api_http
from infrastructure.api.auth import (
    PRINCIPAL_KEY,
    Authenticate,
    FailureLimiter,
    Unauthorized,
    auth_middleware,
    bearer_challenge,
    request_org,
    require_role,
)
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.loop_thread import LoopThread

PUBLIC = frozenset({"/healthz"})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        document = self.json
        assert document["success"] is False, document
        error: dict[str, Any] = document["error"]
        return error


@dataclass
class Client:
    url: str

    def get(self, path: str, authorization: str | list[str] | None = None) -> Answer:
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            connection.putrequest("GET", path)
            values = [authorization] if isinstance(authorization, str) else authorization or []
            for value in values:
                connection.putheader("Authorization", value)
            connection.endheaders()
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def bearer(self, path: str, token: str) -> Answer:
        return self.get(path, f"Bearer {token}")

    def raw(self, request: bytes) -> bytes:
        """Bytes sent as they are; the whole answer read until the server closes."""
        address = urlsplit(self.url)
        with socket.create_connection((address.hostname or "", address.port or 0), timeout=30) as conn:
            conn.sendall(request)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


async def whoami(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL_KEY]
    data = (
        None
        if principal is None
        else {"org": principal.org_id, "name": principal.name, "role": str(principal.role)}
    )
    return web.json_response({"success": True, "data": data})


async def operate(request: web.Request) -> web.Response:
    require_role(request, Role.OPERATOR)
    return web.json_response({"success": True, "data": "operated"})


async def org(request: web.Request) -> web.Response:
    return web.json_response({"success": True, "data": request_org(request, request.query.get("org_id"))})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"success": True, "data": "ok"})


async def unguarded_role(request: web.Request) -> web.Response:
    require_role(request, Role.VIEWER)  # a public route that asks for a role: refused, not let through
    return web.json_response({"success": True})


@asynccontextmanager
async def served(authenticate: Authenticate, no_auth: bool, limiter: FailureLimiter) -> AsyncIterator[Client]:
    app = web.Application(
        middlewares=[
            api_http._envelope,
            auth_middleware(authenticate, PUBLIC | {"/public-role"}, no_auth, limiter),
        ]
    )
    app.on_response_prepare.append(bearer_challenge)
    app.router.add_get("/whoami", whoami)
    app.router.add_post("/whoami", whoami)
    app.router.add_delete("/whoami", whoami)
    app.router.add_get("/operate", operate)
    app.router.add_get("/org", org)
    app.router.add_get("/healthz", health)
    app.router.add_get("/public-role", unguarded_role)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Client(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


@pytest.fixture
def tokens(database_url: str) -> Iterator[ApiTokens]:
    config = DatabaseConfig.from_url(database_url)
    apply_migrations(config)
    store = ApiTokens(config)
    yield store
    store.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Client]]:
    """``serve(authenticate, no_auth=False, limiter=None)``: the app on a thread of its own, stopped after the test."""
    threads: list[LoopThread[Client]] = []

    def start(
        authenticate: Authenticate, no_auth: bool = False, limiter: FailureLimiter | None = None
    ) -> Client:
        chosen = limiter if limiter is not None else FailureLimiter(max_failures=1000)
        thread = LoopThread(lambda: served(authenticate, no_auth, chosen), "the auth app", join_timeout=30)
        threads.append(thread)
        return thread.__enter__()

    yield start
    for thread in threads:
        thread.__exit__(None, None, None)


def test_missing_malformed_unknown_and_revoked_tokens_get_one_answer_byte_for_byte(
    tokens: ApiTokens, serve: Callable[..., Client]
) -> None:
    client = serve(tokens.authenticate)
    revoked, _ = tokens.create("acme", "old", Role.ADMIN)
    tokens.revoke("old", "acme")
    valid, _ = tokens.create("acme", "ci", Role.ADMIN)
    cases: dict[str, str | list[str] | None] = {
        "missing": None,
        "empty": "",
        "other scheme": f"Basic {valid}",
        "no scheme": valid,
        "two tokens": f"Bearer {valid} {valid}",
        "two headers": [f"Bearer {valid}", f"Bearer {valid}"],
        "too long": "Bearer " + "A" * 600,
        "not a token": "Bearer hello",
        "unknown": "Bearer wcs_" + "A" * 43,
        "cut short": f"Bearer {valid[:-1]}",
        "revoked": f"Bearer {revoked}",
    }
    answers = {case: client.get("/whoami", header) for case, header in cases.items()}
    first = answers["missing"]
    assert first.status == 401
    assert first.error == {"code": "unauthorized", "message": Unauthorized.MESSAGE}
    assert first.headers["WWW-Authenticate"] == "Bearer"
    for case, answer in answers.items():
        assert (answer.status, answer.body, answer.headers["WWW-Authenticate"]) == (
            401,
            first.body,
            "Bearer",
        ), case
    assert client.bearer("/whoami", valid).status == 200
    assert client.get("/healthz").status == 200  # a public path needs no token
    public = client.get("/public-role")  # ... but a handler there that asks for a role is refused
    assert public.status == 401


def test_the_tokens_principal_is_the_requests_and_its_role_is_enforced(
    tokens: ApiTokens, serve: Callable[..., Client]
) -> None:
    threads: list[threading.Thread] = []

    def authenticate(token: str) -> Principal | None:
        threads.append(threading.current_thread())
        return tokens.authenticate(token)

    client = serve(authenticate)
    viewer, _ = tokens.create("acme", "dashboard", Role.VIEWER)
    operator, _ = tokens.create("acme", "ci", Role.OPERATOR)
    seen = client.bearer("/whoami", viewer)
    assert seen.status == 200 and seen.json["data"] == {"org": "acme", "name": "dashboard", "role": "viewer"}
    assert all(thread.name != "wcsync the auth app" for thread in threads)  # looked up off the loop's thread
    refused = client.bearer("/operate", viewer)
    assert refused.status == 403 and "WWW-Authenticate" not in refused.headers
    assert refused.error == {
        "code": "forbidden",
        "message": "this needs the operator role; token 'dashboard' has viewer",
        "requiredRole": "operator",
        "tokenRole": "viewer",
    }
    assert client.get("/whoami", f"bearer {operator}").status == 200  # the scheme in any case
    assert client.bearer("/operate", operator).json["data"] == "operated"
    assert [t.last_used_at is not None for t in tokens.list("acme")] == [True, True]


def test_the_org_is_the_tokens_and_another_named_is_refused(
    tokens: ApiTokens, serve: Callable[..., Client]
) -> None:
    client = serve(tokens.authenticate)
    token, _ = tokens.create("acme", "ci", Role.VIEWER)
    assert client.bearer("/org", token).json["data"] == "acme"
    assert client.bearer("/org?org_id=acme", token).json["data"] == "acme"
    other = client.bearer("/org?org_id=globex", token)
    assert other.status == 403 and other.error["code"] == "org_mismatch"
    assert "'acme'" in other.error["message"] and "'globex'" in other.error["message"]


def test_without_auth_every_request_passes_and_names_its_org(serve: Callable[..., Client]) -> None:
    def authenticate(token: str) -> Principal | None:
        raise AssertionError("no-auth mode looks no token up")

    client = serve(authenticate, no_auth=True)
    assert client.get("/whoami").json == {"success": True, "data": None}
    assert client.get("/operate").status == 200
    assert client.get("/org?org_id=globex").json["data"] == "globex"
    missing = client.get("/org")
    assert missing.status == 400 and missing.error["code"] == "missing_field"


def _status_of(answer: bytes) -> tuple[int, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _sent(client: Client, method: str, headers: list[str], body: bytes = b"") -> tuple[int, bytes]:
    """One request exactly as given (``headers`` as sent: Host among them, or not); status and body."""
    lines = [f"{method} /whoami HTTP/1.1", "Connection: close", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return _status_of(client.raw(("\r\n".join(lines) + "\r\n\r\n").encode() + body))


LOOPBACK_HOSTS = (
    "localhost",
    "LOCALHOST:8080",
    "localhost.",
    "127.0.0.1",
    "127.9.8.7:1",
    "[::1]",
    "[::1]:80",
)
FOREIGN_HOSTS = (
    "attacker.example",
    "attacker.example:8080",
    "localhost.attacker.example",
    "127.0.0.1.nip.io",
    "192.168.1.5",
    "0.0.0.0",  # noqa: S104 (a Host, not a binding)
    "[::2]",
    "::1",
    "localhost:80:80",
    "",
)


def test_without_auth_only_a_loopback_host_and_a_json_body_are_answered(
    serve: Callable[..., Client],
) -> None:
    """A page the developer visits can reach a no-auth server on loopback (DNS rebinding, a cross-origin
    text/plain POST that needs no preflight): its Host is not loopback (403), its body not JSON (415)."""

    def authenticate(token: str) -> Principal | None:
        raise AssertionError("no-auth mode looks no token up")

    client = serve(authenticate, no_auth=True)
    for host in LOOPBACK_HOSTS:
        assert _sent(client, "GET", [f"Host: {host}"])[0] == 200, host
    for host in FOREIGN_HOSTS:
        status, body = _sent(client, "GET", [f"Host: {host}"])
        assert status == 403 and json.loads(body)["error"]["code"] == "forbidden_host", (host, body)
    refused_public = client.raw(
        b"GET /healthz HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n"
    )
    assert _status_of(refused_public)[0] == 403  # the public routes too
    no_host = _status_of(client.raw(b"GET /whoami HTTP/1.0\r\n\r\n"))
    assert no_host[0] == 403
    # Two Host headers: aiohttp's parser refuses the request itself (400), never reaching a handler.
    assert _sent(client, "GET", ["Host: localhost", "Host: attacker.example"])[0] == 400

    local = ["Host: 127.0.0.1"]
    body = b'{"org_id": "acme"}'
    for method in ("POST", "DELETE"):
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ):
            status, answer = _sent(client, method, [*local, f"Content-Type: {content_type}"], body)
            assert (status, json.loads(answer)["error"]["code"]) == (415, "unsupported_media_type"), (
                method,
                content_type,
            )
        assert _sent(client, method, local, body)[0] == 415  # no Content-Type at all
        assert _sent(client, method, [*local, "Content-Type: application/json"], body)[0] == 200
        assert (
            _sent(client, method, [*local, "Content-Type: Application/JSON; charset=utf-8"], body)[0] == 200
        )
        assert _sent(client, method, local)[0] == 200  # no body: nothing to check
    chunked = ["Transfer-Encoding: chunked", "Content-Type: text/plain"]
    status, _ = _status_of(
        client.raw(
            b"POST /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            + "\r\n".join(chunked).encode()
            + b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        )
    )
    assert status == 415  # a chunked body is a body


def test_with_tokens_neither_the_host_nor_the_content_type_is_checked(
    tokens: ApiTokens, serve: Callable[..., Client]
) -> None:
    client = serve(tokens.authenticate)
    token, _ = tokens.create("acme", "ci", Role.VIEWER)
    sent = ["Host: api.example.com", f"Authorization: Bearer {token}", "Content-Type: text/plain"]
    assert _sent(client, "POST", sent, b"{}")[0] == 200


def test_past_too_many_failures_an_address_s_failures_are_429_and_its_valid_tokens_pass(
    sqlite_url: str, serve: Callable[..., Client]
) -> None:
    """Behind a shared address (a load balancer) one guesser must not lock every client out: over the
    limit, a valid token still passes; only failures are 429, and each is counted (the window moves on)."""
    config = DatabaseConfig.from_url(sqlite_url)
    apply_migrations(config)
    tokens = ApiTokens(config)
    try:
        clock = Clock()
        client = serve(tokens.authenticate, limiter=FailureLimiter(max_failures=10, window_s=60, clock=clock))
        token, _ = tokens.create("acme", "ci", Role.VIEWER)
        for _ in range(30):  # successes are not limited, nor counted
            assert client.bearer("/whoami", token).status == 200
        for n in range(11):  # more than ten failures within the window (at 0 .. 10 s) ...
            assert client.bearer("/whoami", f"wcs_{n:043d}").status == 401
            clock.now += 1
        assert client.bearer("/whoami", token).status == 200  # ... a valid token still passes
        limited = client.bearer("/whoami", "wcs_" + "9" * 43)  # ... and a failure is refused, and counted
        assert limited.status == 429
        assert limited.error == {
            "code": "too_many_attempts",
            "message": "too many failed authentication attempts from this address; try again in 50 s",
            "retryAfterS": 50,
        }
        assert limited.headers["Retry-After"] == "50"
        assert client.get("/whoami").status == 429  # no token is a failure too
        assert client.bearer("/whoami", token).status == 200
        assert client.get("/healthz").status == 200  # public paths are not limited
        clock.now = 61.5  # the first two failures have left the window; the ones answered 429 have not
        assert client.bearer("/whoami", "wcs_nope").status == 429
        clock.now = 200.0  # every failure has left the window
        assert client.bearer("/whoami", "wcs_nope").status == 401
    finally:
        tokens.close()


def test_hostile_headers_are_the_same_401_never_an_error(
    tokens: ApiTokens, serve: Callable[..., Client]
) -> None:
    client = serve(tokens.authenticate)
    expected = client.get("/whoami").body
    for header in (
        b"Authorization: Bearer \xff\xfe\r\n",
        b"Authorization: Bearer wcs_\xc3\xa9" + b"A" * 41 + b"\r\n",
        b"Authorization: Bearer " + b"A" * 8000 + b"\r\n",
        b"Authorization:\r\n",
    ):
        answer = client.raw(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), (header[:40], head)
        assert body == expected
