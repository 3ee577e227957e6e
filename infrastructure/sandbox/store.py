"""The store's users, in memory, behind one lock: read and served by the store front, written by the admin
routes, by the churn fault and by a test's thread. Records are encoded once as WordPress does (wp_json_encode,
non-ASCII escaped) and kept until they change."""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infrastructure.sandbox.data import format_gmt, format_local, make_customer, meta_entries, repair
from infrastructure.sandbox.queries import ListQuery, select_ids
from infrastructure.support.woocommerce_api import CUSTOMERS_PATH


@dataclass
class SandboxStats:
    """What the store front has served (admin requests are not counted)."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    max_per_second: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(status): count for status, count in sorted(self.by_status.items())},
            "rate_limited": self.rate_limited,
            "max_per_second": self.max_per_second,
        }


class SandboxStore:
    """The store's users, in memory. One lock guards everything: the admin API and a test thread may write."""

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]],
        seed: int = 42,
        base_url: str = "http://127.0.0.1",
        *,
        copy_records: bool = True,
    ) -> None:
        """`copy_records=False` hands the records over to the store (no deep copy: 100k records take seconds)."""
        self._lock = threading.RLock()
        self._records: dict[int, dict[str, Any]] = {}
        for record in records:
            owned = copy.deepcopy(dict(record)) if copy_records else record
            self._records[int(owned["id"])] = owned  # type: ignore[assignment]
        self._rng = random.Random(seed ^ 0x5EED)
        self._base_url = base_url
        self._encoded: dict[int, bytes] = {}
        self._ids_by_role: dict[str, list[int]] = {}
        self._next_id = max(self._records, default=1) + 1
        self._next_meta_id = 1 + max(
            (entry["id"] for r in self._records.values() for entry in meta_entries(r)), default=1_000
        )
        self._stats = SandboxStats()

    # -- reading

    def customer_ids(self, role: str = "customer") -> list[int]:
        with self._lock:
            return list(self._ids(role))

    def get(self, customer_id: int) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(customer_id)
            return None if record is None else copy.deepcopy(record)

    @property
    def stats(self) -> SandboxStats:
        with self._lock:
            return SandboxStats(
                self._stats.requests,
                dict(self._stats.by_status),
                self._stats.rate_limited,
                self._stats.max_per_second,
            )

    # -- writing

    def create(self, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A new user at the end of the id range; fields of `record` (all but id) override generated ones."""
        with self._lock:
            customer_id = self._next_id
            self._next_id += 1 + (self._rng.random() < 0.2)
            now = int(time.time())
            new, self._next_meta_id = make_customer(
                self._rng, customer_id, now, "customer", self._next_meta_id
            )
            new.update(
                date_modified=new["date_created"],
                date_modified_gmt=new["date_created_gmt"],
                is_paying_customer=False,
            )
            if record:
                new.update(copy.deepcopy({key: value for key, value in record.items() if key != "id"}))
                self._number_meta(new)
            self._records[customer_id] = new
            self._ids_by_role.clear()
            return copy.deepcopy(new)

    def update(self, customer_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply changes like WooCommerce's PUT: billing/shipping objects merge, other fields replace."""
        with self._lock:
            record = self._records.get(customer_id)
            if record is None:
                raise KeyError(customer_id)
            for key, value in copy.deepcopy(dict(changes)).items():
                if key == "id":
                    continue
                current = record.get(key)
                if key in ("billing", "shipping") and isinstance(value, dict) and isinstance(current, dict):
                    current.update(value)
                else:
                    record[key] = value
            self._number_meta(record)
            self._touch(record)
            if "role" in changes:
                self._ids_by_role.clear()
            return copy.deepcopy(record)

    def delete(self, customer_id: int) -> None:
        with self._lock:
            if self._records.pop(customer_id, None) is None:
                raise KeyError(customer_id)
            self._encoded.pop(customer_id, None)
            self._ids_by_role.clear()

    def fix_invalid(self) -> int:
        """Repair every record that breaks a validation rule; returns how many were repaired."""
        with self._lock:
            fixed = 0
            for customer_id, record in self._records.items():
                if repair(record, len(self._encode(customer_id))):
                    self._touch(record)
                    fixed += 1
            if fixed:
                self._ids_by_role.clear()
            return fixed

    def churn(self, rng: random.Random) -> tuple[int, int | None, int | None]:
        """One create, one edit, one delete among customers, as a live store does during a scan."""
        with self._lock:
            created = self.create()["id"]
            ids = [i for i in self._ids("customer") if i != created]
            edited = deleted = None
            if ids:
                edited = ids[int(rng.random() * len(ids))]
                phone = f"+1 555 {int(rng.random() * 9_000_000) + 1_000_000}"
                self.update(edited, {"billing": {"phone": phone}})
                candidates = [i for i in ids if i != edited]
                if candidates:
                    deleted = candidates[int(rng.random() * len(candidates))]
                    self.delete(deleted)
            return created, edited, deleted

    def edit_random(self, count: int, seed: int) -> list[int]:
        """Edit ``count`` customers picked at random (seeded), each as an admin's edit of its billing phone
        would be: bench/side_by_side.py changes 1% of a big store this way in one request, not a thousand."""
        rng = random.Random(seed)
        with self._lock:
            ids = self._ids("customer")
            picked = sorted(rng.sample(ids, min(count, len(ids))))
            for customer_id in picked:
                phone = f"+1 555 {rng.randrange(1_000_000, 10_000_000)}"
                self.update(customer_id, {"billing": {"phone": phone}})
            return picked

    # -- serving (used by the store front)

    def set_base_url(self, base_url: str) -> None:
        with self._lock:
            self._base_url = base_url.rstrip("/")
            self._encoded.clear()

    def encoded_list(self, ids: Iterable[int]) -> bytes:
        with self._lock:
            # An id deleted since the query was answered (another thread) is left out, as a live store would.
            return b"[" + b",".join([self._encode(i) for i in ids if i in self._records]) + b"]"

    def encoded_one(self, customer_id: int) -> bytes | None:
        with self._lock:
            return self._encode(customer_id) if customer_id in self._records else None

    def api_object(self, customer_id: int) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(customer_id)
            return None if record is None else self._with_links(record)

    def select(self, query: ListQuery) -> list[int]:
        """Ids matching the query's filters, in the query's order (no paging)."""
        with self._lock:
            return select_ids(self._ids(query.role), self._records, query)

    def note_request(self, status: int, accepted_in_window: int | None) -> None:
        with self._lock:
            stats = self._stats
            stats.requests += 1
            stats.by_status[status] = stats.by_status.get(status, 0) + 1
            if status == 429:
                stats.rate_limited += 1
            if accepted_in_window is not None and accepted_in_window > stats.max_per_second:
                stats.max_per_second = accepted_in_window

    # -- internals (lock held)

    def _ids(self, role: str) -> list[int]:
        ids = self._ids_by_role.get(role)
        if ids is None:
            if role == "all":
                ids = sorted(self._records)
            else:
                ids = sorted(i for i, r in self._records.items() if r.get("role") == role)
            self._ids_by_role[role] = ids
        return ids

    def _with_links(self, record: dict[str, Any]) -> dict[str, Any]:
        collection = f"{self._base_url}{CUSTOMERS_PATH}"
        links = {
            "self": [{"href": f"{collection}/{record.get('id')}"}],
            "collection": [{"href": collection}],
        }
        return {**record, "_links": links}

    def _encode(self, customer_id: int) -> bytes:
        encoded = self._encoded.get(customer_id)
        if encoded is None:
            # WordPress's wp_json_encode escapes non-ASCII characters; so does json.dumps by default.
            obj = self._with_links(self._records[customer_id])
            encoded = json.dumps(obj, separators=(",", ":")).encode("ascii")
            self._encoded[customer_id] = encoded
        return encoded

    def _touch(self, record: dict[str, Any]) -> None:
        """Advance date_modified, strictly: two edits in one second must still be told apart."""
        now = int(time.time())
        previous = record.get("date_modified_gmt")
        if isinstance(previous, str):
            try:
                parsed = datetime.strptime(previous, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
                now = max(now, int(parsed.timestamp()) + 1)
            except ValueError:
                pass
        record["date_modified"] = format_local(now)
        record["date_modified_gmt"] = format_gmt(now)
        self._encoded.pop(record["id"], None)

    def _number_meta(self, record: dict[str, Any]) -> None:
        for entry in meta_entries(record, numbered=False):
            if not isinstance(entry.get("id"), int):
                entry["id"] = self._next_meta_id
                self._next_meta_id += 1
        self._encoded.pop(record["id"], None)
