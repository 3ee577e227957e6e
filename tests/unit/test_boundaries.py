"""Property tests of the input boundaries: no store record, API body or option value makes them raise
anything but the project's own validation errors, and what they let through is safe to store."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import bounds
from domain.validation import (
    MAX_CUSTOMER_ID,
    RejectedRecord,
    check_record,
    customer_id_of,
    validate_customer,
)
from infrastructure.adapters.transcoder import canonical_bytes
from infrastructure.api.http import ApiError, decode_body, parse_sync_request

# Text as a hostile store or client may send it: any code point, lone surrogates and NUL included.
# (Hypothesis leaves surrogates out of its characters by default, and NUL is one code point in a million.)
HOSTILE_CHARACTERS = ["\x00", "\ud800", "\udbff", "\udfff", "\x7f", "\n", "\ufffd", "\ufeff", " ", "a", "é"]
any_text = st.text(
    alphabet=st.sampled_from(HOSTILE_CHARACTERS) | st.characters(min_codepoint=0, max_codepoint=0x10FFFF),
    max_size=20,
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=30,
)
ids = (
    st.integers(min_value=-5, max_value=2**64)
    | st.sampled_from([True, False, 1.0, "12", None, [1]])
    | st.integers(min_value=MAX_CUSTOMER_ID - 2, max_value=MAX_CUSTOMER_ID + 2)
)
FIELDS = ("email", "first_name", "last_name", "username", "role", "billing", "shipping", "meta_data")


TEXT_FIELDS = ("first_name", "last_name", "username", "role")
ADDRESS = st.dictionaries(st.sampled_from(["city", "company", "phone", "postcode"]), any_text, max_size=3)
META = st.lists(st.fixed_dictionaries({"key": any_text, "value": json_values}), max_size=3)


@st.composite
def records(draw: st.DrawFn) -> Any:
    """Mostly customer-shaped objects with plausible types (so the deeper rules and the text cleaning are
    reached), sometimes a field of any JSON value, sometimes anything at all."""
    roll = draw(st.integers(0, 9))
    if roll == 0:
        return draw(json_values)
    record: dict[str, Any] = {"id": draw(ids), "email": draw(st.sampled_from(["a@b.co", "x"]) | any_text)}
    for name in draw(st.lists(st.sampled_from(TEXT_FIELDS), max_size=4)):
        record[name] = draw(any_text)
    record["billing"] = draw(ADDRESS)
    record["meta_data"] = draw(META)
    if roll == 1:
        record[draw(st.sampled_from(FIELDS))] = draw(json_values)
    return record


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*_strings(key), *_strings(item))]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_the_record_boundary_never_raises_and_lets_through_only_what_can_be_stored(raw: Any) -> None:
    passed: list[Any] = []
    for encoder in (None, canonical_bytes):
        outcome = check_record(raw, encoder)
        if isinstance(outcome, RejectedRecord):
            assert outcome.error and len(outcome.excerpt) <= 301 and outcome.size >= 0
            assert outcome.customer_id is None or 1 <= outcome.customer_id <= MAX_CUSTOMER_ID
            assert all("\x00" not in s for s in _strings(outcome.excerpt))
            continue
        cid = customer_id_of(outcome)
        assert cid is not None and 1 <= cid <= MAX_CUSTOMER_ID and type(outcome["id"]) is int
        validate_customer(outcome)  # what passed the boundary passes the rules
        passed.append(outcome)
        orjson.dumps(outcome)  # and every encoder can store it
        for text in _strings(outcome):
            assert "\x00" not in text
            assert not any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@settings(max_examples=300, deadline=None)
@given(json_values | st.dictionaries(st.sampled_from(["org_id", "action", "config", "options"]), json_values))
def test_the_api_body_parser_raises_only_api_errors(body: Any) -> None:
    try:
        raw = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        raw = repr(body).encode("utf-8", "surrogatepass")
    for candidate in (raw, raw[: len(raw) // 2]):
        try:
            parse_sync_request(decode_body(candidate), "api")
        except ApiError as error:
            assert 400 <= error.status < 500 and error.code


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            "org_id": any_text | json_values,
            "user_id": any_text | json_values,
            "action": st.sampled_from(["start", "status", "retry", "resume", "force-done"]) | json_values,
            "queue_id": st.sampled_from(["5e7f3a52-31d4-4c11-9d27-6f0a0b1c2d3e"]) | json_values,
            "reason": any_text | json_values,
            "config": st.fixed_dictionaries(
                {"url": any_text | json_values, "consumerKey": any_text, "consumerSecret": any_text}
            )
            | json_values,
            "options": st.dictionaries(
                st.sampled_from(["batchSize", "batchDelayMs", "maxRetries", "perPage", "role"]), json_values
            )
            | json_values,
        }
    )
)
def test_a_seed_shaped_body_is_parsed_or_refused_with_a_400(body: dict[str, Any]) -> None:
    try:
        request = parse_sync_request(body, "api")
    except ApiError as error:
        assert error.status == 400
        return
    # What was accepted is within bounds.
    bounds.check_identifier(request.org_id, "org_id")
    if request.options is not None:
        assert 0 <= request.options.batch_delay_ms <= 60_000


@given(st.text(max_size=40))
def test_every_number_bound_parses_or_raises_a_bound_error(text: str) -> None:
    for bound in (bounds.BATCH_SIZE, bounds.BATCH_DELAY_MS, bounds.RATE, bounds.TIMEOUT_S, bounds.PORT):
        try:
            value = bound.parse(text)
        except bounds.BoundError as error:
            assert error.field == bound.field
            continue
        assert bound.low <= value <= bound.high and math.isfinite(value)


@given(any_text)
def test_identifiers_are_normalised_or_refused(text: str) -> None:
    try:
        checked = bounds.check_identifier(text, "org_id")
    except bounds.BoundError:
        return
    assert checked.strip() == checked and "\x00" not in checked and 0 < len(checked) <= 200


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "from 0.1 to 3600"),
        (1e-320, "from 0.1 to 3600"),
        (float("nan"), "number from"),
        (float("inf"), "number from"),
        (True, "number from"),
        ("5", "number from"),
    ],
)
def test_a_timeout_of_zero_or_nonsense_is_refused(value: Any, problem: str) -> None:
    with pytest.raises(bounds.BoundError, match=problem):
        bounds.TIMEOUT_S.check(value)


def test_stored_options_out_of_todays_bounds_are_clamped_not_refused() -> None:
    from domain.queue_terms import QueueOptions

    options = QueueOptions.from_dict(
        {"batch_size": 10**23, "batch_delay_ms": 3_600_000_000, "max_retries": True, "role": ""}
    )
    assert (options.batch_size, options.batch_delay_ms, options.max_retries, options.role) == (
        1000,
        60_000,
        3,
        "customer",
    )
