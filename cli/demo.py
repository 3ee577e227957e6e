"""`wcsync demo`: a sandbox store on this machine and a full sync of it, end to end, then the webhook loop.

Shows the whole state machine: the first run ends `failed` with a few invalid customers, the sandbox
then "fixes them in WooCommerce", and `retry` fetches those customers again and finishes the queue. Then
the mirror stays in sync by itself (issue 12): the sandbox is registered, wcsync's receiver listens on
loopback, the store's three customer webhooks are installed, and customers changed, created and deleted
through the sandbox's admin routes (as an edit in wp-admin would) reach `woo_customers` through signed
deliveries, each printed as the mirror follows it.

With `--serve` (issue 14) it then stays up: the sandbox, wcsync's HTTP API with the dashboard on loopback
and a worker of its own (as `wcsync serve` runs them), the demo's store still registered so the dashboard's
retry and resume reach it, and a fresh operator token of the demo's org printed beside the address: the one
place wcsync prints a token it did not just create on request. Ctrl-C (or SIGTERM) stops it all: the token
is revoked, the store removed, the worker stopped, exit 130."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog

from cli.output import print_json, render_status, status_exit
from cli.progress import ProgressBar
from cli.serve import Pickup, WorkerProcesses
from domain.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_STORE, EXIT_UNFINISHED, WcsyncError
from domain.queue_terms import QueueOptions
from infrastructure.adapters.secrets import KEY_BYTES, SECRET_KEY_VARIABLE, SecretKey
from infrastructure.adapters.tokens import Role
from infrastructure.adapters.woocommerce import ClientOptions
from infrastructure.api.http import ApiSettings, running_api, serve
from infrastructure.sandbox import Faults, RunningSandbox, SandboxConfig, SandboxThread
from infrastructure.services.stores import StoreRegistry
from infrastructure.support.config import DatabaseConfig, StoreSettings, check_listen_address, listen_error
from infrastructure.support.loop_thread import LoopThread
from infrastructure.wiring import Services, open_services
from projections import queries

log = structlog.get_logger("wcsync.demo")

ACTOR = "wcsync demo"
# The most the demo waits for the mirror to follow its changes: a delivery takes well under a second here,
# so this only bounds a loop that broke (the demo says which change was not followed, never hangs).
WEBHOOK_WAIT_S = 15.0
POLL_S = 0.05
# A worker applies recorded deliveries every 0.25 s; the demo's own loop a little more often.
APPLY_EVERY_S = 0.1
STOP_S = 10.0  # the receiver's and the applier's stop, at the end
# `--serve`: the dashboard listens on loopback only (the sandbox's admin routes have no auth either).
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000  # as `wcsync serve`'s


class DemoStoreError(WcsyncError):
    """The sandbox's admin route did not answer as expected (it runs in this process: a broken demo)."""

    exit_code = EXIT_STORE


def run_demo(
    database: DatabaseConfig,
    org: str,
    customers: int,
    invalid: int,
    json_out: bool,
    serve_port: int | None = None,
) -> int:
    if serve_port is not None:
        check_listen_address(SERVE_HOST, serve_port)  # before any work: exit 2, one line
        keep_key_for_workers()
    key = demo_secret_key()  # a key in the environment that cannot be used: exit 2 before any work
    say = (lambda text: None) if json_out else (lambda text: sys.stderr.write(text + "\n"))
    # Light faults, as a real host has: a little latency, the odd 5xx and maintenance page.
    faults = Faults(latency_ms=20, error_rate=0.03, html_rate=0.01)
    config = SandboxConfig(customers=customers, invalid=min(invalid, customers), faults=faults)
    # Fast backoff: the demo's faults are sparse and it should end in seconds.
    client_options = ClientOptions(backoff_base_s=0.05, circuit_reset_s=1.0)
    with SandboxThread(config) as sandbox, open_services(database) as services:
        say(f"sandbox    {sandbox.url} ({customers} customers, {config.invalid} invalid, light faults)")
        say(f"database   {database.display}")
        store = StoreSettings(
            url=sandbox.url, consumer_key=sandbox.consumer_key, consumer_secret=sandbox.consumer_secret
        )
        engine = services.engine(org, actor=ACTOR, progress=None if json_out else ProgressBar("sync"))
        with services.live_projections():
            first = asyncio.run(
                engine.start(store, QueueOptions(), client_options, queue_name="demo: sandbox customers")
            )
        first_status = queries.queue_status(services.projections, org, first.queue_id)
        assert first_status is not None
        if not json_out:
            print(render_status(first_status))
            print(f"took       {first.seconds:.2f} s\n")
        retried_status = None
        if first.store_error is None and first_status["failedCount"]:
            fixed = sandbox.store.fix_invalid()
            say(f"fixed {fixed} customer(s) in the sandbox store; retrying the failed lines")
            engine = services.engine(org, actor=ACTOR, progress=None if json_out else ProgressBar("retry"))
            second = asyncio.run(engine.retry(first.queue_id, store, client_options))
            retried_status = queries.queue_status(services.projections, org, second.queue_id)
            assert retried_status is not None
            if not json_out:
                print(render_status(retried_status))
        final = retried_status or first_status
        loop = None
        if first.store_error is None:
            show = (lambda text: None) if json_out else _show
            loop = WebhookLoop(
                services, sandbox, org, client_options, show, key, keep_store=serve_port is not None
            ).run()
        document: dict[str, Any] = {
            "firstRun": first_status,
            "afterRetry": retried_status,
            "seconds": round(first.seconds, 3),
        }
        if loop is not None:
            document["webhooks"] = loop.as_json()
        if not json_out:
            print(f"\nnext: wcsync activity {first.queue_id}   ·   wcsync queues")
        if first.store_error is not None:
            sys.stderr.write(f"wcsync: {first.store_error}\n")
        elif loop is not None and loop.exit_code != EXIT_OK:
            sys.stderr.write(f"wcsync: {loop.problem()}\n")
        if serve_port is not None:
            dashboard = DemoDashboard(services, sandbox, org, key, client_options, serve_port)
            if loop is not None and loop.store_id is not None:
                dashboard.store_id = loop.store_id
            return dashboard.run(document if json_out else None)
        if json_out:
            print_json(document)
        if first.store_error is not None:
            return EXIT_STORE
        if loop is not None and loop.exit_code != EXIT_OK:
            return loop.exit_code
        return status_exit(final)


def keep_key_for_workers() -> None:
    """`--serve`'s worker processes read the stores' key from their environment, as `wcsync worker` does:
    without one of the user's, the demo makes one for this run and puts it in its own environment, which
    they inherit (its store is removed at the end, so nothing is left sealed with a key nobody has)."""
    if not os.environ.get(SECRET_KEY_VARIABLE):
        os.environ[SECRET_KEY_VARIABLE] = base64.b64encode(os.urandom(KEY_BYTES)).decode()


def demo_secret_key() -> SecretKey:
    """The key of the demo store's secrets: the environment's when it has one, else one for this run only
    (the demo's store is removed at the end, so nothing is left sealed with a key nobody has)."""
    return SecretKey.from_environment() if os.environ.get(SECRET_KEY_VARIABLE) else SecretKey.generate()


def _show(text: str) -> None:
    """A line of the webhook part, on stdout with the status blocks, at once (it is printed as it happens)."""
    print(text, flush=True)


# ----- the webhook loop ----------------------------------------------------------------------------------


@dataclass
class Change:
    """One change the demo makes in the sandbox store, and how the mirror shows it once followed."""

    kind: str  # updated | created | deleted: the webhook topic's event
    label: str  # what changed, as printed ("email", "name")
    fields: dict[str, Any]  # sent to the admin route; the mirrored row has them once followed
    customer_id: int | None = None  # a created customer's: once the sandbox answered
    started: float = 0.0  # time.monotonic() just before the change was made
    seconds: float | None = None  # from the change to its mirrored row
    delivery: dict[str, Any] | None = None  # wcsync's record of the delivery (state, result, error)

    @property
    def topic(self) -> str:
        return f"customer.{self.kind}"

    def followed_by(self, row: dict[str, Any] | None) -> bool:
        if row is None:
            return False
        if self.kind == "deleted":
            return bool(row["is_deleted"])
        return not row["is_deleted"] and all(row.get(name) == value for name, value in self.fields.items())

    @property
    def failed(self) -> bool:
        return self.delivery is not None and self.delivery.get("state") == "failed"

    def done(self) -> bool:
        return self.seconds is not None or self.failed

    def line(self) -> str:
        what = {"deleted": "marked deleted", "created": "created"}.get(
            self.kind, f"{self.kind} ({self.label})"
        )
        if self.seconds is not None:
            return f"customer {self.customer_id} {what} via webhook in {self.seconds:.2f} s"
        assert self.delivery is not None
        return (
            f"customer {self.customer_id} {what}: wcsync refused the delivery: {self.delivery.get('error')}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "customerId": self.customer_id,
            "change": self.kind,
            "fields": sorted(self.fields),
            "mirrored": self.seconds is not None,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "delivery": None
            if self.delivery is None
            else {name: self.delivery.get(name) for name in ("state", "result", "error")},
        }


# The demo's edits, in order: what is printed, and the fields sent for a customer id.
_EDITS: tuple[tuple[str, Callable[[int], dict[str, Any]]], ...] = (
    ("email", lambda customer_id: {"email": f"moved-{customer_id}@example.org"}),
    ("name", lambda customer_id: {"first_name": "Renée", "last_name": "Okafor"}),
    ("email", lambda customer_id: {"email": f"new-address-{customer_id}@example.net"}),
)


def demo_changes(mirrored_ids: list[int]) -> list[Change]:
    """Three customers edited (an email, a name, an email), one created, one deleted: among the mirrored
    ones, lowest ids first, the last of them deleted (a small store gets fewer edits)."""
    gone = mirrored_ids[-1:]
    edited = [i for i in mirrored_ids[:3] if i not in gone]
    changes = [
        Change("updated", label, fields(customer_id), customer_id)
        for customer_id, (label, fields) in zip(edited, _EDITS, strict=False)
    ]
    changes.append(
        Change("created", "", {"email": "nova.demo@example.org", "first_name": "Nova", "last_name": "Demo"})
    )
    changes.extend(Change("deleted", "", {}, customer_id) for customer_id in gone)
    return changes


def exit_code_of(changes: list[Change]) -> int:
    """EXIT_STORE when a change was not followed in time (the loop is broken), EXIT_UNFINISHED when wcsync
    refused a delivery (as a failed line is), else EXIT_OK."""
    if any(not change.done() for change in changes):
        return EXIT_STORE
    if any(change.failed for change in changes):
        return EXIT_UNFINISHED
    return EXIT_OK


@dataclass
class WebhookLoop:
    """Register the sandbox, serve the receiver on loopback, install the webhooks, make the changes and
    watch the mirror follow them (a worker's delivery step runs on a thread meanwhile)."""

    services: Services
    sandbox: RunningSandbox
    org: str
    client_options: ClientOptions
    show: Callable[[str], None]
    key: SecretKey = field(repr=False)
    wait_s: float = WEBHOOK_WAIT_S
    # `--serve`: the store stays registered once the loop ran (the dashboard's retry and resume need it).
    keep_store: bool = False
    store_id: UUID | None = None
    delivery_url: str | None = None
    installed: dict[str, str] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)

    def run(self) -> WebhookLoop:
        registry = self.services.store_registry(self.key, self.client_options)
        self.store_id = _register_sandbox(registry, self.org, self.sandbox)
        kept = False
        try:
            settings = ApiSettings(
                client_options=self.client_options, secret_key=self.key, default_actor=ACTOR
            )
            with _receiver(self.services, settings) as receiver_url, DeliveryLoop(self.services) as applier:
                self._install(receiver_url)
                self.changes = demo_changes(self._mirrored_ids())
                for change in self.changes:
                    self._make(change)
                self._follow(applier)
            kept = self.keep_store
        finally:
            if not kept:
                registry.remove(self.org, self.store_id, ACTOR)
        return self

    def _install(self, receiver_url: str) -> None:
        assert self.store_id is not None
        webhooks = self.services.store_webhooks(self.key, self.client_options)
        answer = asyncio.run(webhooks.install(self.org, self.store_id, receiver_url))
        self.delivery_url = answer["deliveryUrl"]
        self.installed = {row["topic"]: row["action"] for row in answer["webhooks"]}
        self.show(f"\nwebhooks   installed for {self.sandbox.url} -> {self.delivery_url}")

    def _mirrored_ids(self) -> list[int]:
        return sorted(woo_id for woo_id, row in self._mirror().items() if not row["is_deleted"])

    def _mirror(self) -> dict[int, dict[str, Any]]:
        self.services.catch_up()
        rows = queries.customers(self.services.projections, self.org, self.sandbox.url)
        return {int(row["woo_customer_id"]): row for row in rows}

    def _make(self, change: Change) -> None:
        """The change through the sandbox's admin route, as wp-admin would make it (it queues the deliveries)."""
        change.started = time.monotonic()
        if change.kind == "created":
            created = _admin(self.sandbox, "POST", "/_sandbox/customers", change.fields)
            change.customer_id = int(created["id"])
        elif change.kind == "updated":
            _admin(self.sandbox, "PUT", f"/_sandbox/customers/{change.customer_id}", change.fields)
        else:
            _admin(self.sandbox, "DELETE", f"/_sandbox/customers/{change.customer_id}")

    def _follow(self, applier: DeliveryLoop) -> None:
        """Poll the mirror until every change shows (printed as each does), or one was refused, or the
        wait is over; a failure of the delivery step ends the wait and is raised (one line, exit code)."""
        deadline = time.monotonic() + self.wait_s
        waiting = list(self.changes)
        while waiting and time.monotonic() < deadline:
            applier.raise_failure()
            rows = self._mirror()
            deliveries = self._deliveries()
            now = time.monotonic()
            for change in list(waiting):
                change.delivery = deliveries.get((change.topic, change.customer_id))
                if change.followed_by(rows.get(change.customer_id or -1)):
                    change.seconds = now - change.started
                if change.done():
                    waiting.remove(change)
                    self.show(change.line())
            if waiting:
                time.sleep(POLL_S)  # a poll interval of the demo's watch, not a synchronisation of tests
        applier.raise_failure()
        self.show(self.summary())

    def _deliveries(self) -> dict[tuple[str, int | None], dict[str, Any]]:
        """wcsync's record of each delivery received, the newest for a topic and customer."""
        assert self.store_id is not None
        rows = queries.webhook_deliveries(self.services.projections, self.org, self.store_id)
        latest: dict[tuple[str, int | None], dict[str, Any]] = {}
        for row in rows:  # newest first
            latest.setdefault((str(row["topic"]), row["wooCustomerId"]), row)
        return latest

    @property
    def mirrored(self) -> list[Change]:
        return [change for change in self.changes if change.seconds is not None]

    @property
    def exit_code(self) -> int:
        return exit_code_of(self.changes)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for change in self.mirrored:
            counts[change.kind] = counts.get(change.kind, 0) + 1
        kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
        slowest = max((change.seconds or 0.0 for change in self.mirrored), default=0.0)
        return f"mirrored   {len(self.mirrored)} of {len(self.changes)} changes through webhooks" + (
            f" ({kinds}), the slowest in {slowest:.2f} s" if self.mirrored else ""
        )

    def problem(self) -> str:
        """Why the exit code is not 0: each change not followed, with what the sandbox says it sent."""
        late = [change for change in self.changes if not change.done()]
        if not late:
            refused = [change for change in self.changes if change.failed]
            return f"wcsync refused {len(refused)} webhook delivery(ies); `wcsync webhooks status` shows them"
        sent = _sandbox_attempts(self.sandbox)
        described = "; ".join(_late(change, sent.get((change.topic, change.customer_id))) for change in late)
        return (
            f"the mirror did not follow {len(late)} of {len(self.changes)} change(s) through webhooks "
            f"within {self.wait_s:g} s: {described}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "storeId": None if self.store_id is None else str(self.store_id),
            "deliveryUrl": self.delivery_url,
            "installed": self.installed,
            "changes": [change.as_json() for change in self.changes],
            "mirrored": len(self.mirrored),
        }


# ----- --serve: the dashboard, left running --------------------------------------------------------------


@dataclass
class DemoDashboard:
    """`wcsync demo --serve`'s last part: `wcsync serve`'s app (API and dashboard) on loopback with a worker
    process of its own (cli.serve's WorkerProcesses and Pickup, as `wcsync serve` runs them), over the
    demo's database and sandbox, until Ctrl-C or SIGTERM. The operator token it prints is revoked and the
    demo's store removed when it stops."""

    services: Services
    sandbox: RunningSandbox
    org: str
    key: SecretKey = field(repr=False)
    client_options: ClientOptions
    port: int
    store_id: UUID | None = None
    token_name: str = ""

    def run(self, document: dict[str, Any] | None) -> int:
        """Serve until a signal; EXIT_INTERRUPTED then. ``document``: `--json`'s, printed once listening
        with the dashboard's part added (else two lines of text)."""
        registry = self.services.store_registry(self.key, self.client_options)
        if self.store_id is None:  # the webhook loop did not run: the first sync could not reach the store
            self.store_id = _register_sandbox(registry, self.org, self.sandbox)
        tokens = self.services.api_tokens()
        self.token_name = f"demo dashboard {time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())} {os.getpid()}"
        token, _ = tokens.create(self.org, self.token_name, Role.OPERATOR)
        settings = ApiSettings(client_options=self.client_options, secret_key=self.key)
        listened = False

        def listening(url: str) -> None:
            nonlocal listened
            listened = True
            self._announce(url + "/", token, document)

        try:
            with WorkerProcesses(self.services.database, 1), Pickup(self.services, self.key):
                try:
                    asyncio.run(serve(self.services, SERVE_HOST, self.port, listening, settings))
                except OSError as error:
                    if listened:
                        raise
                    raise listen_error(error, SERVE_HOST, self.port) from None
        finally:
            tokens.revoke(self.token_name, self.org)
            registry.remove(self.org, self.store_id, ACTOR)
        sys.stderr.write(
            "wcsync: stopped: the dashboard, its worker and the sandbox store are down; "
            "the demo's token is revoked (the mirror and its queues stay in the database)\n"
        )
        return EXIT_INTERRUPTED

    def _announce(self, url: str, token: str, document: dict[str, Any] | None) -> None:
        if document is not None:
            document["dashboard"] = {
                "url": url,
                "token": token,
                "org": self.org,
                "role": Role.OPERATOR.value,
                "storeId": str(self.store_id),
            }
            print_json(document)
        else:
            print(f"\ndashboard  {url}   (sign in with the token below; Ctrl-C stops it all)")
            print(f"token      {token}   (operator of org {self.org!r}; revoked when the demo stops)")
        sys.stdout.flush()


def _register_sandbox(registry: StoreRegistry, org: str, sandbox: RunningSandbox) -> UUID:
    """Register the demo's sandbox store in ``org``; its id."""
    added = asyncio.run(
        registry.add(org, sandbox.url, sandbox.consumer_key, sandbox.consumer_secret, "demo sandbox", ACTOR)
    )
    return UUID(added["storeId"])


def _late(change: Change, attempt: dict[str, Any] | None) -> str:
    what = f"customer {change.customer_id} {change.kind}"
    if attempt is None:
        return f"{what} (the sandbox sent no delivery)"
    if change.delivery is None:
        error = f": {attempt['error']}" if attempt.get("error") else ""
        return f"{what} (the sandbox's delivery {attempt['outcome']}{error}; wcsync recorded none)"
    return f"{what} (received, still {change.delivery.get('state')})"


def _sandbox_attempts(sandbox: RunningSandbox) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The sandbox's latest delivery attempt per topic and customer (its log holds no body, no secret)."""
    try:
        attempts = _admin(sandbox, "GET", "/_sandbox/deliveries")["deliveries"]
    except DemoStoreError:
        return {}
    return {
        (entry["topic"], entry["customer_id"]): entry for entry in attempts if entry["kind"] == "delivery"
    }


def _admin(sandbox: RunningSandbox, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One request to the sandbox's admin routes (loopback, no auth): its JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - the sandbox's own http:// URL, on loopback
        sandbox.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as problem:
        raise DemoStoreError(f"the sandbox's {method} {path} failed: {type(problem).__name__}") from None


@contextmanager
def _receiver(services: Services, settings: ApiSettings) -> Iterator[str]:
    """wcsync's HTTP API on a free loopback port, on a thread (`wcsync serve`'s app: its webhook receiver
    needs no token, every other route does); yields its URL."""
    thread = LoopThread(lambda: _listening(services, settings), "the webhook receiver", join_timeout=STOP_S)
    with thread as url:
        yield url


@asynccontextmanager
async def _listening(services: Services, settings: ApiSettings) -> AsyncIterator[str]:
    async with running_api(services, settings=settings) as running:
        yield running.url


class DeliveryLoop:
    """A worker's delivery step (Services.delivery_applier), every APPLY_EVERY_S on a thread, as `wcsync
    worker` runs it beside its jobs. A failure stops it; the demo raises it in its own thread (one line)."""

    def __init__(self, services: Services) -> None:
        self.applier = services.delivery_applier()
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wcsync-demo-deliveries", daemon=True)

    def __enter__(self) -> DeliveryLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=STOP_S)

    def _run(self) -> None:
        while not self._stop.wait(APPLY_EVERY_S):
            try:
                self.applier.step()
            except (
                Exception
            ) as problem:  # reported by the demo's thread (raise_failure), never a traceback here
                log.warning("demo.deliveries_failed", error=type(problem).__name__)
                self.failure = problem
                return

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure
