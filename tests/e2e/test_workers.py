"""`wcsync worker`, `start --detach`, `workers` and `jobs` as a user runs them, on a real PostgreSQL against
the sandbox store with latency (issue 11, part 3): three workers take six detached syncs; one SIGKILLed
mid-sync has its queue taken up by another within 60 s and every queue ends done with exactly the store's
customers, each registered once, no line finished twice; a SIGTERMed worker exits 0 after its batch and the
queue ends done on the next worker; the refusals are one line, exit 2."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from infrastructure.adapters.migrations import QUEUE_LEASES_TABLE, Connection
from infrastructure.sandbox import RunningSandbox
from infrastructure.sandbox.config import Faults
from infrastructure.support.config import DatabaseConfig
from infrastructure.wiring import open_services
from tests.support.cli import as_json, spawn_wcsync, wcsync, wcsync_env
from tests.support.waiting import wait_until
from tests.support.workers import check_mirror

# Dead after 4 s of silence, checked every 2 s: the test need not wait out the 30 s default.
QUICK_WORKER = ("worker", "--heartbeat-s", "1", "--stalled-after-s", "4", "--stalled-check-s", "2")
# Slow enough to be caught mid-sync: 20 customers a page, 10 a batch, 100 ms between batches.
SLOW_QUEUE = ("--per-page", "20", "--batch-size", "10", "--batch-delay-ms", "100")


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def env(sandbox: RunningSandbox, postgres_url: str) -> dict[str, str]:
    environment = wcsync_env(sandbox, postgres_url, WCSYNC_SECRET_KEY=_key())
    migrated = wcsync("db", "migrate", env=environment)
    assert migrated.returncode == 0, migrated.stderr
    return environment


def _without_store_credentials(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in ("WOO_CONSUMER_KEY", "WOO_CONSUMER_SECRET")}


def _register(env: dict[str, str], org: str, url: str) -> str:
    added = wcsync("--org", org, "stores", "add", "--url", url, "--json", env=env)
    assert added.returncode == 0, added.stderr
    return str(as_json(added)["storeId"])


def _detach(env: dict[str, str], org: str, store_id: str) -> dict[str, Any]:
    started = wcsync("--org", org, "start", "--detach", "--store", store_id, *SLOW_QUEUE, "--json", env=env)
    assert started.returncode == 0, started.stderr
    answer = as_json(started)
    assert set(answer) == {"queueId", "jobId"}
    return dict(answer)


class Workers:
    """`wcsync worker` processes of one test, their stderr in files; every one left is killed at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.processes: list[subprocess.Popen[Any]] = []

    def start(self) -> subprocess.Popen[Any]:
        log = (self.logs / f"worker-{len(self.processes)}.log").open("w")
        process = spawn_wcsync(*QUICK_WORKER, env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.processes.append(process)
        return process

    def stderr(self, process: subprocess.Popen[Any]) -> str:
        return (self.logs / f"worker-{self.processes.index(process)}.log").read_text()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    running = Workers(_without_store_credentials(env), tmp_path)
    yield running
    running.close()


def _leases(database: DatabaseConfig) -> dict[str, tuple[str, int]]:
    """queue id -> (holder, pid) of every queue lease held now."""
    conn = Connection(database)
    try:
        rows = conn.execute(f"SELECT queue_id, holder, pid FROM {QUEUE_LEASES_TABLE}")
    finally:
        conn.close()
    return {str(queue_id): (str(holder), int(pid)) for queue_id, holder, pid in rows}


def _state(env: dict[str, str], org: str, queue_id: str) -> str:
    status = wcsync("--org", org, "status", queue_id, "--json", env=env)
    assert status.returncode in (0, 1), status.stderr
    return str(as_json(status)["state"])


def _done_lines(database: DatabaseConfig, queue_id: str) -> int:
    with open_services(database, read_only=True) as services:
        return int(services.app.get_queue(UUID(queue_id)).lines.count("done"))


def _frozen_mid_sync(database: DatabaseConfig, victim: subprocess.Popen[Any], customers: int) -> str | None:
    """SIGSTOP ``victim`` and give the queue it was then mid-sync of (its lease held, some lines done, not
    all); if it held none such (between queues, or not started), let it go on (SIGCONT) and give None.
    Frozen, it cannot finish that queue while the test looks at it, however slow the machine is."""
    victim.send_signal(signal.SIGSTOP)
    for queue_id, (_, pid) in _leases(database).items():
        if pid == victim.pid and 0 < _done_lines(database, queue_id) < customers:
            return queue_id
    victim.send_signal(signal.SIGCONT)
    return None


MANY = 300


@pytest.mark.sandbox(customers=MANY, faults=Faults(latency_ms=30))
def test_three_workers_six_syncs_one_killed_mid_sync_all_done(
    env: dict[str, str], workers: Workers, sandbox: RunningSandbox
) -> None:
    database = DatabaseConfig.from_url(env["WCSYNC_DATABASE_URL"])
    orgs = [f"org{n}" for n in range(6)]
    stores = {org: _register(env, org, sandbox.url) for org in orgs}
    bare = _without_store_credentials(env)
    queues = {org: _detach(bare, org, stores[org])["queueId"] for org in orgs}
    processes = [workers.start() for _ in range(3)]

    # Each worker mid-sync of a queue (its lease held, lines done); kill the first one, frozen mid-sync.
    pids = {p.pid for p in processes}

    def three_held() -> dict[str, tuple[str, int]] | None:
        leases = _leases(database)
        return leases if len(leases) == 3 else None

    held = wait_until(three_held)
    assert {pid for _, pid in held.values()} == pids
    listed = as_json(wcsync("workers", "--json", env=bare))
    assert len(listed) == 3 and {q for row in listed for q in row["queues"]} <= set(queues.values())
    assert any(row["queues"] for row in listed)
    jobs = as_json(wcsync("jobs", "--json", env=bare))
    assert {job["status"] for job in jobs} <= {"waiting", "running"} and "running" in {
        j["status"] for j in jobs
    }
    assert {job["queueId"] for job in jobs} <= set(queues.values())
    victim = processes[0]
    killed_queue = wait_until(lambda: _frozen_mid_sync(database, victim, MANY))
    listed = as_json(wcsync("workers", "--json", env=bare))
    assert len(listed) == 3 and {q for row in listed for q in row["queues"]} <= set(queues.values())
    assert killed_queue in {q for row in listed for q in row["queues"]}
    jobs = as_json(wcsync("jobs", "--json", env=bare))
    assert {job["status"] for job in jobs} <= {"waiting", "running"} and "running" in {
        j["status"] for j in jobs
    }
    assert {job["queueId"] for job in jobs} <= set(queues.values())
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    killed_at = time.monotonic()
    assert _done_lines(database, killed_queue) < MANY  # mid-sync

    # Another worker takes the killed worker's queue up within 60 s.
    killed_org = next(org for org in orgs if queues[org] == killed_queue)

    def taken_up() -> bool:
        lease = _leases(database).get(killed_queue)
        if lease is not None:
            return lease[1] != victim.pid
        return _done_lines(database, killed_queue) == MANY  # finished already by its new worker

    wait_until(taken_up, deadline_s=60)
    assert time.monotonic() - killed_at < 60
    assert _state(bare, killed_org, killed_queue) in ("processing", "done")
    # ... given back by the stalled-job check (a warning in a surviving worker's log), not by anyone typing.
    assert any("job.stalled_retried" in workers.stderr(p) for p in processes[1:])

    wait_until(lambda: all(_state(bare, org, queues[org]) == "done" for org in orgs), deadline_s=120)
    for org in orgs:
        check_mirror(database, org, queues[org], sandbox)
    assert all(p.poll() is None for p in processes[1:]), "the other workers kept running"

    listed = wcsync("jobs", "--json", env=bare)
    assert listed.returncode == 0 and as_json(listed) == []  # every job succeeded (none waiting or failed)
    alive = as_json(wcsync("workers", "--json", env=bare))
    assert len(alive) >= 2 and all(row["secondsSinceHeartbeat"] < 10 for row in alive[-2:])


@pytest.mark.sandbox(customers=300, faults=Faults(latency_ms=30))
def test_a_sigterm_stops_a_worker_after_its_batch_and_the_queue_ends_done(
    env: dict[str, str], workers: Workers, sandbox: RunningSandbox
) -> None:
    database = DatabaseConfig.from_url(env["WCSYNC_DATABASE_URL"])
    bare = _without_store_credentials(env)
    answer = _detach(bare, "default", _register(env, "default", sandbox.url))
    queue_id = answer["queueId"]
    assert _state(bare, "default", queue_id) == "draft"  # there before any worker ran it
    [job] = as_json(wcsync("jobs", "--json", env=bare))
    assert job["jobId"] == answer["jobId"] and job["queueId"] == queue_id and job["status"] == "waiting"

    first = workers.start()
    wait_until(lambda: _done_lines(database, queue_id) > 0)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0, workers.stderr(first)
    assert _done_lines(database, queue_id) < 300
    assert _state(bare, "default", queue_id) == "processing"
    [given_back] = as_json(wcsync("jobs", "--json", env=bare))
    assert given_back["status"] == "waiting" and given_back["attempts"] == 1
    assert queue_id not in _leases(database)

    workers.start()
    wait_until(lambda: _state(bare, "default", queue_id) == "done", deadline_s=60)
    check_mirror(database, "default", queue_id, sandbox)


@pytest.mark.sandbox(customers=5)
def test_db_migrate_twice_is_idempotent_and_creates_the_job_tables(env: dict[str, str]) -> None:
    again = wcsync("db", "migrate", env=env)  # the fixture migrated once already
    assert again.returncode == 0, again.stderr
    assert as_json(wcsync("jobs", "--json", env=env)) == []
    assert as_json(wcsync("workers", "--json", env=env)) == []
    assert "no worker is running" in wcsync("workers", env=env).stdout


@pytest.mark.sandbox(customers=5)
def test_the_refusals_are_one_line_exit_2(
    env: dict[str, str], sandbox: RunningSandbox, sqlite_url: str, tmp_path: Path
) -> None:
    def refused(result: subprocess.CompletedProcess[str], words: str) -> None:
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, result.stderr

    # Inline credentials are not taken for a detached start: the store must be registered.
    refused(
        wcsync("start", "--detach", "--url", sandbox.url, env=env),
        "a detached start needs a registered store (wcsync stores add)",
    )
    no_key = {k: v for k, v in env.items() if k != "WCSYNC_SECRET_KEY"}
    refused(wcsync("worker", env=no_key), "WCSYNC_SECRET_KEY")
    refused(wcsync("worker", env={**env, "WCSYNC_SECRET_KEY": "bm90LWEta2V5"}), "WCSYNC_SECRET_KEY")
    lite = wcsync_env(sandbox, sqlite_url, WCSYNC_SECRET_KEY=env["WCSYNC_SECRET_KEY"])
    # SQLite's one-machine jobs (the local table) take the same refusal; neither creates the database.
    refused(
        wcsync("start", "--detach", "--url", sandbox.url, env=lite),
        "a detached start needs a registered store (wcsync stores add)",
    )
    listed = wcsync("jobs", "--json", env=lite)
    assert listed.returncode == 4 and "does not exist: run `wcsync db migrate`" in listed.stderr, (
        listed.stderr
    )
    assert not (tmp_path / "wcsync.db").exists()  # nothing was created on the way
