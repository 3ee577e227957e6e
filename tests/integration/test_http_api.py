"""`wcsync serve`'s HTTP API over real sockets: a real server on 127.0.0.1 in a thread of its own, the sandbox
store in another, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql
from structlog.testing import capture_logs

from infrastructure.adapters.leases import QueueLeases
from infrastructure.api.http import SYNC_PATH, ApiSettings
from infrastructure.sandbox import Faults, RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import Services, open_services
from projections import queries
from tests.support.api import Api, ApiThread, config_of, error_of
from tests.support.cli import spawn_wcsync, wcsync
from tests.support.services import FAST
from tests.support.waiting import DEADLINE_S, wait_until


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    with ApiThread(services) as running:
        yield running


@pytest.fixture
def sqlite_api(sqlite_url: str) -> Iterator[Api]:
    with open_services(DatabaseConfig.from_url(sqlite_url)) as opened, ApiThread(opened) as running:
        yield running


def start(api: Api, sandbox: RunningSandbox, org: str = "acme", **body: Any) -> str:
    code, answer = api.sync(config=config_of(sandbox), org_id=org, user_id="user-123", **body)
    assert code == 202 and answer["success"], answer
    queue_id: str = answer["data"]["queueId"]
    assert uuid.UUID(queue_id) and answer["data"]["action"] == "start"
    return queue_id


def mirrored_ids(database_url: str, sandbox: RunningSandbox, org: str = "acme") -> set[int]:
    rows = queries.customers(DatabaseConfig.from_url(database_url), org, sandbox.url)
    return {row["woo_customer_id"] for row in rows if not row["is_deleted"]}


# ----- the seed's flow -------------------------------------------------------------------------------------


def test_start_answers_at_once_then_status_ends_equal_to_the_store_and_retry_finishes_it(
    api: Api, database_url: str
) -> None:
    with SandboxThread(SandboxConfig(customers=250, invalid=3)) as sandbox:
        queue_id = start(api, sandbox, options={"batchSize": 40, "perPage": 50, "maxRetries": 3})
        status = api.finished("acme", queue_id)

        store_ids = set(sandbox.store.customer_ids())
        assert status["state"] == "failed"  # three records break a validation rule
        assert status["totalCount"] == len(store_ids) == 250
        assert status["createdCount"] == 247 and status["failedCount"] == 3 and status["draftCount"] == 0
        assert status["orgId"] == "acme" and status["storeUrl"] == sandbox.url
        assert mirrored_ids(database_url, sandbox) == store_ids - {
            row["wooCustomerId"]
            for row in api.get(f"/api/v1/queues/{queue_id}/failed?org_id=acme")[1]["data"]
        }

        code, answer = api.get(f"/api/v1/queues/{queue_id}?org_id=acme")
        assert code == 200 and answer["data"] == status
        code, answer = api.get("/api/v1/queues?org_id=acme")
        assert code == 200 and [row["queueId"] for row in answer["data"]] == [queue_id]
        code, answer = api.get(f"/api/v1/queues/{queue_id}/failed?org_id=acme")
        assert code == 200 and len(answer["data"]) == 3
        assert all("invalid customer record" in row["errorMessage"] for row in answer["data"])
        code, answer = api.get(f"/api/v1/queues/{queue_id}/activity?org_id=acme&limit=5000")
        assert code == 200 and answer["data"][0]["activityType"] == "queue_created"
        assert any(row["activityType"] == "line_failed" for row in answer["data"])

        sandbox.store.fix_invalid()
        code, answer = api.sync(action="retry", config=config_of(sandbox), org_id="acme", queue_id=queue_id)
        assert code == 202 and answer["data"] == {"queueId": queue_id, "action": "retry"}, answer
        retried = api.finished("acme", queue_id)
        assert retried["state"] == "done" and retried["failedCount"] == 0
        assert retried["createdCount"] == 250 and retried["processCount"] == 2
        assert mirrored_ids(database_url, sandbox) == store_ids

        code, answer = api.sync(action="retry", config=config_of(sandbox), org_id="acme", queue_id=queue_id)
        assert code == 409 and error_of(answer)["code"] == "invalid_state"
        code, answer = api.sync(action="resume", config=config_of(sandbox), org_id="acme", queue_id=queue_id)
        assert code == 409 and "already done" in error_of(answer)["message"]
        code, answer = api.get("/healthz")
        assert code == 200 and answer["data"]["status"] == "ok" and answer["data"]["running"] == 0


def test_force_done_needs_a_reason_and_answers_with_the_final_status(api: Api) -> None:
    with SandboxThread(SandboxConfig(customers=40, invalid=2)) as sandbox:
        queue_id = start(api, sandbox)
        assert api.finished("acme", queue_id)["state"] == "failed"

        code, answer = api.sync(action="force-done", org_id="acme", queue_id=queue_id)
        assert code == 400 and error_of(answer)["code"] == "missing_field"
        assert "reason" in error_of(answer)["message"]

        code, answer = api.sync(
            action="force-done", org_id="acme", queue_id=queue_id, user_id="ops-7", reason="fixed in the CRM"
        )
        assert code == 200, answer
        assert answer["data"]["state"] == "done" and answer["data"]["cancelledCount"] == 2
        assert answer["data"]["progress"] == 100.0 and answer["data"]["isRunning"] is False
        activity = api.get(f"/api/v1/queues/{queue_id}/activity?org_id=acme")[1]["data"]
        assert any("fixed in the CRM" in row["message"] for row in activity), activity

        code, answer = api.sync(action="force-done", org_id="acme", queue_id=queue_id, reason="twice")
        assert code == 409 and "already done" in error_of(answer)["message"]


def test_a_store_failing_in_the_background_leaves_the_queue_failed_and_resumable(
    api: Api, database_url: str
) -> None:
    with SandboxThread(SandboxConfig(customers=80, faults=Faults(error_rate=1.0))) as failing:
        queue_id = start(api, failing, options={"maxRetries": 1})
        failed = api.finished("acme", queue_id)
        port = int(failing.url.rsplit(":", 1)[1])
    assert failed["state"] == "failed" and failed["totalCount"] == 0
    activity = api.get(f"/api/v1/queues/{queue_id}/activity?org_id=acme")[1]["data"]
    assert [row["status"] for row in activity if row["activityType"] == "fetch_failed"] == ["error"]

    # The host recovers (the same store at the same address): resume fetches from the first page.
    with SandboxThread(SandboxConfig(customers=80), port=port) as healthy:
        config = config_of(healthy)
        del config["url"]  # retry and resume default to the queue's own store
        code, answer = api.sync(action="resume", config=config, org_id="acme", queue_id=queue_id)
        assert code == 202, answer
        resumed = api.finished("acme", queue_id)
        assert resumed["state"] == "done" and resumed["totalCount"] == resumed["createdCount"] == 80
        assert mirrored_ids(database_url, healthy) == set(healthy.store.customer_ids())


def test_store_refusal_of_a_new_queue_is_502_and_leaves_nothing(api: Api) -> None:
    with SandboxThread(SandboxConfig(customers=10)) as sandbox:
        code, answer = api.sync(config=config_of(sandbox, consumerSecret="cs_wrong"), org_id="acme")
        error = error_of(answer)
        assert code == 502 and error["code"] == "store_refused"
        assert "refused the credentials" in error["message"] and error["storeStatus"] == 401
        assert "cs_wrong" not in json.dumps(answer)
        assert api.get("/api/v1/queues?org_id=acme")[1]["data"] == []


def test_a_second_run_of_a_running_queue_is_409_and_a_shutdown_leaves_it_resumable(
    services: Services, database_url: str
) -> None:
    slow = SandboxConfig(customers=300, faults=Faults(latency_ms=150))
    with SandboxThread(slow) as sandbox:
        with ApiThread(services) as api:
            queue_id = start(api, sandbox, options={"perPage": 10})
            assert api.status("acme", queue_id)["isRunning"] is True
            for action in ("resume", "retry"):
                code, answer = api.sync(
                    action=action, config=config_of(sandbox), org_id="acme", queue_id=queue_id
                )
                assert code == 409 and error_of(answer)["code"] == "queue_busy", answer
            code, answer = api.sync(action="force-done", org_id="acme", queue_id=queue_id, reason="no")
            assert code == 409 and error_of(answer)["code"] == "queue_busy"
        # The server stopped mid-sync: every saved batch is kept, and another server resumes the queue.
        with ApiThread(services) as api:
            interrupted = api.status("acme", queue_id)
            assert interrupted["state"] == "processing" and interrupted["isRunning"] is False
            assert interrupted["totalCount"] < 300
            code, answer = api.sync(
                action="resume",
                config=config_of(sandbox, url="http://127.0.0.1:9"),
                org_id="acme",
                queue_id=queue_id,
            )
            assert code == 400 and "config.url" in error_of(answer)["message"]
            code, answer = api.sync(
                action="resume", config=config_of(sandbox), org_id="acme", queue_id=queue_id
            )
            assert code == 202, answer
            resumed = api.finished("acme", queue_id)
        assert resumed["state"] == "done" and resumed["totalCount"] == 300
        assert mirrored_ids(database_url, sandbox) == set(sandbox.store.customer_ids())


# ----- errors ------------------------------------------------------------------------------------------------

SECRET = "cs_sentinel_do_not_echo"
GOOD_CONFIG = {"url": "http://127.0.0.1:9", "consumerKey": "ck_sentinel", "consumerSecret": SECRET}
QUEUE = str(uuid.uuid4())

BAD_BODIES: list[tuple[Any, str, str]] = [
    ([], "invalid_json", "JSON object"),
    ({"org_id": "", "config": GOOD_CONFIG}, "invalid_field", "org_id"),
    ({"org_id": "o", "action": "explode"}, "invalid_action", "action"),
    ({"org_id": "o"}, "missing_field", "config"),
    ({"org_id": "o", "config": {**GOOD_CONFIG, "url": None}}, "missing_field", "config.url"),
    ({"org_id": "o", "config": {**GOOD_CONFIG, "url": "ftp://shop"}}, "invalid_field", "config.url"),
    (
        {"org_id": "o", "config": {**GOOD_CONFIG, "url": "https://admin:hunter2@shop.example"}},
        "invalid_field",
        "config.url",
    ),
    (
        {"org_id": "o", "config": {"url": "http://shop", "consumerKey": "ck"}},
        "missing_field",
        "consumerSecret",
    ),
    (
        {"org_id": "o", "config": GOOD_CONFIG, "options": {"batchSize": 0}},
        "invalid_options",
        "options.batchSize",
    ),
    (
        {"org_id": "o", "config": GOOD_CONFIG, "options": {"perPage": 500}},
        "invalid_options",
        "options.perPage",
    ),
    (
        {"org_id": "o", "config": GOOD_CONFIG, "options": {"maxRetries": 0}},
        "invalid_options",
        "options.maxRetries",
    ),
    (
        {"org_id": "o", "config": GOOD_CONFIG, "options": {"batchDelayMs": -1}},
        "invalid_options",
        "options.batchDelayMs",
    ),
    # Unbounded values that once froze the server or killed every later resume.
    *(
        (
            {"org_id": "o", "config": GOOD_CONFIG, "options": {"batchDelayMs": value}},
            "invalid_options",
            "60000",
        )
        for value in (3_600_000_000, 10**23, 1e23, 5.5, True)
    ),
    ({"org_id": "o", "config": GOOD_CONFIG, "options": {"role": ""}}, "invalid_options", "options.role"),
    ({"org_id": "o", "config": GOOD_CONFIG, "options": {"role": "a b"}}, "invalid_options", "options.role"),
    # Ids: no NUL, no control characters, no unpaired surrogates, no blank padding; the field is named.
    ({"org_id": "evil\x00org", "action": "status", "queue_id": QUEUE}, "invalid_field", "org_id"),
    ({"org_id": "evil\ufffdorg\n", "action": "status", "queue_id": QUEUE}, "invalid_field", "org_id"),
    ({"org_id": " acme", "action": "status", "queue_id": QUEUE}, "invalid_field", "org_id"),
    ({"org_id": "o" * 201, "action": "status", "queue_id": QUEUE}, "invalid_field", "org_id"),
    ({"org_id": "o", "user_id": "u\x07", "action": "status", "queue_id": QUEUE}, "invalid_field", "user_id"),
    ({"org_id": 5, "action": "status", "queue_id": QUEUE}, "invalid_field", "org_id"),
    ({"org_id": "o", "action": ["status"]}, "invalid_action", "action"),
    ({"org_id": "o", "action": "status", "queue_id": "x" * 10_000}, "invalid_field", "queue_id"),
    (
        {"org_id": "o", "config": {**GOOD_CONFIG, "url": "http://shop:99999"}},
        "invalid_field",
        "config.url",
    ),
    ({"org_id": "o", "config": {**GOOD_CONFIG, "url": "http://[::1"}}, "invalid_field", "config.url"),
    (
        {"org_id": "o", "config": {**GOOD_CONFIG, "consumerKey": "ck_\x00"}},
        "invalid_field",
        "config.consumerKey",
    ),
    (
        {"org_id": "o", "action": "force-done", "queue_id": QUEUE, "reason": "r" * 1001},
        "invalid_field",
        "reason",
    ),
    (
        {"org_id": "o", "config": GOOD_CONFIG, "options": {"batchSize": "50"}},
        "invalid_options",
        "options.batchSize",
    ),
    (
        {"org_id": "o", "config": GOOD_CONFIG, "options": {"batchsize": 5}},
        "invalid_options",
        "options.batchsize",
    ),
    ({"org_id": "o", "action": "status"}, "missing_field", "queue_id"),
    ({"org_id": "o", "action": "status", "queue_id": "queue-uuid"}, "invalid_field", "queue_id"),
    ({"org_id": "o", "action": "retry", "queue_id": QUEUE}, "missing_field", "config"),
    ({"org_id": "o", "action": "force-done", "queue_id": QUEUE, "reason": " "}, "invalid_field", "reason"),
]


def test_bad_requests_are_400_naming_the_field_and_never_echo_a_secret(sqlite_api: Api) -> None:
    for body, code, field_name in BAD_BODIES:
        status, answer = (
            sqlite_api.sync(**body) if isinstance(body, dict) else sqlite_api.request("POST", SYNC_PATH, body)
        )
        error = error_of(answer)
        assert (status, error["code"]) == (400, code), (body, answer)
        assert field_name in error["message"], (body, error)
    status, answer = sqlite_api.request(
        "POST", SYNC_PATH, raw=b'{"config": {"consumerSecret": "' + SECRET.encode()
    )
    assert status == 400 and error_of(answer)["code"] == "invalid_json"
    # Bodies that once answered 500: unpaired surrogates, nesting, invalid UTF-8; and one too large.
    for raw in (
        b'{"org_id": "\\ud800", "action": "status", "queue_id": "' + QUEUE.encode() + b'"}',
        b'{"org_id": "o", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"org_id": "o", "options": ' + b'{"a":' * 50 + b"1" + b"}" * 50 + b"}",
        b'{"org_id": "\xff"}',
    ):
        status, answer = sqlite_api.request("POST", SYNC_PATH, raw=raw)
        assert status in (400, 413) and error_of(answer)["code"] in ("invalid_json", "payload_too_large"), (
            answer
        )
    status, answer = sqlite_api.request("POST", SYNC_PATH, raw=b" " * 70_000 + b"{}")
    assert status == 413 and error_of(answer)["code"] == "payload_too_large"
    # org_id is the token's now: absent it is the token's org; present it must be an org id.
    for path in ("/api/v1/queues?org_id=", f"/api/v1/queues/{QUEUE}?org_id=%20"):
        status, answer = sqlite_api.get(path)
        assert status == 400 and "org_id" in error_of(answer)["message"], (path, answer)
    status, answer = sqlite_api.get("/api/v1/queues/not-a-uuid?org_id=o")
    assert status == 400 and "UUID" in error_of(answer)["message"]
    status, answer = sqlite_api.get("/api/v1/queues?org_id=o&limit=0")
    assert status == 400 and "limit" in error_of(answer)["message"]
    for query in ("org_id=evil%FForg", "org_id=%ed%a0%80", "org_id=a%E2%80%AEb", "org_id=o&limit=%EF%BC%91"):
        status, answer = sqlite_api.get(f"/api/v1/queues?{query}")
        assert status == 400, (query, answer)
    status, answer = sqlite_api.get("/nowhere")
    assert status == 404 and error_of(answer)["code"] == "not_found"
    status, answer = sqlite_api.request("PUT", SYNC_PATH, {})
    assert status == 405 and error_of(answer)["code"] == "method_not_allowed"
    echoed = b"".join(sqlite_api.answers)
    assert SECRET.encode() not in echoed and b"hunter2" not in echoed


def test_an_unknown_queue_is_404_for_every_action_and_route(sqlite_api: Api) -> None:
    config = {"consumerKey": "ck", "consumerSecret": "cs"}
    for action, extra in (
        ("status", {}),
        ("retry", {"config": config}),
        ("resume", {"config": config}),
        ("force-done", {"reason": "r"}),
    ):
        status, answer = sqlite_api.sync(action=action, org_id="o", queue_id=QUEUE, **extra)
        assert status == 404 and error_of(answer)["code"] == "queue_not_found", (action, answer)
    for suffix in ("", "/failed", "/activity"):
        status, answer = sqlite_api.get(f"/api/v1/queues/{QUEUE}{suffix}?org_id=o")
        assert status == 404 and error_of(answer)["code"] == "queue_not_found", (suffix, answer)


def test_another_orgs_queue_is_not_found_and_not_listed(api: Api) -> None:
    with SandboxThread(SandboxConfig(customers=20, invalid=1)) as sandbox:
        queue_id = start(api, sandbox, org="org-a")
        api.finished("org-a", queue_id)
        for action, extra in (
            ("status", {}),
            ("retry", {"config": config_of(sandbox)}),
            ("resume", {"config": config_of(sandbox)}),
            ("force-done", {"reason": "not mine"}),
        ):
            status, answer = api.sync(action=action, org_id="org-b", queue_id=queue_id, **extra)
            assert status == 404 and error_of(answer)["code"] == "queue_not_found", (action, answer)
            assert "org-b" in error_of(answer)["message"]
        for suffix in ("", "/failed", "/activity"):
            assert api.get(f"/api/v1/queues/{queue_id}{suffix}?org_id=org-b")[0] == 404
        assert api.get("/api/v1/queues?org_id=org-b")[1]["data"] == []
        assert api.status("org-a", queue_id)["state"] == "failed"  # untouched by org-b's attempts


def test_the_queue_list_says_running_for_a_queue_another_process_holds_in_one_lease_query(
    api: Api, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's (or a CLI's) run holds the queue's lease: the list says isRunning as status does, not only
    for this server's own runs, and reads the page's leases in one query; a stale lease is no run."""
    with SandboxThread(SandboxConfig(customers=5)) as sandbox:
        queue_ids = []
        for _ in range(3):  # one after the other: the org runs one sync at a time
            queue_ids.append(start(api, sandbox))
            api.finished("acme", queue_ids[-1])
    held, stale_id = uuid.UUID(queue_ids[0]), uuid.UUID(queue_ids[1])
    worker = QueueLeases(services.database, host="host-b", pid=4242)  # a worker on another machine
    gone = QueueLeases(services.database, host="host-c", pid=4243, clock=lambda: time.time() - 3600)
    statements: list[str] = []
    server_leases = services.queue_leases()
    execute = server_leases._execute

    def counted(statement: str, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        statements.append(statement)
        return execute(statement, *args, **kwargs)

    try:
        with worker.acquire(held, "acme", "worker 17 (pid 4242@host-b)"), gone.acquire(stale_id, "acme", "x"):
            monkeypatch.setattr(server_leases, "_execute", counted)
            code, answer = api.get("/api/v1/queues?org_id=acme")
            assert code == 200, answer
            running = {row["queueId"]: row["isRunning"] for row in answer["data"]}
            assert running == {queue_ids[0]: True, queue_ids[1]: False, queue_ids[2]: False}
            assert len(statements) == 1, statements  # the page's leases in one query, not one per queue
            assert api.status("acme", queue_ids[0])["isRunning"] is True  # the list agrees with status
        assert not any(row["isRunning"] for row in api.get("/api/v1/queues?org_id=acme")[1]["data"])
    finally:
        worker.close()
        gone.close()


# ----- secrets -------------------------------------------------------------------------------------------------


def test_the_key_and_secret_are_never_stored_logged_or_echoed(
    services: Services, database_url: str, tmp_path: Path
) -> None:
    key, secret, wrong = (f"{p}_{uuid.uuid4().hex}" for p in ("ck", "cs", "cs_wrong"))
    config = SandboxConfig(customers=60, invalid=2, consumer_key=key, consumer_secret=secret)
    with capture_logs() as logs, SandboxThread(config) as sandbox, ApiThread(services) as api:
        queue_id = start(api, sandbox)
        api.finished("acme", queue_id)
        sandbox.store.fix_invalid()
        code, _ = api.sync(action="retry", config=config_of(sandbox), org_id="acme", queue_id=queue_id)
        assert code == 202
        assert api.finished("acme", queue_id)["state"] == "done"
        code, _ = api.sync(config=config_of(sandbox, consumerSecret=wrong), org_id="acme")
        assert code == 502
        for suffix in ("", "/failed", "/activity"):
            api.get(f"/api/v1/queues/{queue_id}{suffix}?org_id=acme")
    secrets = [s.encode() for s in (key, secret, wrong)]

    answers = b"".join(api.answers)
    assert queue_id.encode() in answers
    assert not [s for s in secrets if s in answers]
    logged = repr(logs).encode()
    assert b"api.request" in logged and b"api.sync_launched" in logged
    assert not [s for s in secrets if s in logged]

    stored = stored_bytes(database_url)
    assert (
        sandbox.url.encode() in stored or sandbox.url.encode().hex().encode() in stored
    )  # the grep sees data
    assert not [s for s in secrets if s in stored or s.hex().encode() in stored]


def stored_bytes(database_url: str) -> bytes:
    """Everything the database holds: the SQLite files byte for byte, or every PostgreSQL table as text
    (bytea columns, the event log's payloads among them, as hex)."""
    database = DatabaseConfig.from_url(database_url)
    if database.backend == "sqlite":
        assert database.sqlite_path is not None
        files = sorted(database.sqlite_path.parent.glob(database.sqlite_path.name + "*"))
        assert files
        return b"".join(path.read_bytes() for path in files)
    chunks: list[bytes] = []
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        assert tables
        for schema, table in tables:
            query = sql.SQL("SELECT t::text FROM {}.{} t").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            chunks.extend(row[0].encode() for row in conn.execute(query))
    return b"\n".join(chunks)


# ----- the command -------------------------------------------------------------------------------------------


def test_wcsync_serve_prints_its_url_serves_and_stops_on_sigterm(sqlite_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WCSYNC_", "WOO_"))}
    env["WCSYNC_DATABASE_URL"] = sqlite_url
    created = wcsync("tokens", "create", "--name", "reader", "--json", env=env)
    assert created.returncode == 0, created.stderr
    process = spawn_wcsync("serve", "--port", "0", env=env)
    try:
        assert process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=DEADLINE_S), "serve printed nothing"
        line = json.loads(process.stdout.readline())
        api = Api(line["url"], token=json.loads(created.stdout)["token"])
        assert line["url"].startswith("http://127.0.0.1:") and line["database"] == sqlite_url
        code, answer = api.get("/healthz")
        assert code == 200 and answer == {
            "success": True,
            "data": {"status": "ok", "database": "sqlite", "running": 0, "projectionLag": 0},
        }
        assert api.get("/api/v1/queues?org_id=default")[1]["data"] == []
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0
        assert process.stdout.read() == ""
        stderr = process.stderr.read() if process.stderr is not None else ""
        assert "Traceback" not in stderr, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_start_slower_than_the_confirmation_wait_is_draft_until_saved_and_a_late_refusal_is_502(
    sqlite_url: str,
) -> None:
    impatient = ApiSettings(client_options=FAST, start_confirm_s=0.0)
    slow = SandboxConfig(customers=30, faults=Faults(latency_ms=400))
    with (
        open_services(DatabaseConfig.from_url(sqlite_url)) as services,
        SandboxThread(slow) as sandbox,
        ApiThread(services, impatient) as api,
    ):
        queue_id = start(api, sandbox)
        early = api.status("acme", queue_id)
        assert early["state"] == "draft" and early["isRunning"] is True and early["totalCount"] == 0
        assert api.finished("acme", queue_id)["state"] == "done"

        code, answer = api.sync(config=config_of(sandbox, consumerSecret="cs_wrong"), org_id="acme")
        assert code == 202, answer
        refused = answer["data"]["queueId"]

        def refusal() -> tuple[int, Any] | None:
            code, answer = api.sync(action="status", org_id="acme", queue_id=refused)
            return None if code == 200 else (code, answer)

        code, answer = wait_until(refusal)
        assert code == 502 and error_of(answer)["code"] == "store_refused"
        assert api.sync(action="status", org_id="other", queue_id=refused)[0] == 404
        assert [row["queueId"] for row in api.get("/api/v1/queues?org_id=acme")[1]["data"]] == [queue_id]


def _raw_exchange(url: str, data: bytes) -> bytes:
    """Send bytes as they are on one connection and read everything the server answers until it closes."""
    address = urlsplit(url)
    with socket.create_connection((address.hostname or "", address.port or 80), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):  # the server closes after an error answer
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_what_the_http_parser_refuses_is_answered_in_the_envelope_without_echoing_it(
    sqlite_api: Api,
) -> None:
    body = json.dumps(
        {"org_id": "o", "config": {"url": "http://shop", "consumerKey": "ck_x", "consumerSecret": SECRET}}
    )
    # A Content-Length shorter than the body: the rest is read as the next request, and refused.
    short = (
        f"POST {SYNC_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    ).encode() + body.encode()
    # A request line over aiohttp's 8 KiB limit.
    long_line = f"GET /api/v1/queues?org_id={'a' * 9000}{SECRET} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    for data in (short, long_line):
        answer = _raw_exchange(sqlite_api.url, data)
        assert SECRET.encode() not in answer
        assert b'"success": false' in answer or b'"success":false' in answer, answer[:300]
    # A body that is not what its Content-Encoding says is a 400, not a 500.
    token = sqlite_api.token_for("o")
    lying = (
        f"POST {SYNC_PATH} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Encoding: gzip\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body.encode()
    answer = _raw_exchange(sqlite_api.url, lying)
    assert answer.startswith(b"HTTP/1.1 400") and b"invalid_json" in answer, answer[:300]
    assert SECRET.encode() not in answer
