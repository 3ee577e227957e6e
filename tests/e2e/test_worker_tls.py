"""A worker syncs an HTTPS store signed by a private CA when told the CA (`wcsync worker --ca-file`); a
worker that is not told fetches nothing: the queue records the store's reason and ends failed, resumable."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path

from infrastructure.sandbox import SandboxThread
from infrastructure.sandbox.config import SandboxConfig
from tests.support.cli import as_json, spawn_wcsync, wcsync, wcsync_env
from tests.support.waiting import wait_until


def _state(env: dict[str, str], queue_id: str) -> str:
    return str(as_json(wcsync("status", queue_id, "--json", env=env))["state"])


def _jobs(env: dict[str, str]) -> list[dict[str, object]]:
    listed: list[dict[str, object]] = as_json(wcsync("jobs", "--json", env=env))
    return listed


def _stop(worker: subprocess.Popen[str]) -> str:
    worker.send_signal(signal.SIGTERM)
    _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    return stderr


def test_a_worker_syncs_a_private_ca_store_with_its_ca_file_and_refuses_it_without(tmp_path: Path) -> None:
    with SandboxThread(SandboxConfig(customers=40, tls=True)) as store:
        assert store.ca_file is not None
        key = base64.b64encode(os.urandom(32)).decode()
        env = wcsync_env(store, f"sqlite:///{tmp_path / 'wcsync.db'}", WCSYNC_SECRET_KEY=key)
        added = wcsync("stores", "add", "--url", store.url, "--ca-file", store.ca_file, "--json", env=env)
        assert added.returncode == 0, added.stderr
        store_id = json.loads(added.stdout)["storeId"]
        bare = {k: v for k, v in env.items() if not k.startswith("WOO_")}

        # Not told the CA: the store's certificate is not trusted; the queue records that and ends failed
        # (resumable), with nothing fetched, and the job is over.
        refused = wcsync("start", "--detach", "--store", store_id, "--json", env=bare)
        assert refused.returncode == 0, refused.stderr
        first = json.loads(refused.stdout)["queueId"]
        worker = spawn_wcsync("-v", "worker", env=bare)
        try:
            wait_until(lambda: _state(bare, first) == "failed")
            wait_until(lambda: _jobs(bare) == [])
        finally:
            stderr = _stop(worker)
        assert "TLS certificate was not accepted" in stderr and "Traceback" not in stderr, stderr
        assert as_json(wcsync("status", first, "--json", env=bare))["doneCount"] == 0

        # Told the CA: the next queue syncs to the end.
        started = wcsync("start", "--detach", "--store", store_id, "--json", env=bare)
        second = json.loads(started.stdout)["queueId"]
        worker = spawn_wcsync("worker", "--ca-file", store.ca_file, env=bare)
        try:
            wait_until(lambda: _state(bare, second) == "done")
        finally:
            _stop(worker)
        status = as_json(wcsync("status", second, "--json", env=bare))
        assert (status["doneCount"], status["createdCount"]) == (40, 40)
