"""The sandbox store: a WooCommerce-compatible development and test double (never a production dependency)."""

from infrastructure.sandbox.store import (
    DEFAULT_CONSUMER_KEY,
    DEFAULT_CONSUMER_SECRET,
    Faults,
    RunningSandbox,
    SandboxConfig,
    SandboxThread,
    _write_tls_files,
    generate_customers,
    serve_forever,
    start_sandbox,
)

__all__ = [
    "DEFAULT_CONSUMER_KEY",
    "DEFAULT_CONSUMER_SECRET",
    "Faults",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxThread",
    "_write_tls_files",
    "generate_customers",
    "serve_forever",
    "start_sandbox",
]
