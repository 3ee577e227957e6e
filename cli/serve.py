"""`wcsync serve`: the seed's HTTP endpoint (infrastructure/api/http.py) until SIGINT/SIGTERM.

Prints one JSON line with its URL on stdout once it accepts connections; logs go to stderr.

With WCSYNC_SECRET_KEY (the stores' secrets), the server runs registered stores' syncs as durable jobs:
it starts ``--workers`` `wcsync worker` processes of its own (default 1; 0 where workers run elsewhere),
each in its own process, restarted if one dies and stopped with the server, and given the server's
--heartbeat-s / --stalled-after-s / --stalled-check-s (as `wcsync worker` takes them); before them it gives
the queues a process that died left processing (a killed server, a crashed CLI run) a resume job, so they
finish with nobody typing `resume`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import structlog

from cli import common
from cli.worker import PARENT_PID_VARIABLE
from domain.errors import EXIT_OK, WcsyncError
from infrastructure.adapters.secrets import SECRET_KEY_VARIABLE, SecretKey
from infrastructure.api.dashboard.guard import PUBLIC_ORIGIN_VARIABLE, parse_public_origin
from infrastructure.api.http import ApiSettings, serve
from infrastructure.services.jobs import WorkerSettings
from infrastructure.support.config import DatabaseConfig, check_listen_address, is_loopback, listen_error
from infrastructure.support.errors import ConfigurationError
from infrastructure.wiring import Services, open_services
from projections.runner import DATABASE_URL_VARIABLE

log = structlog.get_logger("wcsync.serve")


def run(args: argparse.Namespace) -> int:
    check_listen_address(args.host, args.port)  # before any work: exit 2, one line
    if args.no_auth and not is_loopback(args.host):
        raise ConfigurationError(
            f"--no-auth answers anyone without a token, so it only listens on loopback, not on {args.host}; "
            "use --host 127.0.0.1, or create tokens with `wcsync tokens create` and drop --no-auth"
        )
    # The workers' timing is checked here (exit 2, one line), not by each worker failing again and again.
    timing = WorkerSettings(
        heartbeat_s=args.heartbeat_s,
        stalled_after_s=args.stalled_after_s,
        stalled_check_s=args.stalled_check_s,
    )
    # The stores' secrets (store_id in a sync, POST /api/v1/stores): a key that is set must be valid.
    secret_key = SecretKey.from_environment() if os.environ.get(SECRET_KEY_VARIABLE) else None
    settings = ApiSettings(no_auth=args.no_auth, secret_key=secret_key, public_origin=_public_origin(args))
    if secret_key is None:
        sys.stderr.write(
            f"wcsync serve: no {SECRET_KEY_VARIABLE}: registered stores cannot run and no worker is started; "
            "syncs sent with their credentials (config) run in this process\n"
        )
    listened = False

    def listening(url: str) -> None:
        nonlocal listened
        listened = True
        sys.stdout.write(json.dumps({"url": url, "database": services.database.display}) + "\n")
        sys.stdout.flush()

    database = common.database(args)
    with open_services(database) as services:
        workers = WorkerProcesses(database, args.workers if secret_key is not None else 0, timing)
        pickup = Pickup(services, secret_key)
        with workers, pickup:
            try:
                asyncio.run(serve(services, args.host, args.port, listening, settings))
            except OSError as error:
                if listened:
                    raise
                raise listen_error(error, args.host, args.port) from None  # the port taken meanwhile
    return EXIT_OK


def _public_origin(args: argparse.Namespace) -> str | None:
    """--public-origin, else WCSYNC_PUBLIC_ORIGIN (set empty: unset), checked (exit 2, one line)."""
    if args.public_origin is not None:
        return parse_public_origin(args.public_origin)
    given = os.environ.get(PUBLIC_ORIGIN_VARIABLE)
    return parse_public_origin(given, PUBLIC_ORIGIN_VARIABLE) if given else None


class Pickup:
    """At the server's start, and every EVERY_S while it runs: a resume job for each queue a process that
    died left processing (a killed server, worker or CLI run of a registered store), so it finishes with
    nobody typing `resume` (Services.pickup_abandoned). Nothing without the stores' key."""

    EVERY_S = 30.0

    def __init__(self, services: Services, key: SecretKey | None) -> None:
        self.services = services
        self.key = key
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _once(self) -> None:
        assert self.key is not None
        try:
            self.services.pickup_abandoned(self.key)
        except WcsyncError as error:  # the database away for a moment: the next round tries again
            log.warning("serve.pickup_failed", error=str(error))

    def _run(self) -> None:
        while not self._stopping.wait(self.EVERY_S):
            self._once()

    def __enter__(self) -> Pickup:
        if self.key is not None:
            self._once()
            self._thread = threading.Thread(target=self._run, name="wcsync-pickup", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class WorkerProcesses:
    """The server's own `wcsync worker` processes: started on entry, each restarted (at most once per
    RESTART_WAIT_S) if it ends while the server runs, and stopped on exit (SIGTERM: after the batches in
    hand, within WORKER_STOP_S, else killed). The database is passed in the environment, never on argv;
    PARENT_PID_VARIABLE makes a worker stop on its own when this server is killed. ``timing``'s heartbeat
    and stall settings are passed on as `wcsync worker`'s flags (its other settings are the worker's own)."""

    RESTART_WAIT_S = 5.0
    WORKER_STOP_S = 9.0

    def __init__(self, database: DatabaseConfig, count: int, timing: WorkerSettings | None = None) -> None:
        self.database = database
        self.count = count
        self.flags = worker_flags(timing or WorkerSettings())
        self._processes: list[subprocess.Popen[bytes]] = []
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, DATABASE_URL_VARIABLE: self.database.url, PARENT_PID_VARIABLE: str(os.getpid())}
        return subprocess.Popen(  # noqa: S603 - this interpreter, our command, flags of numbers
            [sys.executable, "-m", "cli.main", "worker", *self.flags],
            env=env,
            # A session of its own: a Ctrl-C at the terminal reaches the server only, which then stops its
            # workers with one SIGTERM (after their batch); a second signal would stop them at once.
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )

    def __enter__(self) -> WorkerProcesses:
        self._processes = [self._spawn() for _ in range(self.count)]
        if self._processes:
            self._watcher = threading.Thread(target=self._watch, name="wcsync-workers", daemon=True)
            self._watcher.start()
        return self

    def _watch(self) -> None:
        while not self._stopping.wait(self.RESTART_WAIT_S):
            for index, process in enumerate(self._processes):
                if process.poll() is not None and not self._stopping.is_set():
                    log.warning("serve.worker_restarted", pid=process.pid, exit_code=process.returncode)
                    self._processes[index] = self._spawn()

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.WORKER_STOP_S
        for process in self._processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_flags(timing: WorkerSettings) -> tuple[str, ...]:
    """`wcsync worker`'s flags for ``timing``'s heartbeat and stall settings."""
    return (
        "--heartbeat-s",
        str(timing.heartbeat_s),
        "--stalled-after-s",
        str(timing.stalled_after_s),
        "--stalled-check-s",
        str(timing.stalled_check_s),
    )
