"""The operations endpoints (infrastructure/api/operations.py) over a real socket, behind the server's
envelope and authentication middlewares, with real tokens, on SQLite and PostgreSQL: /readyz (ready, not
migrated, a database that hangs), /metrics (the token's org only, store requests and retries counted, jobs
and workers from procrastinate's tables when they exist, projection lag, a database that hangs) and the
OpenAPI document's route."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import structlog
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from domain.queue_terms import QueueOptions
from infrastructure.adapters.migrations import MIGRATIONS_TABLE, Connection
from infrastructure.adapters.tokens import Role
from infrastructure.adapters.woocommerce import ClientOptions, StoreCredentials, WooCommerceClient
from infrastructure.api import http as api_http
from infrastructure.api import openapi
from infrastructure.api.auth import auth_middleware, bearer_challenge
from infrastructure.api.operations import (
    METRICS_CONTENT_TYPE,
    OPENAPI_PATH,
    PUBLIC_PATHS,
    add_operation_routes,
)
from infrastructure.sandbox import Faults, RunningSandbox
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.loop_thread import LoopThread
from infrastructure.wiring import Services
from projections.queues import QUEUE_TABLE
from tests.support.services import FAST, run_sync
from tests.support.waiting import DEADLINE_S, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# What the public probes name the database (its kind only).
BACKENDS = {"postgres": "postgresql", "sqlite": "sqlite"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def samples(self) -> Samples:
        """The Prometheus text parsed: (sample name, labels) -> value."""
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(self.body.decode())
            for sample in family.samples
        }


@dataclass
class Client:
    url: str

    def get(self, path: str, token: str | None = None) -> Answer:
        address = urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()


@asynccontextmanager
async def served(services: Services, no_auth: bool, settings: dict[str, float]) -> AsyncIterator[Client]:
    """The operation routes in an app with the server's envelope and authentication, as the server has."""
    app = web.Application(
        middlewares=[
            api_http._envelope,
            auth_middleware(services.api_tokens().authenticate, PUBLIC_PATHS, no_auth),
        ]
    )
    app.on_response_prepare.append(bearer_challenge)
    add_operation_routes(app, services, **settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Client(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


@pytest.fixture
def serve() -> Iterator[Callable[..., Client]]:
    """``serve(services, no_auth=False, **timeouts)``: the app on a thread of its own, stopped after the
    test."""
    threads: list[LoopThread[Client]] = []

    def start(services: Services, no_auth: bool = False, **settings: float) -> Client:
        thread = LoopThread(lambda: served(services, no_auth, settings), "the API", join_timeout=DEADLINE_S)
        threads.append(thread)
        return thread.__enter__()

    yield start
    for thread in reversed(threads):
        thread.__exit__(None, None, None)


@pytest.fixture
def client(serve: Callable[..., Client], services: Services) -> Client:
    return serve(services)


def token(services: Services, org: str, role: Role = Role.VIEWER) -> str:
    secret, _ = services.api_tokens().create(org, f"{org}-{role}", role)
    return secret


def error_of(answer: Answer) -> dict[str, Any]:
    document = answer.json
    assert document["success"] is False and set(document) == {"success", "error"}, document
    error: dict[str, Any] = document["error"]
    return error


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not among {sorted(n for n, _ in samples)}"
    return samples[key]


# ----- /readyz -------------------------------------------------------------------------------------------


def test_readyz_answers_ready_on_a_migrated_database_without_a_token(
    client: Client, services: Services
) -> None:
    answer = client.get("/readyz")
    assert answer.status == 200, answer.body
    assert answer.json == {
        "success": True,
        "data": {"ready": True, "database": BACKENDS[services.database.backend], "pendingMigrations": []},
    }
    assert services.database.display not in answer.body.decode()  # anyone may ask: nothing that locates it


def test_readyz_on_a_database_it_cannot_read_says_so_in_fixed_words_and_logs_the_error(
    client: Client, services: Services
) -> None:
    conn = Connection(services.database)
    try:
        conn.execute(f"ALTER TABLE {MIGRATIONS_TABLE} RENAME COLUMN version TO renamed_version")
    finally:
        conn.close()
    with structlog.testing.capture_logs() as logs:
        answer = client.get("/readyz")
    assert answer.status == 503, answer.body
    assert error_of(answer) == {
        "code": "not_ready",
        "message": "not ready: the database cannot be read (the server log has the details)",
        "database": BACKENDS[services.database.backend],
        "pendingMigrations": None,
    }
    logged = [entry for entry in logs if entry["event"] == "api.not_ready_database_error"]
    assert len(logged) == 1 and "version" in logged[0]["error"], logs


def test_readyz_names_the_migrations_pending_and_what_to_run(client: Client, services: Services) -> None:
    conn = Connection(services.database)
    try:
        conn.execute(f"DELETE FROM {MIGRATIONS_TABLE} WHERE version >= 2")
    finally:
        conn.close()
    answer = client.get("/readyz")
    assert answer.status == 503
    error = error_of(answer)
    assert error["code"] == "not_ready"
    pending = error["pendingMigrations"]
    assert pending[:2] == [2, 3] and pending == sorted(pending)
    assert f"{len(pending)} migrations pending" in error["message"]
    assert "run `wcsync db migrate`" in error["message"]


def test_readyz_does_not_hang_when_the_database_does(
    serve: Callable[..., Client], pg_services: Services
) -> None:
    """A table lock held by another session makes the check wait: /readyz answers 503 in bounded time,
    and answers 200 again once the database does."""
    client = serve(pg_services, ready_timeout_s=0.5)
    with _locked(pg_services.database, MIGRATIONS_TABLE):
        started = time.monotonic()
        answer = client.get("/readyz")
        waited = time.monotonic() - started
        assert answer.status == 503 and error_of(answer)["code"] == "not_ready"
        assert "did not answer within 0.5 s" in error_of(answer)["message"]
        assert waited < 3
    wait_until(lambda: client.get("/readyz").status == 200)


class _locked:
    """ACCESS EXCLUSIVE on a table from another session, held until the block ends (PostgreSQL)."""

    def __init__(self, database: DatabaseConfig, table: str) -> None:
        self.conn = psycopg.connect(**database.pg_connect_kwargs())
        self.table = table

    def __enter__(self) -> None:
        self.conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE".encode())

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


# ----- /metrics: access and format ------------------------------------------------------------------------


def test_metrics_need_a_token(client: Client) -> None:
    answer = client.get("/metrics")
    assert answer.status == 401 and error_of(answer)["code"] == "unauthorized"
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/metrics", token="wcs_" + "x" * 43).status == 401


def test_metrics_are_prometheus_text_with_wcsync_names(client: Client, services: Services) -> None:
    answer = client.get("/metrics", token=token(services, "acme"))
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == METRICS_CONTENT_TYPE
    families = list(text_string_to_metric_families(answer.body.decode()))
    names = {family.name for family in families}
    assert names >= {
        "wcsync_store_requests",
        "wcsync_store_retries",
        "wcsync_store_circuit_opened",
        "wcsync_store_circuits",
        "wcsync_webhook_requests",
        "wcsync_database_up",
        "wcsync_syncs",
        "wcsync_sync_lines",
        "wcsync_sync_line_results",
        "wcsync_jobs_waiting",
        "wcsync_jobs_running",
        "wcsync_jobs_oldest_waiting_age_seconds",
        "wcsync_workers",
        "wcsync_worker_heartbeat_age_seconds",
        "wcsync_projection_lag_events",
        "wcsync_projection_lag_seconds",
    }
    assert all(name.startswith("wcsync_") for name in names)
    counters = {family.name for family in families if family.type == "counter"}
    assert counters == {
        "wcsync_store_requests",
        "wcsync_store_retries",
        "wcsync_store_circuit_opened",
        "wcsync_webhook_requests",
    }
    assert value(answer.samples, "wcsync_database_up") == 1
    # Nothing synced yet: every state is there, at 0; no jobs, no workers without the job engine's tables.
    assert {
        value(answer.samples, "wcsync_syncs", state=s) for s in ("draft", "processing", "done", "failed")
    } == {0}
    assert value(answer.samples, "wcsync_jobs_waiting") == 0 and value(answer.samples, "wcsync_workers") == 0


# Whose figures each family is (its HELP's last sentence), and the document's /metrics description.
ORG_FAMILIES = {
    "wcsync_syncs",
    "wcsync_sync_lines",
    "wcsync_sync_line_results",
    "wcsync_stores_webhooks_action_required",
    "wcsync_webhook_deliveries",
}
PROCESS_FAMILIES = {
    "wcsync_store_requests",
    "wcsync_store_retries",
    "wcsync_store_circuit_opened",
    "wcsync_store_circuits",
    "wcsync_webhook_requests",
    "wcsync_database_up",
    "wcsync_scrape_read_seconds",
}


def test_every_metric_says_whether_it_is_the_tokens_orgs_or_process_or_service_wide(
    client: Client, services: Services
) -> None:
    answer = client.get("/metrics", token=token(services, "acme"))
    scopes = {
        family.name: family.documentation.rsplit("Scope: ", 1)[-1]
        for family in text_string_to_metric_families(answer.body.decode())
    }
    org = {name for name, scope in scopes.items() if scope.startswith("the scraping token's org only")}
    process = {name for name, scope in scopes.items() if scope.startswith("this process")}
    service = {name for name, scope in scopes.items() if scope.startswith("the whole service, every org")}
    assert org == ORG_FAMILIES
    assert process == PROCESS_FAMILIES
    assert service == set(scopes) - ORG_FAMILIES - PROCESS_FAMILIES
    assert {"wcsync_jobs_waiting", "wcsync_workers", "wcsync_projection_lag_events"} <= service
    described = openapi.document()["paths"]["/metrics"]["get"]["summary"]
    for name in ORG_FAMILIES | PROCESS_FAMILIES:
        assert name in described, name
    assert "the token's org only" in described and "the whole service, every org" in described


# ----- /metrics: figures ----------------------------------------------------------------------------------


@pytest.mark.sandbox(customers=30, invalid=2)
def test_metrics_count_the_token_orgs_syncs_and_lines_only(
    client: Client, services: Services, sandbox: RunningSandbox
) -> None:
    run_sync(services, sandbox, "acme", catch_up=True)
    run_sync(services, sandbox, "acme", catch_up=True)
    run_sync(services, sandbox, "globex", catch_up=True)

    acme = client.get("/metrics", token=token(services, "acme")).samples
    assert value(acme, "wcsync_syncs", state="failed") == 2  # the two invalid records fail each run
    assert value(acme, "wcsync_syncs", state="done") == 0
    assert value(acme, "wcsync_sync_lines", state="failed") == 4
    assert value(acme, "wcsync_sync_lines", state="done") == 56
    assert value(acme, "wcsync_sync_line_results", result="created") == 28
    assert value(acme, "wcsync_sync_line_results", result="unchanged") == 28

    globex = client.get("/metrics", token=token(services, "globex")).samples
    assert value(globex, "wcsync_syncs", state="failed") == 1
    assert value(globex, "wcsync_sync_lines", state="done") == 28
    assert value(globex, "wcsync_sync_line_results", result="unchanged") == 0


@pytest.mark.sandbox(customers=20)
def test_metrics_in_no_auth_mode_count_every_org(
    serve: Callable[..., Client], services: Services, sandbox: RunningSandbox
) -> None:
    run_sync(services, sandbox, "acme", catch_up=True)
    run_sync(services, sandbox, "globex", catch_up=True)
    samples = serve(services, no_auth=True).get("/metrics").samples
    assert value(samples, "wcsync_syncs", state="done") == 2
    assert value(samples, "wcsync_sync_lines", state="done") == 40


@pytest.mark.sandbox(customers=120, faults=Faults(error_rate=0.3))
def test_metrics_count_store_requests_by_status_class_and_retries(
    client: Client, services: Services, sandbox: RunningSandbox
) -> None:
    """The counters are process-wide: the test compares them before and after one sync."""
    viewer = token(services, "acme")
    before = client.get("/metrics", token=viewer).samples
    # Enough retries, and a circuit that never opens, for every page to come through the faults.
    patient = ClientOptions(
        backoff_base_s=0.001, backoff_max_s=0.01, max_retries=20, circuit_threshold=10_000
    )
    run_sync(services, sandbox, "acme", client=patient, per_page=10, max_retries=20, catch_up=True)
    after = client.get("/metrics", token=viewer).samples

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0.0)

    ok, failed = (
        grew("wcsync_store_requests_total", status_class="2xx"),
        grew("wcsync_store_requests_total", status_class="5xx"),
    )
    assert ok >= 12 and failed >= 1  # 120 customers in pages of 10, and the host's injected errors
    assert grew("wcsync_store_retries_total", reason="server_error") == failed
    assert value(after, "wcsync_syncs", state="done") == 1


def test_the_circuits_gauge_counts_live_store_clients_by_state(client: Client, services: Services) -> None:
    viewer = token(services, "acme")
    before = value(client.get("/metrics", token=viewer).samples, "wcsync_store_circuits", state="closed")
    clients = [
        WooCommerceClient("http://127.0.0.1:9", StoreCredentials("ck_x", "cs_x"), FAST) for _ in range(3)
    ]
    during = value(client.get("/metrics", token=viewer).samples, "wcsync_store_circuits", state="closed")
    assert during == before + 3
    del clients


def test_projection_lag_in_events_and_seconds(client: Client, services: Services) -> None:
    viewer = token(services, "acme")
    caught_up = client.get("/metrics", token=viewer).samples
    assert value(caught_up, "wcsync_projection_lag_events", projection="queues") == 0
    assert value(caught_up, "wcsync_projection_lag_seconds", projection="queues") == 0

    queue = services.engine("acme").new_queue("http://127.0.0.1:9", QueueOptions())
    services.app.save(queue)  # saved, not applied: nothing follows the log in this test
    behind = client.get("/metrics", token=viewer).samples
    assert value(behind, "wcsync_projection_lag_events", projection="queues") >= 1
    assert value(behind, "wcsync_projection_lag_seconds", projection="queues") >= 0

    services.catch_up()
    assert (
        value(
            client.get("/metrics", token=viewer).samples, "wcsync_projection_lag_events", projection="queues"
        )
        == 0
    )


def test_jobs_and_workers_from_the_job_engines_tables(
    serve: Callable[..., Client], pg_services: Services
) -> None:
    """`wcsync db migrate` made procrastinate's tables; rows as its workers and defers write them."""
    client = serve(pg_services)
    viewer = token(pg_services, "acme")
    assert value(client.get("/metrics", token=viewer).samples, "wcsync_jobs_waiting") == 0
    with psycopg.connect(**pg_services.database.pg_connect_kwargs(), autocommit=True) as conn:
        worker = conn.execute(
            "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '42 seconds') RETURNING id"
        ).fetchone()
        assert worker is not None
        for _ in range(3):
            conn.execute(
                "INSERT INTO procrastinate_jobs (queue_name, task_name, args) VALUES ('default', 'wcsync.sync', '{}')"
            )
        conn.execute(
            "UPDATE procrastinate_events SET at = now() - interval '90 seconds' "
            "WHERE job_id = (SELECT min(id) FROM procrastinate_jobs)"
        )
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, status, worker_id) "
            "VALUES ('default', 'wcsync.sync', '{}', 'doing', %s)",
            (worker[0],),
        )
        # Scheduled for later: not waiting yet.
        conn.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, args, scheduled_at) "
            "VALUES ('default', 'wcsync.sync', '{}', now() + interval '1 hour')"
        )
    samples = client.get("/metrics", token=viewer).samples
    assert value(samples, "wcsync_jobs_waiting") == 3
    assert value(samples, "wcsync_jobs_running") == 1
    assert 89 <= value(samples, "wcsync_jobs_oldest_waiting_age_seconds") < 90 + DEADLINE_S
    assert value(samples, "wcsync_workers") == 1
    assert (
        41 <= value(samples, "wcsync_worker_heartbeat_age_seconds", worker=str(worker[0])) < 42 + DEADLINE_S
    )


def test_a_scrape_does_not_hang_when_the_database_does(
    serve: Callable[..., Client], pg_services: Services
) -> None:
    client = serve(pg_services, scrape_timeout_s=0.5)
    viewer = token(pg_services, "acme")
    with _locked(pg_services.database, QUEUE_TABLE.name):
        started = time.monotonic()
        answer = client.get("/metrics", token=viewer)
        assert time.monotonic() - started < 3
        assert answer.status == 200
        samples = answer.samples
        assert value(samples, "wcsync_database_up") == 0
        assert ("wcsync_syncs", frozenset({("state", "done")})) not in samples
        assert ("wcsync_store_requests_total", frozenset({("status_class", "2xx")})) in samples
    # Once the lock is gone the scrape that waited ends, and the next one reads the database again.
    wait_until(lambda: value(client.get("/metrics", token=viewer).samples, "wcsync_database_up") == 1)


# ----- /api/openapi.json ----------------------------------------------------------------------------------


def test_the_openapi_document_is_served_without_a_token(client: Client) -> None:
    answer = client.get(OPENAPI_PATH)
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("application/json")
    document = answer.json
    assert document["openapi"] == "3.1.0"
    assert {"/healthz", "/readyz", "/metrics", OPENAPI_PATH} <= set(document["paths"])
