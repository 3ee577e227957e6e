"""`wcsync demo` as a user runs it (README's first command): a sandbox store, a full sync, the failed lines
fixed and retried, then the webhook loop: three customers edited, one created and one deleted in the
sandbox reach the mirror through signed deliveries, each printed as it is followed. On a fresh machine (no
WCSYNC_SECRET_KEY, the SQLite default) and on PostgreSQL with a key of the user's; no credential, key or
webhook secret in anything it prints, logs at debug included."""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from domain.errors import EXIT_USAGE
from infrastructure.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET
from tests.support.cli import as_json, wcsync, wcsync_env
from tests.support.credentials import encodings

CUSTOMERS = "60"
# "customer 9 updated (email) via webhook in 0.42 s", "customer 61 created via webhook ...",
# "customer 60 marked deleted via webhook ...".
FOLLOWED = re.compile(
    r"^customer (\d+) (updated \((?:email|name)\)|created|marked deleted) via webhook in (\d+\.\d\d) s$"
)
# A webhook secret is 43 URL-safe characters, a secret key 44 of base64: any such run of characters that is
# not hex (a digest) would be one printed.
SECRET_LIKE = re.compile(r"[A-Za-z0-9_\-+/=]{40,}")


def run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = wcsync("demo", "--customers", CUSTOMERS, "--invalid", "2", *args, env=env, timeout=90)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def assert_nothing_secret(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    printed = result.stdout + result.stderr
    forms = encodings(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET)
    forms.update({f"secret {i}": secret for i, secret in enumerate(secrets)})
    assert [name for name, form in forms.items() if form in printed] == []
    suspicious = [
        run for run in SECRET_LIKE.findall(printed) if not re.fullmatch(r"[0-9a-f]+", run) and "/" not in run
    ]
    assert suspicious == []


def mirrored(database: Path) -> dict[int, tuple[str, bool, str | None]]:
    """woo_customers of the demo's store, read straight from the SQLite file the demo wrote."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT woo_customer_id, email, is_deleted, deleted_reason FROM woo_customers"
        ).fetchall()
    return {int(row[0]): (str(row[1]), bool(row[2]), row[3]) for row in rows}


def test_the_demo_on_a_fresh_machine_shows_the_mirror_following_webhooks(tmp_path: Path) -> None:
    database = tmp_path / "wcsync.db"
    env = wcsync_env(None, f"sqlite:///{database}", WCSYNC_LOG_LEVEL="debug", WCSYNC_LOG_FORMAT="json")
    assert "WCSYNC_SECRET_KEY" not in env
    result = run_demo(env)
    assert result.returncode == 0, result.stderr[-2000:]

    lines = result.stdout.splitlines()
    assert "state      done" in lines  # the retry finished the queue, as before
    installed = [line for line in lines if line.startswith("webhooks   installed for http://127.0.0.1:")]
    assert len(installed) == 1 and "/api/v1/webhooks/woocommerce/" in installed[0]
    followed = [match for line in lines if (match := FOLLOWED.match(line))]
    kinds = sorted(match[2] for match in followed)
    assert kinds == ["created", "marked deleted", "updated (email)", "updated (email)", "updated (name)"]
    assert all(float(match[3]) < 15 for match in followed)
    assert any(
        line.startswith("mirrored   5 of 5 changes through webhooks (3 updated, 1 created, 1 deleted)")
        for line in lines
    )
    # Printed in that order: installed, each change, the summary, then the hint of what to look at next.
    assert lines.index(installed[0]) < lines.index(followed[0].string) < lines.index(lines[-1])
    assert lines[-1].startswith("next: wcsync activity ")

    # What was printed is what the mirror holds.
    rows = mirrored(database)
    ids = {match[2]: int(match[1]) for match in followed}
    email_edits = [int(m[1]) for m in followed if m[2] == "updated (email)"]
    assert all(rows[i][0].endswith(("@example.org", "@example.net")) and not rows[i][1] for i in email_edits)
    created = rows[ids["created"]]
    assert created[0] == "nova.demo@example.org" and not created[1]
    gone = rows[ids["marked deleted"]]
    assert gone[1] and gone[2] is not None and "webhook delivery" in gone[2]
    assert len(rows) == int(CUSTOMERS) + 1

    assert_nothing_secret(result)


@pytest.mark.postgres
def test_the_demos_json_has_each_webhook_change_and_its_delivery(postgres_url: str) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    env = wcsync_env(None, postgres_url, WCSYNC_SECRET_KEY=key, WCSYNC_LOG_LEVEL="debug")
    migrated = wcsync("db", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    result = run_demo(env, "--json")
    assert result.returncode == 0, result.stderr[-2000:]

    document = as_json(result)
    assert document["afterRetry"]["state"] == "done"
    webhooks: dict[str, Any] = document["webhooks"]
    assert webhooks["deliveryUrl"].endswith(f"/api/v1/webhooks/woocommerce/{webhooks['storeId']}")
    assert webhooks["installed"] == {
        "customer.created": "created",
        "customer.updated": "created",
        "customer.deleted": "created",
    }
    changes = webhooks["changes"]
    assert [c["change"] for c in changes] == ["updated", "updated", "updated", "created", "deleted"]
    assert webhooks["mirrored"] == 5 and all(c["mirrored"] for c in changes)
    assert all(0 < c["seconds"] < 15 for c in changes)
    results = [(c["delivery"]["state"], c["delivery"]["result"]) for c in changes]
    assert results == [("applied", "updated")] * 3 + [("applied", "created"), ("applied", "deleted")]
    assert [c["fields"] for c in changes[:3]] == [["email"], ["first_name", "last_name"], ["email"]]

    assert_nothing_secret(result, key)


def test_an_unusable_secret_key_is_exit_2_before_any_work(tmp_path: Path) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/wcsync.db", WCSYNC_SECRET_KEY="not a key!")
    result = wcsync("demo", env=env, timeout=30)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "wcsync: WCSYNC_SECRET_KEY is not valid base64; set it to the base64 of 32 random bytes "
        "(`openssl rand -base64 32`)"
    ]
    assert result.stdout == "" and not (tmp_path / "wcsync.db").exists()
