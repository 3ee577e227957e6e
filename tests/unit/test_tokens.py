"""API tokens and their checks without a database or a socket: the token's shape and hash, the roles'
order, the Authorization header's parsing and the failed-attempt limiter (infrastructure/adapters/tokens.py,
infrastructure/api/auth.py)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.parser import TOKEN_ROLES, build_parser
from domain.bounds import BoundError
from infrastructure.adapters.tokens import (
    ROLE_NAMES,
    TOKEN_LENGTH,
    Principal,
    Role,
    TokenInfo,
    new_token,
    token_hash,
    well_formed,
)
from infrastructure.api.auth import (
    MAX_AUTHORIZATION_LENGTH,
    FailureLimiter,
    Forbidden,
    OrgMismatch,
    TooManyAttempts,
    Unauthorized,
    bearer_token,
    client_address,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_new_token_is_wcs_and_32_random_bytes_in_url_safe_base64() -> None:
    tokens = {new_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert token.startswith("wcs_") and len(token) == TOKEN_LENGTH
        assert well_formed(token)
        assert len(base64.urlsafe_b64decode(token[4:] + "=")) == 32


def test_only_the_hex_sha256_of_a_token_is_its_key() -> None:
    token = new_token()
    assert token_hash(token) == hashlib.sha256(token.encode()).hexdigest()
    assert token not in token_hash(token)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "wcs_",
        "wcs_" + "a" * 42,
        "wcs_" + "a" * 44,
        "xyz_" + "a" * 43,
        "wcs_" + "a" * 42 + "=",
        "wcs_" + "é" * 43,
    ],
)
def test_a_token_of_the_wrong_shape_is_not_well_formed(text: str) -> None:
    assert not well_formed(text)


def test_roles_are_ordered_viewer_operator_admin() -> None:
    viewer, operator, admin = Role.VIEWER, Role.OPERATOR, Role.ADMIN
    assert admin.allows(operator) and admin.allows(viewer) and admin.allows(admin)
    assert operator.allows(viewer) and operator.allows(operator) and not operator.allows(admin)
    assert viewer.allows(viewer) and not viewer.allows(operator) and not viewer.allows(admin)
    assert [Role.parse(name) for name in ROLE_NAMES] == [viewer, operator, admin]


@pytest.mark.parametrize("value", ["root", "Admin", "", None, 1])
def test_an_unknown_role_is_refused_naming_the_roles(value: object) -> None:
    with pytest.raises(BoundError) as raised:
        Role.parse(value)
    assert str(raised.value) == "role must be one of viewer, operator, admin"


def test_the_command_line_offers_the_roles_the_tokens_know() -> None:
    assert TOKEN_ROLES == ROLE_NAMES
    args = build_parser().parse_args(["tokens", "create", "--name", "ci"])
    assert args.role == "viewer"


def test_what_may_be_shown_of_a_token_has_no_token_nor_hash() -> None:
    info = TokenInfo("acme", "ci", Role.OPERATOR, "2026-01-01T00:00:00+00:00", None, None)
    assert info.as_json() == {
        "name": "ci",
        "org": "acme",
        "role": "operator",
        "createdAt": "2026-01-01T00:00:00+00:00",
        "lastUsedAt": None,
        "revokedAt": None,
        "revoked": False,
    }


# ----- the header ------------------------------------------------------------------------------------


TOKEN = "wcs_" + "A" * 43


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}"])
def test_a_bearer_header_gives_its_token(header: str) -> None:
    assert bearer_token([header]) == TOKEN


@pytest.mark.parametrize(
    "values",
    [
        [],
        [f"Bearer {TOKEN}", f"Bearer {TOKEN}"],  # two headers
        [TOKEN],  # no scheme
        [f"Basic {TOKEN}"],
        [f"Bearer {TOKEN} {TOKEN}"],  # two tokens
        ["Bearer "],
        ["Bearer"],
        [f"Bearer\t{TOKEN}"],
        [f"Bearer {TOKEN}\x00"],
        [f"Bearer {TOKEN}é"],
        [f"Bearer {'a' * MAX_AUTHORIZATION_LENGTH}"],
        [f"Bearer=={TOKEN}"],
    ],
)
def test_anything_but_one_bearer_header_gives_no_token(values: list[str]) -> None:
    assert bearer_token(values) is None


@given(st.lists(st.text(max_size=600), max_size=3))
def test_no_header_makes_the_parser_fail_other_than_by_none(values: list[str]) -> None:
    token = bearer_token(values)
    assert token is None or (len(values) == 1 and token in values[0] and token.isascii())


# ----- errors ----------------------------------------------------------------------------------------------


def test_the_errors_carry_their_status_code_and_details() -> None:
    principal = Principal("acme", "ci", Role.VIEWER)
    assert (Unauthorized.http_status, Unauthorized.error_code) == (401, "unauthorized")
    assert str(Unauthorized()) == str(Unauthorized())  # one message for every case
    forbidden = Forbidden(Role.OPERATOR, principal)
    assert (forbidden.http_status, forbidden.error_code) == (403, "forbidden")
    assert "operator" in str(forbidden) and "viewer" in str(forbidden)
    mismatch = OrgMismatch("acme", "other")
    assert (mismatch.http_status, mismatch.error_code) == (403, "org_mismatch")
    limited = TooManyAttempts(42)
    assert (limited.http_status, limited.error_code) == (429, "too_many_attempts")
    assert limited.http_details() == {"retryAfterS": 42}


# ----- failed attempts -----------------------------------------------------------------------------------


def test_more_than_the_allowed_failures_in_the_window_block_the_address_until_it_passes() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        limiter.failed("10.0.0.1")
        clock.now += 1
    assert limiter.retry_after("10.0.0.1") is None  # three is allowed
    limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == 57  # the first failure, at 1000, leaves the window at 1060
    assert limiter.retry_after("10.0.0.2") is None  # another address is not affected
    clock.now = 1059.5
    assert limiter.retry_after("10.0.0.1") == 1
    clock.now = 1060.0
    assert limiter.retry_after("10.0.0.1") is None


def test_failures_spread_wider_than_the_window_never_block() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=2, window_s=10, clock=clock)
    for _ in range(20):
        limiter.failed("a")
        clock.now += 5
        assert limiter.retry_after("a") is None


@pytest.mark.parametrize(
    ("remote", "counted_as"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2:ffff::9", "2001:db8:1:2::/64"),  # the same /64: one host's, one count
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack socket is its IPv4 address
        ("not-an-address", "not-an-address"),
        (None, "unknown"),
    ],
)
def test_failures_are_counted_per_ipv4_address_and_per_ipv6_slash_64(
    remote: str | None, counted_as: str
) -> None:
    assert client_address(remote) == counted_as


def test_the_limiter_tracks_a_bounded_number_of_addresses_forgetting_expired_ones_first() -> None:
    clock = Clock()
    limiter = FailureLimiter(max_failures=1, window_s=10, max_addresses=3, clock=clock)
    limiter.failed("old")
    clock.now += 20
    limiter.failed("hot")
    limiter.failed("hot")
    limiter.failed("b")
    limiter.failed("c")  # full: "old" has expired and goes
    assert limiter.tracked() == 3 and limiter.retry_after("hot") is not None
    for n in range(100):
        limiter.failed(f"flood-{n}")
    assert limiter.tracked() == 3
