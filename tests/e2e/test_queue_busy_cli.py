"""A second run of a queue that a `wcsync start` is processing, as a user meets it: real processes, the
sandbox with latency, both backends. Every command that would run the queue (resume, retry, force-done,
from the CLI or the HTTP API) is refused at once, in one line naming the holder pid@host and since when;
the sync itself goes on undisturbed, and its lease is free the moment its process is gone (issue 11)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from infrastructure.adapters.leases import LEASE_HEARTBEAT_S
from infrastructure.adapters.migrations import QUEUE_LEASES_TABLE, Connection
from infrastructure.sandbox import Faults, RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import open_services
from tests.support.api import ApiThread, config_of, error_of
from tests.support.cli import spawn_wcsync, wcsync, wcsync_env
from tests.support.waiting import wait_until

# Slow enough that the checks below all happen while the sync runs (it is killed at the end of each test):
# 1,500 customers, 10 a page, one page at a time, 50 ms a request and 100 ms between batches: 20 s at least.
SLOW_STORE = SandboxConfig(customers=1500, faults=Faults(latency_ms=50))
SLOW_START = (
    "start",
    "--per-page",
    "10",
    "--concurrency",
    "1",
    "--batch-size",
    "10",
    "--batch-delay-ms",
    "100",
)
SINCE = r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@contextmanager
def _sync_in_progress(
    database_url: str,
) -> Iterator[tuple[RunningSandbox, dict[str, str], subprocess.Popen[Any], UUID]]:
    """A `wcsync start` processing a queue of the slow store: the store, the environment, the process and
    the queue it holds; the process is SIGKILLed at the end if still running."""
    with SandboxThread(SLOW_STORE) as store:
        env = wcsync_env(store, database_url)
        assert wcsync("db", "migrate", env=env).returncode == 0
        process = spawn_wcsync(*SLOW_START, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            queue_id = wait_until(lambda: _leased_queue(database_url, process))
            # ... and saved (its first page): a command that reads it first finds it.
            wait_until(lambda: wcsync("status", str(queue_id), env=env).returncode == 0)
            assert process.poll() is None, "the sync ended before a second run could be tried"
            yield store, env, process, queue_id
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)


def _leased_queue(database_url: str, process: subprocess.Popen[Any]) -> UUID | None:
    assert process.poll() is None, "the sync ended before a second run could be tried"
    conn = Connection(DatabaseConfig.from_url(database_url))
    try:
        rows = conn.execute(f"SELECT queue_id FROM {QUEUE_LEASES_TABLE}")
    except Exception:  # the database is not there yet
        return None
    finally:
        conn.close()
    return UUID(str(rows[0][0])) if rows else None


def _heartbeat(database_url: str) -> float:
    conn = Connection(DatabaseConfig.from_url(database_url))
    try:
        [(beat,)] = conn.execute(f"SELECT heartbeat_at FROM {QUEUE_LEASES_TABLE}")
    finally:
        conn.close()
    return float(beat)


def _holder(process: subprocess.Popen[Any]) -> str:
    return f"pid {process.pid}@{socket.gethostname()}"


def test_a_second_cli_run_of_a_queue_being_processed_exits_2_in_one_line_naming_the_holder(
    database_url: str,
) -> None:
    with _sync_in_progress(database_url) as (_store, env, process, queue_id):
        busy = re.escape(f"wcsync: queue {queue_id} is being processed by {_holder(process)} ") + SINCE
        for command in (
            ("resume", str(queue_id)),
            ("retry", str(queue_id)),
            ("force-done", str(queue_id), "--reason", "x"),
        ):
            refused = wcsync(*command, env=env)
            assert refused.returncode == 2, (command, refused.stderr)
            lines = refused.stderr.splitlines()
            assert len(lines) == 1 and re.fullmatch(
                busy
                + re.escape(
                    "; wait for it to finish (a lease left by a process that died is taken over after 30 s)"
                ),
                lines[0],
            ), (command, refused.stderr)
            assert refused.stdout == ""
        # The holder's heartbeat thread keeps its lease fresh while it works (every 5 s).
        first_beat = _heartbeat(database_url)
        wait_until(lambda: _heartbeat(database_url) > first_beat, deadline_s=3 * LEASE_HEARTBEAT_S)
        assert process.poll() is None, "the sync ended before every second run was tried"

        # Killed, the sync's lease is no one's at once (no 30 s wait on the same host): force-done works.
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        closed = wcsync("force-done", str(queue_id), "--reason", "stopped", "--json", env=env)
        assert closed.returncode == 0, closed.stderr
        assert '"state": "done"' in closed.stdout


def test_the_api_answers_409_queue_busy_naming_the_cli_that_holds_the_queue(database_url: str) -> None:
    with _sync_in_progress(database_url) as (store, _env, process, queue_id):
        with open_services(DatabaseConfig.from_url(database_url)) as services, ApiThread(services) as api:
            code, answer = api.sync(
                action="resume", config=config_of(store), org_id="default", queue_id=str(queue_id)
            )
            error = error_of(answer)
            assert code == 409 and error["code"] == "queue_busy", answer
            assert error["holder"] == _holder(process) and re.fullmatch(SINCE, f"since {error['since']}")
            assert f"being processed by {_holder(process)} since {error['since']}" in error["message"]

            code, answer = api.sync(action="force-done", org_id="default", queue_id=str(queue_id), reason="x")
            assert code == 409 and error_of(answer)["code"] == "queue_busy", answer
            # Another org is told what it is told of a queue that does not exist.
            code, answer = api.sync(
                action="resume", config=config_of(store), org_id="globex", queue_id=str(queue_id)
            )
            assert code == 404 and error_of(answer)["code"] == "queue_not_found", answer
        assert process.poll() is None, "the sync ended before the API was asked"
