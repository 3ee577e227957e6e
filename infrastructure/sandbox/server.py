"""Running the sandbox: start_sandbox (an async context manager, on loopback only), SandboxThread (the same
on a background loop, for synchronous code and tests) and serve_forever (`wcsync sandbox`)."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import signal
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web

from infrastructure.sandbox.app import build_app
from infrastructure.sandbox.config import SandboxConfig
from infrastructure.sandbox.data import generate_customers
from infrastructure.sandbox.store import SandboxStore
from infrastructure.sandbox.tls import write_tls_files
from infrastructure.sandbox.webhooks import Webhooks
from infrastructure.support.config import is_loopback
from infrastructure.support.loop_thread import LoopThread

# A store this large is frozen out of the garbage collector's passes (see start_sandbox).
_FREEZE_FROM = 10_000

logger = structlog.get_logger("wcsync.sandbox")


@dataclass
class RunningSandbox:
    url: str
    consumer_key: str
    consumer_secret: str
    store: SandboxStore
    ca_file: str | None = None
    # The read-only key pair, when the store has one (SandboxConfig.read_only_key).
    read_only_key: str | None = None
    read_only_secret: str | None = None
    webhooks: Webhooks | None = None

    def __repr__(self) -> str:
        return f"RunningSandbox(url={self.url!r}, ca_file={self.ca_file!r})"


def _check_loopback(host: str) -> None:
    if not is_loopback(host):
        raise ValueError(
            f"the sandbox serves loopback addresses only (its admin routes have no auth), not {host!r}"
        )


@asynccontextmanager
async def start_sandbox(
    config: SandboxConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSandbox]:
    """Generate the store, listen on host:port (0 = any free port), and yield once it accepts connections."""
    _check_loopback(host)
    records = generate_customers(config.customers, config.seed, config.invalid, config.other_roles)
    store = SandboxStore(records, seed=config.seed, copy_records=False)
    del records
    if config.customers + config.other_roles >= _FREEZE_FROM:
        # The store lives as long as the server: keep its millions of objects out of every later GC pass, or
        # a client in the same process (the benchmark) pays for scanning them on each full collection.
        # Small stores skip it: freezing also pins whatever cyclic garbage exists at that moment.
        gc.freeze()
    with tempfile.TemporaryDirectory(prefix="wcsync-sandbox-") as tls_dir:
        ssl_context: ssl.SSLContext | None = None
        ca_file: str | None = None
        if config.tls:
            ca_path, cert_path, key_path = write_tls_files(Path(tls_dir))
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(cert_path, key_path)
            ca_file = str(ca_path)
        hooks = Webhooks()
        runner = web.AppRunner(build_app(store, config, hooks), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
            bound_port = runner.addresses[0][1]
            url_host = f"[{host}]" if ":" in host else host
            url = f"{'https' if config.tls else 'http'}://{url_host}:{bound_port}"
            store.set_base_url(url)
            hooks.base_url = url
            logger.info("sandbox listening", url=url, customers=config.customers, tls=config.tls)
            yield RunningSandbox(
                url,
                config.consumer_key,
                config.consumer_secret,
                store,
                ca_file,
                config.read_only_key,
                config.read_only_secret,
                hooks,
            )
        finally:
            await runner.cleanup()


class SandboxThread(LoopThread[RunningSandbox]):
    """Runs start_sandbox on its own event loop in a background thread, for synchronous code and tests."""

    def __init__(self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(lambda: start_sandbox(config, host, port), "the sandbox")


def serve_forever(config: SandboxConfig, host: str, port: int) -> None:
    """For `wcsync sandbox`: print one JSON line with the URL once listening, then serve until SIGINT/SIGTERM."""
    if not structlog.is_configured():
        # stdout carries exactly one line for whoever started us; logs go to stderr.
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        )
    asyncio.run(_serve(config, host, port))


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with start_sandbox(config, host, port) as running:
        line: dict[str, str] = {"url": running.url}
        if running.ca_file is not None:
            line["ca_file"] = running.ca_file
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()
