"""Installing a registered store's webhooks in the store (infrastructure/services/webhooks.py) against the
real sandbox over sockets, on both backends: created active with the receiver's URL and the store's sealed
webhook secret, updated (never duplicated) by a second install, their status as the store has it (a webhook
WooCommerce disabled after failed deliveries included), uninstalled idempotently, refused with what to change
for a read-only key, and the webhook secret kept in the sealed document only (rekeyed, kept by new
credentials, deleted with the store)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import UUID

import pytest
from aiohttp import web

from domain.errors import EXIT_STORE, EXIT_USAGE
from infrastructure.adapters.secrets import SecretKey
from infrastructure.adapters.woocommerce import StoreCredentials, StoreRefused, WooCommerceClient
from infrastructure.sandbox import (
    MAX_FAILURES,
    READ_ONLY_CONSUMER_KEY,
    READ_ONLY_CONSUMER_SECRET,
    RunningSandbox,
)
from infrastructure.services.webhooks import TOPICS, check_public_url, webhook_name
from infrastructure.support.errors import ConfigurationError
from infrastructure.support.loop_thread import LoopThread
from infrastructure.wiring import Services
from projections.operations import webhook_totals
from tests.support.network import free_port
from tests.support.services import FAST
from tests.support.waiting import wait_until

ORG = "acme"
pytestmark = pytest.mark.sandbox(
    customers=8,
    read_only_key=READ_ONLY_CONSUMER_KEY,
    read_only_secret=READ_ONLY_CONSUMER_SECRET,
    delivery_timeout_s=1.0,
)


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate()


def register(services: Services, key: SecretKey, sandbox: RunningSandbox, read_only: bool = False) -> UUID:
    registry = services.store_registry(key, FAST)
    consumer_key, secret = (
        (READ_ONLY_CONSUMER_KEY, READ_ONLY_CONSUMER_SECRET)
        if read_only
        else (sandbox.consumer_key, sandbox.consumer_secret)
    )
    added = asyncio.run(registry.add(ORG, sandbox.url, consumer_key, secret, None, "ops"))
    return UUID(added["storeId"])


def public_url() -> str:
    """A receiver that fails every delivery: nothing listens there (as a `wcsync serve` that is down)."""
    return f"http://127.0.0.1:{free_port()}"


def store_hooks(sandbox: RunningSandbox) -> list[Any]:
    assert sandbox.webhooks is not None
    return sandbox.webhooks.all()


def test_install_creates_three_active_webhooks_signing_with_the_sealed_secret(
    services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(services, key, sandbox)
    webhooks = services.store_webhooks(key, FAST)
    url = public_url()

    document = asyncio.run(webhooks.install(ORG, store_id, url + "/"))

    target = f"{url}/api/v1/webhooks/woocommerce/{store_id}"
    assert document["deliveryUrl"] == target
    assert [(r["topic"], r["action"], r["status"]) for r in document["webhooks"]] == [
        (topic, "created", "active") for topic in TOPICS
    ]
    sealed = services.store_registry(key, None).webhook_secret(ORG, store_id)
    assert sealed is not None and len(sealed) >= 43  # token_urlsafe(32)
    hooks = store_hooks(sandbox)
    assert sorted((h.topic, h.name, h.status, h.delivery_url) for h in hooks) == sorted(
        (topic, webhook_name(topic), "active", target) for topic in TOPICS
    )
    assert all(h.secret == sealed for h in hooks)
    assert sealed not in repr(document)  # the answer holds no secret


def test_installing_again_updates_and_never_duplicates(
    services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(services, key, sandbox)
    webhooks = services.store_webhooks(key, FAST)
    first = asyncio.run(webhooks.install(ORG, store_id, public_url()))
    ids = [row["id"] for row in first["webhooks"]]

    again = asyncio.run(webhooks.install(ORG, store_id, first["deliveryUrl"].split("/api/")[0]))
    assert [row["action"] for row in again["webhooks"]] == ["unchanged"] * 3
    assert [row["id"] for row in again["webhooks"]] == ids

    # A new public URL, a paused webhook and a duplicate (a create the store received twice).
    paused = ids[1]
    asyncio.run(_client_call(sandbox, lambda c: c.update_webhook(paused, {"status": "paused"})))
    duplicate = asyncio.run(
        _client_call(
            sandbox,
            lambda c: c.create_webhook(
                {"name": webhook_name(TOPICS[2]), "topic": TOPICS[2], "delivery_url": first["deliveryUrl"]}
            ),
        )
    )["id"]
    moved = public_url()
    third = asyncio.run(webhooks.install(ORG, store_id, moved))

    assert [row["action"] for row in third["webhooks"]] == ["updated"] * 3
    assert [row["id"] for row in third["webhooks"]] == ids
    assert third["duplicatesRemoved"] == [duplicate]
    hooks = store_hooks(sandbox)
    assert sorted(h.id for h in hooks) == sorted(ids)
    assert {(h.status, h.delivery_url) for h in hooks} == {("active", third["deliveryUrl"])}
    assert third["deliveryUrl"].startswith(moved)


def test_status_names_a_disabled_and_a_missing_webhook(
    services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(services, key, sandbox)
    webhooks = services.store_webhooks(key, FAST)
    installed = asyncio.run(webhooks.install(ORG, store_id, public_url()))

    status = asyncio.run(webhooks.status(ORG, store_id))
    assert status["healthy"] is True
    assert [(r["topic"], r["status"], r["deliveryUrl"]) for r in status["webhooks"]] == [
        (topic, "active", installed["deliveryUrl"]) for topic in TOPICS
    ]
    # Nothing received yet: no last delivery, no failure counted.
    assert all(r["lastDeliveryAt"] is None and r["failuresCounted"] == 0 for r in status["webhooks"])
    assert status["receiver"]["deliveries"] == {"pending": 0, "applied": 0, "failed": 0}
    shown = services.store_registry(key, None).list(ORG)[0]
    assert (shown["webhooksInstalled"], shown["actionRequired"]) == (True, None)

    # WooCommerce disables a webhook after more than five failed deliveries in a row (nothing listens).
    customers = sandbox.store.customer_ids()
    for n in range(MAX_FAILURES + 1):
        _admin_update(sandbox, customers[n])
    updated = installed["webhooks"][1]["id"]
    assert sandbox.webhooks is not None
    hook = sandbox.webhooks.get(updated)
    assert hook is not None
    wait_until(lambda: hook.status == "disabled", deadline_s=20)
    # Deleting one (in wp-admin) makes it missing.
    deleted = installed["webhooks"][2]["id"]
    assert asyncio.run(_client_call(sandbox, lambda c: c.delete_webhook(deleted))) is True

    status = asyncio.run(webhooks.status(ORG, store_id))
    assert status["healthy"] is False
    assert [(r["topic"], r["status"]) for r in status["webhooks"]] == [
        ("customer.created", "active"),
        ("customer.updated", "disabled"),
        ("customer.deleted", "missing"),
    ]
    assert status["webhooks"][2]["id"] is None
    # Seen once, it is recorded: the store's action-required reason and an activity; seen again, nothing new.
    reason = services.store_registry(key, None).list(ORG)[0]["actionRequired"]
    assert reason is not None
    assert "customer.updated disabled" in reason and "customer.deleted missing" in reason
    assert "wcsync webhooks install" in reason
    assert webhook_totals(services.projections, ORG)[0] == 1  # wcsync_stores_webhooks_action_required
    assert webhook_totals(services.projections, "another-org")[0] == 0
    assert _webhook_activity(services) == [
        ("webhook_not_active", "warning", "customer.updated"),
        ("webhook_not_active", "warning", "customer.deleted"),
    ]
    asyncio.run(webhooks.status(ORG, store_id))
    assert len(_webhook_activity(services)) == 2

    asyncio.run(webhooks.install(ORG, store_id, installed["deliveryUrl"].split("/api/")[0]))
    assert asyncio.run(webhooks.status(ORG, store_id))["healthy"] is True
    assert services.store_registry(key, None).list(ORG)[0]["actionRequired"] is None
    assert webhook_totals(services.projections, ORG)[0] == 0


def _webhook_activity(services: Services) -> list[tuple[str, str, str]]:
    services.catch_up()
    with services.projections.db.reading() as db:
        rows = db.fetchall(
            "SELECT activity_type, status, message FROM woo_sync_activity "
            "WHERE org_id = %s AND activity_type LIKE %s ORDER BY id",
            [ORG, "webhook_%active"],
        )
    return [(str(t), str(s), str(m).split("'s ", 1)[1].split(" ", 1)[0]) for t, s, m in rows]


def test_uninstall_removes_them_and_again_removes_nothing(
    services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(services, key, sandbox)
    webhooks = services.store_webhooks(key, FAST)
    asyncio.run(webhooks.install(ORG, store_id, public_url()))
    # Another store's webhook (another org's receiver, same name) is not ours to remove.
    other = asyncio.run(
        _client_call(
            sandbox,
            lambda c: c.create_webhook(
                {
                    "name": webhook_name(TOPICS[0]),
                    "topic": TOPICS[0],
                    "delivery_url": "http://127.0.0.1:9/api/v1/webhooks/woocommerce/another",
                }
            ),
        )
    )["id"]

    removed = asyncio.run(webhooks.uninstall(ORG, store_id))
    assert sorted(r["topic"] for r in removed["removed"]) == sorted(TOPICS)
    assert [h.id for h in store_hooks(sandbox)] == [other]
    assert asyncio.run(webhooks.uninstall(ORG, store_id))["removed"] == []
    status = asyncio.run(webhooks.status(ORG, store_id))
    assert [r["status"] for r in status["webhooks"]] == ["missing"] * 3


def test_a_read_only_key_is_refused_with_what_to_change(
    services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(services, key, sandbox, read_only=True)
    webhooks = services.store_webhooks(key, FAST)

    with pytest.raises(StoreRefused) as refused:
        asyncio.run(webhooks.install(ORG, store_id, public_url()))

    error = refused.value
    assert error.exit_code == EXIT_STORE
    assert (error.status, error.code) == (401, "woocommerce_rest_cannot_create")
    text = str(error)
    assert "\n" not in text
    assert "Sorry, you are not allowed to create resources." in text
    assert "read-only" in text and "Read/Write key" in text
    assert READ_ONLY_CONSUMER_SECRET not in text and READ_ONLY_CONSUMER_KEY not in text
    assert store_hooks(sandbox) == []
    # Reading them is allowed with a read key: status answers, all missing.
    assert asyncio.run(webhooks.status(ORG, store_id))["healthy"] is False


def test_the_webhook_secret_is_sealed_rekeyed_kept_by_new_credentials_and_removed_with_the_store(
    services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    store_id = register(services, key, sandbox)
    registry = services.store_registry(key, FAST)
    assert registry.webhook_secret(ORG, store_id) is None
    secret = registry.webhook_secret(ORG, store_id, create=True)
    assert secret is not None
    assert registry.webhook_secret(ORG, store_id, create=True) == secret  # made once

    if services.database.sqlite_path is not None:
        raw = services.database.sqlite_path.read_bytes()
        assert secret.encode() not in raw

    asyncio.run(registry.add(ORG, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, None, "ops"))
    assert registry.webhook_secret(ORG, store_id) == secret, "new credentials keep the webhook secret"

    new = SecretKey.generate()
    assert registry.rekey(key, new) == 1
    assert services.store_registry(new, None).webhook_secret(ORG, store_id) == secret

    services.store_registry(None, None).remove(ORG, store_id, "ops")
    assert services.store_registry(new, None).secrets is not None
    assert services.store_registry(new, None).secrets.get(ORG, str(store_id)) is None  # type: ignore[union-attr]


@pytest.mark.sandbox(
    customers=2, tls=True, read_only_key=READ_ONLY_CONSUMER_KEY, read_only_secret=READ_ONLY_CONSUMER_SECRET
)
def test_over_https_the_writes_authenticate_as_the_reads_do(
    services: Services, key: SecretKey, sandbox: RunningSandbox
) -> None:
    options = replace(FAST, ca_file=sandbox.ca_file)
    registry = services.store_registry(key, options)
    added = asyncio.run(
        registry.add(ORG, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, None, "ops")
    )
    store_id = UUID(added["storeId"])
    webhooks = services.store_webhooks(key, options)

    installed = asyncio.run(webhooks.install(ORG, store_id, "https://wcsync.example.com"))
    assert [row["action"] for row in installed["webhooks"]] == ["created"] * 3
    assert asyncio.run(webhooks.status(ORG, store_id))["healthy"] is True
    assert len(asyncio.run(webhooks.uninstall(ORG, store_id))["removed"]) == 3

    asyncio.run(
        registry.add(ORG, sandbox.url, READ_ONLY_CONSUMER_KEY, READ_ONLY_CONSUMER_SECRET, None, "ops")
    )
    with pytest.raises(StoreRefused, match="read-only"):
        asyncio.run(webhooks.install(ORG, store_id, "https://wcsync.example.com"))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com",
        "example.com/hooks",
        "https://",
        "https://user:pw@example.com",
        "https://example.com/?token=1",
        "https://example.com/#x",
        "https://example.com:port",
    ],
)
def test_a_bad_public_url_is_one_line_exit_2(url: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_public_url(url)
    assert refused.value.exit_code == EXIT_USAGE
    assert "\n" not in str(refused.value) and "--public-url" in str(refused.value)
    assert "pw" not in str(refused.value)


def test_a_good_public_url_loses_only_its_trailing_slash() -> None:
    assert (
        check_public_url(" https://wcsync.example.com:8443/prefix/ ")
        == "https://wcsync.example.com:8443/prefix"
    )


# -- helpers


async def _client_call(sandbox: RunningSandbox, call: Any) -> Any:
    """One change to the store's webhooks as an admin makes it (wp-admin, another tool): the client."""
    async with WooCommerceClient(
        sandbox.url, StoreCredentials(sandbox.consumer_key, sandbox.consumer_secret), FAST
    ) as client:
        return await call(client)


def _admin_update(sandbox: RunningSandbox, customer_id: int) -> None:
    """A change to a customer in wp-admin: it queues the customer.updated delivery."""
    request = urllib.request.Request(  # noqa: S310 - the sandbox on loopback
        f"{sandbox.url}/_sandbox/customers/{customer_id}",
        data=json.dumps({"first_name": f"Changed{customer_id}"}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        assert reply.status == 200


# -- the client's writes against a scripted store: retried like reads, refused with what to change


@dataclass
class Scripted:
    """A store whose /webhooks answers, one per request, are scripted: (status, body)."""

    answers: list[tuple[int, Any]]
    url: str = ""
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)


@asynccontextmanager
async def _scripted(store: Scripted) -> AsyncIterator[Scripted]:
    async def answer(request: web.Request) -> web.Response:
        store.seen.append((request.method, request.path, await request.read()))
        status, body = store.answers.pop(0)
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        store.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield store
    finally:
        await runner.cleanup()


def _write_with(answers: list[tuple[int, Any]]) -> tuple[Any, Scripted]:
    """create_webhook against a store answering ``answers`` in turn: (its result or the error, the store)."""
    fields = {"name": "wcsync customer.created", "topic": "customer.created", "secret": "whsec_SCRIPTED_42"}
    with LoopThread(lambda: _scripted(Scripted(list(answers))), "the scripted store") as store:

        async def write() -> Any:
            credentials = StoreCredentials("ck_scripted", "cs_scripted")
            async with WooCommerceClient(store.url, credentials, FAST) as client:
                try:
                    return await client.create_webhook(fields)
                except StoreRefused as error:
                    return error

        return asyncio.run(write()), store


def test_a_failed_write_is_retried_as_a_read_is_and_the_clock_is_not_a_read_only_key() -> None:
    created = {"id": 7, "status": "active", "topic": "customer.created"}
    result, store = _write_with(
        [
            (503, {"code": "down", "message": "Maintenance"}),
            (401, {"code": "woocommerce_rest_authentication_error", "message": "Invalid timestamp."}),
            (201, created),
        ]
    )
    assert result == created
    assert [(method, path) for method, path, _ in store.seen] == [("POST", "/wp-json/wc/v3/webhooks")] * 3
    assert json.loads(store.seen[-1][2])["secret"] == "whsec_SCRIPTED_42"  # a JSON body, as WooCommerce reads


def test_any_401_on_a_write_says_the_key_is_read_only_and_hides_the_webhook_secret() -> None:
    # Real WooCommerce's words for a read key's write; the answer echoes the secret it was sent.
    refusal = {
        "code": "woocommerce_rest_authentication_error",
        "message": "The API key provided does not have write permissions (secret whsec_SCRIPTED_42).",
    }
    result, store = _write_with([(401, refusal)])
    assert isinstance(result, StoreRefused) and len(store.seen) == 1  # not retried
    text = str(result)
    assert "does not have write permissions" in text and "woocommerce_rest_authentication_error" in text
    assert "read-only: create a Read/Write key" in text
    assert "whsec_SCRIPTED_42" not in text
