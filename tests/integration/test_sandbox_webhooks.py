"""The sandbox store's webhooks over real sockets, as WooCommerce has them: the /webhooks resource with its
read/write key checks, the ping, signed deliveries merged per customer, no retries, disabled after more than
five failures in a row, and the fault that drops deliveries. A small aiohttp receiver records what arrives."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import oauthlib.oauth1
import pytest
from aiohttp import web

from cli.parser import build_parser
from cli.sandbox import _sandbox_config
from infrastructure.sandbox import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    MAX_FAILURES,
    READ_ONLY_CONSUMER_KEY,
    READ_ONLY_CONSUMER_SECRET,
    WEBHOOKS_PATH,
    Faults,
    RunningSandbox,
    SandboxConfig,
)
from infrastructure.support.loop_thread import LoopThread
from tests.support.waiting import wait_until

CUSTOMERS = "/wp-json/wc/v3/customers"
SECRET = "whsec_test_0123456789"
pytestmark = pytest.mark.sandbox(
    customers=8,
    read_only_key=READ_ONLY_CONSUMER_KEY,
    read_only_secret=READ_ONLY_CONSUMER_SECRET,
    delivery_timeout_s=1.0,
)


# -- a receiver that records every request


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers every POST with ``status`` (a 302 points elsewhere; ``hang`` never answers)."""

    url: str = ""
    status: int = 200
    hang: bool = False
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def deliveries(self, path: str) -> list[Received]:
        """The deliveries to ``path``: the requests that carry a webhook id (a ping carries none)."""
        return [r for r in self.received(path) if "X-WC-Webhook-ID" in r.headers]


@asynccontextmanager
async def _serve(receiver: Receiver) -> AsyncIterator[Receiver]:
    forever = asyncio.Event()

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with receiver.lock:
            receiver.requests.append(Received(request.path, dict(request.headers), body))
        if receiver.hang:
            await forever.wait()
        if receiver.status in (301, 302):
            raise web.HTTPFound("/redirected")
        return web.Response(status=receiver.status, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield receiver
    finally:
        forever.set()
        await runner.cleanup()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with LoopThread(lambda: _serve(Receiver()), "the webhook receiver") as running:
        yield running


# -- talking to the sandbox


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _http(url: str, method: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    assert url.startswith("http://127.0.0.1:")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only, checked
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, dict(error.headers), error.read())


def rest(
    sandbox: RunningSandbox,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = DEFAULT_CONSUMER_KEY,
    secret: str = DEFAULT_CONSUMER_SECRET,
) -> Reply:
    """A WooCommerce REST request, OAuth 1.0a-signed in the query (``key=None``: no credentials)."""
    url = sandbox.url + path
    if key is not None:
        client = oauthlib.oauth1.Client(
            key, client_secret=secret, signature_type=oauthlib.oauth1.SIGNATURE_TYPE_QUERY
        )
        url, _, _ = client.sign(url, http_method=method)
    return _http(url, method, body)


def admin(sandbox: RunningSandbox, method: str, path: str, body: Any = None) -> Any:
    reply = _http(sandbox.url + path, method, body)
    assert reply.status in (200, 201), reply.body
    return reply.json()


def log(sandbox: RunningSandbox) -> list[dict[str, Any]]:
    deliveries: list[dict[str, Any]] = admin(sandbox, "GET", "/_sandbox/deliveries")["deliveries"]
    return deliveries


def create_webhook(sandbox: RunningSandbox, url: str, topic: str, **fields: Any) -> dict[str, Any]:
    body = {"name": f"wcsync {topic}", "topic": topic, "delivery_url": url, "secret": SECRET, **fields}
    reply = rest(sandbox, "POST", WEBHOOKS_PATH, body)
    assert reply.status == 201, reply.body
    created: dict[str, Any] = reply.json()
    return created


def pinged(sandbox: RunningSandbox, webhook_id: int, count: int = 1) -> list[dict[str, Any]]:
    """Wait until the webhook has been pinged ``count`` times; its pings."""
    return wait_until(
        lambda: (
            pings
            if len(
                pings := [d for d in log(sandbox) if d["kind"] == "ping" and d["webhook_id"] == webhook_id]
            )
            >= count
            else None
        ),
        deadline_s=10,
    )


def attempts(sandbox: RunningSandbox, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` deliveries (not pings) have been attempted; all of them, oldest first."""
    return wait_until(
        lambda: done if len(done := [d for d in log(sandbox) if d["kind"] == "delivery"]) >= count else None,
        deadline_s=10,
    )


def signature(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


# -- the resource and its key checks


def test_webhooks_are_created_listed_read_updated_and_deleted(
    sandbox: RunningSandbox, receiver: Receiver
) -> None:
    created = create_webhook(sandbox, f"{receiver.url}/hook", "customer.updated")
    assert created["status"] == "active"
    assert created["secret"] == SECRET
    assert (created["resource"], created["event"], created["hooks"]) == (
        "customer",
        "updated",
        ["woocommerce_update_customer"],
    )
    assert {"date_created", "date_created_gmt", "date_modified", "date_modified_gmt", "_links"} <= set(
        created
    )
    webhook_id = created["id"]
    path = f"{WEBHOOKS_PATH}/{webhook_id}"
    assert rest(sandbox, "GET", path).json() == created

    second = create_webhook(sandbox, f"{receiver.url}/other", "customer.deleted", status="paused")
    listed = rest(sandbox, "GET", f"{WEBHOOKS_PATH}?per_page=1&page=2")
    assert listed.status == 200
    assert listed.headers["X-WP-Total"] == "2" and listed.headers["X-WP-TotalPages"] == "2"
    assert [hook["id"] for hook in listed.json()] == [second["id"]]
    assert [h["id"] for h in rest(sandbox, "GET", f"{WEBHOOKS_PATH}?status=paused").json()] == [second["id"]]

    updated = rest(sandbox, "PUT", path, {"name": "renamed", "status": "paused"})
    assert updated.status == 200
    assert (updated.json()["name"], updated.json()["status"]) == ("renamed", "paused")
    bad_topic = rest(sandbox, "PUT", path, {"topic": "customer.exploded", "name": "not applied"})
    assert (bad_topic.status, bad_topic.json()["code"]) == (
        400,
        "woocommerce_rest_shop_webhook_invalid_topic",
    )
    assert rest(sandbox, "GET", path).json()["name"] == "renamed"
    missing_url = rest(sandbox, "POST", WEBHOOKS_PATH, {"topic": "customer.created"})
    assert missing_url.json()["code"] == "woocommerce_rest_shop_webhook_invalid_delivery_url"

    trashed = rest(sandbox, "DELETE", path)
    assert (trashed.status, trashed.json()["code"]) == (501, "woocommerce_rest_trash_not_supported")
    deleted = rest(sandbox, "DELETE", f"{path}?force=true")
    assert (deleted.status, deleted.json()["id"]) == (200, webhook_id)
    gone = rest(sandbox, "GET", path)
    assert (gone.status, gone.json()["code"]) == (404, "woocommerce_rest_shop_webhook_invalid_id")


def test_a_read_only_key_reads_webhooks_but_may_not_change_them(
    sandbox: RunningSandbox, receiver: Receiver
) -> None:
    webhook_id = create_webhook(sandbox, f"{receiver.url}/hook", "customer.created")["id"]
    read_only = {"key": READ_ONLY_CONSUMER_KEY, "secret": READ_ONLY_CONSUMER_SECRET}
    assert rest(sandbox, "GET", WEBHOOKS_PATH, **read_only).status == 200
    assert rest(sandbox, "GET", f"{CUSTOMERS}/{sandbox.store.customer_ids()[0]}", **read_only).status == 200

    refused = rest(
        sandbox,
        "POST",
        WEBHOOKS_PATH,
        {"topic": "customer.created", "delivery_url": receiver.url},
        **read_only,
    )
    assert refused.status == 401
    assert refused.json() == {
        "code": "woocommerce_rest_cannot_create",
        "message": "Sorry, you are not allowed to create resources.",
        "data": {"status": 401},
    }
    edit = rest(sandbox, "PUT", f"{WEBHOOKS_PATH}/{webhook_id}", {"status": "paused"}, **read_only)
    assert (edit.status, edit.json()["code"]) == (401, "woocommerce_rest_cannot_edit")
    delete = rest(sandbox, "DELETE", f"{WEBHOOKS_PATH}/{webhook_id}?force=true", **read_only)
    assert (delete.status, delete.json()["code"]) == (401, "woocommerce_rest_cannot_delete")
    assert rest(sandbox, "GET", f"{WEBHOOKS_PATH}/{webhook_id}").json()["status"] == "active"

    anonymous = rest(sandbox, "GET", WEBHOOKS_PATH, key=None)
    assert (anonymous.status, anonymous.json()["code"]) == (401, "woocommerce_rest_cannot_view")
    wrong = rest(sandbox, "GET", WEBHOOKS_PATH, secret="cs_wrong")
    assert (wrong.status, wrong.json()["code"]) == (401, "woocommerce_rest_authentication_error")


@pytest.mark.sandbox(
    customers=2, tls=True, read_only_key=READ_ONLY_CONSUMER_KEY, read_only_secret=READ_ONLY_CONSUMER_SECRET
)
def test_over_https_the_keys_are_checked_with_basic_auth(sandbox: RunningSandbox) -> None:
    assert sandbox.url.startswith("https://127.0.0.1:") and sandbox.ca_file is not None
    context = ssl.create_default_context(cafile=sandbox.ca_file)

    def basic(key: str, secret: str, method: str, body: Any = None) -> Reply:
        token = base64.b64encode(f"{key}:{secret}".encode()).decode()
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the sandbox's loopback https URL, checked above
            sandbox.url + WEBHOOKS_PATH,
            data=data,
            method=method,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Reply(error.code, dict(error.headers), error.read())

    hook = {"topic": "customer.created", "delivery_url": "http://127.0.0.1:9/hook"}
    refused = basic(READ_ONLY_CONSUMER_KEY, READ_ONLY_CONSUMER_SECRET, "POST", hook)
    assert (refused.status, refused.json()["code"]) == (401, "woocommerce_rest_cannot_create")
    assert basic(READ_ONLY_CONSUMER_KEY, READ_ONLY_CONSUMER_SECRET, "GET").status == 200
    assert basic(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, "POST", hook).status == 201
    wrong = basic(READ_ONLY_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET, "GET")
    assert (wrong.status, wrong.json()["message"]) == (401, "Consumer secret is invalid.")


# -- the ping and the deliveries


def test_the_ping_is_a_form_body_without_webhook_headers(sandbox: RunningSandbox, receiver: Receiver) -> None:
    webhook_id = create_webhook(sandbox, f"{receiver.url}/ping", "customer.created")["id"]
    (ping,) = pinged(sandbox, webhook_id)
    assert (ping["ok"], ping["status"], ping["outcome"]) == (True, 200, "delivered")
    (request,) = receiver.received("/ping")
    assert request.body == f"webhook_id={webhook_id}".encode()
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.headers["User-Agent"].startswith("WooCommerce/")
    assert "Hookshot (WordPress/" in request.headers["User-Agent"]
    assert not [name for name in request.headers if name.lower().startswith("x-wc-webhook")]


def test_each_topic_is_delivered_signed_with_the_customer_as_it_is_then(
    sandbox: RunningSandbox, receiver: Receiver
) -> None:
    ids = {
        event: create_webhook(sandbox, f"{receiver.url}/{event}", f"customer.{event}")["id"]
        for event in ("created", "updated", "deleted")
    }
    for webhook_id in ids.values():
        pinged(sandbox, webhook_id)
    customer_id = admin(sandbox, "POST", "/_sandbox/customers", {"first_name": "Zoë"})["id"]
    attempts(sandbox, 1)
    admin(sandbox, "PUT", f"/_sandbox/customers/{customer_id}", {"last_name": "Ångström"})
    attempts(sandbox, 2)
    shown_before_deletion = rest(sandbox, "GET", f"{CUSTOMERS}/{customer_id}").body
    admin(sandbox, "DELETE", f"/_sandbox/customers/{customer_id}")
    delivered = attempts(sandbox, 3)
    assert [(d["topic"], d["customer_id"], d["outcome"]) for d in delivered] == [
        ("customer.created", customer_id, "delivered"),
        ("customer.updated", customer_id, "delivered"),
        ("customer.deleted", customer_id, "delivered"),
    ]

    for event, attempt in zip(("created", "updated", "deleted"), delivered, strict=True):
        (request,) = receiver.deliveries(f"/{event}")
        headers = request.headers
        assert headers["Content-Type"] == "application/json"
        assert headers["X-WC-Webhook-Source"] == f"{sandbox.url}/"
        assert headers["X-WC-Webhook-Topic"] == f"customer.{event}"
        assert headers["X-WC-Webhook-Resource"] == "customer"
        assert headers["X-WC-Webhook-Event"] == event
        assert headers["X-WC-Webhook-ID"] == str(ids[event])
        assert headers["X-WC-Webhook-Delivery-ID"] == attempt["delivery_id"]
        assert len(attempt["delivery_id"]) == 32
        assert headers["X-WC-Webhook-Signature"] == signature(request.body)
        assert headers["X-WC-Webhook-Signature"] != signature(request.body, "another secret")
    created = json.loads(receiver.deliveries("/created")[0].body)
    assert (created["id"], created["first_name"]) == (customer_id, "Zoë")
    assert receiver.deliveries("/updated")[0].body == shown_before_deletion
    assert json.loads(shown_before_deletion)["last_name"] == "Ångström"
    assert receiver.deliveries("/deleted")[0].body == f'{{"id":{customer_id}}}'.encode()


def test_a_burst_of_edits_arrives_once_as_the_latest_state(
    sandbox: RunningSandbox, receiver: Receiver
) -> None:
    webhook_id = create_webhook(sandbox, f"{receiver.url}/hook", "customer.updated")["id"]
    pinged(sandbox, webhook_id)
    first, second = sandbox.store.customer_ids()[:2]
    admin(sandbox, "POST", "/_sandbox/deliveries/hold", {"hold": True})
    for n in range(5):
        admin(sandbox, "PUT", f"/_sandbox/customers/{first}", {"billing": {"phone": f"+1 555 000000{n}"}})
    admin(sandbox, "PUT", f"/_sandbox/customers/{second}", {"first_name": "Other"})
    assert admin(sandbox, "POST", "/_sandbox/deliveries/hold", {"hold": False})["pending"] == 2
    delivered = attempts(sandbox, 2)
    assert [d["customer_id"] for d in delivered] == [first, second]
    bodies = [json.loads(r.body) for r in receiver.deliveries("/hook")]
    assert [(b["id"], b["billing"]["phone"]) for b in bodies[:1]] == [(first, "+1 555 0000004")]
    assert len(bodies) == 2
    assert admin(sandbox, "GET", "/_sandbox/deliveries")["pending"] == 0


def test_more_than_five_failures_disable_the_webhook_until_it_is_reactivated_with_a_ping(
    sandbox: RunningSandbox, receiver: Receiver
) -> None:
    receiver.status = 500
    webhook_id = create_webhook(sandbox, f"{receiver.url}/hook", "customer.updated")["id"]
    assert pinged(sandbox, webhook_id)[0]["ok"] is False  # a failed ping is not a failed delivery
    customers = sandbox.store.customer_ids()
    path = f"{WEBHOOKS_PATH}/{webhook_id}"
    for n in range(MAX_FAILURES + 1):
        admin(sandbox, "PUT", f"/_sandbox/customers/{customers[n]}", {"first_name": f"Fail{n}"})
        failed = attempts(sandbox, n + 1)
        assert (failed[-1]["outcome"], failed[-1]["status"]) == ("failed", 500)
        expected = "active" if n < MAX_FAILURES else "disabled"
        assert rest(sandbox, "GET", path).json()["status"] == expected, n

    admin(sandbox, "PUT", f"/_sandbox/customers/{customers[0]}", {"first_name": "Unsent"})
    assert admin(sandbox, "GET", "/_sandbox/deliveries")["pending"] == 0
    assert len(attempts(sandbox, MAX_FAILURES + 1)) == MAX_FAILURES + 1, (
        "no retries, nothing for a disabled hook"
    )

    receiver.status = 200
    assert rest(sandbox, "PUT", path, {"status": "active"}).json()["status"] == "active"
    assert pinged(sandbox, webhook_id, count=2)[-1]["ok"] is True
    admin(sandbox, "PUT", f"/_sandbox/customers/{customers[1]}", {"first_name": "Back"})
    assert attempts(sandbox, MAX_FAILURES + 2)[-1]["outcome"] == "delivered"
    assert json.loads(receiver.deliveries("/hook")[-1].body)["first_name"] == "Back"


def test_a_timeout_fails_and_a_redirect_succeeds_without_being_followed(
    sandbox: RunningSandbox, receiver: Receiver
) -> None:
    webhook_id = create_webhook(sandbox, f"{receiver.url}/hook", "customer.updated")["id"]
    pinged(sandbox, webhook_id)
    first, second = sandbox.store.customer_ids()[:2]
    receiver.hang = True
    admin(sandbox, "PUT", f"/_sandbox/customers/{first}", {"first_name": "Slow"})
    timed_out = attempts(sandbox, 1)[-1]
    assert (timed_out["outcome"], timed_out["error"], timed_out["status"]) == ("failed", "timeout", None)
    receiver.hang, receiver.status = False, 302
    admin(sandbox, "PUT", f"/_sandbox/customers/{second}", {"first_name": "Moved"})
    redirected = attempts(sandbox, 2)[-1]
    assert (redirected["outcome"], redirected["status"]) == ("delivered", 302)
    assert not receiver.received("/redirected")


def test_only_this_machine_is_posted_to(sandbox: RunningSandbox) -> None:
    webhook_id = create_webhook(sandbox, "http://192.0.2.1/hook", "customer.updated")["id"]
    assert pinged(sandbox, webhook_id)[0]["error"] == "not a loopback address"
    admin(sandbox, "PUT", f"/_sandbox/customers/{sandbox.store.customer_ids()[0]}", {"first_name": "Far"})
    refused = attempts(sandbox, 1)[-1]
    assert (refused["outcome"], refused["error"]) == ("failed", "not a loopback address")


def test_the_drop_fault_loses_the_next_deliveries(sandbox: RunningSandbox, receiver: Receiver) -> None:
    webhook_id = create_webhook(sandbox, f"{receiver.url}/hook", "customer.created")["id"]
    pinged(sandbox, webhook_id)
    assert admin(sandbox, "POST", "/_sandbox/deliveries/drop-next", {"count": 1}) == {"drop_next": 1}
    lost = admin(sandbox, "POST", "/_sandbox/customers", {})["id"]
    kept = admin(sandbox, "POST", "/_sandbox/customers", {})["id"]
    delivered = attempts(sandbox, 2)
    assert [(d["customer_id"], d["outcome"]) for d in delivered] == [(lost, "dropped"), (kept, "delivered")]
    assert [json.loads(r.body)["id"] for r in receiver.deliveries("/hook")] == [kept]
    assert rest(sandbox, "GET", f"{WEBHOOKS_PATH}/{webhook_id}").json()["status"] == "active"


@pytest.mark.sandbox(customers=3, faults=Faults(drop_deliveries=1.0))
def test_a_drop_share_of_one_loses_every_delivery_but_not_the_ping(
    sandbox: RunningSandbox, receiver: Receiver
) -> None:
    webhook_id = create_webhook(sandbox, f"{receiver.url}/hook", "customer.deleted")["id"]
    pinged(sandbox, webhook_id)
    for customer_id in sandbox.store.customer_ids()[:2]:
        admin(sandbox, "DELETE", f"/_sandbox/customers/{customer_id}")
    assert [d["outcome"] for d in attempts(sandbox, 2)] == ["dropped", "dropped"]
    assert [r.body for r in receiver.received("/hook")] == [f"webhook_id={webhook_id}".encode()]


# -- configuration


def test_the_sandbox_command_takes_the_webhook_options() -> None:
    args = build_parser().parse_args(
        ["sandbox", "--read-only-key", "--drop-deliveries", "0.25", "--delivery-timeout-s", "5"]
    )
    config = _sandbox_config(args)
    assert (config.read_only_key, config.read_only_secret) == (
        READ_ONLY_CONSUMER_KEY,
        READ_ONLY_CONSUMER_SECRET,
    )
    assert (config.faults.drop_deliveries, config.delivery_timeout_s) == (0.25, 5.0)
    plain = _sandbox_config(build_parser().parse_args(["sandbox"]))
    assert (plain.read_only_key, plain.faults.drop_deliveries, plain.delivery_timeout_s) == (None, 0.0, 60.0)
    assert READ_ONLY_CONSUMER_SECRET not in repr(config)
    with pytest.raises(ValueError, match="together"):
        SandboxConfig(read_only_key="ck_only")
    with pytest.raises(ValueError, match="drop_deliveries must be between 0 and 1"):
        Faults(drop_deliveries=1.5)
