"""Syncing a batch: created once, updated on change, unchanged when equal, invalid records fail alone."""

from __future__ import annotations

from typing import Any

import pytest

from domain.customer import Customer, customer_key
from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from domain.sync import customer_keys, sync_batch
from domain.validation import InvalidCustomerRecord, validate_customer
from tests.support.digests import content_hash


def customer(cid: int, **changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": cid,
        "email": f"c{cid}@example.com",
        "first_name": "Zoë",
        "last_name": "Łukasiewicz",
        "username": f"user{cid}",
        "role": "customer",
        "date_modified_gmt": "2026-01-02T03:04:05",
        "billing": {"city": "Kraków", "email": f"c{cid}@example.com"},
        "shipping": {"city": "Kraków"},
        "is_paying_customer": False,
        "meta_data": [{"id": 1, "key": "tier", "value": "gold"}],
        "_links": {"self": [{"href": f"http://shop.test/wp-json/wc/v3/customers/{cid}"}]},
    }
    record.update(changes)
    return record


def queue_with(records: list[dict[str, Any]]) -> SyncQueue:
    queue = SyncQueue(
        org_id="acme",
        queue_name="q",
        store_url="http://shop.test",
        options=QueueOptions().as_dict(),
        started_by="t",
    )
    queue.start_processing("start")
    queue.add_lines(records, page=1)
    return queue


def test_new_customers_are_created_and_invalid_ones_fail_alone() -> None:
    batch = [customer(1), customer(2, email="not-an-email"), customer(3)]
    queue = queue_with(batch)
    outcome = sync_batch(queue, batch, {})
    assert outcome.results["created"] == [1, 3]
    assert list(outcome.failures) == [2]
    assert "email" in outcome.failures[2]
    assert [c.woo_id for c in outcome.changed] == [1, 3]
    assert queue.counts()["failed"] == 1 and queue.counts()["created"] == 2


def test_a_known_customer_is_unchanged_or_updated() -> None:
    first = [customer(1), customer(2)]
    queue = queue_with(first)
    outcome = sync_batch(queue, first, {})
    mirrored = {c.woo_id: c for c in outcome.changed}
    for c in mirrored.values():
        c.collect_events()

    # _links differ but the customer does not: unchanged.
    second = [customer(1, _links={}), customer(2, last_name="Nowak")]
    queue2 = queue_with(second)
    outcome2 = sync_batch(queue2, second, mirrored)
    assert outcome2.results["unchanged"] == [1]
    assert outcome2.results["updated"] == [2]
    changed = outcome2.changed[0]
    events = changed.collect_events()
    assert isinstance(events[-1], Customer.Changed)
    assert events[-1].fields == ["last_name"]


def test_customer_ids_are_deterministic_per_org_store_and_id() -> None:
    assert customer_key("a", "http://s", 1) == customer_key("a", "http://s", 1)
    assert customer_key("a", "http://s", 1) != customer_key("b", "http://s", 1)
    assert customer_key("a", "http://s", 1) != customer_key("a", "http://t", 1)
    created = Customer(
        org_id="a",
        store_url="http://s",
        woo_id=1,
        record={"id": 1},
        digest="d",
        queue_id=customer_key("q", "", 0),
    )
    assert created.id == customer_key("a", "http://s", 1)


def test_customer_keys_of_a_queue_are_customer_key_of_each_record() -> None:
    queue = SyncQueue(
        org_id="Ørg 1",
        store_url="https://shop.example/é",
        options=QueueOptions().as_dict(),
        queue_name="q",
        started_by="t",
    )
    ids = [1, 9, 10, 99, 12345, 2**63 - 1]
    assert customer_keys(queue, [{"id": cid} for cid in ids]) == [
        customer_key("Ørg 1", "https://shop.example/é", cid) for cid in ids
    ]


def test_content_hash_ignores_key_order_and_links() -> None:
    a = {"id": 1, "email": "x@y.z", "_links": {"a": 1}}
    b = {"email": "x@y.z", "id": 1}
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash({"id": 1, "email": "x@y.zz"})


def test_lines_no_longer_draft_are_skipped() -> None:
    batch = [customer(1)]
    queue = queue_with(batch)
    queue.finish_lines({"created": [1]})
    outcome = sync_batch(queue, batch, {})
    assert outcome.line_count == 0 and outcome.changed == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": -3}, "id"),
        ({"email": "two@@example.com"}, "email"),
        ({"email": None}, "email"),
        ({"first_name": 42}, "first_name"),
        ({"last_name": "x" * 5000}, "last_name"),
        ({"date_modified_gmt": "yesterday"}, "date_modified_gmt"),
        ({"billing": "Main street 1"}, "billing"),
        ({"billing": {"city": ["a"]}}, "billing.city"),
        ({"is_paying_customer": "yes"}, "is_paying_customer"),
        ({"meta_data": {"key": "x"}}, "meta_data"),
        ({"meta_data": [{"value": 1}]}, "meta_data[0]"),
    ],
)
def test_validation_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidCustomerRecord) as error:
        validate_customer(customer(1, **changes))
    assert error.value.field == field
    assert str(error.value).startswith(f"{field}:")


def test_oversized_records_are_refused() -> None:
    with pytest.raises(InvalidCustomerRecord, match="bytes"):
        validate_customer(customer(1), encoded_size=10**6)


def test_a_good_record_passes() -> None:
    validate_customer(customer(1))
    validate_customer(customer(2, date_modified_gmt=None, billing=None))
