"""The `wcsync` command as a user types it: real subprocesses, real sockets, real databases."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from infrastructure.sandbox import Faults, RunningSandbox, SandboxConfig, SandboxThread
from tests.support.cli import as_json, spawn_wcsync, wcsync, wcsync_env
from tests.support.paths import ROOT

pytestmark = pytest.mark.sandbox(customers=600, invalid=3)

STATUS_KEYS = {
    "queueId",
    "queueName",
    "orgId",
    "state",
    "progress",
    "totalCount",
    "draftCount",
    "doneCount",
    "failedCount",
    "cancelledCount",
    "createdCount",
    "updatedCount",
    "unchangedCount",
    "processCount",
    "isActionRequired",
    "actionRequiredReason",
    "lastProcessDate",
    "createdAt",
}


def test_start_syncs_and_reports_in_json_with_exit_1_for_failed_lines(
    sandbox: RunningSandbox, sqlite_url: str
) -> None:
    env = wcsync_env(sandbox, sqlite_url)
    result = wcsync("start", "--json", env=env)
    assert result.returncode == 1, result.stderr
    status = as_json(result)
    assert set(status) >= STATUS_KEYS
    assert status["state"] == "failed" and status["failedCount"] == 3 and status["createdCount"] == 597
    assert "Traceback" not in result.stderr

    queue_id = status["queueId"]
    listed = as_json(wcsync("queues", "--json", env=env))
    assert [q["queueId"] for q in listed] == [queue_id]
    failed = as_json(wcsync("failed", queue_id, "--json", env=env))
    assert len(failed) == 3 and all("invalid customer record" in row["errorMessage"] for row in failed)
    activity = as_json(wcsync("activity", queue_id, "--json", env=env))
    assert activity[0]["activityType"] == "queue_created"
    assert any(row["activityType"] == "line_failed" for row in activity)
    latest = wcsync("status", "--json", env=env)
    assert latest.returncode == 1 and as_json(latest)["queueId"] == queue_id

    sandbox.store.fix_invalid()
    retried = wcsync("retry", queue_id, "--json", env=env)
    assert retried.returncode == 0, retried.stderr
    assert as_json(retried)["state"] == "done"


def test_human_output_names_the_queue_and_the_database(sandbox: RunningSandbox, sqlite_url: str) -> None:
    result = wcsync("start", env=wcsync_env(sandbox, sqlite_url))
    assert result.returncode == 1
    assert "progress" in result.stdout and "created 597" in result.stdout
    assert "database" in result.stderr and "queue" in result.stderr


def test_force_done_closes_a_failed_queue(sandbox: RunningSandbox, sqlite_url: str) -> None:
    env = wcsync_env(sandbox, sqlite_url)
    queue_id = as_json(wcsync("start", "--json", env=env))["queueId"]
    missing_reason = wcsync("force-done", queue_id, env=env)
    assert missing_reason.returncode == 2 and "--reason" in missing_reason.stderr
    forced = wcsync("force-done", queue_id, "--reason", "fixed in CRM", "--json", env=env)
    assert forced.returncode == 0
    assert as_json(forced)["state"] == "done" and as_json(forced)["cancelledCount"] == 3
    again = wcsync("force-done", queue_id, "--reason", "twice", env=env)
    assert again.returncode == 2 and "already done" in again.stderr


def test_wrong_credentials_exit_3_with_the_stores_message_and_no_secret(
    sandbox: RunningSandbox, sqlite_url: str
) -> None:
    env = wcsync_env(sandbox, sqlite_url, WOO_CONSUMER_SECRET="cs_not_the_secret_123")
    env["WOO_CONSUMER_KEY"] = "ck_not_the_key_456"
    result = wcsync("start", env=env)
    assert result.returncode == 3
    assert "Consumer key is invalid" in result.stderr
    assert "nothing was saved" in result.stderr
    assert "cs_not_the_secret_123" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert as_json(wcsync("queues", "--json", env=env)) == []  # nothing half-written


def test_an_unreachable_store_exits_3(sqlite_url: str) -> None:
    env = wcsync_env(
        None, sqlite_url, WOO_URL="http://127.0.0.1:9", WOO_CONSUMER_KEY="ck", WOO_CONSUMER_SECRET="cs"
    )
    result = wcsync("start", "--max-retries", "1", env=env)
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    # The cause, not only the circuit breaker that it tripped.
    assert "last: could not be reached" in result.stderr


def test_a_store_host_that_does_not_resolve_exits_3_and_saves_nothing(sqlite_url: str) -> None:
    env = wcsync_env(
        None,
        sqlite_url,
        WOO_URL="http://no-such-host.invalid",
        WOO_CONSUMER_KEY="ck_x",
        WOO_CONSUMER_SECRET="cs_y",
    )
    result = wcsync("start", "--max-retries", "1", env=env)
    assert result.returncode == 3, result.stderr
    assert "host name 'no-such-host.invalid' does not resolve; nothing was saved" in result.stderr
    assert as_json(wcsync("queues", "--json", env=env)) == []


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (("status", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"), {}, "no queue"),
        (("status", "not-a-uuid"), {}, "not a queue id"),
        (("start",), {"WOO_URL": ""}, "no store URL"),
        (("start", "--url", "ftp://shop"), {}, "must start with http"),
        (("start", "--per-page", "500"), {}, "--per-page: must be a whole number from 1 to 100"),
        (("queues",), {"WCSYNC_DATABASE_URL": "mysql://db/x"}, "not supported"),
        (("frobnicate",), {}, "invalid choice"),
        (("projections", "rebuild", "nosuch"), {}, "unknown projection(s) nosuch; known: customers"),
        (("queues", "--limit", "0"), {}, "--limit: must be a whole number from 1 to 10000 rows, got 0"),
        (("start", "--concurrency", "0"), {}, "--concurrency: must be a whole number from 1 to 32"),
        # One set of bounds for every flag (domain/bounds.py): the flag named, one line, exit 2.
        (("start", "--batch-delay-ms", "3600000000"), {}, "--batch-delay-ms: must be a whole number from 0"),
        (("start", "--batch-delay-ms", "1e23"), {}, "--batch-delay-ms: must be a whole number"),
        (("start", "--batch-size", "1001"), {}, "--batch-size: must be a whole number from 1 to 1000"),
        (("start", "--max-retries", "0"), {}, "--max-retries: must be a whole number from 1 to 100"),
        (("start", "--per-page", "1.5"), {}, "--per-page: must be a whole number"),
        (("start", "--timeout", "0"), {}, "--timeout: must be a number from 0.1 to 3600"),
        (("start", "--timeout", "nan"), {}, "--timeout: must be a number"),
        (("start", "--rate", "-1"), {}, "--rate: must be a number from 0"),
        (("start", "--rate", "1e-320"), {}, "--rate: must be a number from 0 or from 0.01"),
        (("start", "--timeout", "1e-320"), {}, "--timeout: must be a number from 0.1"),
        (("queues", "--limit", "\uff11"), {}, "--limit: must be a whole number"),
        (("start",), {"WCSYNC_ORG": "\u202eevil"}, "printable characters only (found U+202E"),
        (("start",), {"WCSYNC_ORG": "a\u200bb"}, "printable characters only (found U+200B"),
        (("start", "--max-response-mb", "0"), {}, "--max-response-mb: must be a whole number from 1"),
        (("start", "--role", ""), {}, "--role: must be a non-empty string"),
        (("start", "--role", "shop manager"), {}, "--role: must be a WordPress role slug"),
        (("start", "--queue-name", "q" * 5000), {}, "--queue-name: must be at most 200 characters"),
        (("start", "--url", "http://shop:99999"), {}, "port must be from 1 to 65535"),
        (("start", "--url", "http://[::1"), {}, "the store URL is malformed"),
        (
            ("start",),
            {"WCSYNC_ORG": "evil\x07org"},
            "--org (or WCSYNC_ORG) must hold printable characters only",
        ),
        (("start",), {"WCSYNC_ORG": "o" * 201}, "--org (or WCSYNC_ORG) must be at most 200 characters"),
        (("status", "--watch", "--interval", "0"), {}, "--interval: must be a number from 0.2"),
        (
            ("force-done", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "--reason", " "),
            {},
            "--reason: must be a non-empty string",
        ),
        (("force-done", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "--reason", "r" * 1001), {}, "at most 1000"),
        (("serve", "--port", "70000"), {}, "--port: must be a whole number from 0 to 65535"),
        (("sandbox", "--port", "-1"), {}, "--port: must be a whole number from 0 to 65535"),
    ],
)
def test_usage_and_configuration_errors_exit_2_with_one_clear_line(
    sandbox: RunningSandbox, sqlite_url: str, args: tuple[str, ...], extra: dict[str, str], message: str
) -> None:
    # An existing database: a read-only command on a missing one is another error (tests/e2e/test_cli_errors.py).
    assert wcsync("db", "migrate", env=wcsync_env(sandbox, sqlite_url)).returncode == 0
    env = wcsync_env(sandbox, sqlite_url, **extra)
    result = wcsync(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_another_orgs_queue_is_an_unknown_queue(sandbox: RunningSandbox, sqlite_url: str) -> None:
    env = wcsync_env(sandbox, sqlite_url)
    queue_id = as_json(wcsync("start", "--json", "--org", "acme", env=env))["queueId"]
    result = wcsync("status", queue_id, "--org", "globex", env=env)
    assert result.returncode == 2 and "no queue" in result.stderr


def test_postgres_needs_migrate_once_then_works(sandbox: RunningSandbox, postgres_url: str) -> None:
    env = wcsync_env(sandbox, postgres_url)
    before = wcsync("queues", env=env)
    assert before.returncode == 4 and "wcsync db migrate" in before.stderr
    assert wcsync("db", "migrate", env=env).returncode == 0
    assert wcsync("db", "migrate", env=env).returncode == 0  # idempotent
    result = wcsync("start", "--json", env=env)
    assert result.returncode == 1 and as_json(result)["createdCount"] == 597


# ----- crash safety: SIGKILL at exact instants, then resume ------------------------------------------------

KILL_POINTS = [
    "page_fetched=3",  # a page in hand, not yet recorded
    "before_batch_save=4",  # a batch computed, not saved
    "after_batch_save=5",  # a batch saved, the next not begun
    "before_finish=1",  # every line done, the queue not closed
]


@pytest.mark.parametrize("kill_at", KILL_POINTS)
def test_a_sync_killed_at_any_instant_is_resumed_to_exactly_the_stores_customers(
    database_url: str, kill_at: str
) -> None:
    # 2,000 customers: pages are saved together, up to 500 processed lines a save, so the kill points at the
    # 4th and 5th save fall mid-run.
    with SandboxThread(SandboxConfig(customers=2000, faults=Faults(latency_ms=2))) as store:
        env = wcsync_env(store, database_url)
        if database_url.startswith("postgres"):
            assert wcsync("db", "migrate", env=env).returncode == 0
        killed = wcsync("start", "--json", "--batch-size", "40", env={**env, "WCSYNC_FAILPOINTS": kill_at})
        assert killed.returncode == -signal.SIGKILL, killed.stderr

        queues = as_json(wcsync("queues", "--json", env=env))
        assert len(queues) == 1
        queue_id = queues[0]["queueId"]
        assert queues[0]["state"] == "processing"

        resumed = wcsync("resume", queue_id, "--json", env=env)
        assert resumed.returncode == 0, resumed.stderr
        status = as_json(resumed)
        assert status["state"] == "done"
        assert status["totalCount"] == status["doneCount"] == 2000
        assert status["createdCount"] + status["unchangedCount"] == 2000
        assert status["processCount"] == 2
        assert_mirror_equals_store(env, store)


def test_a_sync_killed_before_its_first_save_leaves_nothing_to_resume(
    sandbox: RunningSandbox, sqlite_url: str
) -> None:
    env = wcsync_env(sandbox, sqlite_url)
    killed = wcsync("start", env={**env, "WCSYNC_FAILPOINTS": "page_fetched=1"})
    assert killed.returncode == -signal.SIGKILL
    assert as_json(wcsync("queues", "--json", env=env)) == []


def test_a_sync_killed_at_a_random_moment_mid_run_is_resumed(sqlite_url: str) -> None:
    with SandboxThread(SandboxConfig(customers=3000, faults=Faults(latency_ms=5))) as store:
        env = wcsync_env(store, sqlite_url)
        process = spawn_wcsync(
            "start",
            "--json",
            "--batch-size",
            "25",
            "--concurrency",
            "1",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Wait (bounded) until the store has served a few pages, then kill wherever the sync is.
            deadline = time.monotonic() + 60
            while store.store.stats.requests < 6 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        queues = as_json(wcsync("queues", "--json", env=env))
        assert len(queues) == 1
        resumed = wcsync("resume", queues[0]["queueId"], "--json", env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert as_json(resumed)["doneCount"] == 3000
        assert_mirror_equals_store(env, store)


def assert_mirror_equals_store(env: dict[str, str], store: RunningSandbox) -> None:
    """Every store customer mirrored exactly once, and created exactly once in the event log."""
    code = (
        "import json, sys\n"
        "from infrastructure.support.config import DatabaseConfig\n"
        "from infrastructure.wiring import open_services\n"
        "from domain.customer import Customer\n"
        "from projections import queries\n"
        "with open_services(DatabaseConfig.from_url(sys.argv[1])) as s:\n"
        "    s.catch_up()\n"
        "    rows = queries.customers(s.projections, 'default', sys.argv[2])\n"
        "    created = [n for n in s.app.recorder.select_notifications(start=1, limit=10**7)"
        " if n.topic.endswith('Customer.Registered')]\n"
        "    print(json.dumps({'ids': [r['woo_customer_id'] for r in rows], 'created': len(created)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, env["WCSYNC_DATABASE_URL"], store.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    found = json.loads(result.stdout)
    store_ids = store.store.customer_ids()
    assert sorted(found["ids"]) == sorted(store_ids)
    assert len(found["ids"]) == len(set(found["ids"]))
    assert found["created"] == len(store_ids)


def test_a_reader_that_goes_away_is_not_a_traceback(sandbox: RunningSandbox, sqlite_url: str) -> None:
    env = wcsync_env(sandbox, sqlite_url)
    queue_id = as_json(wcsync("start", "--json", env=env))["queueId"]
    buffered = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}  # as in a plain shell
    reader = spawn_wcsync("activity", queue_id, env=buffered, text=False)
    assert reader.stdout is not None and reader.stderr is not None
    reader.stdout.close()  # like `| head -0`: every write of the command meets a closed pipe
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0
    assert "Traceback" not in stderr


def _processes_with(entry: bytes) -> list[int]:
    """The pids of this machine's processes whose environment holds ``entry`` (NAME=value)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue  # ended meanwhile, or not ours to read
    return found


def test_the_live_follower_of_a_killed_sync_stops_too(postgres_url: str) -> None:
    with SandboxThread(SandboxConfig(customers=2000, faults=Faults(latency_ms=2))) as store:
        env = wcsync_env(store, postgres_url)
        assert wcsync("db", "migrate", env=env).returncode == 0
        # A mark in the environment the follower inherits: this sync's follower, not another test's.
        mark = f"WCSYNC_TEST_MARK={uuid.uuid4().hex}"
        marked = {**env, "WCSYNC_FAILPOINTS": "after_batch_save=3", **dict([mark.split("=")])}
        killed = wcsync("start", "--json", env=marked, timeout=60)
        assert killed.returncode == -signal.SIGKILL
        # wcsync() returned: the follower, which shares its output pipes, is gone too (else this would hang).
        assert _processes_with(mark.encode()) == []
