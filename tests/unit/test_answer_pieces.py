"""A page's answer cut into its customers (infrastructure/adapters/woocommerce.py, _answer_pieces and
_cut_answer): exactly the array's elements or nothing, whatever the bytes inside the customers hold, and
only the customers whose bytes changed since the known page parsed."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrastructure.adapters.woocommerce import (
    ANSWER_DIGEST_BYTES,
    KnownPage,
    _answer_pieces,
    _cut_answer,
    _Response,
)
from infrastructure.sandbox.data import generate_customers


def compact(value: Any) -> bytes:
    """As WordPress's wp_json_encode writes it (and the sandbox): compact, non-ASCII escaped."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def answer(records: list[dict[str, Any]]) -> bytes:
    return b"[" + b",".join(compact(r) for r in records) + b"]"


def cut(body: bytes, earlier: KnownPage | None = None) -> _Response | None:
    return _cut_answer(_Response(200, None, 3, 1, digest="d"), body, earlier)


def known_page(records: list[dict[str, Any]]) -> KnownPage:
    """The page as an earlier scan recorded it: its ids and each customer's answer digest."""
    digests = b"".join(hashlib.sha256(compact(r)).digest()[:ANSWER_DIGEST_BYTES] for r in records)
    return KnownPage("earlier", [r["id"] for r in records], digests)


# Customers with meta_data entries, whose objects start with "id" as a customer's do.
RECORDS = [
    {**r, "meta_data": [{"id": 10 + i, "key": "a", "value": "x"}, {"id": 20 + i, "key": "b", "value": 1}]}
    for i, r in enumerate(generate_customers(5, seed=3))
]


def test_a_woocommerce_answer_is_cut_into_exactly_its_customers() -> None:
    body = answer(RECORDS)
    # Between the customers, and inside each between its two meta_data entries: twice as many as pieces.
    assert body.count(b'},{"id":') == 2 * len(RECORDS) - 1
    pieces = _answer_pieces(body)
    assert pieces is not None
    assert [cid for cid, _ in pieces] == [r["id"] for r in RECORDS]
    assert [orjson.loads(piece) for _, piece in pieces] == RECORDS
    response = cut(body)
    assert response is not None and response.body == RECORDS and response.same_ids == []
    assert response.ids == [r["id"] for r in RECORDS] and response.strict_json
    assert response.answers == {
        r["id"]: hashlib.sha256(compact(r)).digest()[:ANSWER_DIGEST_BYTES] for r in RECORDS
    }


def test_only_the_customers_whose_bytes_changed_are_parsed() -> None:
    earlier = known_page(RECORDS)
    changed = [dict(r) for r in RECORDS]
    changed[2] = {**changed[2], "first_name": "Changed"}
    response = cut(answer(changed), earlier)
    assert response is not None
    assert response.body == [changed[2]]
    assert response.same_ids == [r["id"] for i, r in enumerate(RECORDS) if i != 2]
    # A customer new on the page (or one the known page did not have) is parsed too.
    moved = [*changed[1:], {**RECORDS[0], "id": 10**6}]
    response = cut(answer(moved), earlier)
    assert response is not None
    assert [r["id"] for r in response.body] == [changed[2]["id"], 10**6]


def _customer_start(cid: int) -> str:
    return f'}},{{"id":{cid},"date_created":"x"'


@pytest.mark.parametrize(
    "hostile",
    [
        # text that spells a customer's start (a boundary is never inside a string: not cut there)
        {"first_name": _customer_start(7)},
        # a customer-shaped object nested in a meta value: cut there, its pieces are not objects
        {"meta_data": [{"id": 1, "key": "k", "value": [{"id": 1}, {"id": 7, "date_created": "x"}]}]},
        # two customers' worth of keys, the id twice: the last one is what JSON readers take
        {"first_name": "a", "id": 8},
    ],
    ids=["text", "nested-object", "id-twice"],
)
def test_what_is_not_one_customer_a_piece_is_read_whole_or_as_it_is(hostile: dict[str, Any]) -> None:
    records = [dict(r) for r in RECORDS]
    records[1] = {**records[1], **{k: v for k, v in hostile.items() if k != "id"}}
    body = answer(records)
    if "id" in hostile:  # the same key again at the end: {"id":N,...,"id":8}
        body = body.replace(compact(records[1]), compact(records[1])[:-1] + b',"id":8}')
    whole = orjson.loads(body)
    response = cut(body)
    if response is not None:  # cut: then exactly into the answer's elements
        assert response.body == whole
        assert response.ids == [r["id"] for r in whole]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"",
        b"[ " + compact(RECORDS[0]) + b"]",  # not compact
        answer(RECORDS).replace(b'},{"id":%d,' % RECORDS[1]["id"], b'}, {"id":%d,' % RECORDS[1]["id"]),
        answer(RECORDS)[:-1],  # cut off
        b'[{"date_created":"x","id":1}]',  # another key first: not WooCommerce's
        answer(RECORDS) + b"\n",
        b'[{"id":1,"date_created":"x"},{"id":1,"date_created":"x"}]',  # a customer twice
        b'[{"id":99999999999999999999,"date_created":"x"}]',  # past 64 bits
        b'[{"id":1,"date_created":"x",}]',  # not JSON
    ],
)
def test_an_answer_that_cannot_be_cut_is_left_to_be_read_whole(body: bytes) -> None:
    assert cut(body) is None


CUSTOMER_LIKE = re.compile(rb'\{"id":[1-9][0-9]*,"date_created"')
text = st.text(alphabet=st.sampled_from(['"', "\\", "}", "{", ",", ":", "[", "]", "i", "d", "1", "é", " "]))
values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**6) | text,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["id", "date_created", "k"]) | text, inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**6), values), min_size=1, max_size=5, unique_by=lambda t: t[0]))
def test_any_cut_is_exactly_the_answers_elements(customers: list[tuple[int, Any]]) -> None:
    records = [
        {"id": cid, "date_created": "2026-01-02T03:04:05", "meta_data": value} for cid, value in customers
    ]
    body = answer(records)
    response = cut(body)
    # Cut unless a value nested in one looks like a customer's start (then it is read whole instead).
    nested = any(CUSTOMER_LIKE.search(compact(value)) for _, value in customers)
    assert response is not None or nested
    if response is None:
        return
    assert response.body == orjson.loads(body)
    # And against a known page of the same records: nothing is parsed, each is the same.
    again = cut(body, known_page(records))
    assert again is not None and again.body == [] and again.same_ids == [cid for cid, _ in customers]
