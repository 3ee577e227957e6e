"""Adapters: the event store (and all SQL on its tables), the WooCommerce client, the projection database."""
