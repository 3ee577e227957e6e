"""wcsync's versioned migrations and the sealed store secrets (infrastructure/adapters/migrations.py,
secrets.py) on both backends."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from infrastructure.adapters.migrations import (
    MIGRATIONS,
    MIGRATIONS_TABLE,
    STORE_SECRETS_TABLE,
    applied_migrations,
    apply_migrations,
    pending_migrations,
)
from infrastructure.adapters.secrets import SecretKey, SecretKeyError, StoreSecrets
from infrastructure.support.config import DatabaseConfig
from infrastructure.support.errors import StorageError

PLAINTEXT = b'{"key":"ck_PLAINTEXT_KEY_4242","secret":"cs_PLAINTEXT_SECRET_4242"}'
VERSIONS = [m.version for m in MIGRATIONS]


def raw_rows(database: DatabaseConfig, statement: str) -> list[tuple[Any, ...]]:
    """Rows read straight from the database, beside the adapter."""
    if database.backend == "postgres":
        with psycopg.connect(**database.pg_connect_kwargs()) as conn:
            return list(conn.execute(statement.encode()).fetchall())
    assert database.sqlite_path is not None
    conn = sqlite3.connect(str(database.sqlite_path))
    try:
        return list(conn.execute(statement).fetchall())
    finally:
        conn.close()


def table_bytes(database: DatabaseConfig) -> bytes:
    """Everything the secrets table holds, every column of every row, as bytes."""
    out = b""
    for row in raw_rows(database, f"SELECT * FROM {STORE_SECRETS_TABLE}"):
        for value in row:
            out += bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()
            out += b"|"
    return out


@pytest.fixture
def database(database_url: str) -> DatabaseConfig:
    config = DatabaseConfig.from_url(database_url)
    apply_migrations(config)
    return config


@pytest.fixture
def key() -> SecretKey:
    return SecretKey.generate()


@pytest.fixture
def secrets(database: DatabaseConfig, key: SecretKey) -> Iterator[StoreSecrets]:
    store = StoreSecrets(database, key)
    yield store
    store.close()


def test_migrations_apply_once_in_order_and_record_their_versions(database_url: str) -> None:
    config = DatabaseConfig.from_url(database_url)
    assert pending_migrations(config) == VERSIONS
    assert apply_migrations(config) == VERSIONS
    assert apply_migrations(config) == []  # idempotent
    assert pending_migrations(config) == []
    rows = applied_migrations(config)
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(at.endswith("+00:00") for _, _, at in rows)
    assert raw_rows(config, f"SELECT count(*) FROM {MIGRATIONS_TABLE}") == [(len(MIGRATIONS),)]
    assert raw_rows(config, f"SELECT count(*) FROM {STORE_SECRETS_TABLE}") == [(0,)]


def test_concurrent_migration_runs_apply_each_migration_once(database_url: str) -> None:
    config = DatabaseConfig.from_url(database_url)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: apply_migrations(config), range(4)))
    assert sorted(v for applied in results for v in applied) == VERSIONS
    assert raw_rows(config, f"SELECT count(*) FROM {MIGRATIONS_TABLE}") == [(len(MIGRATIONS),)]


def test_pending_migrations_creates_nothing(tmp_path: Any) -> None:
    config = DatabaseConfig.from_url(f"sqlite:///{tmp_path}/none/wcsync.db")
    assert pending_migrations(config) == VERSIONS
    assert not (tmp_path / "none").exists()


@pytest.mark.postgres
def test_migrations_go_into_the_urls_schema(postgres_url: str) -> None:
    config = DatabaseConfig.from_url(f"{postgres_url}?schema=tenant_a")
    assert apply_migrations(config) == VERSIONS
    assert apply_migrations(config) == []
    public = DatabaseConfig.from_url(postgres_url)
    assert pending_migrations(public) == VERSIONS  # the default schema has none of it
    found = raw_rows(
        public,
        "SELECT table_schema FROM information_schema.tables "
        f"WHERE table_name IN ('{MIGRATIONS_TABLE}', '{STORE_SECRETS_TABLE}') ORDER BY 1",
    )
    assert found == [("tenant_a",), ("tenant_a",)]


def test_an_unmigrated_database_says_to_migrate(database_url: str, key: SecretKey) -> None:
    config = DatabaseConfig.from_url(database_url)
    if config.backend == "sqlite":
        assert config.sqlite_path is not None
        sqlite3.connect(str(config.sqlite_path)).close()  # the file exists, without tables
    store = StoreSecrets(config, key)
    try:
        with pytest.raises(StorageError, match="wcsync db migrate"):
            store.get("org", "store")
    finally:
        store.close()


def test_put_get_replace_and_delete(secrets: StoreSecrets, database: DatabaseConfig, key: SecretKey) -> None:
    assert secrets.get("org-1", "s1") is None
    secrets.put("org-1", "s1", PLAINTEXT)
    secrets.put("org-2", "s1", b"other org")
    assert secrets.get("org-1", "s1") == PLAINTEXT
    assert secrets.get("org-2", "s1") == b"other org"
    assert secrets.get("org-1", "s2") is None
    assert secrets.fingerprint_of("org-1", "s1") == key.fingerprint

    secrets.put("org-1", "s1", b"rotated")
    assert secrets.get("org-1", "s1") == b"rotated"
    assert raw_rows(database, f"SELECT count(*) FROM {STORE_SECRETS_TABLE}") == [(2,)]

    assert secrets.delete("org-1", "s1") is True
    assert secrets.delete("org-1", "s1") is False
    assert secrets.get("org-1", "s1") is None
    assert raw_rows(database, f"SELECT org_id, store_id FROM {STORE_SECRETS_TABLE}") == [("org-2", "s1")]


def test_the_plaintext_is_nowhere_in_the_table(secrets: StoreSecrets, database: DatabaseConfig) -> None:
    secrets.put("org-1", "s1", PLAINTEXT)
    secrets.put("org-1", "s2", PLAINTEXT)
    raw = table_bytes(database)
    assert raw
    for piece in (PLAINTEXT, b"ck_PLAINTEXT_KEY_4242", b"cs_PLAINTEXT_SECRET_4242", b"PLAINTEXT"):
        assert piece not in raw
    assert PLAINTEXT.hex().encode() not in raw
    if database.backend == "sqlite":  # nor in the file itself (its pages, free ones included, and its WAL)
        assert database.sqlite_path is not None
        for path in database.sqlite_path.parent.glob(f"{database.sqlite_path.name}*"):
            assert b"PLAINTEXT" not in path.read_bytes(), path.name


def test_a_wrong_key_cannot_read_a_secret(database: DatabaseConfig, secrets: StoreSecrets) -> None:
    secrets.put("org-1", "s1", PLAINTEXT)
    other = StoreSecrets(database, SecretKey.generate())
    try:
        with pytest.raises(SecretKeyError, match="cannot decrypt the secret of store s1: wrong key"):
            other.get("org-1", "s1")
    finally:
        other.close()


def test_a_row_moved_to_another_store_does_not_decrypt(
    secrets: StoreSecrets, database: DatabaseConfig
) -> None:
    secrets.put("org-1", "s1", PLAINTEXT)
    secrets.put("org-1", "s2", b"s2's own")
    if database.backend == "postgres":
        statement = (
            f"UPDATE {STORE_SECRETS_TABLE} AS t SET nonce = s.nonce, ciphertext = s.ciphertext "
            f"FROM {STORE_SECRETS_TABLE} AS s WHERE t.store_id = 's2' AND s.store_id = 's1'"
        )
        with psycopg.connect(**database.pg_connect_kwargs()) as conn:
            conn.execute(statement.encode())
    else:
        assert database.sqlite_path is not None
        conn = sqlite3.connect(str(database.sqlite_path))
        with conn:
            nonce, ciphertext = conn.execute(
                f"SELECT nonce, ciphertext FROM {STORE_SECRETS_TABLE} WHERE store_id = 's1'"
            ).fetchone()
            conn.execute(
                f"UPDATE {STORE_SECRETS_TABLE} SET nonce = ?, ciphertext = ? WHERE store_id = 's2'",
                (nonce, ciphertext),
            )
        conn.close()
    with pytest.raises(SecretKeyError, match="store s2"):
        secrets.get("org-1", "s2")


def test_rekey_re_encrypts_every_secret_under_the_new_key(
    secrets: StoreSecrets, database: DatabaseConfig, key: SecretKey
) -> None:
    for org, store in (("org-1", "s1"), ("org-1", "s2"), ("org-2", "s1")):
        secrets.put(org, store, f"{org}/{store}".encode())
    before = table_bytes(database)
    new = SecretKey.generate()
    assert secrets.rekey(key, new) == 3
    assert table_bytes(database) != before
    assert secrets.rekey(key, new) == 0  # run again: every secret is already under the new key
    fingerprints = raw_rows(database, f"SELECT DISTINCT key_fingerprint FROM {STORE_SECRETS_TABLE}")
    assert fingerprints == [(new.fingerprint,)]
    fresh = StoreSecrets(database, new)
    stale = StoreSecrets(database, key)
    try:
        assert fresh.get("org-2", "s1") == b"org-2/s1"
        assert fresh.get("org-1", "s2") == b"org-1/s2"
        with pytest.raises(SecretKeyError):
            stale.get("org-1", "s1")
    finally:
        fresh.close()
        stale.close()


def test_rekey_is_all_or_nothing(secrets: StoreSecrets, database: DatabaseConfig, key: SecretKey) -> None:
    secrets.put("org-1", "a", b"first")
    stranger = SecretKey.generate()
    other = StoreSecrets(database, stranger)
    try:
        other.put("org-1", "m", b"sealed under another key")  # between the others, in rekey's order
    finally:
        other.close()
    secrets.put("org-1", "z", b"last")
    before = raw_rows(database, f"SELECT * FROM {STORE_SECRETS_TABLE} ORDER BY store_id")

    with pytest.raises(SecretKeyError, match="store m"):
        secrets.rekey(key, SecretKey.generate())

    assert raw_rows(database, f"SELECT * FROM {STORE_SECRETS_TABLE} ORDER BY store_id") == before
    assert secrets.key is key
    assert secrets.get("org-1", "a") == b"first" and secrets.get("org-1", "z") == b"last"


def test_no_secret_or_key_in_reprs(secrets: StoreSecrets, key: SecretKey) -> None:
    secrets.put("org-1", "s1", PLAINTEXT)
    shown = repr(secrets) + str(secrets) + repr(key)
    assert key.fingerprint in shown and "PLAINTEXT" not in shown
