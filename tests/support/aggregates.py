"""Events made by driving the real aggregates (SyncQueue, and Customer via domain.sync.sync_batch) and saved
through SyncApplication, exactly as the sync engine does: for tests of what reads the log."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from domain.sync import customer_keys, split_unchanged, sync_batch
from infrastructure.adapters.eventstore import SyncApplication, chunks

ORG = "550e8400-e29b-41d4-a716-446655440000"
OTHER_ORG = "org-other"
STORE = "https://store.example.com"


def make_record(cid: int, *, bad: bool = False, revision: int = 0) -> dict[str, Any]:
    """A WooCommerce customer as the REST API returns it (about 1 KB)."""
    address = {
        "first_name": f"First{cid}",
        "last_name": f"Last{cid}",
        "company": "",
        "address_1": f"{cid} Main Street",
        "address_2": "",
        "city": "Springfield",
        "state": "IL",
        "postcode": "62701",
        "country": "US",
    }
    return {
        "id": cid,
        "date_created": "2024-03-01T10:00:00",
        "date_created_gmt": "2024-03-01T09:00:00",
        "date_modified": "2024-05-01T10:00:00",
        "date_modified_gmt": f"2024-05-01T09:{revision:02d}:00",
        "email": "not-an-email" if bad else f"customer{cid}@example.com",
        "first_name": f"First{cid}",
        "last_name": f"Last{cid}" if not revision else f"Changed{cid}-{revision}",
        "role": "customer",
        "username": f"user{cid}",
        "billing": {**address, "email": f"customer{cid}@example.com", "phone": "555-0100"},
        "shipping": {**address, "phone": ""},
        "is_paying_customer": cid % 3 == 0,
        "avatar_url": f"https://secure.gravatar.com/avatar/{cid:032d}?s=96",
        "meta_data": [{"id": cid * 10, "key": "loyalty", "value": "gold"}],
        "_links": {"self": [{"href": f"{STORE}/wp-json/wc/v3/customers/{cid}"}]},
    }


class Sync:
    """One queue being synced, step by step, as the engine would (pages of lines, batches of customers)."""

    def __init__(
        self, app: SyncApplication, org: str = ORG, store: str = STORE, batch_size: int = 50
    ) -> None:
        self.app = app
        self.queue = SyncQueue(
            org_id=org,
            queue_name=f"customers {store}",
            store_url=store,
            options=QueueOptions(batch_size=batch_size, max_retries=2).as_dict(),
            started_by="tester",
        )
        self.queue.start_processing("start")
        app.save_batch(self.queue)
        self.batch_size = batch_size
        self.pages = 0

    @property
    def id(self) -> UUID:
        return self.queue.id

    def mirrored(self, records: list[dict[str, Any]]) -> dict[int, Any]:
        """The mirrored customers of these records by WooCommerce id, as domain.sync takes them."""
        loaded = self.app.load_customers(customer_keys(self.queue, records))
        return {customer.woo_id: customer for customer in loaded.values()}

    def fetch(self, records: list[dict[str, Any]], per_page: int = 100, split: bool = False) -> None:
        """Record pages; with ``split``, customers identical to the mirror are added done ("unchanged")."""
        for page in chunks(records, per_page):
            self.pages += 1
            unchanged: list[tuple[int, str]] = []
            if split:
                page, unchanged = split_unchanged(page, self.mirrored(page))
            self.queue.add_lines(page, page=self.pages, unchanged=unchanged)
            self.app.save_batch(self.queue)
        self.queue.finish_fetch(pages=self.pages, total=len(self.queue.lines), complete=True)
        self.app.save_batch(self.queue)

    def process(self, records: list[dict[str, Any]]) -> None:
        for batch in chunks(records, self.batch_size):
            outcome = sync_batch(self.queue, batch, self.mirrored(batch))
            self.app.save_batch(self.queue, *outcome.changed)

    def finish(self) -> str:
        state = self.queue.finish()
        self.app.save_batch(self.queue)
        return state

    def retry(self, records: list[dict[str, Any]]) -> None:
        ids = self.queue.request_retry("operator")
        self.queue.start_processing("retry")
        again = [r for r in records if r["id"] in ids]
        self.queue.refetch_lines(again)
        self.app.save_batch(self.queue)
        self.process(again)

    def incident(self) -> None:
        self.queue.record_incident(
            "circuit_opened", "warning", "Store circuit breaker opened after 5 failures", {"failures": 5}
        )
        self.app.save_batch(self.queue)

    def force_done(self) -> list[int]:
        cancelled = self.queue.force_done("customers fixed by hand", "operator")
        self.app.save_batch(self.queue)
        return cancelled
