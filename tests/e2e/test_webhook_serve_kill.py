"""Nothing acknowledged is lost (issue 12, item 1): a real `wcsync serve` answers a real sandbox delivery 200
and is SIGKILLed at once, before any worker could apply it (it runs none: ``--workers 0``); a `wcsync serve`
started again (with its worker) applies it: the delivery was durable before its 200. Both backends."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from infrastructure.sandbox import RunningSandbox
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import open_services
from projections import queries
from tests.support.cli import as_json, keyed_env, spawn_wcsync, wcsync
from tests.support.sandbox_admin import admin
from tests.support.waiting import wait_until

ORG = "acme"


@pytest.fixture
def env(sandbox: RunningSandbox, database_url: str) -> dict[str, str]:
    return keyed_env(sandbox, database_url)


class Serve:
    """`wcsync serve` in a session of its own (so SIGKILL reaches its workers too), stderr to a file."""

    def __init__(self, env: dict[str, str], log: Path, *flags: str) -> None:
        self.process = spawn_wcsync(
            "serve", "--port", "0", *flags, env=env, stderr=log.open("w"), start_new_session=True
        )
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=60), "wcsync serve printed nothing"
        self.url = json.loads(self.process.stdout.readline())["url"]

    def kill(self) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


def last_name(database_url: str, sandbox: RunningSandbox, woo_id: int) -> Any:
    with open_services(DatabaseConfig.from_url(database_url), read_only=True) as services:
        services.catch_up()
        rows = queries.customers(services.projections, ORG, sandbox.url)
    return {row["woo_customer_id"]: row for row in rows}[woo_id]["last_name"]


@pytest.mark.sandbox(customers=30)
def test_a_delivery_answered_200_by_a_server_killed_at_once_is_applied_after_restart(
    env: dict[str, str], sandbox: RunningSandbox, database_url: str, tmp_path: Path
) -> None:
    started = wcsync("--org", ORG, "start", "--json", env=env)
    assert started.returncode == 0, started.stderr
    added = wcsync("--org", ORG, "stores", "add", "--url", sandbox.url, "--json", env=env)
    assert added.returncode == 0, added.stderr
    store_id = str(as_json(added)["storeId"])
    target = sandbox.store.customer_ids()[7]

    first = Serve(env, tmp_path / "serve-1.log", "--workers", "0")
    try:
        installed = wcsync(
            "--org", ORG, "webhooks", "install", "--store", store_id, "--public-url", first.url, env=env
        )
        assert installed.returncode == 0, installed.stderr
        admin(sandbox, "PUT", f"/_sandbox/customers/{target}", {"last_name": "Durable"})

        def answered() -> bool | None:
            log = admin(sandbox, "GET", "/_sandbox/deliveries")["deliveries"]
            return any(e["kind"] == "delivery" and e["status"] == 200 for e in log) or None

        wait_until(answered)
        first.kill()  # right after the 200: no worker ran, nothing applied it
    finally:
        first.kill()
    assert last_name(database_url, sandbox, target) != "Durable"

    second = Serve(env, tmp_path / "serve-2.log")  # its worker applies what was recorded
    try:
        wait_until(lambda: last_name(database_url, sandbox, target) == "Durable" or None)
    finally:
        second.stop()
    listed = wcsync("--org", ORG, "webhooks", "deliveries", "--store", store_id, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [delivery] = as_json(listed)
    assert (delivery["topic"], delivery["wooCustomerId"], delivery["state"], delivery["result"]) == (
        "customer.updated",
        target,
        "applied",
        "updated",
    )
    other = wcsync("--org", "other-org", "webhooks", "deliveries", "--store", store_id, env=env)
    assert other.returncode == 2 and "Traceback" not in other.stderr  # another org's store is no store
    assert len(other.stderr.strip().splitlines()) == 1
    log = (tmp_path / "serve-1.log").read_text() + (tmp_path / "serve-2.log").read_text()
    assert env["WCSYNC_SECRET_KEY"] not in log and "Traceback" not in log
