"""The SQL that makes new customers' rows on PostgreSQL (projections/customers.py) reads Registered events
in their stored form: a new version of that event, or a new field, must come with the SQL changed (the
equivalence with the Python path is tested against a real PostgreSQL in tests/integration)."""

from __future__ import annotations

from domain.customer import Customer
from projections.customers import REGISTERED_CLASS_VERSION, REGISTERED_SELECT, _gmt


def test_the_sql_reads_the_registered_event_of_today() -> None:
    assert Customer.Registered.class_version == REGISTERED_CLASS_VERSION, (
        "Customer.Registered has a new class_version: make REGISTERED_SELECT read the new stored form (and the "
        "old one, which stays in the log), then bump REGISTERED_CLASS_VERSION"
    )
    fields = set(Customer.Registered.__annotations__)
    assert fields == {"org_id", "store_url", "woo_id", "record", "digest", "queue_id"}, (
        "Customer.Registered's fields changed: check REGISTERED_SELECT"
    )
    for field in fields - {"record"}:
        assert f"j->>'{field}'" in REGISTERED_SELECT
    assert "j #> '{record," in REGISTERED_SELECT


def test_gmt_takes_the_stores_form_naming_a_real_moment_and_nothing_else() -> None:
    assert _gmt("2024-02-29T23:59:59") is not None
    for value in (
        "2023-02-29T00:00:00",
        "2024-06-01T24:00:00",
        "0000-01-01T00:00:00",
        "2024-06-01 07:00:00",
        "2024-06-01T07:00:00Z",
        "2024-06-01",
        "",
        None,
        20240601,
    ):
        assert _gmt(value) is None, value
