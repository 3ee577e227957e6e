"""The sandbox store: a WooCommerce-compatible store for development, tests, demos and benchmarks.

It is a development and test double (`wcsync sandbox`, `wcsync demo`, the test suites), never a
production dependency: nothing that syncs a real store imports it. It follows shared/woocommerce-api.md: the
customers listing and item routes with WordPress's parameter checks and headers, OAuth 1.0a over plain HTTP
and Basic over HTTPS, and the faults real hosts add (rate limits, HTML error pages, truncated JSON, caches
that ignore the query string, a store that changes during a scan), and the webhooks resource with its
signed deliveries as WooCommerce sends them (merged, never retried, disabled after failures; a fault drops
some). It listens on loopback only: the admin routes under /_sandbox have no auth at all.

Modules, lowest first (each imports only those above it, domain and infrastructure.support):
config (SandboxConfig, Faults, bounds, credentials), data (generated customers), queries (the listing's
parameters, filters, order and paging), store (the users in memory), responses, auth (Basic / OAuth 1.0a, the
read/write and read-only keys), faults (the faulty host), webhooks (the /webhooks resource), deliveries (what
the webhooks send), app (aiohttp routes), tls (throwaway certificates), server (start_sandbox, SandboxThread,
serve_forever).
"""

from infrastructure.sandbox.config import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    READ_ONLY_CONSUMER_KEY,
    READ_ONLY_CONSUMER_SECRET,
    Faults,
    SandboxConfig,
)
from infrastructure.sandbox.data import generate_customers
from infrastructure.sandbox.deliveries import MAX_FAILURES
from infrastructure.sandbox.server import RunningSandbox, SandboxThread, serve_forever, start_sandbox
from infrastructure.sandbox.webhooks import WEBHOOKS_PATH

__all__ = [
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "MAX_FAILURES",
    "READ_ONLY_CONSUMER_KEY",
    "READ_ONLY_CONSUMER_SECRET",
    "WEBHOOKS_PATH",
    "Faults",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxThread",
    "generate_customers",
    "serve_forever",
    "start_sandbox",
]
