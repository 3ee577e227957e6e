"""Every failure a user can meet is one line on stderr, with its cause and what to do, the documented exit
code, no traceback and no credential in any form; read-only commands create nothing (issue 9, parts 5 and 6).

Real `wcsync` subprocesses throughout. The full disk and the read-only filesystem are real too: a tiny tmpfs
mounted in a private mount namespace (``unshare --user --map-root-user --mount``), so no root is needed and
nothing outlives the test; where the machine forbids that, those tests are skipped.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp import web
from psycopg import sql

from infrastructure.sandbox import RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.sandbox.tls import write_tls_files
from infrastructure.support.loop_thread import LoopThread
from tests.support import pgserver
from tests.support.cli import WCSYNC, as_json, run_in_repo, wcsync, wcsync_env
from tests.support.credentials import encodings
from tests.support.databases import AdminConnection
from tests.support.paths import ROOT

pytestmark = pytest.mark.sandbox(customers=120)
QUEUE = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
EXIT_USAGE, EXIT_STORE, EXIT_DATABASE, EXIT_INTERNAL = 2, 3, 4, 70


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, phrase: str) -> str:
    """The command failed with ``code`` and said so in exactly one line holding ``phrase``."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wcsync: "), lines[0]
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    return lines[0]


def assert_no_secret(text: str, key: str, secret: str) -> None:
    for name, form in encodings(key, secret).items():
        assert form not in text, f"{name} ({form!r}) leaked"


# ----- configuration: exit 2 before any work --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("http://shop:99999", "port must be from 1 to 65535"),
        ("http://shop:0", "port must be from 1 to 65535"),
        ("http://shop:abc", "port must be from 1 to 65535"),
        ("http://[::1", "the store URL is malformed"),
        ("http://", "must start with http:// or https:// and name a host"),
        ("http://sh op.example", "must not contain spaces or control characters"),
        ("http://shop.example/\x07", "must not contain spaces or control characters"),
        ("http://a..b", "host is not a valid host name"),
        ("http://sh<op", "host is not a valid host name"),
        ("http://ck_user:cs_pass@shop.example", "must not carry credentials"),
        ("https://shop.example/?consumer_key=ck_1", "must not carry credentials, a query string"),
        ("https://shop.example/#x", "a fragment"),
    ],
)
def test_a_bad_store_url_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path, url: str, phrase: str
) -> None:
    database = tmp_path / "db" / "wcsync.db"
    env = wcsync_env(None, f"sqlite:///{database}", WOO_CONSUMER_KEY="ck_1", WOO_CONSUMER_SECRET="cs_2")
    line = assert_one_line(wcsync("start", "--url", url, "--json", env=env), EXIT_USAGE, phrase)
    assert "cs_pass" not in line  # never quoted: a pasted URL can carry a password


@pytest.mark.parametrize("role", ["", " ", "\t"])
def test_a_blank_role_is_a_usage_error(sandbox: RunningSandbox, tmp_path: Path, role: str) -> None:
    env = wcsync_env(sandbox, f"sqlite:///{tmp_path}/w.db")
    assert_one_line(wcsync("start", "--role", role, env=env), EXIT_USAGE, "--role")


@pytest.mark.parametrize(
    "kind", ["missing", "directory", "not pem", "garbled pem", "empty", "device", "fifo", "too large"]
)
def test_a_bad_ca_file_is_one_line_exit_2_before_any_work(tmp_path: Path, kind: str) -> None:
    files = {
        "missing": tmp_path / "nope.pem",
        "directory": tmp_path,
        "not pem": tmp_path / "notes.txt",
        "garbled pem": tmp_path / "garbled.pem",
        "empty": tmp_path / "empty.pem",
        "device": Path("/dev/zero"),  # read whole, it never ends
        "fifo": tmp_path / "ca.fifo",  # opened, it waits for a writer
        "too large": tmp_path / "bundle.pem",
    }
    os.mkfifo(tmp_path / "ca.fifo")
    certificate = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    (tmp_path / "bundle.pem").write_bytes(certificate * (1024 * 1024 // len(certificate) + 1))
    (tmp_path / "notes.txt").write_text("just some notes\n")
    (tmp_path / "garbled.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
    )
    (tmp_path / "empty.pem").write_bytes(b"")
    phrases = {
        "missing": "does not exist",
        "directory": "is a directory",
        "not pem": "holds no PEM certificate",
        "garbled pem": "is not a valid PEM certificate",
        "empty": "holds no PEM certificate",
        "device": "is not a regular file",
        "fifo": "is not a regular file",
        "too large": "is too large for a certificate",
    }
    database = tmp_path / "db" / "wcsync.db"
    env = wcsync_env(
        None,
        f"sqlite:///{database}",
        WOO_URL="https://127.0.0.1:9",
        WOO_CONSUMER_KEY="ck_1",
        WOO_CONSUMER_SECRET="cs_2",
    )
    line = assert_one_line(wcsync("start", "--ca-file", str(files[kind]), env=env), EXIT_USAGE, phrases[kind])
    assert "the CA file" in line and "give the PEM file" in line
    assert not database.parent.exists()  # checked before the database was even opened


def unprivileged_wcsync(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`wcsync ARGS` as a user without privileges: as itself, or, under root (as CI runs), inside a user
    namespace of its own (`unshare --user`), where it is nobody and file permissions hold again."""
    if os.geteuid() != 0:
        return wcsync(*args, env=env)
    return run_in_repo(["unshare", "--user", *WCSYNC, *args], env=env)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory others may enter (pytest's tmp_path is private to its owner): for unprivileged_wcsync."""
    directory = Path(tempfile.mkdtemp(prefix="wcsync-perm-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


needs_unprivileged = pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("unshare") is None,
    reason="as root, needs unshare --user to run without privileges",
)


@needs_unprivileged
def test_an_unreadable_ca_file_is_one_line_exit_2(shared_dir: Path) -> None:
    ca = shared_dir / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ca.chmod(0)
    env = wcsync_env(None, f"sqlite:///{shared_dir}/w.db", WOO_URL="https://127.0.0.1:9")
    result = unprivileged_wcsync("start", "--ca-file", str(ca), env=env)
    assert_one_line(result, EXIT_USAGE, "cannot read the CA file")


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("postgresql://u@h:70000/db", "the port must be a number from 1 to 65535"),
        ("postgresql://u:pw@h:0/db", "the port must be a number from 1 to 65535"),
        ("postgresql://u@[::1/db", "is malformed"),
        ("sqlite://", "has no file path"),
    ],
)
def test_a_bad_database_url_is_one_line_exit_2(url: str, phrase: str) -> None:
    for command in (("queues",), ("db", "migrate")):
        line = assert_one_line(wcsync(*command, env=wcsync_env(None, url)), EXIT_USAGE, phrase)
        assert ":pw@" not in line


# ----- SQLite paths that cannot hold a database -------------------------------------------------------------


def test_a_sqlite_path_whose_parent_is_a_file_is_one_line_exit_4(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    (tmp_path / "afile").write_text("")
    env = wcsync_env(sandbox, f"sqlite:///{tmp_path}/afile/sub/w.db")
    assert_one_line(wcsync("start", "--json", env=env), EXIT_DATABASE, "is a file, not a directory")
    assert_one_line(wcsync("db", "migrate", env=env), EXIT_DATABASE, "is a file, not a directory")


def test_a_sqlite_path_that_is_a_directory_is_one_line_exit_4(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    (tmp_path / "w.db").mkdir()
    env = wcsync_env(sandbox, f"sqlite:///{tmp_path}/w.db")
    assert_one_line(wcsync("start", "--json", env=env), EXIT_DATABASE, "is a directory")
    assert_one_line(wcsync("status", env=env), EXIT_DATABASE, "is a directory, not a wcsync database")


@pytest.mark.parametrize(
    "argv",
    [
        ("db", "migrate", "--database-url", ""),
        ("queues", "--database-url", " "),
        ("--database-url", "", "status"),
        ("queues", "--org", ""),
        ("status", "--org", "  "),
    ],
)
def test_a_flag_given_empty_is_exit_2_never_the_default(
    isolated_environment: Path, argv: tuple[str, ...]
) -> None:
    env = wcsync_env(None, "sqlite:///unused.db", XDG_DATA_HOME=str(isolated_environment))
    del env["WCSYNC_DATABASE_URL"]
    flag = next(part for part in argv if part.startswith("--"))
    assert_one_line(wcsync(*argv, env=env), EXIT_USAGE, f"{flag} is empty")
    assert list(isolated_environment.iterdir()) == []  # the default database was not created


def test_an_empty_database_url_variable_means_unset(isolated_environment: Path) -> None:
    env = wcsync_env(None, "", XDG_DATA_HOME=str(isolated_environment))  # WCSYNC_DATABASE_URL=""
    assert_one_line(wcsync("queues", env=env), EXIT_DATABASE, f"no wcsync database at {isolated_environment}")


@pytest.mark.parametrize("kind", ["directory", "empty", "fifo"])
def test_audit_export_to_a_directory_nothing_or_a_fifo_is_exit_2_and_replaces_nothing(
    tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert wcsync("db", "migrate", env=wcsync_env(None, f"sqlite:///{tmp_path}/w.db")).returncode == 0
    target = {"directory": out, "empty": "", "fifo": out / "export.fifo"}[kind]
    if kind == "fifo":
        os.mkfifo(out / "export.fifo")  # a non-regular file, as /dev/full is (never test with the device)
    phrase = {"directory": "is a directory", "empty": "--output is empty", "fifo": "is not a regular file"}
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db")
    assert_one_line(wcsync("audit", "export", "--output", str(target), env=env), EXIT_USAGE, phrase[kind])
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    assert [p.name for p in out.iterdir()] == (["export.fifo"] if kind == "fifo" else [])
    if kind == "fifo":
        assert stat.S_ISFIFO((out / "export.fifo").lstat().st_mode)  # never replaced by a file


def test_a_failed_audit_export_leaves_nothing_behind(sandbox: RunningSandbox, tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    env = wcsync_env(sandbox, f"sqlite:///{tmp_path}/w.db", WCSYNC_CIPHER_KEY=key)
    assert wcsync("start", "--json", env=env).returncode == 0
    env["WCSYNC_CIPHER_KEY"] = base64.b64encode(b"x" * 32).decode()  # the wrong key: the export fails
    out = tmp_path / "out"
    out.mkdir()
    result = wcsync("audit", "export", "--output", str(out / "export.jsonl"), env=env)
    assert_one_line(result, EXIT_USAGE, "WCSYNC_CIPHER_KEY")
    assert list(out.iterdir()) == []  # no export and no .partial (it held decrypted data)


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (("customer", str(2**63)), "argument WOO_ID: '9223372036854775808' is not a WooCommerce customer id"),
        (("customer", "-1"), "argument WOO_ID: '-1' is not a WooCommerce customer id"),
        (
            ("queue", QUEUE, "--as-of", "0001-01-01T00:00:00+01:00"),
            "argument --as-of: '0001-01-01T00:00:00+01:00'",
        ),
        (("queue", QUEUE, "--as-of", "9999-12-31T23:59:59-01:00"), "is outside the times UTC can represent"),
        (("export", "--output", "OUT", "--since", "9999-12-31T23:59:59-01:00"), "argument --since"),
    ],
)
def test_an_audit_id_or_time_out_of_range_is_exit_2_naming_the_argument(
    tmp_path: Path, argv: tuple[str, ...], phrase: str
) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db")
    argv = tuple(str(tmp_path / "e.jsonl") if part == "OUT" else part for part in argv)
    assert_one_line(wcsync("audit", *argv, env=env), EXIT_USAGE, phrase)


def test_audit_queue_at_the_ends_of_time(sandbox: RunningSandbox, tmp_path: Path) -> None:
    env = wcsync_env(sandbox, f"sqlite:///{tmp_path}/w.db")
    queue_id = as_json(wcsync("start", "--json", env=env))["queueId"]
    last = wcsync("audit", "queue", queue_id, "--as-of", "9999-12-31T23:59:59.999999", "--json", env=env)
    assert as_json(last)["status"]["state"] == "done"
    first = wcsync("audit", "queue", queue_id, "--as-of", "0001-01-01T00:00:00", env=env)
    assert_one_line(first, EXIT_USAGE, "did not exist yet at 0001-01-01T00:00:00+00:00")


@pytest.fixture
def taken_port() -> Iterator[int]:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.mark.parametrize("command", ["serve", "sandbox"])
def test_a_port_in_use_is_exit_2_one_line(tmp_path: Path, taken_port: int, command: str) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db")
    result = wcsync(command, "--port", str(taken_port), env=env, timeout=30)
    assert_one_line(
        result, EXIT_USAGE, f"port {taken_port} on 127.0.0.1 is in use; choose another with --port (0 picks"
    )


def test_serve_refuses_a_worker_timing_its_workers_would_refuse_in_one_line_exit_2(tmp_path: Path) -> None:
    """Checked by the server before it starts anything, not by each of its workers failing in a loop."""
    env = wcsync_env(
        None, f"sqlite:///{tmp_path}/w.db", WCSYNC_SECRET_KEY=base64.b64encode(b"k" * 32).decode()
    )
    result = wcsync(
        "serve", "--port", "0", "--heartbeat-s", "5", "--stalled-after-s", "2", env=env, timeout=30
    )
    assert_one_line(result, EXIT_USAGE, "the heartbeat interval must be more than 0 and less than the stall")
    assert not (tmp_path / "w.db").exists()


@pytest.mark.parametrize("command", ["serve", "sandbox"])
@pytest.mark.parametrize(
    ("host", "phrase"),
    [
        ("192.0.2.1", "cannot listen on '192.0.2.1': "),  # not this machine's (TEST-NET-1)
        ("999.1.1.1", "cannot listen on '999.1.1.1': "),
        ("[::1", "cannot listen on '[::1': "),
        ("", "--host is empty"),  # it would listen on every interface
        ("\x1b[31mred", "cannot listen on '\\x1b[31mred'"),
    ],
)
def test_a_host_that_cannot_be_listened_on_is_exit_2_one_line(
    tmp_path: Path, command: str, host: str, phrase: str
) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db")
    result = wcsync(command, "--host", host, "--port", "0", env=env, timeout=30)
    assert_one_line(result, EXIT_USAGE, phrase)
    assert not (tmp_path / "w.db").exists()  # checked before the database was opened


@pytest.mark.parametrize("variable", ["WCSYNC_ACTOR", "USER"])
@pytest.mark.parametrize(
    ("actor", "phrase"),
    [
        ("\x1b[31mred", "U+001B"),
        ("alice\nbob", "U+000A"),
        ("a" * 100_000, "at most 200 characters"),
        ("\udcff", "U+DCFF"),  # the byte 0xff, not UTF-8
    ],
    ids=["escape", "newline", "long", "undecodable"],
)
@pytest.mark.parametrize("command", [("start", "--json"), ("force-done", QUEUE, "--reason", "r")])
def test_a_bad_actor_is_exit_2_before_anything_is_done(
    sandbox: RunningSandbox, tmp_path: Path, variable: str, actor: str, phrase: str, command: tuple[str, ...]
) -> None:
    env = wcsync_env(sandbox, f"sqlite:///{tmp_path}/db/w.db")
    env.pop("WCSYNC_ACTOR", None)
    env[variable] = actor
    result = wcsync(*command, env=env)
    line = assert_one_line(result, EXIT_USAGE, phrase)
    assert line.startswith(f"wcsync: {variable} ")
    assert "\x1b" not in line and len(line) < 300 and result.stdout == ""  # no queue id printed
    assert not (tmp_path / "db").exists()  # nothing was done


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (("projections", "rebuild", ""), "the projection name is empty"),
        (("projections", "rebuild", " "), "the projection name is empty"),
        (("projections", "rebuild", "\x1b[31mred"), "unknown projection(s) \\x1b[31mred; known: customers"),
        (("status", "\x1b[2J" + "a" * 100_000), "is not a queue id"),
        (("--log-format", "\x1b]0;x\x07" + "b" * 100_000, "queues"), "invalid choice"),
        (("--database-url", "sqlite://h/" + "\x1b" * 100_000, "queues"), "has no file path"),
        (("audit", "customer", "\x1b" + "9" * 100_000), "is not a WooCommerce customer id"),
    ],
    ids=["empty", "blank", "escape", "long queue id", "long choice", "long url", "long customer id"],
)
def test_an_error_line_never_echoes_control_characters_or_all_of_a_huge_argument(
    tmp_path: Path, argv: tuple[str, ...], phrase: str
) -> None:
    assert wcsync("db", "migrate", env=wcsync_env(None, f"sqlite:///{tmp_path}/w.db")).returncode == 0
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db")
    line = assert_one_line(wcsync(*argv, env=env), EXIT_USAGE, phrase)
    assert line.isprintable() and len(line) < 600, line


@pytest.mark.parametrize(
    ("variable", "value", "phrase"),
    [
        ("WCSYNC_LOG_FORMAT", "xml", "WCSYNC_LOG_FORMAT 'xml' is not a log format; use one of console, json"),
        ("WCSYNC_LOG_LEVEL", "bogus", "WCSYNC_LOG_LEVEL 'bogus' is not a log level; use one of debug"),
        ("WCSYNC_LOG_LEVEL", "\x1b[31m", "WCSYNC_LOG_LEVEL '\\x1b[31m' is not a log level"),
    ],
)
def test_a_bad_log_variable_is_exit_2_as_the_flag_is(
    tmp_path: Path, variable: str, value: str, phrase: str
) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db", **{variable: value})
    assert_one_line(wcsync("db", "migrate", env=env), EXIT_USAGE, phrase)
    assert not (tmp_path / "w.db").exists()
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db", WCSYNC_LOG_LEVEL="INFO", WCSYNC_LOG_FORMAT="json")
    assert wcsync("db", "migrate", env=env).returncode == 0  # the case of a level does not matter


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        # Refused before a customer is generated: never run the sandbox with a huge --customers.
        (
            ("sandbox", "--customers", "100000000000"),
            "--customers must be a whole number from 0 to 5,000,000",
        ),
        (("sandbox", "--invalid", "100000000000"), "--invalid"),
        (
            ("sandbox", "--other-roles", "100000000000"),
            "--other-roles must be a whole number from 0 to 5,000,000",
        ),
        (("sandbox", "--latency-ms", "nan"), "--latency-ms must be a number from 0 to 600,000, got nan"),
        (("sandbox", "--latency-ms", "-5"), "--latency-ms must be a number from 0 to 600,000, got -5"),
        (("sandbox", "--slow-ms", "inf"), "--slow-ms must be a number from 0 to 600,000, got inf"),
        (("sandbox", "--rate-limit", "nan"), "--rate-limit must be a number"),
        (("sandbox", "--error-rate", "nan"), "--error-rate must be between 0 and 1"),
        (("sandbox", "--churn-every", str(10**12)), "--churn-every must be a whole number"),
        (("demo", "--customers", "100000000000"), "--customers must be a whole number from 0 to 5,000,000"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_a_sandbox_flag_out_of_bounds_is_exit_2_before_any_work(
    tmp_path: Path, argv: tuple[str, ...], phrase: str
) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db")
    assert_one_line(
        wcsync(*argv, "--port", "0", env=env, timeout=30)
        if argv[0] == "sandbox"
        else wcsync(*argv, env=env, timeout=30),
        EXIT_USAGE,
        phrase,
    )
    assert not (tmp_path / "w.db").exists()


# ----- read-only commands create nothing ------------------------------------------------------------------

READ_ONLY_COMMANDS = [
    ("status",),
    ("status", QUEUE, "--json"),
    ("queues",),
    ("failed", QUEUE),
    ("activity", QUEUE),
    ("projections", "status"),
    ("audit", "queue", QUEUE),
    ("audit", "customer", "7"),
    ("audit", "export", "--output", "OUT"),
    ("audit", "verify"),
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_read_only_command_on_a_missing_database_creates_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    missing = tmp_path / "not" / "there"
    env = wcsync_env(None, f"sqlite:///{missing}/wcsync.db")
    argv = [str(tmp_path / "export.jsonl") if part == "OUT" else part for part in command]
    line = assert_one_line(
        wcsync(*argv, env=env), EXIT_DATABASE, f"no wcsync database at {missing}/wcsync.db"
    )
    assert "run `wcsync start`" in line
    assert not (tmp_path / "not").exists()
    assert not (tmp_path / "export.jsonl").exists()


def _tables(path: Path) -> list[str]:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["another app's", "empty"])
@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_read_only_command_on_a_file_that_is_no_wcsync_database_creates_nothing_in_it(
    tmp_path: Path, command: tuple[str, ...], kind: str
) -> None:
    import sqlite3

    (tmp_path / "dbs").mkdir()
    path = tmp_path / "dbs" / "other.db"
    if kind == "empty":
        path.write_bytes(b"")
    else:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
        conn.commit()
        conn.close()
    before = _tables(path)
    env = wcsync_env(None, f"sqlite:///{path}")
    argv = [str(path.parent / "export.jsonl") if part == "OUT" else part for part in command]
    assert_one_line(
        wcsync(*argv, env=env), EXIT_DATABASE, f"{path} is not a wcsync database (no wcsync tables)"
    )
    assert _tables(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["other.db"]  # no -wal/-shm, no export


def test_the_default_database_is_not_created_by_a_read_only_command(isolated_environment: Path) -> None:
    env = wcsync_env(None, "")
    del env["WCSYNC_DATABASE_URL"]
    env["XDG_DATA_HOME"] = str(isolated_environment)
    assert_one_line(wcsync("queues", env=env), EXIT_DATABASE, "no wcsync database at")
    assert list(isolated_environment.iterdir()) == []
    assert wcsync("db", "migrate", env=env).returncode == 0  # a write command still creates it
    assert wcsync("queues", "--json", env=env).stdout.strip() == "[]"


# ----- a full disk and a read-only filesystem (tmpfs in a private mount namespace) -------------------------

# Runs inside the namespace: mounts, then runs each step, and prints what each step gave as JSON.
_DRIVER = r"""
import json, subprocess, sys
spec = json.loads(sys.argv[1])
results = []
for step in spec:
    if step["kind"] == "mount":
        subprocess.run(["mount", "-t", "tmpfs", "-o", step["options"], "tmpfs", step["dir"]], check=True)
        continue
    argv = list(step["argv"])
    if "{latest_queue}" in argv:
        listed = subprocess.run(step["prefix"] + ["queues", "--json"], env=step["env"], capture_output=True, text=True)
        latest = json.loads(listed.stdout)[0]["queueId"]
        argv = [latest if a == "{latest_queue}" else a for a in argv]
    done = subprocess.run(argv, env=step["env"], capture_output=True, text=True, cwd=step["cwd"], timeout=300)
    results.append({"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr})
print(json.dumps(results))
"""


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt",
        ],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason="needs unshare --user --mount and tmpfs (a private mount namespace)"
)


def in_private_mounts(steps: list[dict[str, Any]]) -> list[subprocess.CompletedProcess[str]]:
    """Run the steps in one private mount namespace; 'wcsync ...' steps run the real command there."""
    prefix = list(WCSYNC)
    spec = []
    for step in steps:
        if step["kind"] == "mount":
            spec.append(step)
        else:
            spec.append({**step, "argv": prefix + list(step["argv"]), "prefix": prefix, "cwd": str(ROOT)})
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c", _DRIVER, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return [
        subprocess.CompletedProcess(step["argv"], r["returncode"], r["stdout"], r["stderr"])
        for step, r in zip([s for s in spec if s["kind"] == "run"], json.loads(done.stdout), strict=True)
    ]


@needs_namespaces
def test_a_full_disk_is_one_line_exit_4_and_the_sync_resumes_once_there_is_room(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    with SandboxThread(SandboxConfig(customers=2000)) as store:
        env = wcsync_env(store, f"sqlite:///{mount}/wcsync.db")

        def run(*argv: str) -> dict[str, Any]:
            return {"kind": "run", "argv": argv, "env": env}

        start, status, queues, resumed = in_private_mounts(
            [
                # Room for the empty tables and a few pages, not for 2,000 customers (600k stopped fitting
                # the first save once migration 8 added the dashboard's sessions table).
                {"kind": "mount", "dir": str(mount), "options": "size=800k"},
                run("start", "--json"),
                run("status"),
                {"kind": "mount", "dir": str(mount), "options": "remount,size=64m"},
                run("queues", "--json"),
                run("resume", "{latest_queue}", "--json"),
            ]
        )
    assert_one_line(start, EXIT_DATABASE, "is full (database or disk is full); free some space")
    assert "wcsync resume" in start.stderr
    assert_one_line(status, EXIT_DATABASE, "is full")
    # What was saved before the disk filled is a queue that resumes to the end once there is room.
    [queue] = as_json(queues)
    assert queue["state"] == "processing" and 0 < queue["doneCount"] < 2000
    assert resumed.returncode == 0, resumed.stderr
    assert as_json(resumed)["doneCount"] == 2000 and as_json(resumed)["state"] == "done"


@needs_namespaces
def test_a_read_only_filesystem_is_one_line_exit_4(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    env = wcsync_env(None, f"sqlite:///{mount}/wcsync.db", WOO_URL="http://127.0.0.1:9")
    in_dir, in_subdir = in_private_mounts(
        [
            {"kind": "mount", "dir": str(mount), "options": "ro,size=64k"},
            {"kind": "run", "argv": ("start",), "env": env},
            {
                "kind": "run",
                "argv": ("db", "migrate"),
                "env": {**env, "WCSYNC_DATABASE_URL": f"sqlite:///{mount}/a/b.db"},
            },
        ]
    )
    assert_one_line(in_dir, EXIT_DATABASE, "(Read-only file system); choose a writable path")
    assert_one_line(in_subdir, EXIT_DATABASE, f"cannot create the directory {mount}/a")


@needs_unprivileged
def test_a_directory_without_write_permission_is_one_line_exit_4(shared_dir: Path) -> None:
    locked = shared_dir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        env = wcsync_env(None, f"sqlite:///{locked}/w.db")
        assert_one_line(unprivileged_wcsync("db", "migrate", env=env), EXIT_DATABASE, "Permission denied")
        assert not (locked / "w.db").exists()
    finally:
        locked.chmod(0o700)


# ----- PostgreSQL: refused logins and unreachable servers fail fast, in the server's words ----------------


@pytest.fixture
def pg_password_role(pg_instance: pgserver.PostgresServer | None, pg_admin: AdminConnection) -> Iterator[str]:
    """A role that must give its password ('right-password'): the suite's server trusts everyone else."""
    if pg_instance is None:
        pytest.skip("needs the suite's own PostgreSQL server (its pg_hba.conf)")
    name = f"wcsync_pw_{uuid.uuid4().hex[:8]}"
    pg_admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'right-password'").format(sql.Identifier(name)))
    hba = pg_instance.data_dir / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"host all {name} 127.0.0.1/32 scram-sha-256\n{original}")
    pg_admin.execute(sql.SQL("SELECT pg_reload_conf()"))
    try:
        yield name
    finally:
        hba.write_text(original)
        pg_admin.execute(sql.SQL("SELECT pg_reload_conf()"))
        pg_admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _with_login(url: str, user: str, password: str | None = None, port: int | None = None) -> str:
    parts = urlsplit(url)
    login = user if password is None else f"{user}:{password}"
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{port or parts.port}"))


def test_a_wrong_postgres_password_fails_fast_in_the_servers_words(
    postgres_url: str, pg_password_role: str
) -> None:
    url = _with_login(postgres_url, pg_password_role, "wrong-password")
    for command in (("queues",), ("db", "migrate"), ("status",)):
        started = time.monotonic()
        result = wcsync(*command, env=wcsync_env(None, url))
        took = time.monotonic() - started
        line = assert_one_line(
            result, EXIT_DATABASE, f'password authentication failed for user "{pg_password_role}"'
        )
        assert "check the user, password and database name" in line
        assert "wrong-password" not in result.stderr
        assert took < 5, f"{command} took {took:.1f} s"


def test_an_unknown_postgres_role_and_database_are_named(postgres_url: str) -> None:
    result = wcsync("queues", env=wcsync_env(None, _with_login(postgres_url, "nobody_here")))
    assert_one_line(result, EXIT_DATABASE, 'role "nobody_here" does not exist')
    parts = urlsplit(postgres_url)
    missing_db = urlunsplit(parts._replace(path="/no_such_db_here"))
    assert_one_line(
        wcsync("queues", env=wcsync_env(None, missing_db)), EXIT_DATABASE, '"no_such_db_here" does not exist'
    )


def test_no_postgres_server_on_the_port_fails_fast(postgres_url: str) -> None:
    url = _with_login(postgres_url, "u", "secret-pw", port=pgserver.free_port())
    started = time.monotonic()
    result = wcsync("queues", env=wcsync_env(None, url))
    took = time.monotonic() - started
    line = assert_one_line(result, EXIT_DATABASE, "Connection refused")
    assert "check that the database server is running" in line
    assert "secret-pw" not in result.stderr
    assert took < 5, f"took {took:.1f} s"


# ----- a store that echoes the request: no credential in any form, anywhere --------------------------------

KEY = "ck_t3st+k/y=0123456789abcdef~é"
SECRET = "cs_s3cr+t/&?=fedcba9876543210%"


class EchoStore:
    """A hostile store: every answer echoes the request's URL (OAuth parameters over HTTP) and headers
    (Basic over HTTPS) in its error page, its JSON message, its error code and its data."""

    def __init__(self, tls_dir: Path | None, mode: str) -> None:
        self.tls_dir = tls_dir
        self.mode = mode
        self.url = ""
        self.ca_file: str | None = None
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        echo = f"{request.method} {request.url} {dict(request.headers)!r}"
        authorization = request.headers.get("Authorization", "")
        if self.mode == "401 json":
            body = {
                "code": "woocommerce_rest_cannot_view",
                "message": f"Denied: {echo}",
                "data": {"status": 401, "echo": echo},
            }
            return web.json_response(body, status=401)
        if self.mode == "500 json code":
            return web.json_response(
                {"code": f"err {authorization} {request.url}", "message": echo}, status=500
            )
        return web.Response(
            status=500, content_type="text/html", text=f"<html><head><title>Oops {echo}</title></head></html>"
        )

    def open(self) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def serve() -> Any:
            import ssl

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            context = None
            if self.tls_dir is not None:
                ca, cert, key = write_tls_files(self.tls_dir)
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(cert, key)
                self.ca_file = str(ca)
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"{'https' if context else 'http'}://127.0.0.1:{port}"
            try:
                yield self
            finally:
                await runner.cleanup()

        return serve()


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("mode", ["401 json", "500 html", "500 json code"])
def test_a_store_echoing_the_credentials_never_gets_them_shown_logged_or_stored(
    tmp_path: Path, scheme: str, mode: str
) -> None:
    store = EchoStore(tmp_path if scheme == "https" else None, mode)
    database = tmp_path / "w.db"
    with LoopThread(store.open, "the echo store"):
        env = wcsync_env(
            None,
            f"sqlite:///{database}",
            WOO_URL=store.url,
            WOO_CONSUMER_KEY=KEY,
            WOO_CONSUMER_SECRET=SECRET,
            WCSYNC_LOG_LEVEL="debug",  # the logs on stderr must be clean too
        )
        args = ["start", "--json", "--max-retries", "1"]
        if store.ca_file:
            args += ["--ca-file", store.ca_file]
        result = wcsync(*args, env=env)
        assert store.requests >= 1
        assert result.returncode == EXIT_STORE, result.stderr
        assert "Traceback" not in result.stderr
        assert_no_secret(result.stdout + result.stderr, KEY, SECRET)
        shown = [line for line in result.stderr.splitlines() if line.startswith("wcsync: ")]
        assert len(shown) == 1
        if mode == "401 json":
            # An echoed signed URL names oauth_nonce: still a refusal of the credentials, not a clock problem.
            assert "refused the credentials" in shown[0]
        else:
            # The queue was saved with the failure and the retries' incidents: the events are clean too.
            [queue] = as_json(wcsync("queues", "--json", env=env))
            activity = wcsync("activity", queue["queueId"], "--json", env=env)
            assert activity.returncode == 0
            assert any(row["activityType"] == "request_retried" for row in as_json(activity))
            assert_no_secret(activity.stdout, KEY, SECRET)
            export = tmp_path / "export.jsonl"
            assert wcsync("audit", "export", "--output", str(export), env=env).returncode == 0
            assert_no_secret(export.read_text(), KEY, SECRET)
    stored = database.read_bytes().decode("latin-1") if database.exists() else ""
    stored += "".join(p.read_bytes().decode("latin-1") for p in tmp_path.glob("w.db-*"))
    for name, form in encodings(KEY, SECRET).items():
        assert form.encode("utf-8").decode("latin-1") not in stored, f"{name} stored in the database"


def test_basic_credentials_echoed_by_a_store_are_not_in_the_message() -> None:
    """The issue's example: the store's 401 page shows 'Authorization: Basic <base64 of key:secret>'."""
    token = base64.b64encode(f"{KEY}:{SECRET}".encode()).decode()
    from infrastructure.adapters.woocommerce import StoreCredentials, WooCommerceClient

    client = WooCommerceClient("https://shop.example", StoreCredentials(KEY, SECRET))
    body = json.dumps(
        {"code": f"Basic {token}", "message": f"Authorization: Basic {token}", "data": {"h": token}}
    )
    code, message, data = client._error_fields(body.encode())
    assert_no_secret(code + message + json.dumps(data), KEY, SECRET)
    assert message == "Authorization: Basic ***"


# ----- a failure nobody foresaw --------------------------------------------------------------------------

_BOOM = r"""
import sys
import cli.main as m
import cli.queues
def boom(args):
    raise {error}
cli.queues.queues = boom
sys.exit(m.main(sys.argv[1:]))
"""


def _boom(error: str, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_in_repo([sys.executable, "-c", _BOOM.format(error=error), *argv], env=env, timeout=60)


def test_an_unforeseen_error_is_one_line_with_the_traceback_in_the_log_only(tmp_path: Path) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db", WOO_CONSUMER_KEY=KEY, WOO_CONSUMER_SECRET=SECRET)
    error = f'RuntimeError("kaboom at {KEY}:{SECRET}\\nand a second line")'
    quiet = _boom(error, "queues", env=env)
    line = assert_one_line(quiet, EXIT_INTERNAL, "wcsync: unexpected error: RuntimeError: kaboom at ***:***")
    assert "second line" not in line and "run again with -vv" in line
    assert_no_secret(quiet.stderr, KEY, SECRET)

    loud = _boom(error, "-vv", "queues", env=env)
    assert loud.returncode == EXIT_INTERNAL
    assert "Traceback" in loud.stderr and "in boom" in loud.stderr  # the log has it with -vv
    assert_no_secret(loud.stderr, KEY, SECRET)


def test_a_database_error_nobody_converted_is_still_a_database_error(tmp_path: Path) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/w.db")
    result = _boom('__import__("sqlite3").OperationalError("database or disk is full")', "queues", env=env)
    assert_one_line(result, EXIT_DATABASE, "is full (database or disk is full); free some space")
