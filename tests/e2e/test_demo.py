"""`wcsync demo` as a user runs it (README's first command): a sandbox store, a full sync, the failed lines
fixed and retried, then the webhook loop: three customers edited, one created and one deleted in the
sandbox reach the mirror through signed deliveries, each printed as it is followed. On a fresh machine (no
WCSYNC_SECRET_KEY, the SQLite default) and on PostgreSQL with a key of the user's; no credential, key or
webhook secret in anything it prints, logs at debug included."""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from contextlib import suppress
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from domain.errors import EXIT_INTERRUPTED, EXIT_USAGE
from infrastructure.sandbox import DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET
from tests.support.cli import as_json, spawn_wcsync, wcsync, wcsync_env
from tests.support.credentials import encodings
from tests.support.waiting import wait_until

CUSTOMERS = "60"
# "customer 9 updated (email) via webhook in 0.42 s", "customer 61 created via webhook ...",
# "customer 60 marked deleted via webhook ...".
FOLLOWED = re.compile(
    r"^customer (\d+) (updated \((?:email|name)\)|created|marked deleted) via webhook in (\d+\.\d\d) s$"
)
# A webhook secret is 43 URL-safe characters, a secret key 44 of base64: any such run of characters that is
# not hex (a digest) would be one printed.
SECRET_LIKE = re.compile(r"[A-Za-z0-9_\-+/=]{40,}")


def run_demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = wcsync("demo", "--customers", CUSTOMERS, "--invalid", "2", *args, env=env, timeout=90)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def assert_nothing_secret(result: subprocess.CompletedProcess[str], *secrets: str) -> None:
    printed = result.stdout + result.stderr
    forms = encodings(DEFAULT_CONSUMER_KEY, DEFAULT_CONSUMER_SECRET)
    forms.update({f"secret {i}": secret for i, secret in enumerate(secrets)})
    assert [name for name, form in forms.items() if form in printed] == []
    suspicious = [
        run for run in SECRET_LIKE.findall(printed) if not re.fullmatch(r"[0-9a-f]+", run) and "/" not in run
    ]
    assert suspicious == []


def mirrored(database: Path) -> dict[int, tuple[str, bool, str | None]]:
    """woo_customers of the demo's store, read straight from the SQLite file the demo wrote."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT woo_customer_id, email, is_deleted, deleted_reason FROM woo_customers"
        ).fetchall()
    return {int(row[0]): (str(row[1]), bool(row[2]), row[3]) for row in rows}


def test_the_demo_on_a_fresh_machine_shows_the_mirror_following_webhooks(tmp_path: Path) -> None:
    database = tmp_path / "wcsync.db"
    env = wcsync_env(None, f"sqlite:///{database}", WCSYNC_LOG_LEVEL="debug", WCSYNC_LOG_FORMAT="json")
    assert "WCSYNC_SECRET_KEY" not in env
    result = run_demo(env)
    assert result.returncode == 0, result.stderr[-2000:]

    lines = result.stdout.splitlines()
    assert "state      done" in lines  # the retry finished the queue, as before
    installed = [line for line in lines if line.startswith("webhooks   installed for http://127.0.0.1:")]
    assert len(installed) == 1 and "/api/v1/webhooks/woocommerce/" in installed[0]
    followed = [match for line in lines if (match := FOLLOWED.match(line))]
    kinds = sorted(match[2] for match in followed)
    assert kinds == ["created", "marked deleted", "updated (email)", "updated (email)", "updated (name)"]
    assert all(float(match[3]) < 15 for match in followed)
    assert any(
        line.startswith("mirrored   5 of 5 changes through webhooks (3 updated, 1 created, 1 deleted)")
        for line in lines
    )
    # Printed in that order: installed, each change, the summary, then the hint of what to look at next.
    assert lines.index(installed[0]) < lines.index(followed[0].string) < lines.index(lines[-1])
    assert lines[-1].startswith("next: wcsync activity ")

    # What was printed is what the mirror holds.
    rows = mirrored(database)
    ids = {match[2]: int(match[1]) for match in followed}
    email_edits = [int(m[1]) for m in followed if m[2] == "updated (email)"]
    assert all(rows[i][0].endswith(("@example.org", "@example.net")) and not rows[i][1] for i in email_edits)
    created = rows[ids["created"]]
    assert created[0] == "nova.demo@example.org" and not created[1]
    gone = rows[ids["marked deleted"]]
    assert gone[1] and gone[2] is not None and "webhook delivery" in gone[2]
    assert len(rows) == int(CUSTOMERS) + 1

    assert_nothing_secret(result)


@pytest.mark.postgres
def test_the_demos_json_has_each_webhook_change_and_its_delivery(postgres_url: str) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    env = wcsync_env(None, postgres_url, WCSYNC_SECRET_KEY=key, WCSYNC_LOG_LEVEL="debug")
    migrated = wcsync("db", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    result = run_demo(env, "--json")
    assert result.returncode == 0, result.stderr[-2000:]

    document = as_json(result)
    assert document["afterRetry"]["state"] == "done"
    webhooks: dict[str, Any] = document["webhooks"]
    assert webhooks["deliveryUrl"].endswith(f"/api/v1/webhooks/woocommerce/{webhooks['storeId']}")
    assert webhooks["installed"] == {
        "customer.created": "created",
        "customer.updated": "created",
        "customer.deleted": "created",
    }
    changes = webhooks["changes"]
    assert [c["change"] for c in changes] == ["updated", "updated", "updated", "created", "deleted"]
    assert webhooks["mirrored"] == 5 and all(c["mirrored"] for c in changes)
    assert all(0 < c["seconds"] < 15 for c in changes)
    results = [(c["delivery"]["state"], c["delivery"]["result"]) for c in changes]
    assert results == [("applied", "updated")] * 3 + [("applied", "created"), ("applied", "deleted")]
    assert [c["fields"] for c in changes[:3]] == [["email"], ["first_name", "last_name"], ["email"]]

    assert_nothing_secret(result, key)


def test_an_unusable_secret_key_is_exit_2_before_any_work(tmp_path: Path) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/wcsync.db", WCSYNC_SECRET_KEY="not a key!")
    result = wcsync("demo", env=env, timeout=30)
    assert result.returncode == EXIT_USAGE
    assert result.stderr.splitlines() == [
        "wcsync: WCSYNC_SECRET_KEY is not valid base64; set it to the base64 of 32 random bytes "
        "(`openssl rand -base64 32`)"
    ]
    assert result.stdout == "" and not (tmp_path / "wcsync.db").exists()


# ----- `wcsync demo --serve` (issue 14) -------------------------------------------------------------------

DASHBOARD_LINE = re.compile(r"^dashboard  (http://127\.0\.0\.1:(\d+)/) ")
TOKEN_LINE = re.compile(r"^token      (\S+)   \(operator of org 'default'; revoked when the demo stops\)$")
SANDBOX_LINE = re.compile(r"^sandbox    http://127\.0\.0\.1:(\d+) ")


class _Page(HTMLParser):
    """What the test reads of a page: each element's attributes by tag (the stdlib's parser, no layout)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {name: value or "" for name, value in attrs}))

    def find(self, tag: str, **wanted: str) -> list[dict[str, str]]:
        return [
            attrs
            for name, attrs in self.elements
            if name == tag and all(attrs.get(key.replace("_", "-")) == value for key, value in wanted.items())
        ]


class _Lines:
    """A process's stdout read line by line on a thread, so a test can wait for a line with a deadline
    (a selector on the pipe says nothing of the lines Python's buffer already holds)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.stdout = process.stdout
        self.seen: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # the end of its output

    def until(self, pattern: re.Pattern[str], deadline_s: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + deadline_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern.pattern!r} within {deadline_s} s in {self.seen}"
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"the output ended before {pattern.pattern!r}: {self.seen}"
            self.seen.append(line)
            if match := pattern.match(line):
                return match


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux /proc), to check none outlives the demo."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def _sign_in_and_read_queues(url: str, token: str) -> tuple[int, str, int]:
    """As a browser does: GET /login (its pre-session cookie and the form's csrf), POST the token, follow to
    `/`; the sign-in's status, the queues page, and the JSON API's answer to the same token as a bearer."""
    jar = aiohttp.CookieJar(unsafe=True)  # cookies of an IP address host
    async with aiohttp.ClientSession(cookie_jar=jar, timeout=aiohttp.ClientTimeout(total=30)) as client:
        async with client.get(url + "login") as form_page:
            assert form_page.status == 200
            login = _Page(await form_page.text())
        [csrf] = [field["value"] for field in login.find("input", name="csrf")]
        form = {"token": token, "csrf": csrf}
        async with client.post(url + "login", data=form, allow_redirects=False) as signed_in:
            status, location = signed_in.status, signed_in.headers.get("Location")
        assert location in ("/", url), location
        async with client.get(url) as queues:
            assert queues.status == 200 and queues.url.path == "/", queues.url
            html = await queues.text()
        headers = {"Authorization": f"Bearer {token}"}
        async with client.get(url + "api/v1/queues", headers=headers) as api:
            api_status = api.status
    return status, html, api_status


def test_demo_serve_leaves_the_dashboard_up_until_ctrl_c_then_stops_everything(tmp_path: Path) -> None:
    database = tmp_path / "wcsync.db"
    env = wcsync_env(None, f"sqlite:///{database}")
    stderr = tmp_path / "demo.err"
    demo = spawn_wcsync(
        "demo",
        "--customers",
        CUSTOMERS,
        "--invalid",
        "2",
        "--serve",
        "--port",
        "0",
        env=env,
        stderr=stderr.open("w"),
        start_new_session=True,
    )
    try:
        output = _Lines(demo)
        url, port = output.until(DASHBOARD_LINE).groups()
        token = output.until(TOKEN_LINE)[1]
        [queue_id] = [line.split()[3] for line in output.seen if line.startswith("next: wcsync activity ")]
        [sandbox_port] = [m[1] for line in stderr.read_text().splitlines() if (m := SANDBOX_LINE.match(line))]

        status, html, api_status = asyncio.run(_sign_in_and_read_queues(url, token))
        assert status == 303 and api_status == 200
        rows = _Page(html).find("tr", data_queue_id=queue_id)
        assert len(rows) == 1 and rows[0].get("data-state") == "done", rows
        workers = _children(demo.pid)
        assert workers, "the dashboard has no worker process"

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == EXIT_INTERRUPTED
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
    log = stderr.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "stopped: the dashboard, its worker and the sandbox store are down" in log
    # Nothing left: no worker (wait_until: a worker's exit is reaped by the demo just before it ends), no
    # process of its session, the dashboard's and the sandbox's ports closed.
    wait_until(lambda: not any(_alive(pid) for pid in workers), deadline_s=15)
    with pytest.raises(ProcessLookupError):
        os.killpg(demo.pid, 0)
    assert _port_closed(int(port)) and _port_closed(int(sandbox_port))
    # The printed token is revoked; the demo's store removed.
    listed = as_json(wcsync("tokens", "list", "--json", env=env))
    assert [row["revokedAt"] is not None for row in listed] == [True], listed
    stores = as_json(wcsync("stores", "list", "--json", env=env))
    assert stores == [], stores
    assert token not in log


def test_demo_port_without_serve_is_a_usage_error(tmp_path: Path) -> None:
    env = wcsync_env(None, f"sqlite:///{tmp_path}/wcsync.db")
    result = wcsync("demo", "--port", "0", env=env, timeout=30)
    assert result.returncode == EXIT_USAGE
    assert "--port" in result.stderr and "--serve" in result.stderr
    assert result.stdout == "" and not (tmp_path / "wcsync.db").exists()
