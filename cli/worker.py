"""`wcsync worker | workers | jobs`: the durable sync jobs (infrastructure.services.jobs on PostgreSQL,
infrastructure.services.localjobs on SQLite's one machine).

`wcsync worker` runs the jobs that `wcsync start --detach` (and the HTTP API) defer, on any machine sharing
the PostgreSQL database (on SQLite: this machine; `wcsync serve` runs one itself); SIGTERM or Ctrl-C stops
it after the batches in hand (each job saved and given back for another worker), exit 0; a second signal
stops it at once (its jobs are taken up again once its heartbeat is stale, as after SIGKILL). Started by
`wcsync serve` (PARENT_PID_VARIABLE set), it also stops after its batches when that server is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from cli import common
from cli.output import print_json
from domain.errors import EXIT_INTERRUPTED, EXIT_OK
from infrastructure.adapters import jobqueue
from infrastructure.adapters.secrets import SecretKey
from infrastructure.services.jobs import JobWorker, SyncJobs, WorkerSettings
from infrastructure.services.localjobs import LocalJobWorker, LocalSyncJobs
from infrastructure.support.config import check_ca_file

if TYPE_CHECKING:  # the HTTP client is loaded by `wcsync worker`, not by `wcsync jobs` or `workers`
    from infrastructure.adapters.woocommerce import ClientOptions

# Set by `wcsync serve` for the workers it starts: the server's pid; the worker stops when its parent changes.
PARENT_PID_VARIABLE = "WCSYNC_SERVE_PID"
# How often a worker started by a server looks whether that server is still there.
PARENT_CHECK_S = 0.5


def worker(args: argparse.Namespace) -> int:
    database = common.database(args)
    key = SecretKey.from_environment()  # the stores' credentials: checked before any job is taken
    options = _client_options(args)
    settings = WorkerSettings(
        concurrency=args.concurrency,
        heartbeat_s=args.heartbeat_s,
        stalled_after_s=args.stalled_after_s,
        stalled_check_s=args.stalled_check_s,
    )
    verbose = getattr(args, "verbose", 0) or 0
    jobqueue.route_logs(logging.DEBUG if verbose > 1 else logging.INFO)
    with common.services(args) as services:
        job_worker = services.job_worker(key, options, settings)
        sys.stderr.write(
            f"wcsync worker: running sync jobs of {database.display} "
            f"(concurrency {settings.concurrency}; Ctrl-C or SIGTERM stops it after the batches in hand)\n"
        )
        with services.live_projections(server=True):
            asyncio.run(_run(job_worker))
    return EXIT_OK


def _client_options(args: argparse.Namespace) -> ClientOptions:
    """The store client of every job: the worker's flags (the fetch concurrency stays the client's own:
    `--concurrency` here is the jobs run at once). A garbled --ca-file is exit 2 before any job."""
    from infrastructure.adapters.woocommerce import ClientOptions

    ca_file = check_ca_file(args.ca_file) if args.ca_file is not None else None
    return ClientOptions(
        rate=args.rate,
        ca_file=ca_file,
        timeout_s=args.timeout,
        max_response_bytes=args.max_response_mb * 1024 * 1024,
    )


async def _run(job_worker: JobWorker | LocalJobWorker) -> None:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            sys.stderr.write(
                "wcsync worker: stopped at once; its jobs are taken up again by another worker\n"
            )
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        sys.stderr.write("wcsync worker: stopping after the batches in hand (again to stop at once)\n")
        job_worker.stop()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    watch = asyncio.ensure_future(_watch_parent(job_worker))
    try:
        await job_worker.run()
    finally:
        watch.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _watch_parent(job_worker: JobWorker | LocalJobWorker) -> None:
    """Started by `wcsync serve`: stop after the batches in hand once that server is gone (killed), so its
    jobs wait for the next server's worker instead of running on, unseen, beside it."""
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent:
        return
    while os.getppid() == int(parent):  # noqa: ASYNC110 - nothing signals a parent's death: polled
        await asyncio.sleep(PARENT_CHECK_S)
    sys.stderr.write(
        "wcsync worker: the server that started it is gone; stopping after the batches in hand\n"
    )
    job_worker.stop()


def _jobs(args: argparse.Namespace) -> SyncJobs | LocalSyncJobs:
    database = common.database(args)
    return LocalSyncJobs(database) if database.backend == "sqlite" else SyncJobs(database)


def workers(args: argparse.Namespace) -> int:
    rows = _jobs(args).workers()
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("no worker is running; start one with `wcsync worker`")
    for row in rows:
        jobs = ", ".join(str(job) for job in row["jobs"]) or "none"
        queues = "".join(f"  queue {queue}" for queue in row["queues"])
        heartbeat = (
            f"heartbeat {row['lastHeartbeat']} ({row['secondsSinceHeartbeat']:g} s ago)"
            if row["lastHeartbeat"] is not None
            else "running"
        )
        print(f"worker {row['workerId']}  {heartbeat}  jobs {jobs}{queues}")
    return EXIT_OK


def jobs(args: argparse.Namespace) -> int:
    rows = _jobs(args).jobs()
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("no sync job is waiting, running or failed")
    for row in rows:
        print(_job_line(row))
    return EXIT_OK


def _job_line(row: dict[str, Any]) -> str:
    when = f"started {row['startedAt']}" if row["startedAt"] else f"deferred {row['deferredAt']}"
    return (
        f"job {row['jobId']}  {row['status']:<7}  {row['action']:<6}  queue {row['queueId']}  org {row['org']}"
        f"  attempts {row['attempts']}  {when}"
    )
