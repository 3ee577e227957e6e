"""The HTTP API's durable-job path (issue 11, part 3), through the real server on SQLite (the local job table)
and PostgreSQL (procrastinate): a sync naming a registered store's ``store_id``, or a retry/resume of a queue
whose store is registered, is deferred as a job and answered 202 ``{queueId, action, jobId}``, its queue saved
before the answer; a worker runs it to done while the status answers ``isRunning``; the actor is the body's
``user_id``, else the token's name. What the job would refuse is refused at once, and none of those
refusals defers a job; without WCSYNC_SECRET_KEY the path is closed with a clear answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest

from domain.queue_terms import QueueOptions
from infrastructure.adapters.leases import QueueLeases
from infrastructure.adapters.migrations import STORE_SECRETS_TABLE, Connection
from infrastructure.adapters.secrets import SecretKey
from infrastructure.adapters.tokens import Role
from infrastructure.sandbox import RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.sandbox.config import Faults
from infrastructure.wiring import Services
from projections import queries
from tests.support.api import SETTINGS, Api, ApiThread, config_of, error_of
from tests.support.services import FAST, run_sync
from tests.support.waiting import wait_until
from tests.support.workers import worker_running

KEY = SecretKey.generate()
WITH_KEY = replace(SETTINGS, secret_key=KEY)
# Slow enough that a status catches the run in progress.
SLOW = {"perPage": 20, "batchSize": 10, "batchDelayMs": 30}


def register(services: Services, store: RunningSandbox, org: str = "acme") -> str:
    """The store registered for ``org`` through the registry (under the server's key)."""
    registry = services.store_registry(KEY, FAST)
    added = asyncio.run(registry.add(org, store.url, store.consumer_key, store.consumer_secret, None, "ops"))
    return str(added["storeId"])


def operator(services: Services, name: str, org: str = "acme") -> str:
    token, _ = services.api_tokens().create(org, name, Role.OPERATOR)
    return token


def jobs_of(services: Services, queue_id: str) -> list[dict[str, Any]]:
    return [job for job in services.sync_jobs().jobs() if job["queueId"] == queue_id]


def deferred(answer: tuple[int, Any], action: str) -> dict[str, Any]:
    code, document = answer
    assert code == 202 and document["success"], document
    data: dict[str, Any] = document["data"]
    assert set(data) == {"queueId", "action", "jobId"} and data["action"] == action, data
    assert isinstance(data["jobId"], int)
    return data


def refused(answer: tuple[int, Any], status: int, code: str) -> dict[str, Any]:
    got, document = answer
    error = error_of(document)
    assert (got, error["code"]) == (status, code), document
    return error


def activity(api: Api, queue_id: str) -> dict[str, dict[str, Any]]:
    code, answer = api.get(f"/api/v1/queues/{queue_id}/activity")
    assert code == 200, answer
    return {row["activityType"]: row for row in answer["data"]}


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    with ApiThread(services, WITH_KEY) as running:
        yield running


# ----- deferred, then run by a worker ------------------------------------------------------------------


@pytest.mark.sandbox(customers=300, faults=Faults(latency_ms=15))
def test_a_start_by_store_id_is_deferred_then_a_worker_runs_it_to_done(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id = register(services, sandbox)
    token = operator(services, "ci-robot")
    data = deferred(
        api.request(
            "POST",
            "/api/v1/integrations/woocommerce/sync/customers",
            {"store_id": store_id, "options": SLOW},
            token=token,
        ),
        "start",
    )
    queue_id = data["queueId"]
    # The queue is there, a draft, before any worker ran it; its job waits.
    before = api.status("acme", queue_id)
    assert (before["state"], before["isRunning"]) == ("draft", False)
    [job] = jobs_of(services, queue_id)
    assert (job["jobId"], job["action"], job["status"], job["org"]) == (
        data["jobId"],
        "start",
        "waiting",
        "acme",
    )

    with worker_running(services, KEY):

        def in_progress() -> dict[str, Any] | None:
            status = api.status("acme", queue_id)
            return status if status["isRunning"] and status["state"] == "processing" else None

        running = wait_until(in_progress)  # held by the worker's lease, not by a run of this server
        assert running["doneCount"] < 300
        final = wait_until(lambda: _done(api.status("acme", queue_id)))
        wait_until(lambda: not jobs_of(services, queue_id))
    assert (final["doneCount"], final["totalCount"]) == (300, 300)
    ids = [row["woo_customer_id"] for row in queries.customers(services.projections, "acme", sandbox.url)]
    assert sorted(ids) == sorted(sandbox.store.customer_ids())
    created = activity(api, queue_id)["queue_created"]
    assert created["details"]["started_by"] == "ci-robot", created  # no user_id: the token's name


@pytest.mark.sandbox(customers=20, invalid=1)
def test_a_retry_of_a_registered_stores_queue_needs_no_config_and_records_its_actor(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id = register(services, sandbox)
    token = operator(services, "night-shift")
    path = "/api/v1/integrations/woocommerce/sync/customers"
    with worker_running(services, KEY):
        start = deferred(
            api.request("POST", path, {"store_id": store_id, "user_id": "alice"}, token=token), "start"
        )
        queue_id = start["queueId"]
        wait_until(lambda: api.status("acme", queue_id)["state"] == "failed")  # the invalid customer
        wait_until(lambda: not jobs_of(services, queue_id))
        retry = deferred(
            api.request("POST", path, {"action": "retry", "queue_id": queue_id}, token=token), "retry"
        )
        assert retry["queueId"] == queue_id and retry["jobId"] != start["jobId"]
        wait_until(lambda: "retry_requested" in activity(api, queue_id))
        wait_until(lambda: not jobs_of(services, queue_id) and not api.status("acme", queue_id)["isRunning"])
        resume = api.request(
            "POST", path, {"action": "resume", "queue_id": queue_id, "user_id": "bob"}, token=token
        )
        deferred(resume, "resume")
        wait_until(lambda: not jobs_of(services, queue_id))
    entries = activity(api, queue_id)
    assert entries["queue_created"]["details"]["started_by"] == "alice", entries["queue_created"]
    assert entries["retry_requested"]["message"].startswith("Retry requested by night-shift "), entries[
        "retry_requested"
    ]
    status = api.finished("acme", queue_id)
    assert status["state"] == "failed" and status["doneCount"] == 19


def _done(status: dict[str, Any]) -> dict[str, Any] | None:
    return status if status["state"] == "done" and not status["isRunning"] else None


# ----- refused at once ------------------------------------------------------------------------------------


def _same_answer(theirs: Any, none: Any, their_id: str, no_id: str) -> None:
    assert json.dumps(theirs).replace(their_id, no_id) == json.dumps(none)


@pytest.mark.sandbox(customers=5)
def test_what_a_job_would_refuse_is_refused_at_once_and_defers_nothing(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id = register(services, sandbox)
    other_store = register(services, sandbox, org="other")
    engine = services.engine("acme", actor="ops")
    draft = str(engine.create_draft(sandbox.url, QueueOptions()))
    done = str(run_sync(services, sandbox, catch_up=True).queue_id)
    nowhere = str(uuid.uuid4())

    # Another org's queue, and one that does not exist: 404, one answer.
    for action in ("retry", "resume"):
        theirs = api.sync(action=action, queue_id=draft, org_id="other")
        none = api.sync(action=action, queue_id=nowhere, org_id="other")
        refused(theirs, 404, "queue_not_found")
        _same_answer(theirs[1], none[1], draft, nowhere)
    # A store_id of another org, and one that does not exist: 404 store_not_found, one answer.
    theirs = api.sync(store_id=other_store)
    none = api.sync(store_id=nowhere)
    refused(theirs, 404, "store_not_found")
    _same_answer(theirs[1], none[1], other_store, nowhere)
    refused(api.sync(action="resume", queue_id=draft, store_id=other_store), 404, "store_not_found")

    # A queue another process is processing: 409 queue_busy, naming it and since when.
    elsewhere = QueueLeases(services.database, host="host-b", pid=4321)
    try:
        lease = elsewhere.acquire(UUID(draft), "acme", "worker 9 (pid 4321@host-b)")
        busy = refused(api.sync(action="resume", queue_id=draft), 409, "queue_busy")
        assert busy["holder"] == "worker 9 (pid 4321@host-b)" and busy["since"].endswith("Z"), busy
        refused(api.sync(action="retry", queue_id=draft, store_id=store_id), 409, "queue_busy")
        assert api.status("acme", draft)["isRunning"] is True  # whoever holds the lease runs it
        lease.release()
    finally:
        elsewhere.close()
    assert api.status("acme", draft)["isRunning"] is False

    # Nothing to resume, nothing to retry.
    resumed = refused(api.sync(action="resume", queue_id=done), 409, "invalid_state")
    assert "already done" in resumed["message"], resumed
    retried = refused(api.sync(action="retry", queue_id=draft), 409, "invalid_state")
    assert "no failed lines to retry" in retried["message"], retried

    # A registered store that is not the queue's.
    with SandboxThread(SandboxConfig(customers=1)) as second:
        second_id = register(services, second)
        refused(api.sync(action="resume", queue_id=draft, store_id=second_id), 400, "invalid_field")
        # A queue whose store is not registered (the second store's), with neither config nor store_id.
        unregistered = str(engine.create_draft(second.url, QueueOptions()))
        services.store_registry(KEY, None).remove("acme", UUID(second_id), "ops")
        missing = refused(api.sync(action="resume", queue_id=unregistered), 400, "missing_field")
        assert "not registered" in missing["message"], missing

    assert services.sync_jobs().jobs() == []  # none of them deferred a job
    assert api.status("acme", draft)["state"] == "draft"
    assert not any(sandbox.consumer_secret.encode() in answer for answer in api.answers)


@pytest.mark.sandbox(customers=5)
def test_without_the_secret_key_store_id_is_503_and_a_bare_retry_is_400(
    services: Services, sandbox: RunningSandbox
) -> None:
    store_id = register(services, sandbox)
    queue_id = str(run_sync(services, sandbox, catch_up=True, max_retries=1).queue_id)
    with ApiThread(services, SETTINGS) as api:
        closed = refused(api.sync(store_id=store_id), 503, "not_configured")
        assert "WCSYNC_SECRET_KEY" in closed["message"], closed
        for action in ("retry", "resume"):
            bare = refused(api.sync(action=action, queue_id=queue_id), 400, "missing_field")
            assert "WCSYNC_SECRET_KEY" in bare["message"], bare
        # A sync that brings its credentials still runs in the server.
        code, answer = api.sync(config=config_of(sandbox))
        assert code == 202 and set(answer["data"]) == {"queueId", "action"}, answer
        assert api.finished("acme", answer["data"]["queueId"])["state"] == "done"
        # Removing a store needs no key: its sealed secret is deleted unread.
        code, answer = api.request("DELETE", f"/api/v1/stores/{store_id}")
        assert code == 200 and answer["data"] == {"storeId": store_id, "removed": True}, answer
        code, answer = api.get(f"/api/v1/stores/{store_id}")
        assert code == 404 and answer["error"]["code"] == "store_not_found", answer
    secrets = Connection(services.database)
    try:
        assert secrets.execute(f"SELECT count(*) FROM {STORE_SECRETS_TABLE}") == [(0,)]
    finally:
        secrets.close()
    assert services.sync_jobs().jobs() == []
