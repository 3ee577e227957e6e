"""`wcsync demo`: a sandbox store on this machine and a full sync of it, end to end.

Shows the whole state machine: the first run ends `failed` with a few invalid customers, the sandbox
then "fixes them in WooCommerce", and `retry` fetches those customers again and finishes the queue."""

from __future__ import annotations

import asyncio
import sys

from cli.output import print_json, render_status, status_exit
from cli.progress import ProgressBar
from domain.errors import EXIT_STORE
from domain.queue import QueueOptions
from infrastructure.adapters.woocommerce import ClientOptions
from infrastructure.sandbox import Faults, SandboxConfig, SandboxThread
from infrastructure.support.config import DatabaseConfig, StoreSettings
from infrastructure.wiring import open_services
from projections import queries


def run_demo(
    database: DatabaseConfig,
    org: str,
    customers: int,
    invalid: int,
    json_out: bool,
) -> int:
    say = (lambda text: None) if json_out else (lambda text: sys.stderr.write(text + "\n"))
    # Light faults, as a real host has: a little latency, the odd 5xx and maintenance page.
    faults = Faults(latency_ms=20, error_rate=0.03, html_rate=0.01)
    config = SandboxConfig(customers=customers, invalid=min(invalid, customers), faults=faults)
    # Fast backoff: the demo's faults are sparse and it should end in seconds.
    client_options = ClientOptions(backoff_base_s=0.05, circuit_reset_s=1.0)
    with SandboxThread(config) as sandbox, open_services(database) as services:
        say(f"sandbox    {sandbox.url} ({customers} customers, {config.invalid} invalid, light faults)")
        say(f"database   {database.display}")
        store = StoreSettings(
            url=sandbox.url, consumer_key=sandbox.consumer_key, consumer_secret=sandbox.consumer_secret
        )
        engine = services.engine(org, actor="wcsync demo", progress=None if json_out else ProgressBar("sync"))
        with services.live_projections():
            first = asyncio.run(
                engine.start(store, QueueOptions(), client_options, queue_name="demo: sandbox customers")
            )
        first_status = queries.queue_status(services.projections, org, first.queue_id)
        assert first_status is not None
        if not json_out:
            print(render_status(first_status))
            print(f"took       {first.seconds:.2f} s\n")
        retried_status = None
        if first.store_error is None and first_status["failedCount"]:
            fixed = sandbox.store.fix_invalid()
            say(f"fixed {fixed} customer(s) in the sandbox store; retrying the failed lines")
            engine = services.engine(
                org, actor="wcsync demo", progress=None if json_out else ProgressBar("retry")
            )
            second = asyncio.run(engine.retry(first.queue_id, store, client_options))
            retried_status = queries.queue_status(services.projections, org, second.queue_id)
            assert retried_status is not None
            if not json_out:
                print(render_status(retried_status))
        final = retried_status or first_status
        if json_out:
            print_json(
                {"firstRun": first_status, "afterRetry": retried_status, "seconds": round(first.seconds, 3)}
            )
        else:
            print(f"\nnext: wcsync activity {first.queue_id}   ·   wcsync queues")
        if first.store_error is not None:
            sys.stderr.write(f"wcsync: {first.store_error}\n")
            return EXIT_STORE
        return status_exit(final)
