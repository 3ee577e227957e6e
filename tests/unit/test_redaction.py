"""Redaction hides a credential in every form it takes, wherever it sits in a text (issue 9)."""

from __future__ import annotations

import base64
from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from infrastructure.support.redaction import MASK, redact, redact_value
from tests.support.credentials import encodings

# Keys and secrets: printable text (WooCommerce's are ck_/cs_ and 40 hex digits); never the mask's '*'.
SECRET = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"), exclude_characters="*"
    ),
    min_size=8,
    max_size=48,
)
AROUND = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="*"), max_size=40
)


def assert_hidden(redacted: str, key: str, secret: str) -> None:
    for name, form in encodings(key, secret).items():
        assert form not in redacted, f"{name} left in {redacted!r}"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(key=SECRET, secret=SECRET, before=AROUND, after=AROUND, data=st.data())
def test_every_form_of_the_credentials_is_hidden_wherever_it_is(
    key: str, secret: str, before: str, after: str, data: st.DataObject
) -> None:
    forms = encodings(key, secret)
    name = data.draw(st.sampled_from(sorted(forms)))
    text = before + forms[name] + after
    redacted = redact(text, [key, secret])
    assert_hidden(redacted, key, secret)


@settings(max_examples=200)
@given(key=SECRET, secret=SECRET, before=AROUND, after=AROUND)
# The token followed by more base64 letters and a non-ASCII one that a case-blind [A-Za-z] matches ('İ').
@example(key="00000000", secret="000000000000000", before="", after="000000000İ")
def test_an_echoed_basic_authorization_header_is_hidden(
    key: str, secret: str, before: str, after: str
) -> None:
    token = base64.b64encode(f"{key}:{secret}".encode()).decode()
    text = f"{before}Authorization: Basic {token}{after}"
    redacted = redact(text, [key, secret])
    assert_hidden(redacted, key, secret)
    # Whatever credentials a Basic header holds, known or not, are hidden too.
    assert token not in redact(text)


@settings(max_examples=200)
@given(value=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789%+/=-_.~", min_size=1, max_size=40))
@example(value="%26")  # a value that starts as an encoded query's end does (found by a run of this test)
def test_oauth_and_consumer_parameters_are_hidden_whatever_their_value(value: str) -> None:
    for text in (
        f"GET /wp-json/wc/v3/customers?page=1&oauth_signature={value}&oauth_nonce=1",
        f"GET /x?consumer_key={value}&consumer_secret={value}",
        f'Authorization: OAuth oauth_consumer_key="{value}", oauth_signature="{value}"',
        f"redirect_to=https%3A%2F%2Fshop%2Fx%3Foauth_signature%3D{quote(value, safe='')}%26page%3D1",
    ):
        redacted = redact(text)
        for name in ("oauth_signature", "consumer_key", "consumer_secret", "oauth_consumer_key"):
            assert f"{name}={value}&" not in redacted and f'{name}="{value}"' not in redacted
            assert f"{name}%3D{quote(value, safe='')}%26" not in redacted


def test_plain_words_are_kept() -> None:
    text = 'HTTP Basic authentication required; password authentication failed for user "x"'
    assert redact(text, ["ck_abcdefgh12345678"]) == text
    assert redact("the store answered HTTP 500: Internal Server Error") == (
        "the store answered HTTP 500: Internal Server Error"
    )


def test_a_url_password_and_event_details_are_hidden() -> None:
    assert (
        redact("cannot reach postgresql://app:s3cret@db:5432/x")
        == f"cannot reach postgresql://app:{MASK}@db:5432/x"
    )
    details = {"echo": ["Basic " + base64.b64encode(b"ck_a1b2c3d4:cs_e5f6g7h8").decode()], "n": 3}
    assert redact_value(details, ["ck_a1b2c3d4", "cs_e5f6g7h8"]) == {"echo": [f"Basic {MASK}"], "n": 3}
