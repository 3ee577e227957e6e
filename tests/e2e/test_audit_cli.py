"""`wcsync audit` as a user types it: timeline, time travel, customer history, export, verify (exit 1 and the
position after SQL tampering), encryption with a wrong key, and never a credential in the output."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from infrastructure.sandbox import RunningSandbox
from tests.support.cli import as_json, wcsync, wcsync_env

pytestmark = pytest.mark.sandbox(customers=80, invalid=2)


def test_audit_commands_end_to_end(sandbox: RunningSandbox, sqlite_url: str, tmp_path: Path) -> None:
    env = wcsync_env(sandbox, sqlite_url)
    secret = sandbox.consumer_secret
    started = wcsync("start", "--json", "--batch-size", "20", env=env)
    assert started.returncode == 1, started.stderr
    queue_id = as_json(started)["queueId"]
    outputs: list[str] = []

    timeline = wcsync("audit", "queue", queue_id, "--json", env=env)
    assert timeline.returncode == 0, timeline.stderr
    document = as_json(timeline)
    assert document["timeline"][0]["event"] == "Created" and document["timeline"][-1]["event"] == "Finished"
    as_of = document["timeline"][-1]["time"]
    travelled = as_json(wcsync("audit", "queue", queue_id, "--as-of", as_of, "--json", env=env))
    assert travelled["status"]["state"] == "failed" and travelled["status"]["createdCount"] == 78
    assert travelled["asOf"].endswith("+00:00")
    jsonl = wcsync("audit", "queue", queue_id, "--jsonl", env=env)
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert rows[0]["event"] == "Created" and rows[-1]["event"] == "Finished"
    human = wcsync("audit", "queue", queue_id, "--as-of", as_of, env=env)
    assert "LinesRejected" in human.stdout and "as of" in human.stdout
    outputs += [timeline.stdout, jsonl.stdout, human.stdout]

    other_org = wcsync("audit", "queue", queue_id, "--org", "someone-else", env=env)
    assert other_org.returncode == 2 and "no queue" in other_org.stderr

    woo_id = document["timeline"][2]["lines"][0]
    customer = wcsync("audit", "customer", str(woo_id), "--json", env=env)
    assert customer.returncode == 0, customer.stderr
    assert as_json(customer)["history"][0]["event"] == "Registered"
    outputs.append(customer.stdout)

    export_file = tmp_path / "audit.jsonl"
    exported = wcsync("audit", "export", "--output", str(export_file), "--json", env=env)
    assert exported.returncode == 0, exported.stderr
    assert as_json(exported)["events"] == len(export_file.read_text().splitlines()) - 1
    outputs.append(export_file.read_text())

    verified = wcsync("audit", "verify", "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    assert as_json(verified)["ok"] is True
    offline = wcsync("audit", "verify", "--file", str(export_file), env=env)
    assert offline.returncode == 0 and "intact" in offline.stdout
    outputs += [verified.stdout, offline.stdout]
    for text in outputs:
        assert secret not in text and sandbox.consumer_key not in text

    # Someone edits an event in the database directly: verify exits 1 and names the position.
    path = sqlite_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    position, state = conn.execute(
        "SELECT rowid, state FROM stored_events WHERE topic LIKE '%Customer.Registered' ORDER BY rowid LIMIT 1"
    ).fetchone()
    conn.execute(
        "UPDATE stored_events SET state = ? WHERE rowid = ?", (state.replace(b"@", b"#", 1), position)
    )
    conn.commit()
    conn.close()
    tampered = wcsync("audit", "verify", env=env)
    assert tampered.returncode == 1
    assert f"position {position}: event edited" in tampered.stderr and "Traceback" not in tampered.stderr

    lines = export_file.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"version":', '"version": ', 1)
    export_file.write_text("".join(lines))
    damaged = wcsync("audit", "verify", "--file", str(export_file), "--json", env=env)
    assert (
        damaged.returncode == 1 and as_json(damaged)["firstBadPosition"] == json.loads(lines[3])["position"]
    )


def test_a_wrong_cipher_key_is_one_clear_line(sandbox: RunningSandbox, sqlite_url: str) -> None:
    env = wcsync_env(sandbox, sqlite_url, WCSYNC_CIPHER_KEY="A" * 43 + "=")
    started = wcsync("start", "--json", env=env)
    assert started.returncode == 1, started.stderr
    queue_id = as_json(started)["queueId"]
    assert wcsync("audit", "queue", queue_id, "--json", env=env).returncode == 0

    wrong = wcsync_env(sandbox, sqlite_url, WCSYNC_CIPHER_KEY="B" * 43 + "=")
    result = wcsync("audit", "queue", queue_id, env=wrong)
    assert result.returncode == 2
    assert "the events cannot be decrypted with WCSYNC_CIPHER_KEY: wrong key?" in result.stderr
    assert "Traceback" not in result.stderr
    assert wcsync("audit", "verify", env=wrong).returncode == 0  # hashes of the stored bytes: no key needed

    bad = wcsync("audit", "verify", env=wcsync_env(sandbox, sqlite_url, WCSYNC_CIPHER_KEY="nope"))
    assert bad.returncode == 2 and "WCSYNC_CIPHER_KEY must be base64 of 32" in bad.stderr
