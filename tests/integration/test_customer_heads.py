"""Reading a mirrored customer's digest from its latest stored event, without replaying it."""

from __future__ import annotations

from typing import Any

import pytest

from domain.customer import Customer, CustomerHead, customer_key
from infrastructure.adapters.eventstore import HEAD_TAIL_BYTES, SyncApplication
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


def test_heads_read_whole_the_events_whose_digest_is_not_in_the_tail_read(database_url: str) -> None:
    """A Changed event naming many fields puts its digest further from the end than customer_heads reads
    at first (HEAD_TAIL_BYTES): its head comes from the event read whole, beside the others' tails."""
    app = SyncApplication(DatabaseConfig.from_url(database_url))
    wide = Customer(
        org_id="o", store_url="s", woo_id=1, record=record(1), digest=content_hash(record(1)), queue_id="q"
    )
    narrow = Customer(
        org_id="o", store_url="s", woo_id=2, record=record(2), digest=content_hash(record(2)), queue_id="q"
    )
    app.save_batch(wide, narrow)
    many = record(1, **{f"field_{n:03d}": n for n in range(60)})
    wide.sync(many, content_hash(many), "q2")
    app.save_batch(wide)
    stored = app.recorder.select_events(customer_key("o", "s", 1), desc=True, limit=1)[0].state
    assert stored.rfind(b'"digest":"') < len(stored) - HEAD_TAIL_BYTES  # the case this test is about

    heads = app.customer_heads([customer_key("o", "s", 1), customer_key("o", "s", 2)])
    assert heads[customer_key("o", "s", 1)] == CustomerHead(
        version=2, digest=content_hash(many), deleted=False
    )
    assert heads[customer_key("o", "s", 2)] == CustomerHead(
        version=1, digest=content_hash(record(2)), deleted=False
    )


def test_a_digest_key_at_the_very_end_of_a_record_is_not_taken_for_the_events(database_url: str) -> None:
    """The tail read holds the record's last bytes too: a record ending with a "digest" of its own."""
    app = SyncApplication(DatabaseConfig.from_url(database_url))
    tricky = record(1, zz={"digest": "f" * 64})  # sorted last: right before the event's own digest
    customer = Customer(
        org_id="o", store_url="s", woo_id=1, record=tricky, digest=content_hash(tricky), queue_id="q"
    )
    app.save_batch(customer)
    heads = app.customer_heads([customer_key("o", "s", 1)])
    assert heads[customer_key("o", "s", 1)].digest == content_hash(tricky) != "f" * 64


def test_heads_of_an_encrypted_store_are_decoded(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WCSYNC_CIPHER_KEY", "A" * 43 + "=")
    app = SyncApplication(DatabaseConfig.from_url(sqlite_url))
    customer = Customer(
        org_id="o", store_url="s", woo_id=1, record=record(1), digest=content_hash(record(1)), queue_id="q"
    )
    app.save_batch(customer)
    assert app.recorder.select_events(customer.id)[0].state.rfind(b'"digest":"') < 0  # nothing readable
    heads = app.customer_heads([customer.id])
    assert heads[customer.id] == CustomerHead(version=1, digest=content_hash(record(1)), deleted=False)
