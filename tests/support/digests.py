"""A customer's digest as the sync computes it (SHA-256 of the record's canonical bytes), for tests that
build Customer aggregates by hand."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from domain.customer import canonical_bytes


def content_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(record)).hexdigest()
