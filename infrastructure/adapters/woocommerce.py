"""The WooCommerce customers client: the only code that talks to a store (its customers, read; its webhooks,
listed and changed for `wcsync webhooks`).

It meets the API as it really behaves (WooCommerce's REST controllers and issue tracker): id-ordered page scans that
always end, OAuth 1.0a over plain HTTP and Basic over HTTPS, retries with backoff for what is transient,
immediate and explained refusals for what is not, a shared rate limit and a circuit breaker.
Nothing secret (key, secret, signature, nonce, signed URL) ever reaches an exception, a log or an activity.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import random
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, MutableSet, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from functools import partial
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import orjson
import structlog
import yarl
from oauthlib.oauth1 import SIGNATURE_HMAC_SHA256, SIGNATURE_TYPE_QUERY
from oauthlib.oauth1 import Client as OAuth1Client

from domain import bounds
from domain.errors import EXIT_STORE, WcsyncError
from domain.lines import IdSet
from domain.queue_terms import QueueOptions
from domain.validation import (
    EXCERPT_CHARS,
    MAX_CUSTOMER_ID,
    RejectedRecord,
    check_record,
    customer_id_of,
)
from infrastructure.support import metrics
from infrastructure.support.config import store_site_root
from infrastructure.support.redaction import redact, redact_value
from infrastructure.support.woocommerce_api import API_ROOT, CUSTOMERS_PATH

log = structlog.get_logger("wcsync.woocommerce")

# The most a store's answer may hold; a larger one is not read further (a page is then fetched customer by
# customer, see _scan).
DEFAULT_MAX_RESPONSE_BYTES = bounds.DEFAULT_MAX_RESPONSE_MB * 1024 * 1024
_READ_CHUNK_BYTES = 64 * 1024
MAX_HEADER_NUMBER = 2**63 - 1  # X-WP-Total and X-WP-TotalPages beyond this are ignored, as garbled
INVALID_ID_CODES = frozenset({"wc_user_invalid_id", "woocommerce_rest_invalid_id"})
WEBHOOKS_PATH = f"{API_ROOT}/webhooks"
WEBHOOK_INVALID_ID = "woocommerce_rest_shop_webhook_invalid_id"
# What to change when the store refuses a write (any 401/403 on one): the key can only read.
READ_ONLY_KEY_HINT = (
    "the key is read-only: create a Read/Write key in WooCommerce > Settings > Advanced > REST API "
    "and register it with `wcsync stores add`"
)

ActivitySink = Callable[[str, str, str, dict[str, Any]], None]


# --------------------------------------------------------------------------------------------- errors


class StoreError(WcsyncError):
    """The WooCommerce store could not be read."""

    exit_code = EXIT_STORE
    http_status = 502
    error_code = "store_unavailable"

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str = "wcsync_store_error",
        status: int | None = None,
        hint: str = "",
    ) -> None:
        self.message = _one_line(message or (self.__doc__ or "").strip())
        self.code = code
        self.status = status
        self.hint = _one_line(hint)
        super().__init__(self.message)

    def __str__(self) -> str:
        where = f"HTTP {self.status}, {self.code}" if self.status is not None else self.code
        text = f"{self.message} [{where}]"
        if self.hint:
            text += f" - check: {self.hint}"
        return text

    def http_details(self) -> dict[str, Any]:
        return {"storeCode": self.code, "storeStatus": self.status}


class StoreUnavailable(StoreError):
    """The store kept failing (network, timeouts, server errors or garbled answers); try again later."""


class StoreRefused(StoreError):
    """The store refused the request; retrying will not help until the cause is fixed."""

    error_code = "store_refused"


# -------------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class StoreCredentials:
    consumer_key: str
    consumer_secret: str = field(repr=False)


@dataclass(frozen=True)
class ClientOptions:
    per_page: int = bounds.MAX_PER_PAGE
    role: str = "customer"
    concurrency: int = 4
    rate: float = 0.0
    max_retries: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    timeout_s: float = 60.0
    ca_file: str | None = None
    circuit_threshold: int = 5
    circuit_reset_s: float = 30.0
    max_pages: int = 100_000
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def __post_init__(self) -> None:
        """The options a user or client can set are checked against domain.bounds (BoundError names the
        field); the others only for sense, they are set in code."""
        bounds.PER_PAGE.check(self.per_page)
        bounds.CONCURRENCY.check(self.concurrency)
        bounds.RATE.check(self.rate)
        bounds.TIMEOUT_S.check(self.timeout_s)
        object.__setattr__(self, "role", bounds.check_role(self.role))
        if not 0 <= self.max_retries <= bounds.MAX_RETRIES.high:
            raise ValueError(f"max_retries must be 0 to {bounds.MAX_RETRIES.high:g}, got {self.max_retries}")
        if self.circuit_threshold < 1:
            raise ValueError(f"circuit_threshold must be at least 1, got {self.circuit_threshold}")
        if self.max_pages < 1:
            raise ValueError(f"max_pages must be at least 1, got {self.max_pages}")
        if self.max_response_bytes < 1024:
            raise ValueError(f"max_response_bytes must be at least 1024, got {self.max_response_bytes}")

    def for_queue(self, options: QueueOptions) -> ClientOptions:
        """These options with a queue's own: its page size, role and retries."""
        return dataclasses.replace(
            self, per_page=options.per_page, role=options.role, max_retries=options.max_retries
        )


@dataclass(frozen=True)
class KnownPage:
    """A page an earlier scan of the same listing read: the SHA-256 (hex) of the store's answer, byte for
    byte, and the ids of the customers on it, in order. An answer with the same digest is the same
    customers, so it need not be parsed (``Page.known_ids``)."""

    digest: str
    ids: Sequence[int]
    # The answer digest (ANSWER_DIGEST_BYTES: the head of the SHA-256 of its bytes as the store sent them)
    # of each customer, in the order of ``ids``; None when that scan could not cut its answer into them.
    # A changed answer's customers whose bytes are the same need not be parsed (Page.same_ids).
    answers: bytes | None = None

    def answers_by_id(self) -> dict[int, bytes]:
        """The answer digest of each customer on it, by id (none when it has no answer digest for each)."""
        answers, size = self.answers, ANSWER_DIGEST_BYTES
        if answers is None or len(answers) != size * len(self.ids):
            return {}
        return {cid: answers[size * index : size * index + size] for index, cid in enumerate(self.ids)}


@dataclass(frozen=True)
class Page:
    number: int
    records: list[dict[str, Any]]  # with a usable id each, not yet checked further (the engine does)
    total: int | None
    total_pages: int | None
    # Records refused before they could be read as customers: no usable id (customer_id None), or too
    # large to fetch (their id known from an id-only listing).
    rejected: list[RejectedRecord] = field(default_factory=list)
    # SHA-256 (hex) of the answer, when every customer on it is in ``records`` (none refused or seen on an
    # earlier page): what a later scan compares its answer with (KnownPage).
    body_digest: str | None = None
    # The answer matched a KnownPage: ``records`` is empty, these are its customers' ids, and ``parse``
    # reads the answer when the caller needs the records after all.
    known_ids: list[int] | None = None
    parse: Callable[[], tuple[list[dict[str, Any]], list[RejectedRecord]]] | None = field(
        default=None, repr=False, compare=False
    )
    # The records were read by orjson: JSON's own types only, string keys, finite floats, integers within
    # 64 bits (check_record's ``strict_json``). False when the answer needed the lenient reader.
    strict_json: bool = False
    # The answer was not the known page's, but these customers on it are, byte for byte, as that page had
    # them (KnownPage.answers): not parsed, not in ``records``; ``parse`` reads them all after all.
    same_ids: list[int] = field(default_factory=list)
    # Each customer's answer digest on this page, by id (every customer on it), when the answer could be
    # cut into its customers: what the page's LinesAdded records for the next scan.
    answers: dict[int, bytes] | None = field(default=None, repr=False, compare=False)

    def parsed(self) -> Page:
        """This page with its records read (a known page's answer parsed now); itself when it has them."""
        if self.parse is None:
            return self
        records, rejected = self.parse()
        digest = self.body_digest if not rejected else None  # every record on it a line, or no digest
        answers = self.answers if not rejected else None
        return Page(self.number, records, self.total, self.total_pages, rejected, digest, answers=answers)


@dataclass
class ScanResult:
    """How a scan ended, once its pages are iterated: ``complete`` is False when it stopped before the
    store's last page (the page cap, a store repeating pages), so its customers are not the whole store."""

    complete: bool = True


@dataclass
class ClientStats:
    """What this client did to the store; cheap counters, safe to show an operator."""

    requests: int = 0
    retries: int = 0
    responses: dict[int, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0
    bytes: int = 0
    circuit_opened: int = 0


# ----------------------------------------------------------------------------------- small internals


# Where a customer object begins in an answer: WooCommerce writes "id" then "date_created" first, and a
# meta_data entry's object ("id", "key") is so not taken for one.
_FIRST_CUSTOMER = re.compile(rb'\[\{"id":([1-9][0-9]{0,18}),"date_created"')
_NEXT_CUSTOMER = re.compile(rb'\},\{"id":([1-9][0-9]{0,18}),"date_created"')
ANSWER_DIGEST_BYTES = 16  # of a customer's bytes in an answer: the head of their SHA-256


def _answer_pieces(body: bytes) -> list[tuple[int, bytes]] | None:
    """An answer cut into its customers' bytes, each with the id it starts with, when it is a compact
    JSON array of customer objects as WooCommerce writes it; None otherwise (or for an empty one). Which
    piece is a customer object is only checked by the caller (_cut_answer)."""
    head = _FIRST_CUSTOMER.match(body)
    if head is None or body[-1:] != b"]":
        return None
    pieces: list[tuple[int, bytes]] = []
    start, cid = 1, int(head.group(1))
    for boundary in _NEXT_CUSTOMER.finditer(body):  # the pattern's own scan, at C speed
        end = boundary.start() + 1
        pieces.append((cid, body[start:end]))
        start, cid = end + 1, int(boundary.group(1))
    pieces.append((cid, body[start:-1]))
    return pieces


def _cut_answer(response: _Response, body: bytes, earlier: KnownPage | None) -> _Response | None:
    """A page's answer read customer by customer (_answer_pieces): each one's answer digest taken, and
    parsed only when the earlier scan's page (``earlier``) did not have it byte for byte. None when
    the answer cannot be read so (any piece orjson does not read as a customer object with the id it
    starts with): it is then read whole, as any answer.

    Why this is the answer, exactly: the pieces are cut at `},{"id":N,"date_created"` and the answer is
    `[` + the pieces joined by `,` + `]`; each piece is a JSON object on its own (parsed now, or the
    same bytes as one the earlier scan parsed so), so the answer is the array of exactly those
    objects, whatever the bytes inside them hold."""
    pieces = _answer_pieces(body)
    if pieces is None:
        return None
    known = earlier.answers_by_id() if earlier is not None else {}
    # Whole-page passes, each a comprehension (a first sync cuts every page: 574 -> ~515 us a page of 100).
    ids = [cid for cid, _ in pieces]
    answer_list = [hashlib.sha256(piece).digest()[:ANSWER_DIGEST_BYTES] for _, piece in pieces]
    answers = dict(zip(ids, answer_list, strict=True))
    if len(answers) != len(ids) or max(ids) > MAX_CUSTOMER_ID:
        return None  # a customer twice on one page, or an id past 64 bits: read whole, as any answer
    if known:
        same = [cid for cid, answer in zip(ids, answer_list, strict=True) if known.get(cid) == answer]
        unread = set(same)
        to_parse = [(cid, piece) for cid, piece in pieces if cid not in unread] if same else pieces
    else:
        same, to_parse = [], pieces
    try:
        records = [orjson.loads(piece) for _, piece in to_parse]
    except orjson.JSONDecodeError:
        return None
    # The id each starts with is the one JSON readers take (not a later "id" key), a usable one.
    for (cid, _), record in zip(to_parse, records, strict=True):
        if type(record) is not dict or type(record.get("id")) is not int or record["id"] != cid:
            return None
    return _Response(
        response.status,
        records,
        response.total,
        response.total_pages,
        digest=response.digest,
        unparsed=body,
        strict_json=True,
        ids=ids,
        answers=answers,
        same_ids=same,
    )


def _add_ids(seen: MutableSet[int], ids: list[int]) -> None:
    """Add a page's ids to a scan's seen set (IdSet.update appends a page in id order at C speed)."""
    if isinstance(seen, IdSet | set):
        seen.update(ids)
    else:
        for cid in ids:
            seen.add(cid)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class _Response:
    status: int
    body: Any
    total: int | None
    total_pages: int | None
    rejected: tuple[RejectedRecord, ...] = ()
    digest: str | None = None  # of the answer's bytes, for a page of the customers scan
    unparsed: bytes | None = None  # the answer: a known page's (``body`` None, ``ids`` None), or cut (ids)
    strict_json: bool = False  # ``body`` was read by orjson (Page.strict_json)
    # An answer cut into its customers (_cut_answer): every id on it in order, the answer digest of each,
    # and those not parsed because the known page had them byte for byte (Page.same_ids).
    ids: list[int] | None = None
    answers: dict[int, bytes] | None = None
    same_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Call:
    """A request that is not a customers read (the webhooks resource): its method, its path under the API
    root and its JSON body. It goes through the same signing, rate limit, circuit and retries as a read."""

    method: str
    path: str
    payload: bytes | None = None

    @property
    def writes(self) -> bool:
        return self.method != "GET"


@dataclass(frozen=True)
class _Ahead:
    """A request of a customers scan sent before the scan began (WooCommerceClient.send_ahead), for page
    ``number``: ``sent`` once its headers are on the wire (or its first attempt failed before); its answer
    is interpreted only once the scan has begun and given its known pages (``known``), as the scan's own
    requests' are."""

    number: int
    known: asyncio.Future[Mapping[int, KnownPage]]
    sent: asyncio.Event = field(default_factory=asyncio.Event)
    # The bound of each attempt under way before the scan began: its caller's loop may be paused meanwhile
    # (the database opens), so the attempt's time is counted from the scan's start (_take_ahead), not from
    # the request's, or every answer that arrived during the pause would time out on the loop's return.
    bounds: list[asyncio.Timeout] = field(default_factory=list)

    async def known_page(self) -> KnownPage | None:
        return (await asyncio.shield(self.known)).get(self.number)


@contextlib.asynccontextmanager
async def _bounded_from_scan_start(ahead: _Ahead | None) -> AsyncIterator[None]:
    """An attempt of a request sent ahead, before its scan began: bounded as a whole from the scan's start
    (_Ahead.bounds, rescheduled by _take_ahead), not from now. Any other attempt: nothing (the session's
    timeout bounds it)."""
    if ahead is None:
        yield
        return
    async with asyncio.timeout(None) as bound:
        ahead.bounds.append(bound)
        try:
            yield
        finally:
            ahead.bounds.remove(bound)


async def _on_headers_sent(session: Any, context: Any, params: Any) -> None:
    """aiohttp's trace signal (a client that sends ahead): a request sent ahead is on the wire. aiohttp
    sends it as it starts writing the headers, and writes them and the (empty) body without awaiting
    anything in between: by the time send_ahead runs again they are in the socket.
    tests/integration/test_scan_ahead.py holds that the store has them while the loop is paused."""
    ahead = (context.trace_request_ctx or {}).get("ahead")
    if isinstance(ahead, _Ahead):
        ahead.sent.set()


class _TooLarge(Exception):
    """An answer larger than ClientOptions.max_response_bytes: not read further."""

    def __init__(self, size: int | None) -> None:
        super().__init__(f"answer larger than the limit ({size if size is not None else 'unknown'} bytes)")
        self.size = size


class _Transient(Exception):
    """One attempt failed in a way that a later attempt may not."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after


class _RateLimiter:
    """Shared limit on request starts: never more than ``rate`` in any one-second window.

    Starts are spaced 1/rate apart and, in addition, counted over a slightly widened window, so a store
    that counts arrivals per second never sees more than ``rate`` even with a little network jitter.
    """

    _MARGIN = 1.05

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._starts: deque[float] = deque()
        self._next_at = 0.0
        self._paused_until = 0.0
        self._lowered_at = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._starts and self._starts[0] <= now - self._MARGIN:
                    self._starts.popleft()
                wait = self._paused_until - now
                if self.rate > 0:
                    cap = max(1, int(self.rate))
                    window = self._MARGIN if self.rate >= 1 else self._MARGIN / self.rate
                    if len(self._starts) >= cap:
                        wait = max(wait, self._starts[-cap] + window - now)
                    wait = max(wait, self._next_at - now)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            self._starts.append(now)
            if self.rate > 0:
                self._next_at = now + 1.0 / self.rate
            return now

    def observed_rate(self) -> float:
        now = time.monotonic()
        return float(sum(1 for t in self._starts if t > now - 1.0))

    def throttle(self, started_at: float, retry_after: float | None) -> float | None:
        """The store said 429: pause everyone for Retry-After and halve the rate.

        Only once per burst: answers to requests started before the last lowering do not lower it again.
        Returns the new rate when it changed.
        """
        if retry_after:
            self._paused_until = max(self._paused_until, time.monotonic() + retry_after)
        if started_at < self._lowered_at:
            return None
        base = self.rate if self.rate > 0 else max(1.0, self.observed_rate())
        self.rate = max(0.5, base / 2)
        self._lowered_at = time.monotonic()
        return self.rate


class _Circuit:
    """Consecutive failed attempts open the circuit; after ``reset_s`` one trial request may go."""

    def __init__(
        self, threshold: int, reset_s: float, notify: Callable[[str, str, str, dict[str, Any]], None]
    ):
        self.threshold = threshold
        self.reset_s = reset_s
        self._notify = notify
        self._failures = 0
        self.last_failure = ""  # what the last failed attempt met, for the message once the circuit opens
        self._opened_at: float | None = None
        self._trial: asyncio.Future[None] | None = None
        metrics.PROCESS.track_circuit(self)

    @property
    def state(self) -> str:
        """closed, open or half_open (a trial request in flight), for the metrics' gauge of circuits."""
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._trial is not None else "open"

    async def before_attempt(self) -> bool:
        """Returns True when this attempt is the half-open trial; raises while the circuit is open."""
        while True:
            if self._opened_at is None:
                return False
            if self._trial is not None:
                # Another request is the trial: wait for its outcome, then look again.
                await asyncio.shield(self._trial)
                continue
            remaining = self._opened_at + self.reset_s - time.monotonic()
            if remaining > 0:
                last = f"; last: {self.last_failure}" if self.last_failure else ""
                raise StoreUnavailable(
                    f"the store failed {self._failures} times in a row, so wcsync stopped calling it "
                    f"for {self.reset_s:g} s ({remaining:.1f} s left){last}",
                    code="wcsync_circuit_open",
                    hint="the store's health (server errors, maintenance mode, firewall); the sync resumes "
                    "where it stopped",
                )
            self._trial = asyncio.get_running_loop().create_future()
            return True

    def _end_trial(self) -> None:
        if self._trial is not None:
            if not self._trial.done():
                self._trial.set_result(None)
            self._trial = None

    def succeeded(self, trial: bool) -> None:
        self._failures = 0
        if self._opened_at is not None and (trial or self._trial is None):
            self._opened_at = None
            self._end_trial()
            self._notify("circuit_closed", "info", "The store answers again; requests resume.", {})

    def failed(self, trial: bool, reason: str = "") -> None:
        self._failures += 1
        self.last_failure = reason or self.last_failure
        if trial:
            self._opened_at = time.monotonic()
            self._end_trial()
            log.warning("circuit_reopened", failures=self._failures)
        elif self._opened_at is None and self._failures >= self.threshold:
            self._opened_at = time.monotonic()
            self._notify(
                "circuit_opened",
                "error",
                f"The store failed {self._failures} times in a row; wcsync pauses calling it for "
                f"{self.reset_s:g} s.",
                {"consecutive_failures": self._failures, "pause_s": self.reset_s},
            )

    def abandoned(self, trial: bool) -> None:
        """The trial attempt was cancelled: let another request try."""
        if trial:
            self._end_trial()


# ------------------------------------------------------------------------------------------- client


class WooCommerceClient:
    """Reads customers from one WooCommerce store, and lists and changes its webhooks. Use as
    ``async with WooCommerceClient(...) as client``."""

    def __init__(
        self,
        url: str,
        credentials: StoreCredentials,
        options: ClientOptions = ClientOptions(),
        on_activity: ActivitySink | None = None,
        sends_ahead: bool = False,
    ) -> None:
        """``sends_ahead``: this client's scan may begin before its caller is ready (send_ahead)."""
        # ``url`` is a store URL as check_store_url returns it (the one rule): trusted, not checked again.
        self._endpoint = store_site_root(url) + CUSTOMERS_PATH
        self._api_root = store_site_root(url) + API_ROOT
        self._https = urlsplit(url).scheme == "https"
        self._credentials = credentials
        self._options = options
        self._on_activity = on_activity
        self._oauth = OAuth1Client(
            credentials.consumer_key,
            client_secret=credentials.consumer_secret,
            signature_method=SIGNATURE_HMAC_SHA256,
            signature_type=SIGNATURE_TYPE_QUERY,
        )
        self._secrets = [s for s in (credentials.consumer_key, credentials.consumer_secret) if s]
        self._session: aiohttp.ClientSession | None = None
        self._limiter = _RateLimiter(options.rate)
        self._circuit = _Circuit(options.circuit_threshold, options.circuit_reset_s, self._activity)
        self.stats = ClientStats()
        self._sends_ahead = sends_ahead
        # The requests send_ahead sent, by page, until a scan takes them over (or the client is left).
        self._ahead: dict[int, tuple[_Ahead, asyncio.Task[_Response]]] = {}
        self._ahead_known: asyncio.Future[Mapping[int, KnownPage]] | None = None
        # A request sent ahead, until its scan begins: no bound on its whole (that is _Ahead.bounds'), its
        # connecting and each read bounded as the whole is otherwise (timers a read that arrives resets).
        self._paused_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=options.timeout_s, sock_read=options.timeout_s
        )

    # -- lifecycle

    async def __aenter__(self) -> Self:
        ssl_option: ssl.SSLContext | bool = True
        if self._https and self._options.ca_file:
            ssl_option = ssl.create_default_context(cafile=self._options.ca_file)
        headers = {"Accept": "application/json", "User-Agent": "wcsync/0.1"}
        if self._https:
            headers["Authorization"] = aiohttp.encode_basic_auth(
                self._credentials.consumer_key, self._credentials.consumer_secret
            )
        connector = aiohttp.TCPConnector(limit=max(8, self._options.concurrency * 2), ssl=ssl_option)
        traces = []
        if self._sends_ahead:  # only then: a trace costs every request its signals
            traces.append(aiohttp.TraceConfig())
            traces[0].on_request_headers_sent.append(_on_headers_sent)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._options.timeout_s),
            headers=headers,
            trace_configs=traces or None,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._drop_ahead()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- a scan begun early

    async def send_ahead(self, wait_s: float = 1.0) -> None:
        """Send the first requests of a customers scan from page 1 now, as many as the concurrency allows,
        before the caller has what it reads them with (a first `wcsync start` opens its database meanwhile).
        Returns once they are on the wire (at most ``wait_s``: a slow connection goes on later). The next
        ``pages()`` from page 1 takes them over: their answers are interpreted only then, with its known
        pages, as its own requests' are. A scan from elsewhere, or leaving the client, cancels them."""
        assert self._session is not None, "use the client inside 'async with'"
        assert self._sends_ahead, "a client that sends ahead is made with sends_ahead=True"
        if self._ahead_known is not None:
            return
        loop = asyncio.get_running_loop()
        self._ahead_known = loop.create_future()
        per_page, deadline = self._options.per_page, loop.time() + wait_s
        aheads = [
            _Ahead(page, self._ahead_known)
            for page in range(1, min(self._options.concurrency, self._options.max_pages) + 1)
        ]
        for ahead in aheads:
            params = self._list_params(ahead.number, per_page)
            task = asyncio.create_task(self._scan_page(ahead.number, params, ahead))
            self._ahead[ahead.number] = (ahead, task)
        for ahead, task in list(self._ahead.values()):
            sent = asyncio.ensure_future(ahead.sent.wait())
            try:
                await asyncio.wait(
                    (sent, task),
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                sent.cancel()

    @property
    def pages_sent_ahead(self) -> int:
        """How many requests send_ahead sent that no scan has taken over yet."""
        return len(self._ahead)

    async def _take_ahead(
        self, start_page: int, extra: Mapping[str, str], per_page: int, known: Mapping[int, KnownPage]
    ) -> dict[int, asyncio.Task[_Response]]:
        """The requests sent ahead, for a scan that begins: its own when it is the one they were sent for
        (from page 1, the listing of every customer, the client's page size); cancelled otherwise."""
        if self._ahead_known is None:
            return {}
        if start_page == 1 and not extra and per_page == self._options.per_page:
            taken, self._ahead = self._ahead, {}
            self._ahead_known.set_result(known)
            self._ahead_known = None
            # Their time is counted from now, as the scan's own requests' is from their start.
            deadline = asyncio.get_running_loop().time() + self._options.timeout_s
            for ahead, _ in taken.values():
                for bound in ahead.bounds:
                    bound.reschedule(deadline)
            return {number: task for number, (_, task) in taken.items()}
        await self._drop_ahead()
        return {}

    async def _drop_ahead(self) -> None:
        tasks, self._ahead = [task for _, task in self._ahead.values()], {}
        if self._ahead_known is not None:
            self._ahead_known.cancel()
            self._ahead_known = None
        await _cancel_and_wait(tasks)

    # -- public operations

    async def probe(self) -> int:
        """One cheap request; returns the store's customer count (X-WP-Total) or raises StoreRefused fast."""
        response = await self._get("", self._list_params(page=1, per_page=1), listing=True)
        if response.total is not None:
            return response.total
        return len(response.body)

    def pages(
        self,
        start_page: int = 1,
        seen_ids: MutableSet[int] | None = None,
        result: ScanResult | None = None,
        known: Mapping[int, KnownPage] | None = None,
    ) -> AsyncGenerator[Page, None]:
        """Yields the store's customers page by page, in page order, fetching ahead concurrently; ``result``
        says afterwards whether the scan reached the store's end. ``known``: pages of an earlier scan of
        the same listing, by number; an answer that is byte for byte one of them is not parsed (its Page
        has ``known_ids``)."""
        if start_page < 1:
            raise ValueError(f"start_page is 1-based, got {start_page}")
        seen = seen_ids if seen_ids is not None else set()
        return self._scan(start_page, seen, {}, self._options.per_page, result or ScanResult(), known or {})

    async def customers_by_id(
        self, ids: Iterable[int], rejected: list[RejectedRecord] | None = None
    ) -> tuple[dict[int, dict[str, Any]], set[int]]:
        """(records found by id, ids the store no longer has). A customer too large to read is appended to
        ``rejected`` when it is given (else the store is refused)."""
        wanted = sorted(set(ids))
        found: dict[int, dict[str, Any]] = {}
        gate = asyncio.Semaphore(self._options.concurrency)

        async def chunk(chunk_ids: list[int]) -> None:
            # Every role: the ids asked for are known customers, whatever role they have now.
            params = {
                **self._list_params(1, bounds.MAX_PER_PAGE),
                "role": "all",
                "include": ",".join(str(i) for i in chunk_ids),
            }
            async with gate:
                try:
                    response = await self._get("", params, listing=True, oversize_ok=True)
                except _TooLarge:
                    return  # each of these ids is then asked for on its own
            for record in response.body:
                if record["id"] in chunk_ids:
                    found[record["id"]] = record

        chunks = [wanted[i : i + bounds.MAX_PER_PAGE] for i in range(0, len(wanted), bounds.MAX_PER_PAGE)]
        await _gather_all(chunk(c) for c in chunks)
        # include= may miss a record whose role changed meanwhile: only a 404 by id proves a deletion.
        refused = await self._each_by_id([i for i in wanted if i not in found], found, rejected)
        return found, {i for i in wanted if i not in found and i not in refused}

    async def _each_by_id(
        self, ids: Iterable[int], found: dict[int, dict[str, Any]], rejected: list[RejectedRecord] | None
    ) -> set[int]:
        """GET /customers/<id> for each id, ``concurrency`` at once, into ``found``. With ``rejected``, each
        record is checked as it arrives (so only a valid record or an excerpt is kept of each: they come one
        by one when they are large) and a refused one, or one too large to read, goes there; without it, an
        answer too large refuses the store. Returns the ids that went to ``rejected``."""
        gate = asyncio.Semaphore(self._options.concurrency)
        refused: set[int] = set()

        async def one(customer_id: int) -> None:
            outcome: dict[str, Any] | RejectedRecord
            async with gate:
                try:
                    response = await self._get(
                        f"/{customer_id}", {}, listing=False, oversize_ok=rejected is not None
                    )
                except _TooLarge as error:
                    outcome = self._oversized_record(customer_id, error)
                else:
                    if response.status != 200 or customer_id_of(response.body) != customer_id:
                        return
                    outcome = response.body if rejected is None else check_record(response.body)
            if isinstance(outcome, RejectedRecord):
                assert rejected is not None
                rejected.append(outcome)
                refused.add(customer_id)
            else:
                found[customer_id] = outcome

        await _gather_all(one(i) for i in ids)
        return refused

    async def all_ids(self) -> set[int]:
        """Every id the store lists (for ``role``), from two quick id-only listings.

        A deletion while a listing pages through shifts later records one place down, so one listing can
        miss a record crossing a page boundary; a second listing catches it. The union may still hold ids
        deleted meanwhile: confirm the ones that matter with ``customers_by_id``.
        """
        first = await self._list_ids()
        second = await self._list_ids()
        if first != second:
            log.info(
                "store_changed_while_listing", only_first=len(first - second), only_second=len(second - first)
            )
        return first | second

    # -- webhooks (the store's /webhooks resource; writing needs a Read/Write key)

    async def webhooks(self) -> list[dict[str, Any]]:
        """Every webhook of the store, as WooCommerce answers them (secrets included: keep them in)."""
        hooks: list[dict[str, Any]] = []
        page = 1
        while page <= self._options.max_pages:
            params = {"per_page": str(bounds.MAX_PER_PAGE), "page": str(page), "status": "all"}
            answer = await self._call(_Call("GET", "/webhooks"), params)
            if not isinstance(answer, list):
                raise self._not_webhooks("a list")
            hooks.extend(h for h in answer if isinstance(h, dict) and isinstance(h.get("id"), int))
            if len(answer) < bounds.MAX_PER_PAGE:
                break
            page += 1
        return hooks

    async def create_webhook(self, fields: dict[str, Any]) -> dict[str, Any]:
        """POST /webhooks: the webhook created (a read-only key: StoreRefused saying what to change)."""
        return await self._write_webhook(_Call("POST", "/webhooks", self._payload(fields)))

    async def update_webhook(self, webhook_id: int, fields: dict[str, Any]) -> dict[str, Any]:
        """PUT /webhooks/<id> with ``fields``: the webhook as it is now."""
        return await self._write_webhook(_Call("PUT", f"/webhooks/{webhook_id}", self._payload(fields)))

    async def delete_webhook(self, webhook_id: int) -> bool:
        """DELETE /webhooks/<id>?force=true (WooCommerce does not trash webhooks). False: it was gone."""
        answer = await self._call(_Call("DELETE", f"/webhooks/{webhook_id}"), {"force": "true"})
        return answer is not None

    async def _write_webhook(self, call: _Call) -> dict[str, Any]:
        answer = await self._call(call, {})
        if not isinstance(answer, dict) or not isinstance(answer.get("id"), int):
            raise self._not_webhooks("a webhook")
        return answer

    def _payload(self, fields: dict[str, Any]) -> bytes:
        secret = fields.get("secret")
        if isinstance(secret, str) and secret and secret not in self._secrets:
            self._secrets.append(secret)  # the webhook's secret is redacted like the key's
        return orjson.dumps(fields)

    async def _call(self, call: _Call, params: dict[str, str]) -> Any:
        """The JSON answer to ``call`` with its retries; None for a webhook that does not exist."""
        try:
            response = await self._get_with_retries(call.path, params, listing=False, call=call)
        except _TooLarge:
            raise self._too_large(API_ROOT + call.path) from None
        return response.body

    def _not_webhooks(self, what: str) -> StoreRefused:
        return StoreRefused(
            f"the store's answer at {WEBHOOKS_PATH} is not {what}",
            code="wcsync_malformed",
            hint="that the URL is a WooCommerce store (a plugin or cache may be answering instead)",
        )

    # -- scanning

    async def _list_ids(self) -> set[int]:
        ids: set[int] = set()
        async for _ in self._scan(1, ids, {"_fields": "id"}, bounds.MAX_PER_PAGE, ScanResult()):
            pass
        return ids

    def _list_params(self, page: int, per_page: int) -> dict[str, str]:
        return {
            "orderby": "id",
            "order": "asc",
            "per_page": str(per_page),
            "role": self._options.role,
            "page": str(page),
        }

    async def _scan(
        self,
        start_page: int,
        seen: MutableSet[int],
        extra: dict[str, str],
        per_page: int,
        result: ScanResult,
        known: Mapping[int, KnownPage] | None = None,
    ) -> AsyncGenerator[Page, None]:
        concurrency = self._options.concurrency
        last_allowed = start_page + self._options.max_pages - 1
        in_flight = await self._take_ahead(start_page, extra, per_page, known or {})
        next_launch = start_page + len(in_flight)
        known_total_pages: int | None = None
        number = start_page
        refused_seen: set[str] = set()  # digests of records without a usable id, to see a page repeat

        async def fetch(page: int) -> _Response:
            params = {**self._list_params(page, per_page), **extra}
            if "_fields" in extra:
                return await self._get("", params, listing=True)
            return await self._scan_page(page, params, known.get(page) if known else None)

        def launch_ahead() -> None:
            nonlocal next_launch
            while len(in_flight) < concurrency and next_launch <= last_allowed:
                # Speculate freely while the page count is unknown and up to one page past it once
                # known; beyond that a growing store is followed one full page at a time.
                speculative = next_launch != number
                if speculative and known_total_pages is not None and next_launch > known_total_pages + 1:
                    return
                in_flight[next_launch] = asyncio.create_task(fetch(next_launch))
                next_launch += 1

        try:
            while True:
                if number > last_allowed:
                    self._activity(
                        "store_page_cap_reached",
                        "warning",
                        f"Stopped after {self._options.max_pages} pages, the limit for one scan.",
                        {"max_pages": self._options.max_pages, "last_page": number - 1},
                    )
                    result.complete = False
                    return
                launch_ahead()
                response = await in_flight.pop(number)
                if response.total_pages is not None:
                    known_total_pages = response.total_pages
                if response.unparsed is not None and response.ids is None:  # the known page itself
                    assert known is not None and response.digest is not None
                    ids = list(known[number].ids)
                    # A short page ends the scan, so it is always read (the last page, usually): a known
                    # page's ids are the last scan's word, and a wrong count must not end a scan early.
                    if len(ids) >= per_page and seen.isdisjoint(ids):
                        _add_ids(seen, ids)
                        yield Page(
                            number,
                            [],
                            response.total,
                            response.total_pages,
                            [],
                            body_digest=response.digest,
                            known_ids=ids,
                            parse=partial(self._read_known, number, response.unparsed),
                        )
                        number += 1
                        continue
                    # Short, or seen already on an earlier page of this scan: read it as any other answer,
                    # its customers' bytes the known page's (all of them, usually) left unparsed.
                    body = response.unparsed
                    response = _cut_answer(response, body, known[number]) or self._listing_response(
                        response, body
                    )
                if response.same_ids and not seen.isdisjoint(response.ids or ()):
                    # A customer of it was on an earlier page (the store shifted): read whole, as any answer.
                    assert response.unparsed is not None
                    response = self._listing_response(
                        dataclasses.replace(response, ids=None, answers=None, same_ids=[]), response.unparsed
                    )
                raw: list[dict[str, Any]] = response.body
                same = response.same_ids
                if not raw and not response.rejected and not same:
                    return
                page_ids = response.ids if response.ids is not None else [record["id"] for record in raw]
                fresh: list[dict[str, Any]] = []
                if len(set(page_ids)) == len(page_ids) and seen.isdisjoint(page_ids):
                    _add_ids(seen, page_ids)  # the usual page: none seen before, added at once
                    fresh = raw
                else:
                    for record in raw:
                        if record["id"] not in seen:
                            seen.add(record["id"])
                            fresh.append(record)
                rejected: list[RejectedRecord] = []
                for refusal in response.rejected:
                    if refusal.customer_id is None:
                        if refusal.digest not in refused_seen:
                            refused_seen.add(refusal.digest)
                            rejected.append(refusal)
                    elif refusal.customer_id not in seen:
                        seen.add(refusal.customer_id)
                        rejected.append(refusal)
                if not fresh and not rejected and not same:
                    self._activity(
                        "store_repeating_pages",
                        "warning",
                        f"The store answered page {number} with customers already received, so the scan "
                        "stopped there. A cache that ignores the query string usually causes this.",
                        {"page": number, "records": len(raw)},
                    )
                    result.complete = False
                    return
                whole = len(fresh) == len(raw) and not response.rejected
                digest = response.digest if whole else None
                yield Page(
                    number,
                    fresh,
                    response.total,
                    response.total_pages,
                    rejected,
                    body_digest=digest,
                    strict_json=response.strict_json,
                    same_ids=same,
                    answers=response.answers if whole else None,
                    parse=partial(self._read_known, number, response.unparsed)
                    if same and response.unparsed is not None
                    else None,
                )
                if len(raw) + len(same) + len(response.rejected) < per_page:
                    return
                number += 1
        finally:
            await _cancel_and_wait(list(in_flight.values()))

    async def _scan_page(
        self, page: int, params: dict[str, str], earlier: KnownPage | _Ahead | None
    ) -> _Response:
        """A page of the customers scan: its answer's digest computed and, when it is ``earlier``'s (the
        known page, learnt only when its scan begins for a request sent ahead), not parsed; a page too
        large to read whole fetched customer by customer."""
        try:
            return await self._get("", params, listing=True, oversize_ok=True, digest="", earlier=earlier)
        except _TooLarge as too_large:
            return await self._page_one_by_one(page, params, too_large)

    # -- one request, with retries

    async def _get(
        self,
        path: str,
        params: dict[str, str],
        *,
        listing: bool,
        oversize_ok: bool = False,
        digest: str | None = None,
        earlier: KnownPage | _Ahead | None = None,
    ) -> _Response:
        """One request with its retries. An answer over max_response_bytes raises _TooLarge when the
        caller handles it (``oversize_ok``), else StoreRefused. ``digest`` (a page of the customers scan):
        the answer's digest is computed, and when it equals ``earlier``'s (the page an earlier scan read)
        the answer is not parsed (_Response.unparsed)."""
        try:
            return await self._get_with_retries(path, params, listing=listing, digest=digest, earlier=earlier)
        except _TooLarge:
            if oversize_ok:
                raise
            raise self._too_large(f"{CUSTOMERS_PATH + path}") from None

    async def _get_with_retries(
        self,
        path: str,
        params: dict[str, str],
        *,
        listing: bool,
        call: _Call | None = None,
        digest: str | None = None,
        earlier: KnownPage | _Ahead | None = None,
    ) -> _Response:
        options = self._options
        attempt = 0
        throttled = 0
        while True:
            trial = await self._circuit.before_attempt()
            started = await self._limiter.acquire()
            try:
                response = await self._attempt(
                    path, params, listing=listing, attempt=attempt, call=call, digest=digest, earlier=earlier
                )
            except _Transient as failure:
                rate_limited = failure.status == 429
                if rate_limited:
                    self.stats.rate_limited += 1
                    throttled += 1
                    self._circuit.abandoned(trial)
                    new_rate = self._limiter.throttle(started, failure.retry_after)
                    if new_rate is not None:
                        self._activity(
                            "rate_limited",
                            "warning",
                            f"The store asked wcsync to slow down; now at most {new_rate:g} requests per "
                            "second.",
                            {"rate": new_rate, "retry_after_s": failure.retry_after},
                        )
                else:
                    self.stats.failures[failure.reason] = self.stats.failures.get(failure.reason, 0) + 1
                    attempt += 1
                    self._circuit.failed(trial, self._redact(failure.message))
                # A 429 is the store pacing us, not failing: it gets its own, larger budget.
                if attempt > options.max_retries or throttled > max(10, 3 * options.max_retries):
                    raise self._unavailable(failure, self._shown(path, call), attempt + throttled) from None
                delay = self._backoff(attempt + throttled)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, options.backoff_max_s))
                self.stats.retries += 1
                metrics.PROCESS.store_retry(failure.reason)
                log.warning(
                    "store_request_retried",
                    path=self._shown(path, call),
                    reason=failure.reason,
                    status=failure.status,
                    attempt=attempt + throttled,
                    delay_s=round(delay, 3),
                    detail=self._redact(failure.message),
                )
                self._activity(
                    "request_retried",
                    "warning" if not rate_limited else "info",
                    f"The store {failure.message}; trying again in {delay:.1f} s.",
                    {"reason": failure.reason, "status": failure.status, "attempt": attempt + throttled},
                )
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._circuit.abandoned(trial)
                raise
            self._circuit.succeeded(trial)
            return response

    async def _page_one_by_one(self, page: int, params: dict[str, str], too_large: _TooLarge) -> _Response:
        """A page too large to read whole: its ids from an id-only listing, then each customer on its own,
        so that one oversized record fails its own line and the rest of the page still syncs."""
        self._activity(
            "store_page_too_large",
            "warning",
            f"The store's answer for page {page} is larger than the {self._options.max_response_bytes} "
            "bytes allowed; its customers are fetched one by one.",
            {"page": page, "limit_bytes": self._options.max_response_bytes, "bytes": too_large.size},
        )
        listing = await self._get("", {**params, "_fields": "id"}, listing=True)
        ids = [record["id"] for record in listing.body]
        found: dict[int, dict[str, Any]] = {}
        oversized: list[RejectedRecord] = []
        await self._each_by_id(ids, found, oversized)
        records = [found[i] for i in ids if i in found]
        return _Response(200, records, listing.total, listing.total_pages, (*listing.rejected, *oversized))

    def _oversized_record(self, customer_id: int, error: _TooLarge) -> RejectedRecord:
        return RejectedRecord(
            customer_id=customer_id,
            error=f"invalid customer record: record: larger than the {self._options.max_response_bytes} "
            "bytes a store answer may have",
            excerpt="",
            digest="",
            size=error.size or self._options.max_response_bytes + 1,
        )

    def _too_large(self, what: str) -> StoreRefused:
        return StoreRefused(
            f"the store's answer for {what} is larger than the {self._options.max_response_bytes} bytes "
            "allowed",
            code="wcsync_response_too_large",
            hint="what the store sends (a plugin or cache may be adding to every answer); the limit is "
            "--max-response-mb",
        )

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._options.backoff_max_s, self._options.backoff_base_s * 2.0 ** max(0, attempt - 1))
        return ceiling * (0.5 + random.random() / 2)

    def _unavailable(self, failure: _Transient, path: str, attempts: int) -> StoreUnavailable:
        hint = "the store's health and network; the sync can resume from where it stopped"
        if failure.reason == "auth_clock":
            hint = "this computer's clock (the store refuses OAuth timestamps more than 15 minutes off)"
        elif failure.reason == "timeout":
            hint = (
                f"the store's speed; raise the timeout (now {self._options.timeout_s:g} s) or lower per_page"
            )
        elif failure.status == 429:
            hint = "the host's rate limit; set a lower request rate"
        return StoreUnavailable(
            f"the store failed {attempts} attempts at {path}; last: {self._redact(failure.message)}",
            code=failure.code or f"wcsync_{failure.reason}",
            status=failure.status,
            hint=hint,
        )

    def _shown(self, path: str, call: _Call | None) -> str:
        """The path a log line or message names (never the query: it holds the OAuth signature)."""
        return API_ROOT + path if call is not None else CUSTOMERS_PATH + path

    async def _attempt(
        self,
        path: str,
        params: dict[str, str],
        *,
        listing: bool,
        attempt: int,
        call: _Call | None = None,
        digest: str | None = None,
        earlier: KnownPage | _Ahead | None = None,
    ) -> _Response:
        assert self._session is not None, "use the client inside 'async with'"
        method = call.method if call is not None else "GET"
        base = self._api_root + call.path if call is not None else self._endpoint + path
        url = self._signed_url(base, params, method)
        shown = self._shown(path, call)
        self.stats.requests += 1
        started = time.monotonic()
        status: int | None = None
        payload = call.payload if call is not None else None
        ahead = earlier if isinstance(earlier, _Ahead) and not earlier.known.done() else None
        try:
            async with (
                _bounded_from_scan_start(ahead),
                self._session.request(
                    method,
                    yarl.URL(url, encoded=True),
                    allow_redirects=False,
                    data=payload,
                    headers={"Content-Type": "application/json"} if payload is not None else None,
                    trace_request_ctx={"ahead": earlier} if isinstance(earlier, _Ahead) else None,
                    timeout=self._paused_timeout if ahead is not None else self._session.timeout,
                ) as reply,
            ):
                status = reply.status
                headers = reply.headers
                body = await self._read_capped(reply)
        except TimeoutError:
            self._ended_ahead(earlier)
            self._log_outcome(shown, params, "timeout", started, attempt, method)
            raise _Transient("timeout", f"did not answer within {self._options.timeout_s:g} s") from None
        except aiohttp.ClientError as error:
            self._ended_ahead(earlier)
            self._log_outcome(shown, params, "connection_error", started, attempt, method)
            if isinstance(error, aiohttp.ClientConnectorDNSError):
                raise StoreRefused(
                    f"the store's host name {urlsplit(self._endpoint).hostname!r} does not resolve",
                    code="wcsync_dns",
                    hint="the store URL's host name (and this machine's DNS); nothing else was tried",
                ) from None
            if isinstance(error, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
                raise StoreRefused(
                    f"the store's TLS certificate was not accepted ({type(error).__name__})",
                    code="wcsync_tls",
                    hint="the certificate, or give the CA file that signed it",
                ) from None
            raise _Transient(
                "connection", f"could not be reached ({type(error).__name__}: {self._redact(str(error))})"
            ) from None
        self.stats.responses[status] = self.stats.responses.get(status, 0) + 1
        self.stats.bytes += len(body)
        self._log_outcome(shown, params, status, started, attempt, method)
        if call is not None:
            return self._interpret_call(call, status, headers, body)
        if isinstance(earlier, _Ahead):  # sent ahead of its scan: read once the scan has begun
            earlier = await earlier.known_page()
        if digest is not None and earlier is not None:
            digest = earlier.digest
        return self._interpret(status, headers, body, listing=listing, digest=digest, earlier=earlier)

    @staticmethod
    def _ended_ahead(earlier: KnownPage | _Ahead | None) -> None:
        """A request sent ahead whose attempt failed before it was on the wire (refused, timed out): not
        sent, but send_ahead has nothing more to wait for (its retry waits its backoff first)."""
        if isinstance(earlier, _Ahead):
            earlier.sent.set()

    async def _read_capped(self, reply: aiohttp.ClientResponse) -> bytes:
        """The body, read chunk by chunk up to max_response_bytes; raises _TooLarge past it (a store's
        50 MB page must not become 50 MB, and its parse several times that, in this process)."""
        cap = self._options.max_response_bytes
        declared = reply.content_length
        if declared is not None and declared > cap:
            raise _TooLarge(declared)
        parts: list[bytes] = []
        size = 0
        async for chunk in reply.content.iter_chunked(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > cap:
                raise _TooLarge(declared)
            parts.append(chunk)
        return b"".join(parts)

    def _signed_url(self, url: str, params: dict[str, str], method: str = "GET") -> str:
        query = urlencode(params, quote_via=quote, safe="")
        full = f"{url}?{query}" if query else url
        if self._https:
            return full
        # A JSON body is not signed (OAuth 1.0a signs form bodies only), as WooCommerce checks it.
        signed, _, _ = self._oauth.sign(full, http_method=method)  # fresh nonce and timestamp every call
        return str(signed)

    def _interpret(
        self,
        status: int,
        headers: Any,
        body: bytes,
        *,
        listing: bool,
        digest: str | None = None,
        earlier: KnownPage | None = None,
    ) -> _Response:
        if status == 200:
            totals = (_int_header(headers, "X-WP-Total"), _int_header(headers, "X-WP-TotalPages"))
            if listing and digest is not None:
                # A page of the customers scan: its digest names it for the next scan, and an answer
                # that is a page the last scan read is those customers again, with nothing to parse.
                own = hashlib.sha256(body).hexdigest()
                if own == digest:
                    return _Response(status, None, *totals, digest=own, unparsed=body)
                cut = _cut_answer(_Response(status, None, *totals, digest=own), body, earlier)
                if cut is not None:
                    return cut
                return self._listing_response(_Response(status, None, *totals, digest=own), body)
            if listing:
                return self._listing_response(_Response(status, None, *totals), body)
            parsed = self._parse_json(body)
            if customer_id_of(parsed) is None:
                outcome = check_record(parsed)
                problem = outcome.error if isinstance(outcome, RejectedRecord) else "no usable id"
                raise _Transient("malformed", f"sent something that is not a customer ({problem})")
            return _Response(status, parsed, *totals)
        code, message, data = self._error_fields(body)
        if status == 429:
            raise _Transient(
                "rate_limited",
                "answered 429 Too Many Requests",
                status=429,
                code=code,
                retry_after=_retry_after(headers.get("Retry-After")),
            )
        if status >= 500:
            raise _Transient("server_error", f"answered HTTP {status}: {message}", status=status, code=code)
        # WooCommerce's own words ("Invalid timestamp.", "Invalid nonce - nonce has already been used."):
        # not any mention of a nonce, since a page echoing the signed URL holds "oauth_nonce=".
        if status == 401 and re.search(r"\binvalid (nonce|timestamp)\b", message, re.IGNORECASE):
            raise _Transient(
                "auth_clock", f"refused the request's freshness: {message}", status=status, code=code
            )
        if status in (401, 403):
            raise StoreRefused(
                f"the store refused the credentials: {message}",
                code=code,
                status=status,
                hint=(
                    "the WAF or host in front of the store (it answered with a web page, not WooCommerce)"
                    if not code
                    else "the consumer key and secret (WooCommerce > Settings > Advanced > REST API) "
                    "and that the key has Read permission"
                ),
            )
        if status == 400:
            param = _invalid_param(message, data)
            raise StoreRefused(
                f"the store rejected the request{f' parameter {param!r}' if param else ''}: {message}",
                code=code,
                status=status,
                hint=f"per_page must be {bounds.PER_PAGE.low:g}..{bounds.PER_PAGE.high:g} and role an existing role (or 'all')"
                if param in ("per_page", "role", None)
                else f"the value given for {param}",
            )
        if status == 404:
            if not listing and code in INVALID_ID_CODES:
                return _Response(status, None, None, None)
            raise StoreRefused(
                f"no WooCommerce customers API at this URL: {message}",
                code=code,
                status=status,
                hint="the URL is the site root (not a page or /wp-admin), WooCommerce is active, and "
                "permalinks are not 'Plain'",
            )
        if 300 <= status < 400:
            location = str(headers.get("Location", "")).split("?", 1)[0]
            raise StoreRefused(
                f"the store redirects to {location or 'another address'}",
                code=code,
                status=status,
                hint="use the address the store redirects to (often https:// or www.)",
            )
        raise StoreRefused(f"the store answered HTTP {status}: {message}", code=code, status=status)

    def _listing_response(self, response: _Response, body: bytes) -> _Response:
        """A listing's answer read: ``response`` with its records as ``body`` and the records refused
        before they could be read as customers (no usable id, unreadable) as ``rejected``."""
        unreadable: list[RejectedRecord] = []
        try:
            parsed, strict = orjson.loads(body), True
        except orjson.JSONDecodeError:  # the lenient reader then, element by element if need be
            parsed, strict = self._parse_json(body, unreadable), False
        rejected: tuple[RejectedRecord, ...] = tuple(unreadable)
        if not isinstance(parsed, list):
            raise _Transient("malformed", "sent something that is not a list of customers")
        usable = [r for r in parsed if customer_id_of(r) is not None]
        if len(usable) != len(parsed):
            # Records with no usable id cannot be lines: refused here, named in the activity.
            refused = [check_record(r) for r in parsed if customer_id_of(r) is None]
            rejected += tuple(r for r in refused if isinstance(r, RejectedRecord))
            parsed = usable
        return _Response(
            response.status,
            parsed,
            response.total,
            response.total_pages,
            rejected,
            response.digest,
            strict_json=strict,
        )

    def _read_known(self, number: int, body: bytes) -> tuple[list[dict[str, Any]], list[RejectedRecord]]:
        """A known page's answer, read after all (Page.parse): its records and refused records. It is the
        bytes of a page read before, so it reads; if it does not, the store's answer is named."""
        try:
            response = self._listing_response(_Response(200, None, None, None), body)
        except _Transient as failure:
            raise StoreUnavailable(
                f"page {number} of the store {failure.message}", code="wcsync_unreadable_page"
            ) from None
        return response.body, list(response.rejected)

    def _interpret_call(self, call: _Call, status: int, headers: Any, body: bytes) -> _Response:
        """A webhooks answer: its JSON on success; a webhook that does not exist is None; any 401 or 403 on
        a write is a key that cannot write (unless it is the OAuth clock); the rest as for reads."""
        if status in (200, 201):
            try:
                return _Response(status, orjson.loads(body), None, None)
            except orjson.JSONDecodeError:
                if body.lstrip()[:1] == b"<":
                    raise _Transient("html", "answered with a web page instead of JSON") from None
                raise _Transient("truncated", "sent JSON that is cut off or garbled") from None
        code, message, data = self._error_fields(body)
        clock = re.search(r"\binvalid (nonce|timestamp)\b", message, re.IGNORECASE)
        if call.writes and status in (401, 403) and code and not clock:
            raise StoreRefused(
                f"the store refused to change its webhooks: {message}",
                code=code,
                status=status,
                hint=READ_ONLY_KEY_HINT,
            )
        if status == 404 and code == WEBHOOK_INVALID_ID:
            return _Response(status, None, None, None)
        if status == 400:
            param = _invalid_param(message, data)
            raise StoreRefused(
                f"the store rejected the webhook{f' field {param!r}' if param else ''}: {message}",
                code=code,
                status=status,
                hint=f"the value given for {param}" if param else "",
            )
        return self._interpret(status, headers, body, listing=True)

    def _parse_json(self, body: bytes, unreadable: list[RejectedRecord] | None = None) -> Any:
        """The answer's JSON. With ``unreadable`` (a listing): an array whose elements cannot all be read
        is read element by element, and each element that cannot be (nested thousands deep, an integer of
        thousands of digits, bytes that are not UTF-8) is appended there, so one record fails, not the page."""
        try:
            # orjson: a page of 100 customers parses 3x faster than with the stdlib (profiled: 8% of a sync).
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            text = body.lstrip()[:1]
            if text == b"<":
                raise _Transient("html", "answered with a web page instead of JSON") from None
        try:
            return _stdlib_json(body)
        except (ValueError, RecursionError):
            elements = _array_elements(body) if unreadable is not None else None
            if elements is None:
                raise _Transient("truncated", "sent JSON that is cut off or garbled") from None
        assert unreadable is not None
        records: list[Any] = []
        for element in elements:
            try:
                records.append(_stdlib_json(element))
            except (ValueError, RecursionError) as error:
                unreadable.append(_unreadable_record(element, error))
        return records

    def _error_fields(self, body: bytes) -> tuple[str, str, dict[str, Any]]:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            title = re.search(rb"<title>(.*?)</title>", body, re.IGNORECASE | re.DOTALL)
            text = title.group(1).decode("utf-8", "replace") if title else "a non-JSON answer"
            return "", self._redact(_one_line(text))[:200], {}
        if not isinstance(parsed, dict):
            return "", "an unexpected answer", {}
        data = parsed.get("data")
        # Everything here is the store's text, shown and stored: redacted before it is cut to length.
        return (
            self._redact(_one_line(str(parsed.get("code", ""))))[:100],
            self._redact(_one_line(str(parsed.get("message", ""))))[:300],
            redact_value(data, self._secrets) if isinstance(data, dict) else {},
        )

    # -- observability

    def _redact(self, text: str) -> str:
        """The key and secret in any form (raw, URL-encoded, base64 as Basic sends them, OAuth parameters)
        hidden: infrastructure.support.redaction, the one redaction for messages, logs and stored events."""
        return redact(text, self._secrets)

    def _log_outcome(
        self,
        shown: str,
        params: dict[str, str],
        outcome: int | str,
        started: float,
        attempt: int,
        method: str = "GET",
    ) -> None:
        # Every attempt ends here, answered or not: the one place that counts them for /metrics too.
        metrics.PROCESS.store_request(outcome)
        log.debug(
            "store_request",
            method=method,
            path=shown,
            params={k: v for k, v in params.items() if k != "include"}
            | ({"include_count": len(params["include"].split(","))} if "include" in params else {}),
            status=outcome,
            ms=round((time.monotonic() - started) * 1000, 1),
            attempt=attempt + 1,
        )

    def _activity(self, kind: str, status: str, message: str, details: dict[str, Any]) -> None:
        # Logged and stored in the queue's events: nothing secret may ride along in either.
        message = self._redact(message)
        details = redact_value(details, self._secrets)
        log.info("store_activity", activity=kind, level=status, message=message, details=details)
        if kind == "circuit_opened":
            self.stats.circuit_opened += 1
            metrics.PROCESS.circuit_opened()
        if self._on_activity is not None:
            self._on_activity(kind, status, message, details)


class ScanAhead:
    """A store client whose customers scan begins before its run is ready: a first `wcsync start` sends the
    scan's first requests (WooCommerceClient.send_ahead), then opens its database and prepares its queue
    while the store answers. The run takes the client over (SyncEngine.start's ``ahead``); what the client
    reported meanwhile (a retry, say) waits in ``incidents`` for the run's log. Closed by whoever began it,
    taken over or not (a run it does not serve closes it at once); closing it again does nothing."""

    def __init__(self, url: str, credentials: StoreCredentials, options: ClientOptions) -> None:
        self._key = (url, credentials, options)
        self.incidents: deque[tuple[str, str, str, dict[str, Any]]] = deque()
        self.client = WooCommerceClient(url, credentials, options, on_activity=self._report, sends_ahead=True)

    def serves(self, url: str, credentials: StoreCredentials, options: ClientOptions) -> bool:
        """Whether this is the scan a run of that store, with those credentials and options, would begin."""
        return self._key == (url, credentials, options)

    def _report(self, kind: str, status: str, message: str, details: dict[str, Any]) -> None:
        self.incidents.append((kind, status, message, details))

    async def begin(self) -> None:
        await self.client.__aenter__()
        await self.client.send_ahead()
        log.debug("scan.sent_ahead", pages=self.client.pages_sent_ahead)

    async def close(self) -> None:
        await self.client.__aexit__(None, None, None)


# ---------------------------------------------------------------------------------------- helpers


async def _gather_all(coroutines: Iterable[Any]) -> None:
    """Run all; on the first error cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        await _cancel_and_wait(tasks)


async def _cancel_and_wait(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel the tasks still running and wait for each to end, whatever it ends with."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _stdlib_json(data: bytes) -> Any:
    """What orjson refuses but is JSON (a lone surrogate escaped in a string) the stdlib reads; the record
    boundary then replaces what cannot be stored. NaN and Infinity are not JSON."""
    return json.loads(data, parse_constant=_not_json)


_STRUCTURE = re.compile(rb'["\\\[\]{},]')
_LEADING_ID = re.compile(rb'\A\s*\{\s*"id"\s*:\s*([0-9]{1,19})\s*[,}]')


def _array_elements(body: bytes) -> list[bytes] | None:
    """The elements of a top-level JSON array as byte slices, found by its structure alone (strings,
    brackets, commas), without parsing them; None when the body is not such an array."""
    data = body.strip()
    if not (data.startswith(b"[") and data.endswith(b"]")):
        return None
    elements: list[bytes] = []
    depth, start, in_string, escaped_at = 0, 1, False, -1
    for match in _STRUCTURE.finditer(data, 1, len(data) - 1):
        at = match.start()
        if at == escaped_at:
            continue
        char = data[at]
        if in_string:
            if char == 0x5C:  # backslash: the next byte is escaped
                escaped_at = at + 1
            elif char == 0x22:
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in b"[{":
            depth += 1
        elif char in b"]}":
            depth -= 1
            if depth < 0:
                return None
        elif char == 0x2C and depth == 0:
            elements.append(data[start:at])
            start = at + 1
    last = data[start:-1]
    if in_string or depth != 0 or (elements and not last.strip()):
        return None
    if last.strip():
        elements.append(last)
    return elements


def _unreadable_record(element: bytes, error: BaseException) -> RejectedRecord:
    """An array element that is not readable JSON: its line fails when its id can be read off its start
    (WooCommerce writes "id" first), else it is refused as a record without an id."""
    if isinstance(error, RecursionError):
        problem = "nested too deeply to read"
    elif isinstance(error, UnicodeDecodeError):
        problem = "holds bytes that are not UTF-8"
    elif "digits" in str(error):
        problem = "holds an integer too long to read"
    else:
        problem = "is not valid JSON"
    found = _LEADING_ID.match(element)
    cid = int(found.group(1)) if found else None
    if cid is not None and not 0 < cid <= MAX_CUSTOMER_ID:
        cid = None
    excerpt = element[:EXCERPT_CHARS].decode("utf-8", "replace")
    return RejectedRecord(
        customer_id=cid,
        error=f"invalid customer record: record: {problem}"
        if cid is not None
        else f"id: a record that {problem}",
        excerpt=excerpt + ("…" if len(element) > EXCERPT_CHARS else ""),
        digest=hashlib.sha256(element).hexdigest(),
        size=len(element),
    )


def _int_header(headers: Any, name: str) -> int | None:
    value = headers.get(name)
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is None or 0 <= number <= MAX_HEADER_NUMBER else None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(600.0, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(600.0, max(0.0, when.timestamp() - time.time()))


def _invalid_param(message: str, data: dict[str, Any]) -> str | None:
    params = data.get("params")
    if isinstance(params, dict) and params:
        return str(next(iter(params)))
    found = re.search(r"parameter\(s\):\s*([A-Za-z_]+)", message) or re.search(
        r"\b(per_page|role|page)\b", message
    )
    return found.group(1) if found else None
