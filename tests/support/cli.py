"""The `wcsync` command as a user types it: a real subprocess, in the repository, with an environment of the
test's making (and any other command a test runs there the same way)."""

from __future__ import annotations

import base64
import json
import os
import selectors
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from infrastructure.sandbox import RunningSandbox
from tests.support.paths import ROOT

WCSYNC = (sys.executable, "-m", "cli.main")


def wcsync_env(sandbox: RunningSandbox | None, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WCSYNC_", "WOO_"))}
    env["WCSYNC_DATABASE_URL"] = database_url
    env["WCSYNC_LOG_LEVEL"] = "warning"
    if sandbox is not None:
        env["WOO_URL"] = sandbox.url
        env["WOO_CONSUMER_KEY"] = sandbox.consumer_key
        env["WOO_CONSUMER_SECRET"] = sandbox.consumer_secret
    env.update(extra)
    return env


def run_in_repo(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A command (``wcsync``, or Python given code or a module) run to its end in the repository; its output
    captured as text, its exit status left for the test to judge."""
    return subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def wcsync(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`wcsync ARGS`, run to its end; its output captured as text."""
    return run_in_repo([*WCSYNC, *args], env=env, timeout=timeout)


def spawn_wcsync(*args: str, env: dict[str, str], **popen: Any) -> subprocess.Popen[Any]:
    """`wcsync ARGS` in the background; its output piped as text unless ``popen`` says otherwise."""
    options: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([*WCSYNC, *args], env=env, cwd=ROOT, **options)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def keyed_env(sandbox: RunningSandbox, database_url: str) -> dict[str, str]:
    """The environment of a `wcsync` with a fresh WCSYNC_SECRET_KEY (registered stores, serve's workers) on
    a migrated database."""
    key = base64.b64encode(os.urandom(32)).decode()
    environment = wcsync_env(sandbox, database_url, WCSYNC_SECRET_KEY=key)
    migrated = wcsync("db", "migrate", env=environment)
    assert migrated.returncode == 0, migrated.stderr
    return environment


def first_line(process: subprocess.Popen[str], timeout: float = 60) -> str:
    """The first line a started process prints (`wcsync serve`'s address), waited for ``timeout`` at most;
    fails the test when it prints nothing or ends first."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=timeout), "the process printed nothing"
    line = process.stdout.readline()
    assert line, f"the process ended (exit {process.poll()}) before it printed a line"
    return line
