"""Authentication of the real server (running_api, as `wcsync serve` runs it) over a socket, on SQLite and
PostgreSQL, as a hostile caller tries it: no token, a revoked one, another org's; roles below what a route
needs; a body naming another org; another org's store; the recorded actor; guessing tokens from one
address; `wcsync serve --no-auth` (issue 11, part 2).

Each test has a server of its own, so the failed-attempt limiter (10 failures in 60 s per address) starts
empty: every test but the 429 one stays under it.
"""

from __future__ import annotations

import http.client
import json
import selectors
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import pytest

from infrastructure.adapters.secrets import SecretKey
from infrastructure.adapters.tokens import Role
from infrastructure.api.auth import MAX_FAILURES, Unauthorized
from infrastructure.api.http import SYNC_PATH
from infrastructure.sandbox import RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.wiring import Services
from tests.support.api import SETTINGS, ApiThread, config_of
from tests.support.cli import WCSYNC, run_in_repo, spawn_wcsync, wcsync_env
from tests.support.services import run_sync
from tests.support.waiting import DEADLINE_S, wait_until

pytestmark = pytest.mark.sandbox(customers=12)

SERVER_SETTINGS = replace(SETTINGS, secret_key=SecretKey.generate())
ANY_ADDRESS = "0.0.0.0"  # noqa: S104 (what --no-auth must refuse)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        document = self.json
        assert document["success"] is False, document
        code: str = document["error"]["code"]
        return code

    def as_sent(self) -> tuple[int, dict[str, str], bytes]:
        """Everything of the answer but its Date: what two answers must share to be the same answer."""
        return self.status, {k: v for k, v in self.headers.items() if k.lower() != "date"}, self.body


@dataclass
class Server:
    url: str
    services: Services

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        authorization: str | None = None,
        source: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Answer:
        """One request; from the loopback address ``source`` (127.0.0.x) when given."""
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(
            address.hostname or "", address.port, timeout=30, source_address=(source, 0) if source else None
        )
        headers = {"Content-Type": "application/json", **(extra or {})}
        if authorization is not None:
            headers["Authorization"] = authorization
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            connection.close()

    def as_token(self, token: str, method: str, path: str, body: Any = None) -> Answer:
        return self.call(method, path, body, authorization=f"Bearer {token}")

    def token(self, org: str, role: Role, name: str | None = None) -> str:
        secret, _ = self.services.api_tokens().create(
            org, name or f"{role.value}-{uuid.uuid4().hex[:6]}", role
        )
        return secret


@pytest.fixture
def server(services: Services) -> Iterator[Server]:
    with ApiThread(services, SERVER_SETTINGS) as api:
        yield Server(api.url, services)


def _queue(services: Services, sandbox: RunningSandbox, org: str = "acme") -> str:
    return str(run_sync(services, sandbox, org, catch_up=True).queue_id)


def _status(queue_id: str, org: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"action": "status", "queue_id": queue_id}
    if org is not None:
        body["org_id"] = org
    return body


# ----- 401 / 404 -----------------------------------------------------------------------------------------


def test_no_token_a_revoked_token_and_another_orgs_token_on_a_queue_are_401_401_404(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    revoked = server.token("acme", Role.ADMIN, "soon-revoked")
    path = f"/api/v1/queues/{queue_id}"
    assert server.as_token(revoked, "GET", path).status == 200  # it worked until revoked
    server.services.api_tokens().revoke("soon-revoked", "acme")

    missing = server.call("GET", path)
    gone = server.as_token(revoked, "GET", path)
    assert (missing.status, missing.code) == (401, "unauthorized")
    assert gone.as_sent() == missing.as_sent()

    other = server.token("other", Role.ADMIN)
    nowhere = str(uuid.uuid4())
    telling = []  # every request whose answer tells another org's queue from none
    for method, route, body in (
        ("GET", "/api/v1/queues/{}", None),
        ("GET", "/api/v1/queues/{}/failed", None),
        ("GET", "/api/v1/queues/{}/activity", None),
        ("POST", SYNC_PATH, _status("{}")),
        ("POST", SYNC_PATH, {"action": "force-done", "queue_id": "{}", "reason": "not mine"}),
        ("POST", SYNC_PATH, {"action": "retry", "queue_id": "{}", "config": config_of(sandbox)}),
        ("POST", SYNC_PATH, {"action": "resume", "queue_id": "{}", "config": config_of(sandbox)}),
        # Without config: the queue's registered store, a job for a worker.
        ("POST", SYNC_PATH, {"action": "retry", "queue_id": "{}"}),
        ("POST", SYNC_PATH, {"action": "resume", "queue_id": "{}"}),
    ):
        theirs = server.as_token(other, method, route.format(queue_id), _with_id(body, queue_id))
        none = server.as_token(other, method, route.format(nowhere), _with_id(body, nowhere))
        assert theirs.status == 404, (route, body, theirs.body)
        # Byte for byte the answer for a queue that does not exist, but for the id the caller sent itself.
        if _replaced(theirs.as_sent(), queue_id, nowhere) != none.as_sent():
            what = f"{body['action']}{' with config' if 'config' in body else ''}" if body else route
            telling.append(f"{what}: {theirs.body.decode()} but for none: {none.body.decode()}")
    assert telling == [], "\n".join(telling)
    queues = server.as_token(other, "GET", "/api/v1/queues").json["data"]
    assert queues == []
    # None of it touched the queue.
    assert server.as_token(server.token("acme", Role.VIEWER), "GET", path).json["data"]["state"] == "done"


def _with_id(body: dict[str, Any] | None, queue_id: str) -> dict[str, Any] | None:
    if body is None:
        return None
    return {k: (queue_id if v == "{}" else v) for k, v in body.items()}


def _replaced(
    answer: tuple[int, dict[str, str], bytes], old: str, new: str
) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = answer
    return status, headers, body.replace(old.encode(), new.encode())


def test_the_401_is_one_answer_for_missing_malformed_unknown_and_revoked_tokens(
    server: Server,
) -> None:
    revoked = server.token("acme", Role.ADMIN, "revoked")
    server.services.api_tokens().revoke("revoked", "acme")
    known = server.token("acme", Role.ADMIN)
    unknown = "wcs_" + known.removeprefix("wcs_")[::-1]
    path = "/api/v1/queues"
    answers = {
        "missing": server.call("GET", path),
        "malformed": server.call("GET", path, authorization=f"Token {known}"),
        "malformed bytes": server.call("GET", path, authorization="Bearer a b"),
        "unknown": server.as_token(unknown, "GET", path),
        "revoked": server.as_token(revoked, "GET", path),
    }
    first = answers["missing"]
    assert first.status == 401 and first.headers.get("WWW-Authenticate") == "Bearer"
    assert first.json == {
        "success": False,
        "error": {"code": "unauthorized", "message": Unauthorized.MESSAGE},
    }
    for name, answer in answers.items():
        assert answer.as_sent() == first.as_sent(), name
    # The same on a route of another kind: the answer says nothing about the route either.
    assert server.call("POST", SYNC_PATH, _status(str(uuid.uuid4()))).as_sent() == first.as_sent()
    assert server.as_token(known, "GET", path).status == 200


# ----- roles -------------------------------------------------------------------------------------------------


def _store_requests(sandbox: RunningSandbox) -> list[tuple[str, str, Any]]:
    store_id = str(uuid.uuid4())
    register = {
        "url": sandbox.url,
        "consumerKey": sandbox.consumer_key,
        "consumerSecret": sandbox.consumer_secret,
    }
    return [
        ("POST", "/api/v1/stores", register),
        ("GET", "/api/v1/stores", None),
        ("GET", f"/api/v1/stores/{store_id}", None),
        ("DELETE", f"/api/v1/stores/{store_id}", None),
    ]


def test_a_viewer_reads_only_and_an_operator_does_not_manage_stores(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    viewer = server.token("acme", Role.VIEWER, "the-viewer")
    operator = server.token("acme", Role.OPERATOR, "the-operator")
    runs = [
        {"action": "start", "config": config_of(sandbox)},
        {"action": "retry", "queue_id": queue_id, "config": config_of(sandbox)},
        {"action": "resume", "queue_id": queue_id, "config": config_of(sandbox)},
        {"action": "force-done", "queue_id": queue_id, "reason": "a viewer tries"},
    ]
    for body in runs:
        refused = server.as_token(viewer, "POST", SYNC_PATH, body)
        assert (refused.status, refused.code) == (403, "forbidden"), (body, refused.body)
        assert refused.json["error"]["requiredRole"] == "operator"
        assert refused.json["error"]["tokenRole"] == "viewer"
    for token, role in ((viewer, "viewer"), (operator, "operator")):
        for method, path, body in _store_requests(sandbox):
            refused = server.as_token(token, method, path, body)
            assert (refused.status, refused.code) == (403, "forbidden"), (role, method, path, refused.body)
            assert refused.json["error"]["requiredRole"] == "admin"
    # Nothing a viewer tried happened; what it may do, it does.
    assert server.as_token(viewer, "POST", SYNC_PATH, _status(queue_id)).json["data"]["state"] == "done"
    assert server.as_token(viewer, "GET", "/api/v1/queues").status == 200
    assert server.as_token(viewer, "GET", f"/api/v1/queues/{queue_id}/activity").status == 200
    assert server.as_token(server.token("acme", Role.ADMIN), "GET", "/api/v1/stores").json["data"] == []
    listed = server.as_token(viewer, "GET", "/api/v1/queues").json["data"]
    assert [row["queueId"] for row in listed] == [queue_id]
    # An operator runs.
    started = server.as_token(operator, "POST", SYNC_PATH, runs[0])
    assert started.status == 202, started.body


def test_a_body_or_query_naming_another_org_is_403_org_mismatch(
    server: Server, sandbox: RunningSandbox
) -> None:
    queue_id = _queue(server.services, sandbox)
    admin = server.token("acme", Role.ADMIN)
    register = {
        "url": sandbox.url,
        "consumerKey": sandbox.consumer_key,
        "consumerSecret": sandbox.consumer_secret,
    }
    for method, path, body in (
        ("POST", SYNC_PATH, _status(queue_id, org="other")),
        ("POST", SYNC_PATH, {"org_id": "other", "config": config_of(sandbox)}),
        ("POST", SYNC_PATH, {"org_id": "other", "action": "force-done", "queue_id": queue_id, "reason": "x"}),
        ("GET", "/api/v1/queues?org_id=other", None),
        ("GET", f"/api/v1/queues/{queue_id}?org_id=other", None),
        ("POST", "/api/v1/stores", {**register, "org_id": "other"}),
        ("GET", "/api/v1/stores?org_id=other", None),
    ):
        refused = server.as_token(admin, method, path, body)
        assert (refused.status, refused.code) == (403, "org_mismatch"), (method, path, refused.body)
    # The token's own org named is fine.
    assert server.as_token(admin, "POST", SYNC_PATH, _status(queue_id, org="acme")).status == 200
    assert server.as_token(admin, "GET", "/api/v1/stores").json["data"] == []  # nothing registered for other


def test_another_orgs_store_is_answered_as_no_such_store(server: Server, sandbox: RunningSandbox) -> None:
    admin = server.token("acme", Role.ADMIN)
    register = {
        "url": sandbox.url,
        "consumerKey": sandbox.consumer_key,
        "consumerSecret": sandbox.consumer_secret,
    }
    added = server.as_token(admin, "POST", "/api/v1/stores", register)
    assert added.status == 201, added.body
    store_id = added.json["data"]["storeId"]
    other = server.token("other", Role.ADMIN)
    nowhere = str(uuid.uuid4())
    for method, route, body in (
        ("GET", "/api/v1/stores/{}", None),
        ("DELETE", "/api/v1/stores/{}", None),
        ("POST", SYNC_PATH, {"store_id": "{}"}),
    ):
        theirs = server.as_token(other, method, route.format(store_id), _with_id(body, store_id))
        none = server.as_token(other, method, route.format(nowhere), _with_id(body, nowhere))
        assert theirs.status == 404, (method, route, theirs.body)
        assert _replaced(theirs.as_sent(), store_id, nowhere) == none.as_sent(), (method, route)
        # Worded as a missing queue is ("no queue Q in org 'other'"): the org quoted.
        assert none.json["error"]["message"] == f"no store {nowhere} in org 'other'", none.body
    assert server.as_token(other, "GET", "/api/v1/stores").json["data"] == []
    # The same URL registered by the other org is a store of its own: acme's is neither rotated nor renamed.
    before = server.as_token(admin, "GET", f"/api/v1/stores/{store_id}").json["data"]
    theirs = server.as_token(other, "POST", "/api/v1/stores", {**register, "name": "not acme's"})
    assert theirs.status == 201 and theirs.json["data"]["storeId"] != store_id, theirs.body
    # Still acme's, unchanged, and usable by acme.
    mine = server.as_token(admin, "GET", f"/api/v1/stores/{store_id}")
    assert mine.status == 200 and mine.json["data"] == before
    assert [row["storeId"] for row in server.as_token(admin, "GET", "/api/v1/stores").json["data"]] == [
        store_id
    ]
    assert server.as_token(admin, "POST", SYNC_PATH, {"store_id": store_id}).status == 202


def test_metrics_count_the_syncs_and_lines_of_the_tokens_org_only(
    server: Server, sandbox: RunningSandbox
) -> None:
    _queue(server.services, sandbox)
    mine = _org_figures(server.as_token(server.token("acme", Role.VIEWER), "GET", "/metrics"))
    theirs = _org_figures(server.as_token(server.token("other", Role.VIEWER), "GET", "/metrics"))
    assert mine['wcsync_syncs{state="done"}'] == 1.0 and mine['wcsync_sync_lines{state="done"}'] == 12.0
    assert set(theirs) == set(mine) and set(theirs.values()) == {0.0}, theirs


def _org_figures(answer: Answer) -> dict[str, float]:
    """The per-org samples of a scrape (syncs, lines, line results), by name and labels."""
    assert answer.status == 200, answer.body
    samples = {}
    for line in answer.body.decode().splitlines():
        if line.startswith(("wcsync_syncs{", "wcsync_sync_lines{", "wcsync_sync_line_results{")):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples
    return samples


# ----- the actor ---------------------------------------------------------------------------------------------


def test_the_recorded_actor_is_the_user_id_else_the_tokens_name(
    server: Server, sandbox: RunningSandbox
) -> None:
    operator = server.token("acme", Role.OPERATOR, "ci-robot")
    by_user = server.as_token(operator, "POST", SYNC_PATH, {"config": config_of(sandbox), "user_id": "alice"})
    by_token = server.as_token(operator, "POST", SYNC_PATH, {"config": config_of(sandbox)})
    assert by_user.status == by_token.status == 202, (by_user.body, by_token.body)
    viewer = server.token("acme", Role.VIEWER)
    for answer, actor in ((by_user, "alice"), (by_token, "ci-robot")):
        queue_id = answer.json["data"]["queueId"]
        _finished(server, viewer, queue_id)
        created = _activity(server, viewer, queue_id)[0]
        assert created["details"]["started_by"] == actor, created
        assert created["message"].endswith(f"by {actor}"), created


def test_a_retry_and_a_force_done_record_the_user_id_else_the_tokens_name(server: Server) -> None:
    operator = server.token("acme", Role.OPERATOR, "night-shift")
    viewer = server.token("acme", Role.VIEWER)
    with SandboxThread(SandboxConfig(customers=20, invalid=1)) as store:
        started = server.as_token(operator, "POST", SYNC_PATH, {"config": config_of(store)})
        assert started.status == 202, started.body
        queue_id = started.json["data"]["queueId"]
        assert _finished(server, viewer, queue_id)["state"] == "failed"  # the invalid customer
        retry = {"action": "retry", "queue_id": queue_id, "config": config_of(store)}
        assert server.as_token(operator, "POST", SYNC_PATH, retry).status == 202
        assert _finished(server, viewer, queue_id)["state"] == "failed"
        forced = {"action": "force-done", "queue_id": queue_id, "reason": "known bad", "user_id": "bob"}
        done = server.as_token(operator, "POST", SYNC_PATH, forced)
        assert done.status == 200 and done.json["data"]["state"] == "done", done.body
    entries = {row["activityType"]: row for row in _activity(server, viewer, queue_id)}
    assert "by night-shift" in entries["retry_requested"]["message"], entries
    assert entries["forced_done"]["details"]["forced_by"] == "bob", entries


def _finished(server: Server, token: str, queue_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        data: dict[str, Any] = server.as_token(token, "POST", SYNC_PATH, _status(queue_id)).json["data"]
        return None if data["isRunning"] else data

    return wait_until(ended)


def _activity(server: Server, token: str, queue_id: str) -> list[dict[str, Any]]:
    answer = server.as_token(token, "GET", f"/api/v1/queues/{queue_id}/activity")
    assert answer.status == 200, answer.body
    rows: list[dict[str, Any]] = answer.json["data"]
    return rows


# ----- guessing ----------------------------------------------------------------------------------------------


def test_failed_attempts_from_one_address_turn_its_failures_to_429_and_valid_tokens_still_pass(
    server: Server,
) -> None:
    valid = server.token("acme", Role.ADMIN)
    for attempt in range(MAX_FAILURES + 1):
        guess = server.as_token(f"wcs_guess{attempt}", "GET", "/api/v1/queues")
        assert guess.status == 401, (attempt, guess.body)
    limited = server.call("GET", "/api/v1/queues", authorization="Bearer wcs_one-more")
    assert (limited.status, limited.code) == (429, "too_many_attempts"), limited.body
    retry_after = int(limited.headers["Retry-After"])
    assert 1 <= retry_after <= 60 and limited.json["error"]["retryAfterS"] == retry_after
    # A valid token from that address still passes (behind a load balancer its clients share the address;
    # a 256-bit token told apart gives a guesser nothing), and a header claiming another address takes no
    # failure out of the 429.
    assert server.as_token(valid, "GET", "/api/v1/queues").status == 200
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        value = "for=192.0.2.7" if header == "Forwarded" else "192.0.2.7"
        spoofed = server.call(
            "GET", "/api/v1/queues", authorization="Bearer wcs_spoof", extra={header: value}
        )
        assert spoofed.status == 429, header
    # The public routes still answer.
    assert server.call("GET", "/healthz").status == 200
    # The limit is the address's: another one's failure is the usual 401.
    assert server.call("GET", "/api/v1/queues", source="127.0.0.2").code == "unauthorized"


# ----- wcsync serve --no-auth --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", [ANY_ADDRESS, "0"])
def test_serve_without_auth_is_refused_on_any_address_but_loopback(sqlite_url: str, host: str) -> None:
    env = wcsync_env(None, sqlite_url)
    refused = run_in_repo([*WCSYNC, "serve", "--no-auth", "--host", host, "--port", "0"], env=env)
    assert refused.returncode == 2, refused.stderr
    assert refused.stdout == ""
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "--no-auth" in line and f"not on {host};" in line, line
    assert "Traceback" not in refused.stderr


def test_serve_without_auth_on_loopback_answers_without_a_token_and_needs_the_org(
    sqlite_url: str, sandbox: RunningSandbox
) -> None:
    process = spawn_wcsync("serve", "--no-auth", "--port", "0", env=wcsync_env(None, sqlite_url))
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=DEADLINE_S), "serve printed nothing"
        url = json.loads(process.stdout.readline())["url"]
        assert url.startswith("http://127.0.0.1:")
        server = Server(url, services=None)  # type: ignore[arg-type]
        listed = server.call("GET", "/api/v1/queues?org_id=acme")
        assert listed.status == 200 and listed.json == {"success": True, "data": []}
        started = server.call("POST", SYNC_PATH, {"org_id": "acme", "config": config_of(sandbox)})
        assert started.status == 202, started.body
        anyone = server.call("GET", f"/api/v1/queues/{started.json['data']['queueId']}?org_id=acme")
        assert anyone.status == 200, anyone.body
        for method, path, body in (
            ("GET", "/api/v1/queues", None),
            ("POST", SYNC_PATH, {"config": config_of(sandbox)}),
            ("POST", SYNC_PATH, _status(str(uuid.uuid4()))),
        ):
            unnamed = server.call(method, path, body)
            assert (unnamed.status, unnamed.code) == (400, "missing_field"), (method, path, unnamed.body)
            assert "org_id" in unnamed.json["error"]["message"]
        # What a web page the developer visits could send is refused: a cross-origin text/plain POST (no
        # preflight) and, after DNS rebinding, a request whose Host is the page's own name.
        as_text = {"Content-Type": "text/plain"}
        simple = server.call(
            "POST", SYNC_PATH, {"org_id": "acme", "config": config_of(sandbox)}, extra=as_text
        )
        assert (simple.status, simple.code) == (415, "unsupported_media_type"), simple.body
        rebound = server.call("GET", "/api/v1/queues?org_id=acme", extra={"Host": "attacker.example:80"})
        assert (rebound.status, rebound.code) == (403, "forbidden_host"), rebound.body
        assert server.call("GET", "/api/v1/queues?org_id=acme", extra={"Host": "localhost"}).status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
