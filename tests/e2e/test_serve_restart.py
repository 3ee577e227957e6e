"""The issue's acceptance for the one-command service (issue 11, part 3): `wcsync serve` SIGKILLed during a
sync it started, then started again, and the queue finishes with nobody typing `resume` (both backends).

A real `wcsync serve` (WCSYNC_SECRET_KEY set, so it runs its own `wcsync worker`), a store registered with
`wcsync stores add`, a start through the API naming ``store_id``; once some lines are done, SIGKILL:
- the server alone: its worker sees its parent gone, stops after the batch in hand and gives the job back;
- the server and its worker at once (SIGKILL to both, and to the server's group): the job is left running in a dead process's name and
  the queue's lease in a dead pid's; the next server's worker gives it back (SQLite: the dead pid on this
  host; PostgreSQL: procrastinate's stalled-job check once the dead worker's heartbeat is stale).
Then `wcsync serve` again: the queue ends done with exactly the store's customers, each Customer registered
once, no line finished twice, and no command typed but `serve`."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from domain.queue import SyncQueue
from infrastructure.adapters.migrations import QUEUE_LEASES_TABLE, Connection
from infrastructure.adapters.tokens import Role
from infrastructure.sandbox import RunningSandbox
from infrastructure.sandbox.config import Faults
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import open_services
from tests.support.api import Api, OrgTokens
from tests.support.cli import as_json, first_line, keyed_env, spawn_wcsync, wcsync
from tests.support.waiting import wait_until
from tests.support.workers import check_mirror

CUSTOMERS = 300
# Slow enough to be caught mid-sync (30 batches, 100 ms apart), quick enough to finish in a few seconds.
SLOW = {"perPage": 20, "batchSize": 10, "batchDelayMs": 100}
ORG = "acme"
# Its workers dead after 4 s of silence, checked every 2 s: the test need not wait out the 30 s default.
QUICK_WORKERS = ("--heartbeat-s", "1", "--stalled-after-s", "4", "--stalled-check-s", "2")


@pytest.fixture
def env(sandbox: RunningSandbox, database_url: str) -> dict[str, str]:
    return keyed_env(sandbox, database_url)


def _register(env: dict[str, str], url: str) -> str:
    added = wcsync("--org", ORG, "stores", "add", "--url", url, "--json", env=env)
    assert added.returncode == 0, added.stderr
    return str(as_json(added)["storeId"])


class Server:
    """One `wcsync serve` in a session (process group) of its own, its stderr (and its workers') in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = spawn_wcsync(
            "serve", "--port", "0", *QUICK_WORKERS, env=env, stderr=log.open("w"), start_new_session=True
        )
        self.url = json.loads(first_line(self.process))["url"]

    def stderr(self) -> str:
        return self.log.read_text()

    def kill(self, worker_pid: int | None = None) -> None:
        """SIGKILL the server; with ``worker_pid``, that worker too at the same moment (and the server's
        whole group, whatever else of it there is)."""
        if worker_pid is None:
            self.process.send_signal(signal.SIGKILL)
        else:
            os.killpg(self.process.pid, signal.SIGKILL)
            with suppress(ProcessLookupError):
                os.kill(worker_pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def reap(self) -> None:
        """Whatever of this server's group is left (a failed test): killed, by its group id."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


@contextmanager
def _servers(env: dict[str, str], logs: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.reap()


def _queue(database: DatabaseConfig, queue_id: str) -> SyncQueue:
    with open_services(database, read_only=True) as services:
        return services.app.get_queue(UUID(queue_id))


def _lease_pid(database: DatabaseConfig, queue_id: str) -> int:
    conn = Connection(database)
    try:
        [(pid,)] = conn.execute(f"SELECT pid FROM {QUEUE_LEASES_TABLE} WHERE queue_id = %s", (queue_id,))
    finally:
        conn.close()
    return int(pid)


def _jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    listed = wcsync("jobs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return list(as_json(listed))


@pytest.mark.parametrize("whole_group", [False, True], ids=["serve", "serve-and-worker"])
@pytest.mark.sandbox(customers=CUSTOMERS, faults=Faults(latency_ms=20))
def test_serve_sigkilled_mid_sync_then_started_again_finishes_the_queue_untouched(
    env: dict[str, str],
    sandbox: RunningSandbox,
    tmp_path: Path,
    whole_group: bool,
) -> None:
    database = DatabaseConfig.from_url(env["WCSYNC_DATABASE_URL"])
    store_id = _register(env, sandbox.url)
    # From here on no store credential anywhere: the server reads the registered store's.
    bare = {k: v for k, v in env.items() if not k.startswith("WOO_")}
    tokens = OrgTokens.of(env["WCSYNC_DATABASE_URL"], Role.OPERATOR)
    with _servers(bare, tmp_path) as servers:
        first = Server(bare, tmp_path / "serve-1.log")
        servers.append(first)
        code, answer = Api(first.url, tokens=tokens).sync(store_id=store_id, options=SLOW)
        assert code == 202, answer
        queue_id = answer["data"]["queueId"]

        wait_until(lambda: _queue(database, queue_id).lines.count("done") >= 30)
        # The worker running the sync: the holder of the queue's lease (serve's child, a process of its own).
        worker_pid = _lease_pid(database, queue_id)
        assert worker_pid != first.process.pid
        first.kill(worker_pid if whole_group else None)
        if not whole_group:
            # Its worker sees the server gone, stops after the batch in hand and gives the job back.
            wait_until(lambda: "the server that started it is gone" in first.stderr())
            wait_until(lambda: [job["status"] for job in _jobs(bare)] == ["waiting"])
        left = _queue(database, queue_id)
        assert left.state == "processing" and left.lines.count("done") < CUSTOMERS, left.state
        assert "Traceback" not in first.stderr(), first.stderr()

        second = Server(bare, tmp_path / "serve-2.log")
        servers.append(second)
        api = Api(second.url, tokens=tokens)
        # On PostgreSQL a dead worker's job waits out its heartbeat (4 s: serve passed QUICK_WORKERS on to its
        # workers; with the 30 s default it could not be done by the deadline) and the next stalled-job check
        # (2 s); SQLite's sees the dead pid at once. The run itself takes a few seconds.
        done = wait_until(lambda: (s := api.status(ORG, queue_id))["state"] == "done" and s, deadline_s=30)
        assert (done["doneCount"], done["totalCount"]) == (CUSTOMERS, CUSTOMERS), done
        wait_until(lambda: _jobs(bare) == [])  # the job succeeded: none left waiting, running or failed
        second.process.send_signal(signal.SIGTERM)
        assert second.process.wait(timeout=30) == 0, second.stderr()

    assert check_mirror(database, ORG, queue_id, sandbox) == CUSTOMERS
    finished = _queue(database, queue_id)
    assert (
        finished.state == "done" and finished.process_count >= 2
    )  # started by one server, ended by the next
    log = second.stderr()
    assert "Traceback" not in log, log
    if whole_group:
        # The dead worker's job was given back by the machinery, not by anyone typing.
        given_back = (
            "job.dead_worker_job_given_back" if database.backend == "sqlite" else "job.stalled_retried"
        )
        assert given_back in log, log
