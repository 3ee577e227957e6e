"""The WebhookDelivery aggregate's rules (pure): each delivery ends with one outcome, applied to its
customer as a sync would (created / updated / unchanged / deleted), never moving the mirror back to an
older record, and failed with its problem when its body could not be checked."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from domain.customer import Customer, is_older
from domain.webhook import CREATED, DELETED, UPDATED, WebhookDelivery, delivery_key


def record(woo_id: int = 7, modified: str = "2026-01-02T03:04:05", **fields: Any) -> dict[str, Any]:
    return {"id": woo_id, "email": "a@example.org", "date_modified_gmt": modified, **fields}


def delivery(topic: str, body: dict[str, Any] | None, problem: str | None = None) -> WebhookDelivery:
    return WebhookDelivery(
        org_id="acme",
        store_id="s",
        store_url="https://shop.example",
        topic=topic,
        woo_id=None if body is None else body["id"],
        record=body,
        problem=problem,
        excerpt=None,
        body_digest="b" * 64,
        delivery_id="d1",
        webhook_id=3,
    )


def customer(body: dict[str, Any], digest: str = "old") -> Customer:
    return Customer(
        org_id="acme",
        store_url="https://shop.example",
        woo_id=body["id"],
        record=body,
        digest=digest,
        queue_id="q",
    )


def test_a_first_sight_creates_the_customer_and_names_the_delivery() -> None:
    d = delivery(CREATED, record())
    created = d.apply_to(None, "new")
    assert created is not None and created.record == record() and created.last_queue_id == str(d.id)
    assert d.outcome == "created" and not d.pending
    assert d.apply_to(None, "new") is None  # applied once: a second apply does nothing


@pytest.mark.parametrize(
    ("digest", "modified", "outcome"),
    [("new", "2026-01-02T03:04:06", "updated"), ("old", "2026-01-02T03:04:06", "unchanged")],
)
def test_an_update_changes_the_customer_unless_it_is_the_same(
    digest: str, modified: str, outcome: str
) -> None:
    mirrored = customer(record())
    d = delivery(UPDATED, record(modified=modified, email="b@example.org"))
    d.apply_to(mirrored, digest)
    assert d.outcome == outcome


def test_an_older_record_leaves_the_mirror_as_it_is_by_delivery_and_by_sync() -> None:
    mirrored = customer(record(modified="2026-05-05T00:30:00"))
    d = delivery(UPDATED, record(modified="2026-05-05T00:00:00", email="stale@example.org"))
    assert d.apply_to(mirrored, "new") is None and d.outcome == "older"
    assert mirrored.sync(record(modified="2026-05-05T00:00:00"), "new", "q2") == "unchanged"
    assert mirrored.record["date_modified_gmt"] == "2026-05-05T00:30:00"
    # Unknown dates are never "older": the record is applied.
    assert not is_older({"id": 1}, record()) and not is_older(record(), {"id": 1})


def test_a_record_much_older_than_the_mirror_is_the_stores_word() -> None:
    """A store restored from a backup, or a mirrored date far in the future from a wrong clock: older by
    more than STALE_WINDOW is applied, so nothing freezes the mirror."""
    mirrored = customer(record(modified="9999-12-31T23:59:59"))
    assert (
        mirrored.sync(record(modified="2026-05-05T00:00:00", email="b@example.org"), "new", "q2") == "updated"
    )
    restored = customer(record(modified="2026-05-05T00:00:00"))
    assert restored.sync(record(modified="2026-04-01T00:00:00"), "new", "q2") == "updated"
    assert is_older(record(modified="2026-05-04T23:00:00"), record(modified="2026-05-05T00:00:00"))
    assert not is_older(record(modified="2026-05-04T22:59:59"), record(modified="2026-05-05T00:00:00"))


def test_a_pushed_deletion_is_undone_only_by_a_record_changed_since() -> None:
    mirrored = customer(record(modified="2026-05-05T00:00:00"))
    delivery(DELETED, {"id": 7}).apply_to(mirrored, None)
    # A page fetched before the deletion arrived: the same record, or an older one.
    assert (
        mirrored.sync(record(modified="2026-05-05T00:00:00", email="x@example.org"), "n", "q") == "unchanged"
    )
    assert mirrored.deleted
    assert mirrored.sync(record(modified="2026-05-06T00:00:00"), "n2", "q") == "updated"
    assert not mirrored.deleted
    # A deletion by a complete scan is undone by the store listing the customer again, as before.
    scanned = customer(record())
    scanned.delete("absent from a complete scan of the store", "q")
    assert scanned.sync(record(), "n", "q2") == "updated"


def test_a_deletion_marks_the_customer_deleted_once_and_names_the_delivery_id() -> None:
    mirrored = customer(record())
    d = delivery(DELETED, {"id": 7})
    assert d.apply_to(mirrored, None) is mirrored and d.outcome == "deleted"
    assert mirrored.deleted
    again = delivery(DELETED, {"id": 7})
    again.apply_to(mirrored, None)
    assert again.outcome == "already deleted"
    unknown = delivery(DELETED, {"id": 99})
    assert unknown.apply_to(None, None) is None and unknown.outcome == "not mirrored"


def test_a_refused_body_fails_with_its_problem() -> None:
    d = delivery(UPDATED, None, problem="email: not an email address")
    assert d.apply_to(None, None) is None and d.outcome == "failed"
    assert [type(e).__name__ for e in d.collect_events()] == ["Received", "Failed"]


def test_the_key_is_the_same_for_the_same_body_of_the_same_topic_and_customer() -> None:
    key = delivery_key("acme", "s", UPDATED, 7, "b" * 64)
    assert key == delivery(UPDATED, record()).id
    assert key != delivery_key("acme", "s", CREATED, 7, "b" * 64)
    assert key != delivery_key("other", "s", UPDATED, 7, "b" * 64)


def test_a_record_read_before_another_writer_changed_the_customer_does_not_put_it_back() -> None:
    """A sync's page fetched before a webhook delivery was applied and processed after it: years older by
    the store's clock (the customer had not changed for years before the push), so only the time it was
    read tells it is stale."""
    mirrored = customer(record(modified="2019-03-03T00:00:00"))
    read_at = mirrored.modified_on
    pushed = delivery(UPDATED, record(modified="2026-12-01T10:00:00", email="pushed@example.org"))
    pushed.apply_to(mirrored, "pushed")
    stale = record(modified="2019-03-03T00:00:00", email="stale@example.org")
    assert mirrored.sync(stale, "stale", "queue-2", read_after=read_at) == "unchanged"
    assert mirrored.record["email"] == "pushed@example.org"
    # A record the store modified after what the mirror holds is applied; so is one read after the push.
    newer = record(modified="2026-12-01T11:00:00", email="newer@example.org")
    assert mirrored.sync(newer, "newer", "queue-2", read_after=read_at) == "updated"
    later = customer(record(modified="2026-12-01T10:00:00"))
    assert later.sync(stale, "stale", "queue-2", read_after=later.modified_on) == "updated"
    # The same queue's own earlier write is no other writer.
    own = customer(record(modified="2026-01-01T00:00:00"))
    assert own.sync(stale, "stale", "q", read_after=own.modified_on - timedelta(seconds=1)) == "updated"
