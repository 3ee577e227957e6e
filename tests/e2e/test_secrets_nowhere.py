"""No secret anywhere (issue 11): a store's consumer key and secret, a wrong secret tried against it, an API
token and WCSYNC_SECRET_KEY go through everything a user does with them (`wcsync stores add`, `tokens
create`, `start --store`, inline credentials, `-vv` everywhere, `wcsync serve` and its routes, on PostgreSQL
`wcsync worker` and `start --detach`), then every encoding of each (tests/support/credentials.encodings, and
hex for binary columns) is searched for in every place a secret could land: the database's dump (pg_dump;
SQLite's file, its -wal while the server runs, and its .dump), the events read raw from the event store,
every stdout and stderr (logs at debug), every API answer. The consumer key's fingerprint (12 hex of its
SHA-256) is what may be shown of it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import selectors
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.adapters.tokens import token_hash
from infrastructure.api.http import SYNC_PATH
from infrastructure.sandbox import RunningSandbox
from infrastructure.support.config import DatabaseConfig
from tests.support.cli import as_json, spawn_wcsync, wcsync, wcsync_env
from tests.support.credentials import encodings
from tests.support.pgserver import find_binaries
from tests.support.waiting import DEADLINE_S, wait_until

# Distinctive, so that finding one anywhere can only be a leak.
CONSUMER_KEY = f"ck_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
CONSUMER_SECRET = f"cs_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
WRONG_SECRET = f"cs_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
SECRET_KEY_BYTES = os.urandom(32)
SECRET_KEY = base64.b64encode(SECRET_KEY_BYTES).decode()
FINGERPRINT = hashlib.sha256(CONSUMER_KEY.encode()).hexdigest()[:12]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.sandbox(customers=30, consumer_key=CONSUMER_KEY, consumer_secret=CONSUMER_SECRET),
]


@dataclass
class Evidence:
    """Everything the flow produced that a secret could have reached, by where it was found."""

    texts: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    blobs: list[tuple[str, bytes]] = field(default_factory=list)  # (where, bytes)
    token: str = ""

    def output(self, where: str, result: subprocess.CompletedProcess[str]) -> None:
        self.texts.append((f"{where} stdout", result.stdout))
        self.texts.append((f"{where} stderr", result.stderr))

    def run(self, where: str, *args: str, env: dict[str, str], expect: int = 0) -> Any:
        result = wcsync(*args, env=env)
        self.output(where, result)
        assert result.returncode == expect, (where, result.stdout, result.stderr)
        return as_json(result) if "--json" in args and expect == 0 else result


def secret_forms(token: str) -> dict[str, str]:
    """Each form of each secret (encodings names a form "... key", "... secret" or "basic ..." of both),
    named by secret and form."""
    forms: dict[str, str] = {}
    for pair, (first, second) in (
        ((CONSUMER_KEY, CONSUMER_SECRET), ("consumer key", "consumer secret")),
        ((CONSUMER_KEY, WRONG_SECRET), ("consumer key", "wrong secret")),
        ((token, SECRET_KEY), ("token", "WCSYNC_SECRET_KEY")),
    ):
        for form, value in encodings(*pair).items():
            if form.startswith("basic"):
                who = f"{first} and {second}"
            else:
                who = first if form.endswith("key") else second
            forms[f"{who}: {form}"] = value
    forms["token: without its prefix"] = token.removeprefix("wcs_")
    return forms


def _leaks(evidence: Evidence) -> list[str]:
    forms = secret_forms(evidence.token)
    found = []
    for where, text in evidence.texts:
        for name, form in forms.items():
            if form in text and not (where == "tokens create stdout" and name.startswith("token")):
                found.append(f"{name} in {where}")
    binary = {name: form.encode() for name, form in forms.items()}
    binary["WCSYNC_SECRET_KEY: its 32 bytes"] = SECRET_KEY_BYTES
    for name, raw in list(binary.items()):
        binary[f"{name} (hex)"] = raw.hex().encode()
    for where, blob in evidence.blobs:
        found.extend(f"{name} in {where}" for name, form in binary.items() if form in blob)
    return found


# ----- the flow ------------------------------------------------------------------------------------------


def _environments(sandbox: RunningSandbox, database_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """(with the store's credentials in the environment, without them); logs at debug in JSON either way."""
    with_credentials = wcsync_env(
        sandbox,
        database_url,
        WCSYNC_SECRET_KEY=SECRET_KEY,
        WCSYNC_LOG_LEVEL="debug",
        WCSYNC_LOG_FORMAT="json",
    )
    bare = {k: v for k, v in with_credentials.items() if k not in ("WOO_CONSUMER_KEY", "WOO_CONSUMER_SECRET")}
    return with_credentials, bare


def _cli_flow(evidence: Evidence, sandbox: RunningSandbox, env: dict[str, str], bare: dict[str, str]) -> str:
    """The commands, at -vv where it matters; returns the registered store's id."""
    evidence.run("db migrate", "db", "migrate", env=bare)
    store = evidence.run(
        "stores add", "-vv", "stores", "add", "--url", sandbox.url, "--name", "shop", "--json", env=env
    )
    store_id: str = store["storeId"]
    evidence.run("stores add again", "-vv", "stores", "add", "--url", sandbox.url, "--json", env=env)
    created = evidence.run(
        "tokens create", "tokens", "create", "--name", "secrets-test", "--role", "admin", "--json", env=bare
    )
    evidence.token = created["token"]
    evidence.run("start --store", "-vv", "start", "--store", store_id, "--json", env=bare)
    evidence.run("start --url", "start", "--url", sandbox.url, "-vv", env=bare)
    evidence.run("start inline", "-vv", "start", "--json", env=env)
    evidence.run("start inline, console logs", "-vv", "start", env={**env, "WCSYNC_LOG_FORMAT": "console"})
    evidence.run(
        "start wrong secret", "-vv", "start", env={**env, "WOO_CONSUMER_SECRET": WRONG_SECRET}, expect=3
    )
    evidence.run("status", "-vv", "status", "--json", env=bare)
    listed = evidence.run("stores list", "-vv", "stores", "list", "--json", env=bare)
    assert [row["storeId"] for row in listed] == [store_id]
    evidence.run("tokens list", "-vv", "tokens", "list", "--json", env=bare)
    evidence.run("audit verify", "-vv", "audit", "verify", env=bare)
    return store_id


@dataclass
class Client:
    url: str
    token: str
    evidence: Evidence

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
            connection.request(
                method, path, body=json.dumps(body).encode() if body else None, headers=headers
            )
            response = connection.getresponse()
            status, payload = response.status, response.read()
            head = "\n".join(f"{k}: {v}" for k, v in response.getheaders())
        finally:
            connection.close()
        self.evidence.blobs.append((f"the answer to {method} {path}", head.encode() + b"\n" + payload))
        assert status == expect, (method, path, body and body.get("action"), payload[:300])
        return json.loads(payload) if payload.startswith(b"{") else payload

    def done(self, queue_id: str) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            data: dict[str, Any] = self.call("POST", SYNC_PATH, {"action": "status", "queue_id": queue_id})[
                "data"
            ]
            return data if data["state"] in ("done", "failed") else None

        return wait_until(ended)


@contextmanager
def _spawned(
    evidence: Evidence, where: str, logs: Path, *args: str, env: dict[str, str]
) -> Iterator[subprocess.Popen[str]]:
    """`wcsync ARGS` in the background, its stderr in a file; stopped with SIGTERM (exit 0) at the end, and
    both its outputs kept as evidence."""
    stderr = logs / f"{where.replace(' ', '-')}.stderr"
    with stderr.open("w") as sink:
        process = spawn_wcsync(*args, env=env, stderr=sink)
    try:
        yield process
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=DEADLINE_S)
        assert process.returncode == 0, (where, stderr.read_text()[-2000:])
    finally:
        if process.poll() is None:
            process.kill()
            stdout, _ = process.communicate()
    evidence.texts.append((f"{where} stdout", stdout))
    evidence.texts.append((f"{where} stderr", stderr.read_text()))


def _url_of(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=DEADLINE_S), "serve printed nothing"
    url: str = json.loads(process.stdout.readline())["url"]
    return url


def _api_flow(client: Client, sandbox: RunningSandbox, store_id: str) -> None:
    config = {"url": sandbox.url, "consumerKey": CONSUMER_KEY, "consumerSecret": CONSUMER_SECRET}
    client.call("GET", "/healthz")
    client.call("GET", "/readyz")
    client.call("GET", "/metrics")
    by_store = client.call("POST", SYNC_PATH, {"store_id": store_id, "user_id": "ops"}, expect=202)
    queue_id = by_store["data"]["queueId"]
    assert client.done(queue_id)["state"] == "done"
    inline = client.call("POST", SYNC_PATH, {"config": config}, expect=202)
    assert client.done(inline["data"]["queueId"])["state"] == "done"
    client.call("POST", SYNC_PATH, {"config": {**config, "consumerSecret": WRONG_SECRET}}, expect=502)
    # Refused requests that carry the credentials: the answer names the field, never the value.
    client.call("POST", SYNC_PATH, {"config": config, "options": {"bogus": CONSUMER_SECRET}}, expect=400)
    client.call(
        "POST", SYNC_PATH, {"config": {**config, "url": f"{sandbox.url}?k={CONSUMER_KEY}"}}, expect=400
    )
    client.call("POST", SYNC_PATH, {"config": {**config, "consumerSecret": WRONG_SECRET + " x"}}, expect=400)
    stores = {"url": sandbox.url, "consumerKey": CONSUMER_KEY, "consumerSecret": CONSUMER_SECRET}
    registered = client.call("POST", "/api/v1/stores", {**stores, "name": "again"})
    assert registered["data"]["storeId"] == store_id
    client.call("POST", "/api/v1/stores", {**stores, "consumerSecret": WRONG_SECRET}, expect=502)
    client.call("POST", "/api/v1/stores", {**stores, "bogus": CONSUMER_KEY}, expect=400)
    assert [row["storeId"] for row in client.call("GET", "/api/v1/stores")["data"]] == [store_id]
    client.call("GET", f"/api/v1/stores/{store_id}")
    client.call("GET", "/api/v1/queues")
    for suffix in ("", "/failed", "/activity"):
        client.call("GET", f"/api/v1/queues/{queue_id}{suffix}")


def _detached_flow(evidence: Evidence, bare: dict[str, str], store_id: str) -> None:
    started = evidence.run(
        "start --detach", "-vv", "start", "--detach", "--store", store_id, "--json", env=bare
    )

    def done() -> dict[str, Any] | None:
        status = evidence.run("status of the detached", "status", started["queueId"], "--json", env=bare)
        return status if status["state"] in ("done", "failed") else None

    assert wait_until(done)["state"] == "done"
    evidence.run("jobs", "-vv", "jobs", "--json", env=bare)
    evidence.run("workers", "-vv", "workers", "--json", env=bare)


# ----- where the secrets could be ----------------------------------------------------------------------


def _sqlite_files(evidence: Evidence, database: DatabaseConfig, when: str) -> None:
    assert database.sqlite_path is not None
    files = sorted(database.sqlite_path.parent.glob(database.sqlite_path.name + "*"))
    assert files
    evidence.blobs.extend((f"{path.name} ({when})", path.read_bytes()) for path in files)


def _database(evidence: Evidence, database_url: str) -> str:
    """The database as a dump (kept as evidence); returned for the checks that the search sees data."""
    database = DatabaseConfig.from_url(database_url)
    if database.backend == "sqlite":
        _sqlite_files(evidence, database, "at the end")
        lite = sqlite3.connect(str(database.sqlite_path))
        try:
            dump = "\n".join(lite.iterdump())
        finally:
            lite.close()
    else:
        dumped = subprocess.run(
            [find_binaries().path("pg_dump"), "--no-owner", f"--dbname={database_url}"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert dumped.returncode == 0, dumped.stderr
        dump = dumped.stdout
    evidence.texts.append(("the database's dump", dump))
    evidence.blobs.append(("the database's dump", dump.encode()))
    return dump


def _events(evidence: Evidence, database_url: str) -> int:
    """Every stored event as the event store keeps it (topic and state bytes), and decoded."""
    app = SyncApplication(DatabaseConfig.from_url(database_url), create_tables=False)
    try:
        notifications = app.recorder.select_notifications(start=1, limit=1_000_000)
        for notification in notifications:
            evidence.blobs.append(
                (f"event {notification.id} (raw)", notification.topic.encode() + notification.state)
            )
            event = app.mapper.to_domain_event(notification)
            evidence.texts.append((f"event {notification.id} ({notification.topic})", repr(vars(event))))
        return len(notifications)
    finally:
        app.close()


# ----- the test --------------------------------------------------------------------------------------------


def test_no_secret_is_in_any_dump_log_answer_or_event(
    sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    evidence = Evidence()
    env, bare = _environments(sandbox, database_url)
    postgres = not database_url.startswith("sqlite")
    store_id = _cli_flow(evidence, sandbox, env, bare)

    worker = (
        _spawned(evidence, "worker", tmp_path, "-vv", "worker", "--heartbeat-s", "1", env=bare)
        if postgres
        else contextlib.nullcontext()
    )
    with worker:
        with _spawned(evidence, "serve", tmp_path, "-vv", "serve", "--port", "0", env=bare) as server:
            client = Client(_url_of(server), evidence.token, evidence)
            _api_flow(client, sandbox, store_id)
            if not postgres:
                _sqlite_files(evidence, DatabaseConfig.from_url(database_url), "while the server runs")
        if postgres:
            _detached_flow(evidence, bare, store_id)

    dump = _database(evidence, database_url)
    events = _events(evidence, database_url)

    # The search sees what it searches: the dump has the store, the token's hash and the key's fingerprint;
    # the logs are at debug; there are events; the answers are there.
    assert sandbox.url in dump and token_hash(evidence.token) in dump and FINGERPRINT in dump
    logged = "\n".join(text for where, text in evidence.texts if where.endswith("stderr"))
    assert '"store_request"' in logged and '"api.request"' in logged and '"level": "debug"' in logged
    assert events > 10
    assert sum(1 for where, _ in evidence.blobs if where.startswith("the answer")) > 15
    assert _leaks(evidence) == []
