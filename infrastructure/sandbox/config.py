"""What the sandbox is asked for: its options (SandboxConfig), the host faults to add (Faults), their bounds
and the sandbox's public credentials. Plain checked dataclasses; nothing here serves anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_CONSUMER_KEY = "ck_sandbox_0123456789abcdef"
DEFAULT_CONSUMER_SECRET = "cs_sandbox_0123456789abcdef"  # noqa: S105 - a sandbox-only credential, public by design
# The optional read-only key pair (`wcsync sandbox --read-only-key`): WooCommerce refuses its writes with a 401.
READ_ONLY_CONSUMER_KEY = "ck_sandbox_readonly_0123456789"
READ_ONLY_CONSUMER_SECRET = "cs_sandbox_readonly_0123456789"  # noqa: S105 - sandbox-only, public by design
# WooCommerce's delivery timeout (WC_Webhook::deliver: wp_safe_remote_request's timeout of 60 s).
DEFAULT_DELIVERY_TIMEOUT_S = 60.0

# The sandbox's own bounds (its flags and SandboxConfig): a store of more customers than this is no test,
# and would eat the machine's memory first (each customer is a few KB, generated up front).
MAX_SANDBOX_CUSTOMERS = 5_000_000
MAX_SANDBOX_COUNT = 1_000_000_000
MAX_SANDBOX_DELAY_MS = 600_000  # ten minutes
MAX_SANDBOX_RATE_LIMIT = 1_000_000.0


@dataclass(frozen=True)
class Faults:
    """What the host in front of the store does wrong, each seeded so a run can be repeated."""

    latency_ms: float = 0.0
    rate_limit: float = 0.0
    error_rate: float = 0.0
    html_rate: float = 0.0
    truncated_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 2000.0
    repeat_last_page: bool = False
    churn_every: int = 0
    # The share of webhook deliveries the store drops without sending (a lost delivery, for reconciling tests).
    drop_deliveries: float = 0.0

    def __post_init__(self) -> None:
        # Each message starts with the field's name: the CLI names it as its option.
        for name in ("error_rate", "html_rate", "truncated_rate", "slow_rate", "drop_deliveries"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {_shown(value)}")
        for name, high in (
            ("latency_ms", MAX_SANDBOX_DELAY_MS),
            ("slow_ms", MAX_SANDBOX_DELAY_MS),
            ("rate_limit", MAX_SANDBOX_RATE_LIMIT),
        ):
            _check_number(name, getattr(self, name), high, whole=False)
        _check_number("churn_every", self.churn_every, MAX_SANDBOX_COUNT)


@dataclass(frozen=True)
class SandboxConfig:
    customers: int = 797
    invalid: int = 0
    other_roles: int = 0
    seed: int = 42
    consumer_key: str = DEFAULT_CONSUMER_KEY
    consumer_secret: str = DEFAULT_CONSUMER_SECRET
    faults: Faults = field(default_factory=Faults)
    tls: bool = False
    # A second key pair with read permission only (None: the store has only the read/write pair above).
    read_only_key: str | None = None
    read_only_secret: str | None = None
    # How long a webhook delivery may take before it counts as failed (WooCommerce: 60 s; tests shorten it).
    delivery_timeout_s: float = DEFAULT_DELIVERY_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("customers", "invalid", "other_roles"):
            _check_number(name, getattr(self, name), MAX_SANDBOX_CUSTOMERS)
        _check_number("delivery_timeout_s", self.delivery_timeout_s, MAX_SANDBOX_DELAY_MS / 1000, whole=False)
        if self.delivery_timeout_s <= 0:
            raise ValueError(f"delivery_timeout_s must be above 0, got {_shown(self.delivery_timeout_s)}")
        if (self.read_only_key is None) != (self.read_only_secret is None):
            raise ValueError("read_only_key and read_only_secret are given together or not at all")
        if self.read_only_key is not None and self.read_only_key == self.consumer_key:
            raise ValueError("read_only_key must differ from consumer_key")

    def __repr__(self) -> str:
        # The secret stays out of logs and tracebacks.
        return (
            f"SandboxConfig(customers={self.customers}, invalid={self.invalid}, "
            f"other_roles={self.other_roles}, seed={self.seed}, faults={self.faults!r}, tls={self.tls}, "
            f"read_only_key={self.read_only_key is not None}, delivery_timeout_s={self.delivery_timeout_s})"
        )


def _shown(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 30 else f"{text[:27]}..."


def _check_number(name: str, value: Any, high: float, whole: bool = True) -> None:
    """ValueError "NAME must be ..." (the CLI names it as its option) unless 0 <= value <= high, finite."""
    number = isinstance(value, int) or (not whole and isinstance(value, float))
    if isinstance(value, bool) or not number or not (0 <= value <= high):
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{name} must be {kind} from 0 to {high:,.0f}, got {_shown(value)}")
