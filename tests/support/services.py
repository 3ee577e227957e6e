"""What several integration test modules share: fast client retries and the sandbox's store settings."""

from __future__ import annotations

from infrastructure.adapters.woocommerce import ClientOptions
from infrastructure.sandbox import RunningSandbox
from infrastructure.support.config import StoreSettings

# Retries and the circuit breaker on a test's time scale, not a real store's.
FAST = ClientOptions(backoff_base_s=0.01, backoff_max_s=0.05, circuit_reset_s=0.05)


def store_of(sandbox: RunningSandbox) -> StoreSettings:
    return StoreSettings(
        url=sandbox.url, consumer_key=sandbox.consumer_key, consumer_secret=sandbox.consumer_secret
    )
