"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright, over a real `wcsync
serve` (a subprocess, its own worker, a registered sandbox store, API tokens made with `wcsync tokens`).

- ``chromium_executable``: the Chromium to drive (``WCSYNC_TEST_CHROMIUM``, else `chromium` on PATH). None
  there fails the test saying what to install: scripts/test installs it as root (CI), so a silent skip would
  only hide that the pages went untested.
- ``launched_browser``: one browser (a module's), with the flags this kind of machine needs and a fresh
  profile of Playwright's making. Playwright's own browser builds are never downloaded.
- ``Watched``: a page whose console errors, uncaught exceptions and requests to anywhere but the server are
  collected (a CSP violation is a console error), and whose screenshots go to ``ARTIFACTS``.
- ``DashboardServer``: `wcsync serve` in a session of its own, its log in a file; stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from tests.support.cli import as_json, first_line, spawn_wcsync, wcsync
from tests.support.paths import ROOT

# Where every test's screenshots go (gitignored); scripts/test prints the path after the run.
ARTIFACTS = ROOT / "tests" / "artifacts" / "dashboard"
CHROMIUM_VARIABLE = "WCSYNC_TEST_CHROMIUM"
# Read once, at import, before the per-test environment scrub removes every WCSYNC_* variable.
CHROMIUM_OVERRIDE = os.environ.get(CHROMIUM_VARIABLE, "")
MISSING_CHROMIUM = (
    "the dashboard's browser tests need Debian's chromium: `sudo apt-get install chromium` "
    f"(scripts/test installs it itself when run as root), or set {CHROMIUM_VARIABLE} to a Chromium binary"
)
# What headless Chromium needs here: no sandbox (root in a container), no GPU, and nothing that reaches
# the network on its own (QUIC, component updates, sync, background fetches).
LAUNCH_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# The longest any expectation of a page waits (Playwright's auto-waiting, condition by condition).
EXPECT_TIMEOUT_MS = 15_000
# Its workers dead after 4 s of silence, checked every 2 s (as tests/e2e/test_serve_restart.py).
QUICK_WORKERS = ("--heartbeat-s", "1", "--stalled-after-s", "4", "--stalled-check-s", "2")


def chromium_executable() -> str:
    """The Chromium binary to drive; fails the test (never skips) when there is none."""
    chosen = CHROMIUM_OVERRIDE or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chosen:
        pytest.fail(MISSING_CHROMIUM, pytrace=False)
    return chosen


@contextmanager
def launched_browser() -> Iterator[Browser]:
    """Headless Chromium, started once and closed at the end (Playwright gives it a fresh user-data dir)."""
    executable = chromium_executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(LAUNCH_ARGS)
        )
        try:
            yield browser
        finally:
            browser.close()


def artifact_prefix(nodeid: str) -> str:
    """A file-name prefix for a test: its module and name, anything but letters, digits, - and _ as _."""
    module, _, name = nodeid.partition("::")
    return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{Path(module).stem}-{name}").strip("_")


def clear_artifacts(module_stem: str) -> None:
    """The screenshots an earlier run of this module left (a module clears only its own)."""
    for old in ARTIFACTS.glob(f"{module_stem}-*.png"):
        old.unlink()


@dataclass
class Watched:
    """A page of one test: what went wrong in it is collected for ``problems``, its screenshots numbered."""

    page: Page
    origin: str
    prefix: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    foreign_requests: list[str] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)
    # Console errors a test provokes on purpose (the browser logs a 401, 403 or 404 it asked for).
    allowed_console: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("request", self._request)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url") or ""
            self.console_errors.append(f"{message.text} ({where})" if where else message.text)

    def _request(self, request: Request) -> None:
        # The pages load everything from the server itself: no CDN, no font service, nothing else.
        if not request.url.startswith((self.origin + "/", "data:", "about:")):
            self.foreign_requests.append(request.url)

    def screenshot(self, name: str, page: Page | None = None) -> Path:
        """The whole page as it is now, saved under ARTIFACTS (``page``: another one of the test's)."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.prefix}-{len(self.shots) + 1:02d}-{name}.png"
        (page or self.page).screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def allow_console(self, text: str) -> None:
        """A console error containing ``text`` is expected from here on (say, "status of 404")."""
        self.allowed_console.append(text)

    def problems(self) -> list[str]:
        """Console errors (but those a test allowed), uncaught exceptions and foreign requests."""
        unexpected = [
            text
            for text in self.console_errors
            if not any(allowed in text for allowed in self.allowed_console)
        ]
        return (
            [f"console: {text}" for text in unexpected]
            + [f"uncaught: {text}" for text in self.page_errors]
            + [f"request outside the server: {url}" for url in self.foreign_requests]
        )


class DashboardServer:
    """`wcsync serve --port 0` (with its own worker) in a session of its own, its stderr in ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.process = spawn_wcsync(
            "serve", "--port", "0", *QUICK_WORKERS, env=env, stderr=log.open("w"), start_new_session=True
        )
        try:
            self.url: str = json.loads(first_line(self.process))["url"]
        except BaseException:
            self.reap()
            raise

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self.reap()

    def reap(self) -> None:
        """Whatever of its group is left (its worker, a failed test): killed by the group's id."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)


# The dashboard's orgs: ACME has the module's store and its queues; GLOBEX must never see them.
ACME = "acme"
GLOBEX = "globex"


@dataclass
class Dashboard:
    """A running `wcsync serve` over the module's sandbox store (registered in ACME), and its tokens."""

    server: DashboardServer
    env: dict[str, str]
    store_id: str
    tokens: dict[tuple[str, str], str] = field(repr=False)

    @property
    def url(self) -> str:
        return self.server.url

    def token(self, org: str, role: str) -> str:
        return self.tokens[(org, role)]


def create_token(env: dict[str, str], org: str, name: str, role: str) -> str:
    """An API token made as an operator makes one: `wcsync tokens create`."""
    made = wcsync("--org", org, "tokens", "create", "--name", name, "--role", role, "--json", env=env)
    assert made.returncode == 0, made.stderr
    token: str = as_json(made)["token"]
    return token


def register_store(env: dict[str, str], org: str, url: str) -> str:
    """`wcsync stores add` with the store's key from the environment; the new store's id."""
    added = wcsync("--org", org, "stores", "add", "--url", url, "--json", env=env)
    assert added.returncode == 0, added.stderr
    return str(as_json(added)["storeId"])


def sign_in(page: Page, token: str) -> None:
    """The login form filled and sent as a person would (the page's base URL is the server's)."""
    page.goto("/login")
    page.get_by_label("API token").fill(token)
    page.locator("form#login-form button[type=submit]").click()
    page.wait_for_url(re.compile(r"/$"))
