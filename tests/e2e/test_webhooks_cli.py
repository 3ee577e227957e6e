"""`wcsync webhooks install | status | uninstall` as a user types them, against the sandbox: three active
webhooks installed once however often install runs, their status with exit 1 when WooCommerce disabled one,
uninstalled, a read-only key refused in one line with what to change (exit 3), a bad --public-url refused in
one line (exit 2), and the webhook secret in no output or log line and sealed at rest."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import urllib.request
from pathlib import Path

import pytest

from infrastructure.sandbox import (
    MAX_FAILURES,
    READ_ONLY_CONSUMER_KEY,
    READ_ONLY_CONSUMER_SECRET,
    RunningSandbox,
)
from tests.support.cli import as_json, wcsync, wcsync_env
from tests.support.network import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.sandbox(
    customers=8,
    read_only_key=READ_ONLY_CONSUMER_KEY,
    read_only_secret=READ_ONLY_CONSUMER_SECRET,
    delivery_timeout_s=1.0,
)
TOPICS = ["customer.created", "customer.updated", "customer.deleted"]


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _register(env: dict[str, str], sandbox: RunningSandbox) -> str:
    added = wcsync("stores", "add", "--url", sandbox.url, "--json", env=env)
    assert added.returncode == 0, added.stderr
    store_id: str = as_json(added)["storeId"]
    return store_id


def _admin_update(sandbox: RunningSandbox, customer_id: int) -> None:
    request = urllib.request.Request(  # noqa: S310 - the sandbox on loopback
        f"{sandbox.url}/_sandbox/customers/{customer_id}",
        data=json.dumps({"first_name": f"Changed{customer_id}"}).encode(),
        method="PUT",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310
        assert reply.status == 200


def test_install_status_uninstall_and_the_secret_nowhere(sandbox: RunningSandbox, sqlite_url: str) -> None:
    env = wcsync_env(sandbox, sqlite_url, WCSYNC_SECRET_KEY=_key())
    store_id = _register(env, sandbox)
    # A receiver that fails every delivery: nothing listens there.
    public = f"http://127.0.0.1:{free_port()}"
    debug = {**env, "WCSYNC_LOG_LEVEL": "debug"}

    installed = wcsync("webhooks", "install", "--store", store_id, "--public-url", public, env=debug)
    assert installed.returncode == 0, installed.stderr
    target = f"{public}/api/v1/webhooks/woocommerce/{store_id}"
    assert installed.stdout.splitlines()[0] == f"webhooks of store {store_id} deliver to {target}"
    assert sum("created" in line for line in installed.stdout.splitlines()) == 3
    again = wcsync("webhooks", "install", "--store", store_id, "--public-url", public, "--json", env=debug)
    assert again.returncode == 0, again.stderr
    assert [row["action"] for row in as_json(again)["webhooks"]] == ["unchanged"] * 3

    assert sandbox.webhooks is not None
    hooks = sandbox.webhooks.all()
    assert sorted(h.topic for h in hooks) == sorted(TOPICS), "installed twice, never duplicated"
    assert {(h.status, h.delivery_url) for h in hooks} == {("active", target)}
    secret = hooks[0].secret
    assert {h.secret for h in hooks} == {secret} and len(secret) >= 43

    healthy = wcsync("webhooks", "status", "--store", store_id, "--json", env=debug)
    assert healthy.returncode == 0, healthy.stderr
    document = as_json(healthy)
    assert document["healthy"] is True
    assert [(r["topic"], r["status"], r["deliveryUrl"]) for r in document["webhooks"]] == [
        (topic, "active", target) for topic in TOPICS
    ]

    # WooCommerce disables customer.updated after more than five failed deliveries in a row.
    for customer_id in sandbox.store.customer_ids()[: MAX_FAILURES + 1]:
        _admin_update(sandbox, customer_id)
    updated = next(h for h in hooks if h.topic == "customer.updated")
    wait_until(lambda: updated.status == "disabled", deadline_s=20)
    flagged = wcsync("webhooks", "status", "--store", store_id, env=debug)
    assert flagged.returncode == 1, flagged.stderr
    line = next(x for x in flagged.stdout.splitlines() if "customer.updated" in x)
    assert "DISABLED" in line
    assert "action required" in flagged.stdout

    removed = wcsync("webhooks", "uninstall", "--store", store_id, env=debug)
    assert removed.returncode == 0, removed.stderr
    assert sandbox.webhooks.all() == []
    twice = wcsync("webhooks", "uninstall", "--store", store_id, env=env)
    assert twice.returncode == 0 and "nothing removed" in twice.stdout
    missing = wcsync("webhooks", "status", "--store", store_id, env=env)
    assert missing.returncode == 1 and missing.stdout.count("MISSING") == 3

    # The webhook secret: in no output or log line (debug logs on), and sealed at rest.
    outputs = "".join(
        r.stdout + r.stderr for r in (installed, again, healthy, flagged, removed, twice, missing)
    )
    assert secret not in outputs
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    assert secret.encode() not in path.read_bytes()
    assert secret not in "\n".join(sqlite3.connect(path).iterdump())


def test_a_read_only_key_is_one_line_exit_3_naming_what_to_change(
    sandbox: RunningSandbox, sqlite_url: str
) -> None:
    env = wcsync_env(
        sandbox,
        sqlite_url,
        WCSYNC_SECRET_KEY=_key(),
        WOO_CONSUMER_KEY=READ_ONLY_CONSUMER_KEY,
        WOO_CONSUMER_SECRET=READ_ONLY_CONSUMER_SECRET,
    )
    store_id = _register(env, sandbox)  # a read-only key may register: registering only reads

    refused = wcsync(
        "webhooks", "install", "--store", store_id, "--public-url", "https://wcsync.example.com", env=env
    )

    assert refused.returncode == 3, refused.stderr
    assert refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "Sorry, you are not allowed to create resources." in lines[0]
    assert "woocommerce_rest_cannot_create" in lines[0]
    assert "read-only" in lines[0] and "Read/Write key" in lines[0]
    assert READ_ONLY_CONSUMER_SECRET not in refused.stderr
    assert sandbox.webhooks is not None and sandbox.webhooks.all() == []


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "https://user:pw@example.com", "https://example.com/?k=1", "nohost"]
)
def test_a_bad_public_url_is_one_line_exit_2(sandbox: RunningSandbox, sqlite_url: str, url: str) -> None:
    env = wcsync_env(sandbox, sqlite_url, WCSYNC_SECRET_KEY=_key())
    store_id = "00000000-0000-0000-0000-000000000000"
    refused = wcsync("webhooks", "install", "--store", store_id, "--public-url", url, env=env)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--public-url" in lines[0], refused.stderr
    assert "pw" not in refused.stderr
