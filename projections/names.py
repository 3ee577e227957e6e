"""The projections' names, importable without loading the projections (the CLI's parser checks them)."""

from __future__ import annotations

PROJECTION_NAMES: tuple[str, ...] = ("customers", "queues", "activity", "ledger", "stores", "webhooks")
QUEUES = "queues"  # the projection of the queues' status rows
CUSTOMERS = "customers"  # the projection of the mirrored customers (woo_customers)
