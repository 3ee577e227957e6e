"""API tokens on both backends (infrastructure/adapters/tokens.py over migration 2, wcsync_api_tokens): only
hashes are stored, nothing shown holds a token, revoked tokens stay refused, last use is written at most
once a minute."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from domain.errors import EXIT_USAGE
from infrastructure.adapters.migrations import API_TOKENS_TABLE, apply_migrations
from infrastructure.adapters.tokens import (
    LAST_USED_INTERVAL_S,
    AmbiguousTokenError,
    ApiTokens,
    Principal,
    Role,
    TokenExistsError,
    TokenNotFoundError,
    token_hash,
)
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import StorageError


def raw_rows(database: DatabaseConfig, statement: str) -> list[tuple[Any, ...]]:
    """Rows read straight from the database, beside the adapter."""
    if database.backend == "postgres":
        with psycopg.connect(**database.pg_connect_kwargs()) as conn:
            return list(conn.execute(statement.encode()).fetchall())
    assert database.sqlite_path is not None
    lite = sqlite3.connect(str(database.sqlite_path))
    try:
        return list(lite.execute(statement).fetchall())
    finally:
        lite.close()


class Clocks:
    """The monotonic clock and the wall clock of an ApiTokens, moved by the test."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.wall = datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.wall += timedelta(seconds=seconds)


@pytest.fixture
def database(database_url: str) -> DatabaseConfig:
    config = DatabaseConfig.from_url(database_url)
    apply_migrations(config)
    return config


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def tokens(database: DatabaseConfig, clocks: Clocks) -> Iterator[ApiTokens]:
    store = ApiTokens(database, clock=clocks.monotonic, now=clocks.now)
    yield store
    store.close()


def test_the_table_holds_the_tokens_hash_and_never_the_token(
    database: DatabaseConfig, tokens: ApiTokens
) -> None:
    with capture_logs() as logs:
        token, info = tokens.create("acme", "ci", Role.OPERATOR)
        assert tokens.authenticate(token) == Principal("acme", "ci", Role.OPERATOR)
    rows = raw_rows(database, f"SELECT * FROM {API_TOKENS_TABLE}")
    assert len(rows) == 1
    everything = "|".join(str(value) for value in rows[0])
    random_part = token.removeprefix("wcs_")
    assert token_hash(token) in everything
    assert random_part not in everything and random_part[:16] not in everything
    assert random_part not in json.dumps(logs, default=str)
    if database.backend == "sqlite":
        assert database.sqlite_path is not None
        for path in Path(database.sqlite_path).parent.glob("wcsync.db*"):  # the file and its WAL
            assert random_part.encode() not in path.read_bytes(), path
    assert info.org_id == "acme" and info.name == "ci" and not info.revoked


def test_list_shows_every_token_revoked_ones_included_never_a_token_or_hash(tokens: ApiTokens) -> None:
    first, _ = tokens.create("acme", "ci", Role.OPERATOR)
    second, _ = tokens.create("acme", "dashboard", Role.VIEWER)
    third, _ = tokens.create("globex", "ci", Role.ADMIN)
    tokens.revoke("dashboard", "acme")
    everyone = tokens.list()
    assert [(t.org_id, t.name, t.role, t.revoked) for t in everyone] == [
        ("acme", "ci", Role.OPERATOR, False),
        ("acme", "dashboard", Role.VIEWER, True),
        ("globex", "ci", Role.ADMIN, False),
    ]
    assert [t.name for t in tokens.list("globex")] == ["ci"]
    assert tokens.list("nobody") == []
    shown = json.dumps([t.as_json() for t in everyone]) + repr(everyone)
    for token in (first, second, third):
        assert token not in shown and token_hash(token) not in shown


def test_a_revoked_token_is_refused_and_its_name_can_be_given_again(tokens: ApiTokens) -> None:
    token, _ = tokens.create("acme", "ci", Role.OPERATOR)
    revoked = tokens.revoke("ci")
    assert revoked.revoked and revoked.revoked_at is not None
    assert tokens.authenticate(token) is None
    again, _ = tokens.create("acme", "ci", Role.VIEWER)
    assert tokens.authenticate(again) == Principal("acme", "ci", Role.VIEWER)
    assert tokens.authenticate(token) is None  # the new token does not bring the old one back
    assert [t.revoked for t in tokens.list("acme")] == [True, False]


def test_unknown_and_malformed_tokens_are_refused_alike(tokens: ApiTokens) -> None:
    token, _ = tokens.create("acme", "ci", Role.ADMIN)
    for other in (
        "wcs_" + "A" * 43,
        token[:-1],
        token + "A",
        "",
        "Bearer " + token,
        token.upper(),
        "\x00" * 47,
    ):
        assert tokens.authenticate(other) is None


def test_names_are_unique_among_an_orgs_tokens_not_revoked(tokens: ApiTokens) -> None:
    tokens.create("acme", "ci", Role.VIEWER)
    with pytest.raises(TokenExistsError) as exists:
        tokens.create("acme", "ci", Role.ADMIN)
    assert exists.value.exit_code == EXIT_USAGE
    assert str(exists.value).startswith("org 'acme' has a token named 'ci' already")
    tokens.create("globex", "ci", Role.VIEWER)  # another org may use the name
    with pytest.raises(AmbiguousTokenError) as ambiguous:
        tokens.revoke("ci")
    assert "'acme', 'globex'" in str(ambiguous.value) and "--org" in str(ambiguous.value)
    with pytest.raises(TokenNotFoundError) as unknown:
        tokens.revoke("nightly", "acme")
    assert str(unknown.value).startswith("no token named 'nightly' in org 'acme'")
    tokens.revoke("ci", "globex")
    assert tokens.revoke("ci").org_id == "acme"  # now only one org's is active
    with pytest.raises(TokenNotFoundError):
        tokens.revoke("ci", "acme")  # revoked already


def test_concurrent_creates_of_one_name_make_one_token(database: DatabaseConfig) -> None:
    stores = [ApiTokens(database) for _ in range(4)]

    def create(store: ApiTokens) -> str:
        try:
            store.create("acme", "ci", Role.VIEWER)
        except TokenExistsError:
            return "exists"
        return "created"

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = sorted(pool.map(create, stores))
    finally:
        for store in stores:
            store.close()
    assert results == ["created", "exists", "exists", "exists"]
    assert raw_rows(database, f"SELECT count(*) FROM {API_TOKENS_TABLE}") == [(1,)]


def test_last_use_is_written_at_most_once_a_minute_per_token(
    database: DatabaseConfig, tokens: ApiTokens, clocks: Clocks
) -> None:
    token, _ = tokens.create("acme", "ci", Role.VIEWER)
    other, _ = tokens.create("acme", "other", Role.VIEWER)

    def last_used(name: str) -> str | None:
        rows = raw_rows(database, f"SELECT last_used_at FROM {API_TOKENS_TABLE} WHERE name = '{name}'")
        value: str | None = rows[0][0]
        return value

    assert last_used("ci") is None
    first_use = clocks.now()
    tokens.authenticate(token)
    assert last_used("ci") == first_use.isoformat(timespec="microseconds")
    clocks.advance(LAST_USED_INTERVAL_S - 1)
    for _ in range(5):
        tokens.authenticate(token)
    assert last_used("ci") == first_use.isoformat(timespec="microseconds")  # not written again
    tokens.authenticate(other)  # another token is its own
    assert last_used("other") == clocks.now().isoformat(timespec="microseconds")
    clocks.advance(1)
    tokens.authenticate(token)
    assert last_used("ci") == clocks.now().isoformat(timespec="microseconds")
    assert [t.last_used_at for t in tokens.list("acme")] == [last_used("ci"), last_used("other")]


def test_an_unmigrated_database_says_to_migrate(sqlite_url: str) -> None:
    config = DatabaseConfig.from_url(sqlite_url)
    assert config.sqlite_path is not None
    sqlite3.connect(str(config.sqlite_path)).close()  # the file exists, without tables
    store = ApiTokens(config)
    try:
        with pytest.raises(StorageError) as raised:
            store.list()
        assert "run `wcsync db migrate` once" in str(raised.value)
        with pytest.raises(StorageError):
            store.authenticate("wcs_" + "A" * 43)
    finally:
        store.close()
