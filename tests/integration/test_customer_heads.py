"""Reading a mirrored customer's digest from its latest stored event, without replaying it."""

from __future__ import annotations

from typing import Any

from domain.customer import Customer, customer_key
from infrastructure.adapters.eventstore import SyncApplication
from infrastructure.support.config import DatabaseConfig
from tests.support.digests import content_hash


def record(cid: int, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "email": f"c{cid}@example.com", **extra}


def test_heads_give_the_latest_digest_even_when_a_record_holds_a_digest_of_its_own(database_url: str) -> None:
    app = SyncApplication(DatabaseConfig.from_url(database_url))
    # A record whose meta data carries a "digest" key of its own, with a plausible value.
    tricky = record(1, meta_data=[{"id": 1, "key": "x", "value": {"digest": "0" * 64}}])
    first = Customer(
        org_id="o", store_url="s", woo_id=1, record=tricky, digest=content_hash(tricky), queue_id="q"
    )
    plain = Customer(
        org_id="o", store_url="s", woo_id=2, record=record(2), digest=content_hash(record(2)), queue_id="q"
    )
    gone = Customer(
        org_id="o", store_url="s", woo_id=3, record=record(3), digest=content_hash(record(3)), queue_id="q"
    )
    app.save_batch(first, plain, gone)
    changed = record(2, first_name="Ålesund")
    plain.sync(changed, content_hash(changed), "q2")
    gone.delete("absent from the store", "q2")
    app.save_batch(plain, gone)

    heads = app.customer_heads([customer_key("o", "s", i) for i in (1, 2, 3, 4)])
    assert heads[customer_key("o", "s", 1)].digest == content_hash(tricky)
    assert heads[customer_key("o", "s", 2)].digest == content_hash(changed)
    assert heads[customer_key("o", "s", 2)].version == 2
    assert heads[customer_key("o", "s", 3)].deleted
    assert customer_key("o", "s", 4) not in heads
