"""`wcsync stores`: a store registered once (checked against the store), synced with no key in the
environment, its secret encrypted at rest, rekeyed, removed; another org never sees it (issue 11, part 1)."""

from __future__ import annotations

import base64
import os
import sqlite3
from pathlib import Path

import pytest

from infrastructure.sandbox import RunningSandbox
from tests.support.cli import as_json, wcsync, wcsync_env
from tests.support.credentials import encodings

pytestmark = pytest.mark.sandbox(customers=40)


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_a_registered_store_syncs_without_a_key_in_the_environment(
    sandbox: RunningSandbox, sqlite_url: str, tmp_path: Path
) -> None:
    key = _key()
    with_credentials = wcsync_env(sandbox, sqlite_url, WCSYNC_SECRET_KEY=key)
    added = wcsync("stores", "add", "--url", sandbox.url, "--name", "shop", "--json", env=with_credentials)
    assert added.returncode == 0, added.stderr
    store = as_json(added)
    assert store["action"] == "registered" and store["name"] == "shop" and not store["removed"]
    store_id = store["storeId"]

    # From here on no consumer key or secret is in the environment: the registry has them.
    bare = wcsync_env(None, sqlite_url, WCSYNC_SECRET_KEY=key)
    listed = as_json(wcsync("stores", "list", "--json", env=bare))
    assert [row["storeId"] for row in listed] == [store_id]
    started = wcsync("start", "--store", store_id, "--json", env=bare)
    assert started.returncode == 0, started.stderr
    assert as_json(started)["createdCount"] == 40
    by_url = wcsync("start", "--url", sandbox.url, "--json", env=bare)
    assert by_url.returncode == 0, by_url.stderr
    assert as_json(by_url)["unchangedCount"] == 40

    # The secret is nowhere in the database in any encoding, and no output ever showed it.
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    dump = "\n".join(sqlite3.connect(path).iterdump())
    raw = path.read_bytes()
    outputs = added.stdout + added.stderr + started.stdout + started.stderr + by_url.stdout
    for name, form in encodings(sandbox.consumer_key, sandbox.consumer_secret).items():
        assert form not in dump, f"{name} in the dump"
        assert form.encode() not in raw, f"{name} in the file"
        assert form not in outputs, f"{name} in an output"

    # Another org: the same answer as for no such store.
    other = wcsync("--org", "other", "stores", "remove", store_id, env=bare)
    assert other.returncode == 2 and other.stderr.strip() == f"wcsync: no store {store_id} in org 'other'"
    assert as_json(wcsync("--org", "other", "stores", "list", "--json", env=bare)) == []

    # Rekey: the old key no longer opens it, the new one does.
    new = _key()
    rekeyed = wcsync("stores", "rekey", env={**bare, "WCSYNC_SECRET_KEY_OLD": key, "WCSYNC_SECRET_KEY": new})
    assert rekeyed.returncode == 0, rekeyed.stderr
    assert "1 store secret" in rekeyed.stdout
    stale = wcsync("start", "--store", store_id, env=bare)
    assert stale.returncode == 2 and "cannot decrypt the secret" in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1
    renewed = {**bare, "WCSYNC_SECRET_KEY": new}
    assert wcsync("start", "--store", store_id, "--json", env=renewed).returncode == 0

    # Removed, with no key at all (a lost key must not keep a store registered): its secret row is gone,
    # and a run of it is no such store.
    keyless = {k: v for k, v in renewed.items() if k != "WCSYNC_SECRET_KEY"}
    removed = wcsync("stores", "remove", store_id, env=keyless)
    assert removed.returncode == 0, removed.stderr
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM wcsync_store_secrets").fetchone()
    assert rows == (0,)
    gone = wcsync("start", "--store", store_id, env=renewed)
    assert gone.returncode == 2 and gone.stderr.strip() == f"wcsync: no store {store_id} in org 'default'"


def test_a_store_is_checked_before_it_is_registered(sandbox: RunningSandbox, sqlite_url: str) -> None:
    env = wcsync_env(sandbox, sqlite_url, WCSYNC_SECRET_KEY=_key(), WOO_CONSUMER_SECRET="cs_wrong")
    refused = wcsync("stores", "add", "--url", sandbox.url, env=env)
    assert refused.returncode == 3, refused.stderr
    assert "refused the credentials" in refused.stderr and "cs_wrong" not in refused.stderr
    listed = wcsync("stores", "list", "--json", env=env)
    assert listed.returncode == 0 and as_json(listed) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [(None, "WCSYNC_SECRET_KEY is not set"), ("bm90LWEta2V5", "WCSYNC_SECRET_KEY")],
)
def test_a_missing_or_wrong_secret_key_is_one_line_exit_2(
    sandbox: RunningSandbox, sqlite_url: str, value: str | None, problem: str
) -> None:
    extra = {} if value is None else {"WCSYNC_SECRET_KEY": value}
    result = wcsync("stores", "add", "--url", sandbox.url, env=wcsync_env(sandbox, sqlite_url, **extra))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and problem in line
    if value is not None:
        assert value not in line
