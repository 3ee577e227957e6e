"""`wcsync schedule add | list | remove` as a user types it, on both backends (issue 12, item 4): a schedule
of a registered store listed with when it runs next, one per store, removed; every refusal one line, exit 2;
another org never sees it."""

from __future__ import annotations

import base64
import os
import subprocess
from uuid import uuid4

import pytest

from infrastructure.sandbox import RunningSandbox
from tests.support.cli import as_json, wcsync, wcsync_env

pytestmark = pytest.mark.sandbox(customers=5)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, one line on stderr starting with `wcsync:` (or argparse's `wcsync schedule add:`), no traceback."""
    message = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert message.startswith("wcsync") and "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, message


def test_schedules_are_added_listed_refused_and_removed(sandbox: RunningSandbox, database_url: str) -> None:
    env = wcsync_env(sandbox, database_url, WCSYNC_SECRET_KEY=base64.b64encode(os.urandom(32)).decode())
    assert wcsync("db", "migrate", env=env).returncode == 0
    assert as_json(wcsync("schedule", "list", "--json", env=env)) == []
    store_id = as_json(wcsync("stores", "add", "--url", sandbox.url, "--json", env=env))["storeId"]

    added = wcsync("schedule", "add", "--store", store_id, "--every", "15m", "--json", env=env)
    assert added.returncode == 0, added.stderr
    schedule = as_json(added)
    assert schedule["storeId"] == store_id and schedule["every"] == "15m" and schedule["everySeconds"] == 900
    assert schedule["cron"] is None and schedule["lastQueueId"] is None and schedule["nextDueAt"]
    assert as_json(wcsync("schedule", "list", "--json", env=env)) == [schedule]
    text = wcsync("schedule", "list", env=env)
    assert text.returncode == 0 and schedule["scheduleId"] in text.stdout and "every 15m" in text.stdout

    # Refusals: one line each, exit 2, nothing added.
    add = ("schedule", "add", "--store", store_id)
    refused(wcsync(*add, "--every", "1h", env=env), "has schedule", schedule["scheduleId"])
    unknown = str(uuid4())
    refused(wcsync("schedule", "add", "--store", unknown, "--every", "1h", env=env), f"no store {unknown}")
    refused(wcsync("schedule", "add", "--store", "nope", "--every", "1h", env=env), "store id")
    refused(wcsync(*add, "--every", "30s", env=env), "at least 1m")
    refused(wcsync(*add, "--every", "32d", env=env), "at most 31d")
    refused(wcsync(*add, "--every", "often", env=env), "--every")
    refused(wcsync(*add, "--cron", "every night", env=env), "--cron")
    refused(wcsync(*add, "--cron", "0 3 * * * *", env=env), "five fields")
    refused(wcsync(*add, "--every", "1h", "--cron", "0 3 * * *", env=env), "--cron")
    refused(wcsync(*add, env=env), "--every")
    refused(wcsync("schedule", "remove", "not-a-uuid", env=env), "UUID")
    refused(wcsync("schedule", "remove", unknown, env=env), f"no schedule {unknown}")

    # Another org: sees none, removes none.
    assert as_json(wcsync("--org", "other", "schedule", "list", "--json", env=env)) == []
    refused(wcsync("--org", "other", "schedule", "remove", schedule["scheduleId"], env=env), "no schedule")
    refused(wcsync("--org", "other", *add, "--every", "1h", env=env), f"no store {store_id}")
    assert as_json(wcsync("schedule", "list", "--json", env=env)) == [schedule]

    removed = wcsync("schedule", "remove", schedule["scheduleId"], env=env)
    assert removed.returncode == 0 and schedule["scheduleId"] in removed.stdout, removed.stderr
    assert as_json(wcsync("schedule", "list", "--json", env=env)) == []

    # With the old one gone the store takes a cron schedule.
    cron = as_json(wcsync(*add, "--cron", "0  3 * * *", "--json", env=env))
    assert cron["cron"] == "0 3 * * *" and cron["every"] is None and "T03:00:00" in cron["nextDueAt"]
