"""The webhook receiver (`POST /api/v1/webhooks/woocommerce/{store_id}` on the real server, over sockets)
and the deliveries' applier, on both backends: the sandbox's signed deliveries of each topic change the
mirror through the same checks and projections as a sync; a tampered body, a wrong secret or a missing
signature is refused (401) and changes nothing, recorded as one store incident without the body; the ping
is 200 and does nothing; a repeated delivery is recorded and applied once; an invalid body is a failed
line with its reason in the activity log; an unknown store is 404."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest
from eventsourcing.utils import get_topic

from domain.customer import customer_key
from domain.webhook import RefusedDeliveries, WebhookDelivery
from infrastructure.adapters.eventstore import ConcurrentWriteError
from infrastructure.adapters.secrets import SecretKey
from infrastructure.api.http import WEBHOOK_ROOT
from infrastructure.sandbox import RunningSandbox
from infrastructure.services.audit import customer_history, export_log, verify_log
from infrastructure.services.deliveries import DeliveryApplier, signature_of
from infrastructure.support.metrics import PROCESS
from infrastructure.wiring import Services
from projections import queries
from tests.support.api import SETTINGS, Api, ApiThread, error_of
from tests.support.sandbox_admin import admin
from tests.support.services import FAST, run_sync
from tests.support.waiting import wait_until

ORG = "acme"
KEY = SecretKey.generate()
WITH_KEY = replace(SETTINGS, secret_key=KEY)
pytestmark = pytest.mark.sandbox(customers=12)


@pytest.fixture
def api(services: Services) -> Iterator[Api]:
    with ApiThread(services, WITH_KEY) as running:
        yield running


def register(services: Services, sandbox: RunningSandbox) -> UUID:
    registry = services.store_registry(KEY, FAST)
    added = asyncio.run(
        registry.add(ORG, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, None, "ops")
    )
    return UUID(added["storeId"])


def synced(services: Services, sandbox: RunningSandbox) -> tuple[UUID, str]:
    """The sandbox synced once, registered under KEY, and its webhook secret (made)."""
    run_sync(services, sandbox)
    return register_with(services, sandbox, KEY)


def register_with(services: Services, sandbox: RunningSandbox, key: SecretKey) -> tuple[UUID, str]:
    """The sandbox registered under ``key``, and its webhook secret (made)."""
    registry = services.store_registry(key, FAST)
    added = asyncio.run(
        registry.add(ORG, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, None, "ops")
    )
    store_id = UUID(added["storeId"])
    secret = services.store_registry(key, None).webhook_secret(ORG, store_id, create=True)
    assert secret is not None
    return store_id, secret


def install(services: Services, api: Api, store_id: UUID) -> None:
    asyncio.run(services.store_webhooks(KEY, FAST).install(ORG, store_id, api.url))


def secret_of(services: Services, store_id: UUID) -> str:
    secret = services.store_registry(KEY, None).webhook_secret(ORG, store_id, create=True)
    assert secret is not None
    return secret


def post(
    api: Api,
    store_id: UUID | str,
    body: bytes,
    headers: dict[str, str],
    content_type: str = "application/json",
) -> tuple[int, Any]:
    return api.request(
        "POST",
        f"{WEBHOOK_ROOT}{store_id}",
        raw=body,
        token="",
        headers={"Content-Type": content_type, **headers},
    )


def signed(secret: str, topic: str, body: bytes, delivery: str = "d-1", webhook: int = 7) -> dict[str, str]:
    return {
        "X-WC-Webhook-Source": "http://store.example/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": "customer",
        "X-WC-Webhook-Event": topic.split(".")[1],
        "X-WC-Webhook-Signature": signature_of(secret, body),
        "X-WC-Webhook-ID": str(webhook),
        "X-WC-Webhook-Delivery-ID": delivery,
    }


def store_record(sandbox: RunningSandbox, woo_id: int) -> dict[str, Any]:
    found = sandbox.store.api_object(woo_id)
    assert found is not None
    return found


def mirror(services: Services, sandbox: RunningSandbox) -> dict[int, dict[str, Any]]:
    services.catch_up()
    return {row["woo_customer_id"]: row for row in queries.customers(services.projections, ORG, sandbox.url)}


def apply_all(applier: DeliveryApplier, services: Services, until: Any) -> Any:
    """Step the applier (a worker's side loop does the same) until ``until()`` holds."""

    def applied() -> Any:
        applier.step()
        services.catch_up()
        return until()

    return wait_until(applied)


def stored_topics(services: Services, *classes: type) -> int:
    topics = [get_topic(cls) for cls in classes]
    notifications = services.app.recorder.select_notifications(1, 100_000, topics=topics)
    return len(notifications)


def every_stored_state(services: Services) -> bytes:
    return b"\n".join(n.state for n in services.app.recorder.select_notifications(1, 100_000))


def test_the_sandboxs_deliveries_of_each_topic_change_the_mirror(
    services: Services, api: Api, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    run_sync(services, sandbox)
    store_id = register(services, sandbox)
    install(services, api, store_id)
    applier = services.delivery_applier()
    ids = sorted(mirror(services, sandbox))
    changed, gone = ids[2], ids[4]

    renamed = {"email": "renamed@example.org", "first_name": "Renée"}
    admin(sandbox, "PUT", f"/_sandbox/customers/{changed}", renamed)
    created = admin(
        sandbox, "POST", "/_sandbox/customers", {"email": "new@example.org", "first_name": "Nova"}
    )
    admin(sandbox, "DELETE", f"/_sandbox/customers/{gone}")

    rows = apply_all(
        applier,
        services,
        lambda: (
            (m := mirror(services, sandbox)).get(created["id"]) is not None
            and m[gone]["is_deleted"]
            and m[changed]["email"] == "renamed@example.org"
            and m
        ),
    )
    assert rows[changed]["first_name"] == "Renée"
    assert rows[created["id"]]["email"] == "new@example.org"
    assert rows[gone]["deleted_reason"].startswith("deleted in the store (webhook delivery ")
    assert {row["woo_customer_id"] for row in rows.values() if row["is_deleted"]} == {gone}
    # The writer of each change is its delivery: the row names it, and the deliveries table has it.
    deliveries = {
        d["wooCustomerId"]: d for d in queries.webhook_deliveries(services.projections, ORG, store_id)
    }
    assert {d["state"] for d in deliveries.values()} == {"applied"}
    assert deliveries[changed]["result"] == "updated" and deliveries[gone]["result"] == "deleted"
    assert deliveries[created["id"]]["result"] == "created"
    assert str(rows[changed]["last_queue_id"]) == deliveries[changed]["deliveryKey"]
    summary = queries.webhook_summary(services.projections, ORG, store_id)
    assert summary["deliveries"] == {"pending": 0, "applied": 3, "failed": 0}
    assert summary["lastDeliveryAt"] is not None and summary["refused"] == 0
    # Applying again does nothing: each delivery is applied once.
    versions = {cid: row["version"] for cid, row in rows.items()}
    assert applier.step() == 0
    assert {cid: row["version"] for cid, row in mirror(services, sandbox).items()} == versions
    # The audit names the delivery that wrote each change.
    history = customer_history(services, ORG, changed, sandbox.url)["history"]
    assert history[-1]["event"] == "Changed" and history[-1]["queueId"] is None
    assert history[-1]["webhookDelivery"]["topic"] == "customer.updated"
    assert history[-1]["webhookDelivery"]["deliveryKey"] == deliveries[changed]["deliveryKey"]
    assert "webhookDelivery" not in history[0]  # registered by the sync's queue
    # The activity log tells it, by delivery.
    kinds = [row["activityType"] for row in _org_activity(services)]
    assert kinds.count("webhook_received") == 3 and kinds.count("webhook_applied") == 3
    # The ledger chains the deliveries' events too (nothing left out of verify), and the org's export has them.
    report = verify_log(services.database)
    assert report.ok and report.unledgered == 0 and report.events == report.ledger_rows, report.as_dict()
    exported = tmp_path / "acme.jsonl"
    export_log(services.app, ORG, exported)
    types = [json.loads(line).get("aggregateType") for line in exported.read_text().splitlines()]
    assert types.count("WebhookDelivery") == 6  # three received, three applied
    export_log(services.app, "another-org", tmp_path / "other.jsonl")
    assert "WebhookDelivery" not in (tmp_path / "other.jsonl").read_text()


def test_refused_signatures_change_nothing_and_are_one_incident_without_the_body(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id, secret = synced(services, sandbox)
    target = sorted(mirror(services, sandbox))[0]
    body = json.dumps({**store_record(sandbox, target), "email": "tampered-marker@example.org"}).encode()
    good = signed(secret, "customer.updated", body)
    refused_before = PROCESS.webhook_requests()["refused"]

    tampered = post(api, store_id, body.replace(b"tampered-marker", b"tampered-markes"), good)
    wrong = post(api, store_id, body, signed("not-the-secret", "customer.updated", body))
    missing = post(api, store_id, body, {k: v for k, v in good.items() if k != "X-WC-Webhook-Signature"})
    empty = post(api, store_id, body, {**good, "X-WC-Webhook-Signature": ""})

    for code, answer in (tampered, wrong, missing, empty):
        assert code == 401 and error_of(answer)["code"] == "bad_signature", answer
    assert PROCESS.webhook_requests()["refused"] - refused_before == 4
    assert stored_topics(services, WebhookDelivery.Received) == 0
    # One incident for the burst (the first refusal), never the body nor a header.
    assert stored_topics(services, RefusedDeliveries.Recorded) == 1
    states = every_stored_state(services)
    assert b"tampered-marke" not in states and secret.encode() not in states
    services.catch_up()
    summary = queries.webhook_summary(services.projections, ORG, store_id)
    assert summary["refused"] == 1 and "signature" in summary["lastRefusal"]["reason"]
    assert mirror(services, sandbox)[target]["email"] != "tampered-marker@example.org"
    assert all(secret.encode() not in raw for raw in api.answers)
    assert "WWW-Authenticate" not in _headers_of_refusal(api, store_id, body)  # no bearer token asked


def test_the_ping_is_answered_200_and_does_nothing(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id = register(services, sandbox)
    head = services.app.recorder.max_notification_id()
    code, answer = post(api, store_id, b"webhook_id=12", {}, "application/x-www-form-urlencoded")
    assert (code, answer["data"]) == (200, {"outcome": "ping"})
    assert services.app.recorder.max_notification_id() == head
    # A form body that is not a ping, unsigned, is refused like any unsigned delivery.
    code, answer = post(api, store_id, b"webhook_id=12&x=1", {}, "application/x-www-form-urlencoded")
    assert code == 401


def test_the_sandboxs_ping_on_install_reaches_the_receiver(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id = register(services, sandbox)
    pings = PROCESS.webhook_requests()["ping"]
    install(services, api, store_id)
    wait_until(lambda: PROCESS.webhook_requests()["ping"] - pings >= 3 or None)
    log = admin(sandbox, "GET", "/_sandbox/deliveries")["deliveries"]
    assert [(e["kind"], e["ok"]) for e in log] == [("ping", True)] * 3


def test_a_repeated_delivery_is_recorded_and_applied_once(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id, secret = synced(services, sandbox)
    target = sorted(mirror(services, sandbox))[1]
    record = {
        **store_record(sandbox, target),
        "last_name": "Twice",
        "date_modified_gmt": "2099-01-01T00:00:00",
    }
    body = json.dumps(record).encode()

    first = post(api, store_id, body, signed(secret, "customer.updated", body, delivery="a"))
    again = post(api, store_id, body, signed(secret, "customer.updated", body, delivery="b"))
    assert first == (200, {"success": True, "data": {"outcome": "recorded"}})
    assert again == (200, {"success": True, "data": {"outcome": "duplicate"}})
    assert stored_topics(services, WebhookDelivery.Received) == 1

    applier = services.delivery_applier()
    version = mirror(services, sandbox)[target]["version"]
    rows = apply_all(
        applier, services, lambda: (m := mirror(services, sandbox))[target]["last_name"] == "Twice" and m
    )
    assert rows[target]["version"] == version + 1
    key = customer_key(ORG, sandbox.url, target)
    assert len(services.app.recorder.select_events(key)) == version + 1
    assert applier.step() == 0


def test_an_invalid_body_is_a_failed_line_with_its_reason(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id, secret = synced(services, sandbox)
    target = sorted(mirror(services, sandbox))[0]
    bad_email = json.dumps({**store_record(sandbox, target), "email": "not an email"}).encode()
    not_json = b"{not json"
    no_id = json.dumps({"id": "seven"}).encode()
    for index, body in enumerate((bad_email, not_json, no_id)):
        code, answer = post(
            api, store_id, body, signed(secret, "customer.updated", body, delivery=str(index))
        )
        assert (code, answer["data"]["outcome"]) == (200, "recorded"), answer

    applier = services.delivery_applier()
    assert applier.step() == 3
    services.catch_up()
    failed = [row for row in _org_activity(services) if row["activityType"] == "line_failed"]
    reasons = sorted(row["message"] for row in failed)
    assert len(reasons) == 3
    assert any("email" in reason for reason in reasons)
    assert any("not JSON" in reason for reason in reasons)
    assert any("id:" in reason for reason in reasons)
    assert mirror(services, sandbox)[target]["email"] != "not an email"
    summary = queries.webhook_summary(services.projections, ORG, store_id)
    assert summary["deliveries"] == {"pending": 0, "applied": 0, "failed": 3}


def test_a_delivery_older_than_the_mirror_and_a_deletion_of_an_unknown_customer_change_nothing(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id, secret = synced(services, sandbox)
    target = sorted(mirror(services, sandbox))[3]
    current = store_record(sandbox, target)
    modified = datetime.fromisoformat(current["date_modified_gmt"]) - timedelta(minutes=10)
    stale = {**current, "last_name": "Stale", "date_modified_gmt": modified.isoformat()}
    older = json.dumps(stale).encode()
    unknown = json.dumps({"id": 987654}).encode()
    post(api, store_id, older, signed(secret, "customer.updated", older))
    post(api, store_id, unknown, signed(secret, "customer.deleted", unknown))

    applier = services.delivery_applier()
    assert applier.step() == 2
    services.catch_up()
    results = {
        d["wooCustomerId"]: d["result"]
        for d in queries.webhook_deliveries(services.projections, ORG, store_id)
    }
    assert results == {target: "older", 987654: "not mirrored"}
    assert mirror(services, sandbox)[target]["last_name"] == current["last_name"]


def test_an_unknown_store_is_404_and_a_server_without_the_key_is_503(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    body = b"{}"
    headers = signed("whatever", "customer.updated", body)
    for store in (uuid4(), "not-a-uuid"):
        code, answer = post(api, store, body, headers)
        assert code == 404 and error_of(answer)["code"] == "not_found", answer
    store_id = register(services, sandbox)
    with ApiThread(services, SETTINGS) as keyless:
        code, answer = post(keyless, store_id, body, headers)
    assert code == 503 and error_of(answer)["code"] == "not_configured"


def test_refusals_are_limited_per_address_and_store_and_never_refuse_a_good_signature(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id, secret = synced(services, sandbox)
    body = b"{}"
    codes = [post(api, store_id, body, signed("wrong", "customer.updated", body))[0] for _ in range(12)]
    assert codes[:10] == [401] * 10 and codes[-1] == 429
    # The same address's good delivery still passes: a flood of bad ones blocks nobody's good ones.
    good = json.dumps(store_record(sandbox, sorted(mirror(services, sandbox))[0])).encode()
    assert post(api, store_id, good, signed(secret, "customer.updated", good))[0] == 200
    # Unknown store ids: 404, then 429 for that address once it guessed too often.
    unknown = [post(api, uuid4(), body, signed("x", "customer.updated", body))[0] for _ in range(12)]
    assert unknown[:10] == [404] * 10 and unknown[-1] == 429
    assert post(api, store_id, good, signed(secret, "customer.updated", good))[0] == 200


def test_a_body_must_be_what_its_topic_sends_and_odd_headers_are_recorded_safely(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id, secret = synced(services, sandbox)
    target = sorted(mirror(services, sandbox))[5]
    full = json.dumps(store_record(sandbox, target)).encode()
    # A signed customer.updated body replayed as a deletion, and a deletion's body replayed as an update.
    replayed = {**signed(secret, "customer.deleted", full), "X-WC-Webhook-ID": "\u00b2"}
    assert post(api, store_id, full, replayed)[0] == 200
    deletion = json.dumps({"id": target}).encode()
    odd = {**signed(secret, "customer.updated", deletion), "X-WC-Webhook-Delivery-ID": "d\u00e9j\u00e0"}
    assert post(api, store_id, deletion, odd)[0] == 200
    assert services.delivery_applier().step() == 2
    services.catch_up()
    rows = queries.webhook_deliveries(services.projections, ORG, store_id)
    assert {row["state"] for row in rows} == {"failed"}
    errors = sorted(row["error"] for row in rows)
    assert 'is {"id": N} and nothing else' in errors[0] and "whole customer record" in errors[1]
    assert {row["webhookId"] for row in rows} == {None, 7}
    assert all(row["deliveryId"].isascii() and row["deliveryId"].isprintable() for row in rows)
    assert not mirror(services, sandbox)[target]["is_deleted"]


def _org_activity(services: Services) -> list[dict[str, Any]]:
    services.catch_up()
    with services.projections.db.reading() as db:
        rows = db.fetchall(
            "SELECT activity_type, status, message FROM woo_sync_activity WHERE org_id = %s ORDER BY id",
            [ORG],
        )
    return [{"activityType": r[0], "status": r[1], "message": r[2]} for r in rows]


def _headers_of_refusal(api: Api, store_id: UUID, body: bytes) -> dict[str, str]:
    address = urlsplit(api.url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=30)
    try:
        connection.request(
            "POST", f"{WEBHOOK_ROOT}{store_id}", body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        assert response.status == 401
        return dict(response.getheaders())
    finally:
        connection.close()


def test_a_burst_is_applied_in_order_in_one_step_and_a_conflict_falls_back_to_one_at_a_time(
    services: Services, api: Api, sandbox: RunningSandbox
) -> None:
    store_id = register(services, sandbox)
    secret = secret_of(services, store_id)
    record = store_record(sandbox, sandbox.store.customer_ids()[0])
    bodies = [
        {**record, "date_modified_gmt": t}
        for t in ("2030-01-01T00:00:00", "2030-01-01T00:00:01", "2030-01-01T00:00:02")
    ]
    for index, body in enumerate(bodies):
        raw = json.dumps({**body, "last_name": f"Take {index}"}).encode()
        topic = "customer.created" if index == 0 else "customer.updated"
        assert post(api, store_id, raw, signed(secret, topic, raw, delivery=str(index)))[0] == 200
    woo_id = record["id"]

    # The first save of the burst loses to "another writer": nothing of it is kept, then one at a time.
    saves: list[int] = []
    original = services.app.save_batch

    def losing_once(*aggregates: Any) -> None:
        saves.append(len(aggregates))
        if len(saves) == 1:
            raise ConcurrentWriteError("another writer saved first")
        original(*aggregates)

    services.app.save_batch = losing_once  # type: ignore[method-assign]
    try:
        assert services.delivery_applier().step() == 3
    finally:
        services.app.save_batch = original  # type: ignore[method-assign]
    assert saves[0] == 4  # three deliveries and their customer, together
    assert saves[1:] == [2, 2, 2]  # then each delivery with its customer
    row = mirror(services, sandbox)[woo_id]
    assert row["last_name"] == "Take 2" and row["version"] == 3
    results = [d["result"] for d in queries.webhook_deliveries(services.projections, ORG, store_id)]
    assert sorted(results) == ["created", "updated", "updated"]

    # Without the conflict a burst is one save.
    more = []
    for index in range(3, 6):
        changed = {**record, "date_modified_gmt": f"2030-01-01T00:00:0{index}", "last_name": f"Take {index}"}
        payload = json.dumps(changed).encode()
        more.append(post(api, store_id, payload, signed(secret, "customer.updated", payload))[0])
    assert more == [200, 200, 200]
    saves.clear()
    services.app.save_batch = losing_once  # type: ignore[method-assign]
    saves.append(0)  # no loss this time
    try:
        assert services.delivery_applier().step() == 3
    finally:
        services.app.save_batch = original  # type: ignore[method-assign]
    assert saves[1:] == [4]  # three deliveries and their customer
    assert mirror(services, sandbox)[woo_id]["last_name"] == "Take 5"
