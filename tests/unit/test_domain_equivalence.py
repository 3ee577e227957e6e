"""The first sync's domain code made cheaper (issue 13) gives exactly what it gave before: the oracles of
domain_oracles.py (the code as it was) and the code of today agree on every input hypothesis finds, odd
ones above all (types JSON does not have, NUL and lone surrogates, integers past 64 bits, floats that are not
finite, nesting around the depth limit, text around the length limits), and on realistic pages."""

from __future__ import annotations

import copy
import json
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from domain import validation
from domain.customer import CUSTOMER_NAMESPACE, Customer, customer_key, customer_keys_for
from domain.queue import SyncQueue
from domain.queue_terms import QueueOptions
from domain.sync import customer_keys_of, sync_batch
from domain.validation import (
    MAX_DEPTH,
    MAX_INTEGER,
    MAX_TEXT_LENGTH,
    MIN_INTEGER,
    InvalidCustomerRecord,
    check_record,
    validate_customer,
)
from infrastructure.adapters.transcoder import canonical_bytes
from infrastructure.sandbox.data import generate_customers
from tests.unit import domain_oracles as oracle


class Text(str):
    """A str that is not one: what no JSON parser returns, and the checks must treat as before."""


class Number(int):
    pass


class Mapping(dict[str, Any]):
    pass


HOSTILE = [
    "\x00",
    "\ud800",
    "\udfff",
    "\ufffd",
    "\n",
    "é",
    "a",
    "@",
    ".",
    " ",
    "\x1f",
    "٣",
    "7",
    "-",
    "T",
    ":",
]
text = st.text(alphabet=st.sampled_from(HOSTILE) | st.characters(), max_size=12)
long_text = st.integers(MAX_TEXT_LENGTH - 1, MAX_TEXT_LENGTH + 1).map(lambda n: "x" * n)
integers = (
    st.integers(-(2**70), 2**70)
    | st.sampled_from([MIN_INTEGER - 1, MIN_INTEGER, MAX_INTEGER, MAX_INTEGER + 1, 0, -1, 2**63 - 1, 2**63])
    | st.integers(-5, 5)
)
odd_scalars = st.sampled_from(
    [
        Text("t"),
        Number(3),
        (1, 2),
        b"bytes",
        frozenset({1}),
        Decimal("1.5"),
        datetime(2026, 1, 2, tzinfo=UTC),
        uuid.UUID(int=1),
        1 + 2j,
        float("nan"),
        float("inf"),
        -float("inf"),
        -0.0,
    ]
)
scalars = st.none() | st.booleans() | integers | st.floats() | text | long_text | odd_scalars
keys = text | st.sampled_from([1, None, True, 1.5, (1,), Text("k")])


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.lists(children, max_size=4)
        | st.dictionaries(text, children, max_size=4)
        | st.dictionaries(keys, children, max_size=3)
        | st.dictionaries(text, children, max_size=2).map(Mapping)
        | st.lists(children, max_size=3).map(tuple)
    )


values = st.recursive(scalars, _containers, max_leaves=25)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested around the depth limit (lists and objects in turn)."""
    value = draw(scalars | st.just([]) | st.just({}))
    for level in range(draw(st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3))):
        value = [value] if draw(st.booleans()) or level % 7 else {"k": value}
    return value


dates = (
    st.none()
    | st.sampled_from(
        [
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05\n",
            "2026-01-02T03:04:05\n\n",
            "2026-01-02 03:04:05",
            "\u0662\u0660\u0662\u0666-\u0660\u0661-\u0660\u0662T\u0660\u0663:\u0660\u0664:\u0660\u0665",  # Arabic-Indic digits
            "",
            "2026-01-02T03:04:05Z",
        ]
    )
    | text
    | scalars
)
emails = (
    st.sampled_from(["a@b.co", "x", "a@@b.co", "a b@c.de", "a@b.c\n", "é@ü.de", "a@b.co" + "x" * 250]) | text
)
address_fields = st.sampled_from(validation.ADDRESS_FIELDS) | text
addresses = st.dictionaries(address_fields, text | long_text | st.just("") | scalars, max_size=12)
meta_entries = st.fixed_dictionaries({"key": text | scalars, "value": values}) | values


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Customer-shaped records whose every field may be missing, odd or wrong; sometimes anything."""
    roll = draw(st.integers(0, 11))
    if roll == 0:
        return draw(values)
    record: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        record["id"] = draw(st.integers(1, 10**6) | integers | st.sampled_from([True, "1", 1.0, Number(7)]))
    if draw(st.integers(0, 9)):
        record["email"] = draw(emails)
    for name in draw(st.lists(st.sampled_from(["first_name", "last_name", "username", "role"]))):
        record[name] = draw(text | long_text | scalars)
    for name in draw(
        st.lists(st.sampled_from(["date_created", "date_created_gmt", "date_modified", "date_modified_gmt"]))
    ):
        record[name] = draw(dates)
    for section in ("billing", "shipping"):
        if draw(st.integers(0, 5)):
            record[section] = draw(addresses | scalars | values) if roll == 1 else draw(addresses)
    if draw(st.booleans()):
        record["is_paying_customer"] = draw(st.booleans() | scalars)
    if draw(st.integers(0, 3)):
        record["meta_data"] = draw(st.lists(meta_entries, max_size=4) | scalars)
    if roll == 2:
        record["meta_data"] = [{"key": "deep", "value": draw(deep())}]
    if roll == 3:
        record[draw(keys)] = draw(values)
    if roll == 4:
        record["_links"] = draw(values)
    if roll == 5:
        record["meta_data"] = [{"key": "k"}] * draw(st.integers(499, 501))
    return record


def _outcome(call: Any, *args: Any, **kwargs: Any) -> Any:
    """What a call gave: its value, or the exception it raised (type, message and field)."""
    try:
        return ("value", call(*args, **kwargs))
    except InvalidCustomerRecord as error:
        return ("invalid", error.field, error.problem, str(error))
    except Exception as error:  # any other exception must be the same one too
        return ("raised", type(error).__name__, str(error))


def _realistic(count: int = 300) -> list[dict[str, Any]]:
    return generate_customers(count, seed=13, invalid=count // 10)


SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(values | deep() | records())
@example([[[[]]]])
@example({"a": float("nan")})
@example({1: "x"})
def test_the_irregularity_walk_agrees_with_the_recursive_one(value: Any) -> None:
    assert validation._irregular(value) is oracle.irregular(value)


@pytest.mark.parametrize("levels", range(MAX_DEPTH - 2, MAX_DEPTH + 3))
@pytest.mark.parametrize("leaf", [1, "s", [], {}, None, 2**64, float("nan"), (1,)])
def test_the_irregularity_walk_agrees_at_the_depth_limit(levels: int, leaf: Any) -> None:
    for wrap in (lambda v: [v], lambda v: {"k": v}):
        value = leaf
        for _ in range(levels):
            value = wrap(value)
        assert validation._irregular(value) is oracle.irregular(value)
    cycle: list[Any] = []
    cycle.append(cycle)
    assert validation._irregular(cycle) is oracle.irregular(cycle) is True


@SETTINGS
@given(records(), st.none() | st.integers(0, 2**17))
def test_validation_raises_the_same_error_for_the_same_record(record: Any, size: int | None) -> None:
    assert _outcome(validate_customer, record, size) == _outcome(oracle.validate_customer, record, size)


@SETTINGS
@given(records())
@example({"id": 1, "email": "a@b.co", "meta_data": [{"key": "x", "value": {"t": "\x00", 1: 2}}]})
@example({"id": 1, "email": "a@b.co", "_links": {"self": "\ud800", "n": 2**65}})
def test_the_boundary_gives_the_same_record_or_refusal(record: Any) -> None:
    for encoder in (None, canonical_bytes):
        new = _outcome(check_record, copy.deepcopy(record), encoder)
        old = _outcome(oracle.check_record, copy.deepcopy(record), encoder)
        assert new == old


def _read_strictly(value: Any) -> Any:
    """``value`` as a store would send it, read back by orjson (what Page.strict_json promises); None when
    it is not JSON at all (hypothesis is told to look elsewhere)."""
    try:
        data = json.dumps(value, default=repr, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _nested(levels: int) -> Any:
    value: Any = "leaf"
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


@SETTINGS
@given(records())
@example({"id": 1, "email": "a@b.co", "_links": _nested(MAX_DEPTH + 1)})
@example({"id": 1, "email": "a@b.co", "_links": _nested(MAX_DEPTH - 1)})
@example({"id": 1, "email": "a@b.co", "meta_data": [{"key": "deep", "value": _nested(MAX_DEPTH - 1)}]})
@example({"id": 1, "email": "a@b.co", "meta_data": [{"key": "deep", "value": _nested(MAX_DEPTH)}]})
@example({"id": 1, "email": "a@b.co", "first_name": "{[" * 40, "n": 2**64, "f": 1.5})
def test_a_strictly_read_record_gets_the_same_record_or_refusal_without_the_walk(record: Any) -> None:
    """check_record's strict_json shortcut (only the nesting can be wrong in what orjson reads) gives the
    same outcome as the whole walk on anything orjson gives, deep nests and volatile fields included."""
    strict = _read_strictly(record)
    assume(strict is not None)
    for encoder in (None, canonical_bytes):
        fast = _outcome(check_record, copy.deepcopy(strict), encoder, strict_json=True)
        assert fast == _outcome(check_record, copy.deepcopy(strict), encoder)


def test_a_strictly_read_realistic_page_gets_the_same_records() -> None:
    for record in _realistic():
        strict = orjson.loads(orjson.dumps(record))
        assert check_record(strict, canonical_bytes, strict_json=True) == check_record(
            strict, canonical_bytes
        )


DATE_FIELDS = ("date_created", "date_created_gmt", "date_modified", "date_modified_gmt")
ODD_DATES = [
    "2026-01-02T03:04:05\n",
    "2026-01-02T03:04:05\x1f2026-01-02T03:04:05",
    "\u0662\u0660\u0662\u0666-01-02T03:04:05",
    "2026-01-02T03:04:0",
    "",
    None,
    Text("2026-01-02T03:04:05"),
    Text("2026-01-02"),
    20260102,
    ["2026-01-02T03:04:05"],
]


@pytest.mark.parametrize("odd", ODD_DATES)
@pytest.mark.parametrize("position", range(4))
def test_each_date_is_checked_as_before_among_good_ones(odd: Any, position: int) -> None:
    """The four dates are matched together first: an odd one at any place gives the same answer."""
    record: dict[str, Any] = {"id": 1, "email": "a@b.co"}
    record.update(dict.fromkeys(DATE_FIELDS, "2026-01-02T03:04:05"))
    record[DATE_FIELDS[position]] = odd
    assert _outcome(validate_customer, record) == _outcome(oracle.validate_customer, record)
    del record[DATE_FIELDS[position]]
    assert _outcome(validate_customer, record) == _outcome(oracle.validate_customer, record)


def test_the_boundary_gives_the_same_on_realistic_pages() -> None:
    for record in _realistic():
        for encoder in (None, canonical_bytes):
            assert check_record(copy.deepcopy(record), encoder) == oracle.check_record(record, encoder)
            assert _outcome(validate_customer, record) == _outcome(oracle.validate_customer, record)


@settings(max_examples=300, deadline=None)
@given(text, text, integers | st.sampled_from([True, False, Number(5)]))
@example("Ørg 1", "https://shop.example/é", 2**63 - 1)
def test_customer_keys_are_uuid5_of_the_name(org: str, store: str, woo_id: int) -> None:
    expected = _outcome(uuid.uuid5, CUSTOMER_NAMESPACE, f"{org}\x1f{store}\x1f{woo_id}")
    assert _outcome(customer_key, org, store, woo_id) == expected
    assert _outcome(lambda: customer_keys_for(org, store)(woo_id)) == expected
    assert _outcome(oracle.customer_key, org, store, woo_id) == expected
    if expected[0] == "value":
        made = customer_key(org, store, woo_id)
        assert (made.version, made.variant, str(made), made.bytes) == (
            5,
            uuid.RFC_4122,
            str(expected[1]),
            expected[1].bytes,
        )


def test_the_keys_of_a_queue_are_uuid5_of_each_name() -> None:
    queue = _queue([])
    ids = [*range(1, 2000), 2**63 - 1, 10**30]
    assert customer_keys_of(queue, ids) == [
        uuid.uuid5(CUSTOMER_NAMESPACE, f"{queue.org_id}\x1f{queue.store_url}\x1f{cid}") for cid in ids
    ]


def _state(customer: Customer) -> dict[str, Any]:
    """An aggregate's state and its pending events' contents, but for the moment they were made."""
    state = {
        k: v for k, v in vars(customer).items() if k not in ("_created_on", "_modified_on", "_pending_events")
    }
    if isinstance(customer.pending_events[0], Customer.Registered):
        assert customer.created_on == customer.pending_events[0].timestamp
    assert customer.modified_on == customer.pending_events[-1].timestamp
    events = [
        (type(e), {k: v for k, v in vars(e).items() if k != "timestamp"}) for e in customer.pending_events
    ]
    return {"type": type(customer), "state": state, "events": events}


def test_a_registered_customer_is_the_one_the_library_makes() -> None:
    record = {"id": 7, "email": "a@b.co", "billing": {"city": "Kraków"}}
    fields: dict[str, Any] = {
        "org_id": "acme",
        "store_url": "https://shop.example",
        "woo_id": 7,
        "record": record,
        "digest": "d" * 64,
        "queue_id": str(uuid.uuid4()),
    }
    made = Customer.register(customer_key("acme", "https://shop.example", 7), **fields)
    expected = Customer(**fields)
    assert _state(made) == _state(expected)
    assert made.pending_events[0].record is record and made.record is record
    # A replay of its event (the library's own way) gives the same customer.
    event = made.collect_events()[0]
    replayed = event.mutate(None)
    assert replayed == made and replayed.version == 1
    # And it goes on as one: a change is version 2.
    made.sync({**record, "email": "c@d.ef"}, "e" * 64, "q")
    assert made.version == 2 and isinstance(made.pending_events[0], Customer.Changed)


def _queue(records: list[dict[str, Any]]) -> SyncQueue:
    queue = SyncQueue(
        org_id="Ørg",
        queue_name="q",
        store_url="https://shop.example/é",
        options=QueueOptions().as_dict(),
        started_by="t",
    )
    queue.start_processing("start")
    queue.add_lines(records, page=1)
    return queue


def _batch_result(queue: SyncQueue, outcome: Any) -> dict[str, Any]:
    return {
        "results": outcome.results,
        "failures": outcome.failures,
        "changed": [_state(c) for c in outcome.changed],
        "counts": queue.counts(),
        "queue_events": [
            (type(e), {k: v for k, v in vars(e).items() if k != "timestamp"}) for e in queue.pending_events
        ],
    }


@pytest.mark.parametrize("encoder", [None, canonical_bytes])
def test_a_batch_of_new_customers_gives_the_same_lines_and_events(encoder: Any) -> None:
    raw = _realistic()
    queue = _queue(raw)
    known_old = {}
    for customer in oracle.sync_batch(copy.deepcopy(queue), raw[:20], {}).changed:
        customer.collect_events()
        known_old[customer.woo_id] = customer
    known = {cid: copy.deepcopy(c) for cid, c in known_old.items()}
    # Some known customers changed, some not; a line already done is skipped; invalid records fail alone.
    batch = [dict(r, last_name="Changed") if r["id"] % 2 else r for r in raw[:10]] + raw[10:]
    queue.finish_lines({"created": [raw[-1]["id"]]})
    twin = copy.deepcopy(queue)
    kwargs = {} if encoder is None else {"canonical": encoder}
    expected = _batch_result(twin, oracle.sync_batch(twin, batch, known_old, **kwargs))
    assert expected["failures"] and expected["results"]["created"] and expected["results"]["updated"]
    assert _batch_result(queue, sync_batch(queue, batch, known, **kwargs)) == expected


def test_a_batch_told_its_records_are_checked_gives_the_same_as_one_that_checks_them() -> None:
    checked = [r for r in map(check_record, _realistic()) if isinstance(r, dict)]
    queue = _queue(checked)
    twin = copy.deepcopy(queue)
    expected = _batch_result(twin, oracle.sync_batch(twin, checked, {}, canonical_bytes))
    got = _batch_result(queue, sync_batch(queue, checked, {}, canonical_bytes, checked=True))
    assert got == expected and len(got["changed"]) == len(checked)


def test_a_batch_told_its_records_are_checked_does_not_check_them_again() -> None:
    unchecked = OrderedDict(id=1, email="not an email")
    queue = _queue([dict(unchecked)])
    assert sync_batch(copy.deepcopy(queue), [dict(unchecked)], {}).failures == {
        1: "invalid customer record: email: 'not an email' is not a valid email address"
    }
    assert sync_batch(queue, [dict(unchecked)], {}, checked=True).results["created"] == [1]
