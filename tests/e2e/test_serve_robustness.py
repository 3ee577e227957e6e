"""A server that stays responsive and stoppable, and CLI runs that stop within their batch: `wcsync serve`
and `wcsync start` as real subprocesses, over real sockets, against the sandbox store."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from infrastructure.bootstrap import migrate
from infrastructure.config import DatabaseConfig
from infrastructure.sandbox import Faults, RunningSandbox, SandboxConfig, SandboxThread
from tests.e2e.test_cli import wcsync, wcsync_env
from tests.integration.test_http_api import Api, error_of, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _first_line(process: subprocess.Popen[str], timeout: float = 60) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=timeout), "the process printed nothing"
    return process.stdout.readline()


def _serve(database_url: str) -> tuple[subprocess.Popen[str], Api]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", "0"],
        env=wcsync_env(None, database_url),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, Api(json.loads(_first_line(process))["url"])


def _config(sandbox: RunningSandbox) -> dict[str, str]:
    return {
        "url": sandbox.url,
        "consumerKey": sandbox.consumer_key,
        "consumerSecret": sandbox.consumer_secret,
    }


def test_slow_runs_never_block_healthz_and_sigterm_stops_the_server_within_10_s(database_url: str) -> None:
    migrate(DatabaseConfig.from_url(database_url))
    with SandboxThread(SandboxConfig(customers=40)) as sandbox:
        process, api = _serve(database_url)
        try:
            slow = {"batchSize": 1, "batchDelayMs": 60_000}
            queues = []
            for n in range(7):
                code, answer = api.sync(org_id=f"org{n}", config=_config(sandbox), options=slow)
                assert code == 202, answer
                queues.append((f"org{n}", answer["data"]["queueId"]))
            started = time.monotonic()
            code, answer = api.get("/healthz")
            assert code == 200 and answer["data"]["running"] == 7
            assert time.monotonic() - started < 1.0
            # Reads of every org still answer while seven runs sleep between their batches.
            assert api.status("org3", queues[3][1])["isRunning"] is True

            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - stopping < 10.0
            stderr = process.stderr.read() if process.stderr is not None else ""
            assert "Traceback" not in stderr, stderr
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

        # Each queue kept its saved batch, says why it stopped, and is resumable.
        env = wcsync_env(sandbox, database_url)
        for org, queue_id in queues:
            status = json.loads(wcsync("status", queue_id, "--json", "--org", org, env=env).stdout)
            assert status["state"] == "processing" and status["doneCount"] >= 1 and status["draftCount"] >= 1
            activity = json.loads(wcsync("activity", queue_id, "--json", "--org", org, env=env).stdout)
            assert any(row["activityType"] == "run_stopped" for row in activity)


def test_ten_concurrent_starts_on_sqlite_finish_or_are_refused_clearly(sqlite_url: str) -> None:
    with SandboxThread(SandboxConfig(customers=120, faults=Faults(latency_ms=5))) as sandbox:
        process, api = _serve(sqlite_url)
        try:
            answers: list[tuple[int, Any]] = []
            lock = threading.Lock()

            def start(n: int) -> None:
                answer = api.sync(org_id=f"org{n}", config=_config(sandbox), options={"batchSize": 10})
                with lock:
                    answers.append((n, answer))

            threads = [threading.Thread(target=start, args=(n,)) for n in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert len(answers) == 10
            accepted = []
            for n, (code, answer) in answers:
                if code == 503:
                    assert error_of(answer)["code"] == "server_busy"
                    continue
                assert code == 202, answer
                accepted.append((f"org{n}", answer["data"]["queueId"]))
            assert len(accepted) >= 8
            for org, queue_id in accepted:
                status = wait_until(lambda o=org, q=queue_id: _ended(api.status(o, q)))
                assert status["state"] == "done" and status["createdCount"] == 120, status
            assert api.get("/healthz")[1]["data"]["running"] == 0
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            stderr = process.stderr.read() if process.stderr is not None else ""
            assert "OperationalError" not in stderr and "Traceback" not in stderr, stderr
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _ended(status: dict[str, Any]) -> dict[str, Any] | None:
    return None if status["isRunning"] else status


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_a_cli_run_within_its_batch_and_resume_finishes_it(
    sqlite_url: str, signum: int
) -> None:
    with SandboxThread(SandboxConfig(customers=12)) as sandbox:
        env = wcsync_env(sandbox, sqlite_url)
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "start", "--batch-size", "4", "--batch-delay-ms", "5000"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stderr is not None
            queue_id = ""
            deadline = time.monotonic() + 60
            while not queue_id and time.monotonic() < deadline:
                line = process.stderr.readline()
                if line.startswith("queue "):
                    queue_id = line.split()[1]
            assert queue_id, "the run never named its queue"
            # Once the first batch is saved, the run sleeps 5 s before the next: stop it there.
            wait_until(lambda: _saved_once(env, queue_id))
            stopping = time.monotonic()
            process.send_signal(signum)
            assert process.wait(timeout=10) == 130
            assert time.monotonic() - stopping < 3.0
            stderr = process.stderr.read()
            assert f"wcsync resume {queue_id}" in stderr and "Traceback" not in stderr, stderr
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        status = json.loads(wcsync("status", queue_id, "--json", env=env).stdout)
        assert status["state"] == "processing" and status["doneCount"] == 4 and status["draftCount"] == 8
        resumed = wcsync("resume", queue_id, "--json", env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["createdCount"] == 12


def _saved_once(env: dict[str, str], queue_id: str) -> bool | None:
    done = wcsync("status", queue_id, "--json", env=env)
    if done.returncode != 0:
        return None
    return True if json.loads(done.stdout)["doneCount"] >= 4 else None
