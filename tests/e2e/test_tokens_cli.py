"""`wcsync tokens create / list / revoke` as a user types them, on SQLite and PostgreSQL: the token printed
once and nowhere else (not in the database, not in `list`), one line and exit 2 for each mistake, a revoked
token refused (issue 11, part 2)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from infrastructure.adapters.tokens import ApiTokens, Principal, Role, token_hash, well_formed
from infrastructure.support.config import DatabaseConfig
from tests.support.cli import as_json, wcsync, wcsync_env


def database_text(database_url: str) -> str:
    """Everything the database holds, as text: SQLite's dump, or every row of PostgreSQL's tokens table."""
    config = DatabaseConfig.from_url(database_url)
    if config.backend == "sqlite":
        path = Path(database_url.removeprefix("sqlite:///"))
        lite = sqlite3.connect(path)
        try:
            return "\n".join(lite.iterdump())
        finally:
            lite.close()
    with psycopg.connect(**config.pg_connect_kwargs()) as conn:
        return "\n".join(str(row) for row in conn.execute(b"SELECT * FROM wcsync_api_tokens").fetchall())


def one_line_error(result: object, *parts: str) -> None:
    assert getattr(result, "returncode", None) == 2, result
    stderr: str = getattr(result, "stderr", "")
    assert len(stderr.strip().splitlines()) == 1, stderr
    for part in parts:
        assert part in stderr, stderr


def test_tokens_are_printed_once_listed_without_the_token_and_revoked(database_url: str) -> None:
    env = wcsync_env(None, database_url)
    assert wcsync("db", "migrate", env=env).returncode == 0

    created = wcsync("tokens", "create", "--org", "acme", "--name", "ci", "--role", "operator", env=env)
    assert created.returncode == 0, created.stderr
    token, note = created.stdout.splitlines()
    assert well_formed(token)
    assert "shown this once" in note and "operator" in note and token not in note
    as_document = wcsync("tokens", "create", "--org", "globex", "--name", "ci", "--json", env=env)
    assert as_document.returncode == 0, as_document.stderr
    document = as_json(as_document)
    assert set(document) == {"token", "name", "org", "role", "createdAt"}
    assert (document["name"], document["org"], document["role"]) == ("ci", "globex", "viewer")
    other = document["token"]

    taken = wcsync("tokens", "create", "--org", "acme", "--name", "ci", env=env)
    one_line_error(taken, "org 'acme' has a token named 'ci' already")
    bad_role = wcsync("tokens", "create", "--name", "x", "--role", "root", env=env)
    one_line_error(bad_role, "--role", "viewer")
    assert wcsync("tokens", "create", "--name", " padded", env=env).returncode == 2

    listed = wcsync("tokens", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [(t["org"], t["name"], t["role"], t["revoked"]) for t in as_json(listed)] == [
        ("acme", "ci", "operator", False),
        ("globex", "ci", "viewer", False),
    ]
    text = wcsync("--org", "acme", "tokens", "list", env=env)
    assert text.returncode == 0 and text.stdout.startswith("acme  ci  operator  created ")
    dump = database_text(database_url)
    for secret in (token, other):
        assert secret not in listed.stdout + text.stdout + taken.stderr
        assert secret.removeprefix("wcs_") not in dump
        assert token_hash(secret) in dump  # the hash is what is kept

    config = DatabaseConfig.from_url(database_url)
    tokens = ApiTokens(config)
    try:
        assert tokens.authenticate(token) == Principal("acme", "ci", Role.OPERATOR)
        ambiguous = wcsync("tokens", "revoke", "ci", env=env)
        one_line_error(ambiguous, "'acme', 'globex'", "--org")
        revoked = wcsync("tokens", "revoke", "ci", "--org", "acme", env=env)
        assert revoked.returncode == 0, revoked.stderr
        assert "revoked token 'ci' of org 'acme'" in revoked.stdout
        assert tokens.authenticate(token) is None
        assert tokens.authenticate(other) == Principal("globex", "ci", Role.VIEWER)
    finally:
        tokens.close()
    one_line_error(
        wcsync("tokens", "revoke", "ci", "--org", "acme", env=env), "no token named 'ci' in org 'acme'"
    )
    one_line_error(wcsync("tokens", "revoke", "nightly", env=env), "no token named 'nightly'")
    after = as_json(wcsync("tokens", "list", "--json", "--org", "acme", env=env))
    assert [(t["name"], t["revoked"]) for t in after] == [("ci", True)] and after[0]["revokedAt"]


def test_listing_the_tokens_of_a_database_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/none/wcsync.db")
    listed = wcsync("tokens", "list", env=env)
    assert listed.returncode == 4 and len(listed.stderr.strip().splitlines()) == 1, listed.stderr
    assert not (tmp_path / "none").exists()
