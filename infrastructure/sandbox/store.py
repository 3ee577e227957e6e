"""A WooCommerce-compatible store on aiohttp.web, to develop, test, demo and benchmark the sync engine.

It follows shared/woocommerce-api.md: the customers listing and item routes with WordPress's parameter
checks and headers, OAuth 1.0a over plain HTTP and Basic over HTTPS, and the faults real hosts add (rate
limits, HTML error pages, truncated JSON, caches that ignore the query string, a store that changes
during a scan). It listens on loopback only: the admin routes under /_sandbox have no auth at all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import gc
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import random
import re
import signal
import ssl
import sys
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from multidict import MultiMapping

from domain.validation import MAX_TEXT_LENGTH, InvalidCustomerRecord, validate_customer
from infrastructure.support.config import is_loopback
from infrastructure.support.loop_thread import LoopThread

DEFAULT_CONSUMER_KEY = "ck_sandbox_0123456789abcdef"
DEFAULT_CONSUMER_SECRET = "cs_sandbox_0123456789abcdef"  # noqa: S105 - a sandbox-only credential, public by design

CUSTOMERS_PATH = "/wp-json/wc/v3/customers"
MAX_PER_PAGE = 100
OAUTH_WINDOW_SECONDS = 15 * 60
# Nonces live for the timestamp window; past this many the oldest go first, so memory stays bounded.
MAX_REMEMBERED_NONCES = 200_000
# The site's timezone setting is a manual offset ("UTC+1"), so local dates need no DST tables.
SITE_UTC_OFFSET_SECONDS = 3600
SITE_ROLES = ("administrator", "editor", "author", "contributor", "subscriber", "customer", "shop_manager")
ORDERBY_VALUES = ("id", "include", "name", "registered_date")
_FREEZE_FROM = 10_000

logger = structlog.get_logger("wcsync.sandbox")


@dataclass(frozen=True)
class Faults:
    """What the host in front of the store does wrong, each seeded so a run can be repeated."""

    latency_ms: float = 0.0
    rate_limit: float = 0.0
    error_rate: float = 0.0
    html_rate: float = 0.0
    truncated_rate: float = 0.0
    slow_rate: float = 0.0
    slow_ms: float = 2000.0
    repeat_last_page: bool = False
    churn_every: int = 0

    def __post_init__(self) -> None:
        # Each message starts with the field's name: the CLI names it as its option.
        for name in ("error_rate", "html_rate", "truncated_rate", "slow_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {_shown(value)}")
        for name, high in (
            ("latency_ms", MAX_SANDBOX_DELAY_MS),
            ("slow_ms", MAX_SANDBOX_DELAY_MS),
            ("rate_limit", MAX_SANDBOX_RATE_LIMIT),
        ):
            _check_number(name, getattr(self, name), high, whole=False)
        _check_number("churn_every", self.churn_every, MAX_SANDBOX_COUNT)


# The sandbox's own bounds (its flags and SandboxConfig): a store of more customers than this is no test,
# and would eat the machine's memory first (each customer is a few KB, generated up front).
MAX_SANDBOX_CUSTOMERS = 5_000_000
MAX_SANDBOX_COUNT = 1_000_000_000
MAX_SANDBOX_DELAY_MS = 600_000  # ten minutes
MAX_SANDBOX_RATE_LIMIT = 1_000_000.0


def _shown(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 30 else f"{text[:27]}..."


def _check_number(name: str, value: Any, high: float, whole: bool = True) -> None:
    """ValueError "NAME must be ..." (the CLI names it as its option) unless 0 <= value <= high, finite."""
    number = isinstance(value, int) or (not whole and isinstance(value, float))
    if isinstance(value, bool) or not number or not (0 <= value <= high):
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{name} must be {kind} from 0 to {high:,.0f}, got {_shown(value)}")


@dataclass(frozen=True)
class SandboxConfig:
    customers: int = 797
    invalid: int = 0
    other_roles: int = 0
    seed: int = 42
    consumer_key: str = DEFAULT_CONSUMER_KEY
    consumer_secret: str = DEFAULT_CONSUMER_SECRET
    faults: Faults = field(default_factory=Faults)
    tls: bool = False

    def __post_init__(self) -> None:
        for name in ("customers", "invalid", "other_roles"):
            _check_number(name, getattr(self, name), MAX_SANDBOX_CUSTOMERS)

    def __repr__(self) -> str:
        # The secret stays out of logs and tracebacks.
        return (
            f"SandboxConfig(customers={self.customers}, invalid={self.invalid}, "
            f"other_roles={self.other_roles}, seed={self.seed}, faults={self.faults!r}, tls={self.tls})"
        )


@dataclass
class SandboxStats:
    """What the store front has served (admin requests are not counted)."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    rate_limited: int = 0
    max_per_second: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": {str(status): count for status, count in sorted(self.by_status.items())},
            "rate_limited": self.rate_limited,
            "max_per_second": self.max_per_second,
        }


@dataclass
class RunningSandbox:
    url: str
    consumer_key: str
    consumer_secret: str
    store: SandboxStore
    ca_file: str | None = None

    def __repr__(self) -> str:
        return f"RunningSandbox(url={self.url!r}, ca_file={self.ca_file!r})"


# --------------------------------------------------------------------------------------------------
# Generated customers


@dataclass(frozen=True)
class _Country:
    code: str
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    # city, state, postcodes
    cities: tuple[tuple[str, str, tuple[str, ...]], ...]
    streets: tuple[str, ...]
    phone_prefix: str


_COUNTRIES: tuple[_Country, ...] = (
    _Country(
        "US",
        ("John", "Mary", "Ashley", "Michael", "Jennifer", "Zoë", "José", "Renée"),
        ("Smith", "Johnson", "O'Brien", "García", "Nguyen", "Williams"),
        (
            ("Portland", "OR", ("97201", "97214", "97232")),
            ("Austin", "TX", ("78701", "78704")),
            ("Brooklyn", "NY", ("11201", "11215")),
        ),
        ("Main St", "Oak Avenue", "Broadway", "Elm Street"),
        "+1 503",
    ),
    _Country(
        "DE",
        ("Jürgen", "Jörg", "Anna", "Lukas", "Sophie", "Günther"),
        ("Müller", "Schröder", "Weiß", "Becker", "Groß", "Schäfer"),
        (
            ("Berlin", "BE", ("10115", "10245")),
            ("München", "BY", ("80331", "80469")),
            ("Köln", "NW", ("50667", "50733")),
        ),
        ("Hauptstraße", "Schloßallee", "Bahnhofstraße", "Gartenweg"),
        "+49 30",
    ),
    _Country(
        "FR",
        ("Émilie", "François", "Anaïs", "Chloé", "Hélène", "Jérôme"),
        ("Lefèvre", "Dubois", "Moreau", "Girard", "Fontaine", "Rousseau"),
        (
            ("Paris", "", ("75003", "75011")),
            ("Lyon", "", ("69001", "69007")),
            ("Besançon", "", ("25000",)),
        ),
        ("rue de la Paix", "avenue des Champs-Élysées", "boulevard Saint-Michel", "rue Lépic"),
        "+33 1",
    ),
    _Country(
        "NO",
        ("Øystein", "Søren", "Ingrid", "Bjørn", "Åse", "Kari"),
        ("Hansen", "Johansen", "Østby", "Brøndbo", "Aasen", "Lie"),
        (("Oslo", "", ("0150", "0561")), ("Tromsø", "", ("9008",)), ("Bergen", "", ("5003", "5015"))),
        ("Storgata", "Kirkeveien", "Bygdøy allé", "Skøyen vei"),
        "+47",
    ),
    _Country(
        "PL",
        ("Łukasz", "Małgorzata", "Paweł", "Zofia", "Wojciech", "Agnieszka"),
        ("Kowalski", "Wiśniewska", "Łęcki", "Nowak", "Wójcik", "Żak"),
        (("Kraków", "", ("30-001", "31-150")), ("Łódź", "", ("90-001",)), ("Gdańsk", "", ("80-850",))),
        ("ul. Długa", "ul. Świętojańska", "ul. Łąkowa", "al. Jerozolimskie"),
        "+48 12",
    ),
    _Country(
        "CN",
        ("伟", "芳", "娜", "敏", "静", "强"),
        ("李", "王", "张", "刘", "陈", "杨"),
        (
            ("北京市", "CN11", ("100000", "100020")),
            ("上海市", "CN31", ("200000",)),
            ("深圳市", "CN44", ("518000",)),
        ),
        ("长安街", "南京路", "深南大道", "人民路"),
        "+86 10",
    ),
    _Country(
        "JP",
        ("翔太", "陽菜", "Hiroshi", "Yuki", "さくら"),
        ("佐藤", "鈴木", "Tanaka", "高橋"),
        (("東京都", "JP13", ("100-0001", "150-0001")), ("大阪市", "JP27", ("530-0001",))),
        ("銀座", "1-2-3 Shibuya", "梅田"),
        "+81 3",
    ),
    _Country(
        "BR",
        ("João", "Ana", "Luíza", "Thiago", "Conceição"),
        ("Silva", "Gonçalves", "Araújo", "Lima", "Conceição"),
        (("São Paulo", "SP", ("01310-100", "04538-132")), ("Belém", "PA", ("66010-000",))),
        ("Avenida Paulista", "Rua Augusta", "Praça da Sé"),
        "+55 11",
    ),
    _Country(
        "GB",
        ("Oliver", "Amelia", "Siobhán", "Harry", "Isla"),
        ("Smith", "Jones", "Taylor", "O'Neill", "Ní Bhriain"),
        (("London", "", ("SW1A 1AA", "EC1A 1BB")), ("Manchester", "", ("M1 1AE",))),
        ("High Street", "Church Road", "Station Road"),
        "+44 20",
    ),
    _Country(
        "ES",
        ("María", "José", "Íñigo", "Begoña", "Sofía"),
        ("García", "Fernández", "Muñoz", "Peña", "Ibáñez"),
        (("Madrid", "M", ("28001", "28013")), ("A Coruña", "C", ("15001",))),
        ("Calle Mayor", "Avenida de España", "Plaza del Castillo"),
        "+34 91",
    ),
)

_COMPANIES = (
    "",
    "",
    "",
    "",
    "Acme GmbH",
    "Müller & Söhne",
    "Café Østerbro",
    "北京科技有限公司",
    "Blue Fox Ltd",
)
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "shop.example")
_ADDRESS_KEYS = (
    "first_name",
    "last_name",
    "company",
    "address_1",
    "address_2",
    "city",
    "state",
    "postcode",
    "country",
)
_MIN_CREATED = 1_451_606_400  # 2016-01-01T00:00:00Z
_SPAN = 8 * 365 * 86_400
_INVALID_KINDS = ("bad email", "wrong type", "oversized field", "bad date", "billing not an object")


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in ascii_name.lower() if ch.isalnum())


_SLUGS: dict[str, str] = {
    name: _slug(name) for country in _COUNTRIES for name in (*country.first_names, *country.last_names)
}


_DAYS: dict[int, str] = {}
_CLOCK: list[str] = []


def _gmt(timestamp: float) -> str:
    # strftime for each of 400,000 dates was a third of generate_customers' time: days repeat and a day has
    # only 86,400 clock readings, so both are looked up.
    if not _CLOCK:
        _CLOCK.extend(f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60))
    day, seconds = divmod(int(timestamp), 86_400)
    prefix = _DAYS.get(day)
    if prefix is None:
        prefix = _DAYS[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    return prefix + _CLOCK[seconds]


def _local(timestamp: float) -> str:
    return _gmt(timestamp + SITE_UTC_OFFSET_SECONDS)


def empty_address(section: str) -> dict[str, str]:
    keys = (*_ADDRESS_KEYS, "email", "phone") if section == "billing" else (*_ADDRESS_KEYS, "phone")
    return dict.fromkeys(keys, "")


def _make_customer(
    rng: random.Random, customer_id: int, created: int, role: str, next_meta_id: int
) -> tuple[dict[str, Any], int]:
    """One realistic customer; returns it and the next free meta id."""
    country = _COUNTRIES[int(rng.random() * len(_COUNTRIES))]
    first = country.first_names[int(rng.random() * len(country.first_names))]
    last = country.last_names[int(rng.random() * len(country.last_names))]
    local_part = f"{_SLUGS[first] or 'user'}.{_SLUGS[last] or 'customer'}.{customer_id}"
    email = f"{local_part}@{_EMAIL_DOMAINS[customer_id % len(_EMAIL_DOMAINS)]}"
    city, state, postcodes = country.cities[int(rng.random() * len(country.cities))]
    street = country.streets[int(rng.random() * len(country.streets))]
    roll = rng.random()
    phone = f"{country.phone_prefix} {int(rng.random() * 9_000_000) + 1_000_000}"
    billing = {
        "first_name": first,
        "last_name": last,
        "company": _COMPANIES[int(roll * 97) % len(_COMPANIES)],
        "address_1": f"{int(roll * 211) + 1} {street}",
        "address_2": "" if roll < 0.7 else f"Apt {int(roll * 1000) % 40 + 1}",
        "city": city,
        "state": state,
        "postcode": postcodes[int(roll * 13) % len(postcodes)],
        "country": country.code,
        "email": email if roll > 0.1 else f"billing.{local_part}@example.com",
        "phone": phone,
    }
    shipping_roll = rng.random()
    if shipping_roll < 0.6:
        shipping = {key: billing[key] for key in (*_ADDRESS_KEYS, "phone")}
    elif shipping_roll < 0.75:
        shipping = dict(billing, address_1=f"{int(shipping_roll * 300)} {country.streets[0]}", company="")
        del shipping["email"]
    else:
        shipping = empty_address("shipping")
    modified: int | None = created + (0 if roll < 0.3 else int(rng.random() * 400 * 86_400))
    if 0.5 < roll < 0.505:
        modified = None  # the API documents null dates; a few old accounts really have them
    meta: list[dict[str, Any]] = []
    if roll > 0.4:
        meta.append({"id": next_meta_id, "key": "wc_last_active", "value": str(created - created % 86_400)})
        next_meta_id += 1
    if roll > 0.8:
        meta.append(
            {
                "id": next_meta_id,
                "key": "preferences",
                "value": {"newsletter": roll > 0.9, "language": country.code},
            }
        )
        next_meta_id += 1
    if roll > 0.95:
        meta.append({"id": next_meta_id, "key": "_tags", "value": ["vip", "wholesale"]})
        next_meta_id += 1
    avatar = hashlib.md5(email.encode(), usedforsecurity=False).hexdigest()
    record: dict[str, Any] = {
        "id": customer_id,
        "date_created": _local(created),
        "date_created_gmt": _gmt(created),
        "date_modified": None if modified is None else _local(modified),
        "date_modified_gmt": None if modified is None else _gmt(modified),
        "email": email,
        "first_name": first,
        "last_name": last,
        "role": role,
        "username": local_part,
        "billing": billing,
        "shipping": shipping,
        "is_paying_customer": roll > 0.35,
        "avatar_url": f"https://secure.gravatar.com/avatar/{avatar}?s=96&d=mm&r=g",
        "meta_data": meta,
    }
    return record, next_meta_id


def _break_rule(record: dict[str, Any], kind: str) -> None:
    if kind == "bad email":
        record["email"] = record["email"].replace("@", " (at) ")
    elif kind == "wrong type":
        record["first_name"] = 10_000 + record["id"]
    elif kind == "oversized field":
        record["last_name"] = "Ø" * 1_200
    elif kind == "bad date":
        record["date_created"] = "0000-00-00 00:00:00"  # MySQL's zero date, as old imports left it
    else:
        record["billing"] = []  # PHP's empty array serialises as a JSON list


def generate_customers(count: int, seed: int, invalid: int = 0, other_roles: int = 0) -> list[dict[str, Any]]:
    """`count` customers (role "customer") plus `other_roles` other users, sorted by id, deterministic.

    `invalid` of the customers break one rule of domain.validation each, the rules taken in turn.
    """
    if count < 0 or other_roles < 0 or not 0 <= invalid <= count:
        raise ValueError("need 0 <= invalid <= count and non-negative counts")
    # Hundreds of thousands of small dicts would trigger the cyclic collector again and again for nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _generate(count, seed, invalid, other_roles)
    finally:
        if collecting:
            gc.enable()


def _generate(count: int, seed: int, invalid: int, other_roles: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    total = count + other_roles
    others = set(rng.sample(range(total), other_roles))
    records: list[dict[str, Any]] = []
    customer_id = rng.randrange(2, 40)  # the first ids belong to the site's administrators
    created = _MIN_CREATED + rng.randrange(86_400 * 30)
    mean_gap = max(1, _SPAN // max(total, 1))
    meta_id = 1_000
    for position in range(total):
        role = "customer"
        if position in others:
            role = "subscriber" if rng.random() < 0.7 else "shop_manager"
        record, meta_id = _make_customer(rng, customer_id, created, role, meta_id)
        records.append(record)
        step = rng.random()
        # Ids are not contiguous: deleted users, and orders/posts sharing the auto-increment in old imports.
        customer_id += 1 if step < 0.8 else 2 + int(step * 50) % 9
        created += 1 + int(step * 2 * mean_gap)
    customer_positions = [index for index in range(total) if index not in others]
    for turn, position in enumerate(sorted(rng.sample(customer_positions, invalid))):
        _break_rule(records[position], _INVALID_KINDS[turn % len(_INVALID_KINDS)])
    return records


# --------------------------------------------------------------------------------------------------
# The store


def _display_name(record: Mapping[str, Any]) -> str:
    name = f"{record.get('first_name') or ''} {record.get('last_name') or ''}".strip()
    return name or str(record.get("username") or "")


def _tie_breaker(customer_id: int, start: int) -> int:
    # MySQL returns rows with equal sort keys in whatever order the plan gives, which differs with LIMIT/OFFSET.
    mixed = (customer_id ^ (start * 0x9E3779B1)) & 0xFFFFFFFF
    mixed = ((mixed ^ (mixed >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    mixed = ((mixed ^ (mixed >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
    return mixed ^ (mixed >> 16)


class SandboxStore:
    """The store's users, in memory. One lock guards everything: the admin API and a test thread may write."""

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]],
        seed: int = 42,
        base_url: str = "http://127.0.0.1",
        *,
        copy_records: bool = True,
    ) -> None:
        """`copy_records=False` hands the records over to the store (no deep copy: 100k records take seconds)."""
        self._lock = threading.RLock()
        self._records: dict[int, dict[str, Any]] = {}
        for record in records:
            owned = copy.deepcopy(dict(record)) if copy_records else record
            self._records[int(owned["id"])] = owned  # type: ignore[assignment]
        self._rng = random.Random(seed ^ 0x5EED)
        self._base_url = base_url
        self._encoded: dict[int, bytes] = {}
        self._ids_by_role: dict[str, list[int]] = {}
        self._next_id = max(self._records, default=1) + 1
        self._next_meta_id = 1 + max(
            (entry["id"] for r in self._records.values() for entry in _meta_entries(r)), default=1_000
        )
        self._stats = SandboxStats()

    # -- reading

    def customer_ids(self, role: str = "customer") -> list[int]:
        with self._lock:
            return list(self._ids(role))

    def get(self, customer_id: int) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(customer_id)
            return None if record is None else copy.deepcopy(record)

    @property
    def stats(self) -> SandboxStats:
        with self._lock:
            return SandboxStats(
                self._stats.requests,
                dict(self._stats.by_status),
                self._stats.rate_limited,
                self._stats.max_per_second,
            )

    # -- writing

    def create(self, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A new user at the end of the id range; fields of `record` (all but id) override generated ones."""
        with self._lock:
            customer_id = self._next_id
            self._next_id += 1 + (self._rng.random() < 0.2)
            now = int(time.time())
            new, self._next_meta_id = _make_customer(
                self._rng, customer_id, now, "customer", self._next_meta_id
            )
            new.update(
                date_modified=new["date_created"],
                date_modified_gmt=new["date_created_gmt"],
                is_paying_customer=False,
            )
            if record:
                new.update(copy.deepcopy({key: value for key, value in record.items() if key != "id"}))
                self._number_meta(new)
            self._records[customer_id] = new
            self._ids_by_role.clear()
            return copy.deepcopy(new)

    def update(self, customer_id: int, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply changes like WooCommerce's PUT: billing/shipping objects merge, other fields replace."""
        with self._lock:
            record = self._records.get(customer_id)
            if record is None:
                raise KeyError(customer_id)
            for key, value in copy.deepcopy(dict(changes)).items():
                if key == "id":
                    continue
                current = record.get(key)
                if key in ("billing", "shipping") and isinstance(value, dict) and isinstance(current, dict):
                    current.update(value)
                else:
                    record[key] = value
            self._number_meta(record)
            self._touch(record)
            if "role" in changes:
                self._ids_by_role.clear()
            return copy.deepcopy(record)

    def delete(self, customer_id: int) -> None:
        with self._lock:
            if self._records.pop(customer_id, None) is None:
                raise KeyError(customer_id)
            self._encoded.pop(customer_id, None)
            self._ids_by_role.clear()

    def fix_invalid(self) -> int:
        """Repair every record that breaks a validation rule; returns how many were repaired."""
        with self._lock:
            fixed = 0
            for customer_id, record in self._records.items():
                if _repair(record, len(self._encode(customer_id))):
                    self._touch(record)
                    fixed += 1
            if fixed:
                self._ids_by_role.clear()
            return fixed

    def churn(self, rng: random.Random) -> tuple[int, int | None, int | None]:
        """One create, one edit, one delete among customers, as a live store does during a scan."""
        with self._lock:
            created = self.create()["id"]
            ids = [i for i in self._ids("customer") if i != created]
            edited = deleted = None
            if ids:
                edited = ids[int(rng.random() * len(ids))]
                phone = f"+1 555 {int(rng.random() * 9_000_000) + 1_000_000}"
                self.update(edited, {"billing": {"phone": phone}})
                candidates = [i for i in ids if i != edited]
                if candidates:
                    deleted = candidates[int(rng.random() * len(candidates))]
                    self.delete(deleted)
            return created, edited, deleted

    # -- serving (used by the store front)

    def set_base_url(self, base_url: str) -> None:
        with self._lock:
            self._base_url = base_url.rstrip("/")
            self._encoded.clear()

    def encoded_list(self, ids: Iterable[int]) -> bytes:
        with self._lock:
            # An id deleted since the query was answered (another thread) is left out, as a live store would.
            return b"[" + b",".join([self._encode(i) for i in ids if i in self._records]) + b"]"

    def encoded_one(self, customer_id: int) -> bytes | None:
        with self._lock:
            return self._encode(customer_id) if customer_id in self._records else None

    def api_object(self, customer_id: int) -> dict[str, Any] | None:
        with self._lock:
            record = self._records.get(customer_id)
            return None if record is None else self._with_links(record)

    def select(self, query: ListQuery) -> list[int]:
        """Ids matching the query's filters, in the query's order (no paging)."""
        with self._lock:
            ids = self._ids(query.role)
            if query.include:
                wanted = set(query.include)
                ids = [i for i in ids if i in wanted]
            elif query.exclude:
                unwanted = set(query.exclude)
                ids = [i for i in ids if i not in unwanted]
            if query.email is not None:
                email = query.email.casefold()
                ids = [i for i in ids if str(self._records[i].get("email", "")).casefold() == email]
            if query.search:
                needle = query.search.strip("*").casefold()
                ids = [i for i in ids if needle in self._search_text(i)]
            if query.orderby == "id" or (query.orderby == "include" and not query.include):
                return list(reversed(ids)) if query.order == "desc" else ids
            if query.orderby == "include":
                position = {value: index for index, value in enumerate(query.include)}
                return sorted(ids, key=position.__getitem__, reverse=query.order == "desc")
            start = query.start
            ordered = sorted(ids, key=lambda i: _tie_breaker(i, start))
            if query.orderby == "name":
                return sorted(
                    ordered, key=lambda i: _display_name(self._records[i]).casefold(), reverse=query.desc
                )
            return sorted(
                ordered, key=lambda i: str(self._records[i].get("date_created_gmt")), reverse=query.desc
            )

    def note_request(self, status: int, accepted_in_window: int | None) -> None:
        with self._lock:
            stats = self._stats
            stats.requests += 1
            stats.by_status[status] = stats.by_status.get(status, 0) + 1
            if status == 429:
                stats.rate_limited += 1
            if accepted_in_window is not None and accepted_in_window > stats.max_per_second:
                stats.max_per_second = accepted_in_window

    # -- internals (lock held)

    def _ids(self, role: str) -> list[int]:
        ids = self._ids_by_role.get(role)
        if ids is None:
            if role == "all":
                ids = sorted(self._records)
            else:
                ids = sorted(i for i, r in self._records.items() if r.get("role") == role)
            self._ids_by_role[role] = ids
        return ids

    def _search_text(self, customer_id: int) -> str:
        record = self._records[customer_id]
        parts = (record.get("username"), record.get("email"), _display_name(record))
        return "\n".join(str(part) for part in parts if part).casefold()

    def _with_links(self, record: dict[str, Any]) -> dict[str, Any]:
        collection = f"{self._base_url}{CUSTOMERS_PATH}"
        links = {
            "self": [{"href": f"{collection}/{record.get('id')}"}],
            "collection": [{"href": collection}],
        }
        return {**record, "_links": links}

    def _encode(self, customer_id: int) -> bytes:
        encoded = self._encoded.get(customer_id)
        if encoded is None:
            # WordPress's wp_json_encode escapes non-ASCII characters; so does json.dumps by default.
            obj = self._with_links(self._records[customer_id])
            encoded = json.dumps(obj, separators=(",", ":")).encode("ascii")
            self._encoded[customer_id] = encoded
        return encoded

    def _touch(self, record: dict[str, Any]) -> None:
        """Advance date_modified, strictly: two edits in one second must still be told apart."""
        now = int(time.time())
        previous = record.get("date_modified_gmt")
        if isinstance(previous, str):
            try:
                parsed = datetime.strptime(previous, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
                now = max(now, int(parsed.timestamp()) + 1)
            except ValueError:
                pass
        record["date_modified"] = _local(now)
        record["date_modified_gmt"] = _gmt(now)
        self._encoded.pop(record["id"], None)

    def _number_meta(self, record: dict[str, Any]) -> None:
        for entry in _meta_entries(record, numbered=False):
            if not isinstance(entry.get("id"), int):
                entry["id"] = self._next_meta_id
                self._next_meta_id += 1
        self._encoded.pop(record["id"], None)


def _meta_entries(record: Mapping[str, Any], numbered: bool = True) -> list[dict[str, Any]]:
    meta = record.get("meta_data")
    if not isinstance(meta, list):
        return []
    return [e for e in meta if isinstance(e, dict) and (not numbered or isinstance(e.get("id"), int))]


def _repair(record: dict[str, Any], encoded_size: int) -> bool:
    """Make `record` pass validate_customer, field by field; True when anything changed."""
    changed = False
    for _ in range(100):
        try:
            validate_customer(record, encoded_size)
            return changed
        except InvalidCustomerRecord as error:
            _repair_field(record, error.field)
            encoded_size = len(json.dumps(record))
            changed = True
    raise RuntimeError(f"could not repair customer {record.get('id')!r}")


def _repair_field(record: dict[str, Any], name: str) -> None:
    if name == "email":
        record["email"] = f"customer.{record['id']}@example.com"
    elif name in ("billing", "shipping"):
        record[name] = empty_address(name)
    elif name.startswith("date_"):
        gmt_name = name if name.endswith("_gmt") else f"{name}_gmt"
        gmt = record.get(gmt_name)
        try:
            stamp = datetime.strptime(str(gmt), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
        except ValueError:
            record[name] = None
        else:
            record[name] = _gmt(stamp) if name.endswith("_gmt") else _local(stamp)
    elif name == "is_paying_customer":
        record[name] = bool(record.get(name))
    elif name == "meta_data" or name == "record":
        record["meta_data"] = []
    elif name.startswith("meta_data["):
        index = int(name[len("meta_data[") : -1])
        del record["meta_data"][index]
    elif name == "id":
        raise RuntimeError("a record without a valid id cannot be repaired")
    else:
        section, _, key = name.rpartition(".")
        container = record[section] if section else record
        value = container.get(key)
        container[key] = str(value)[:MAX_TEXT_LENGTH] if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------------------------------
# Query parameters, as WordPress checks them


@dataclass(frozen=True)
class ListQuery:
    page: int = 1
    per_page: int = 10
    offset: int | None = None
    order: str = "asc"
    orderby: str = "name"
    role: str = "customer"
    include: tuple[int, ...] = ()
    exclude: tuple[int, ...] = ()
    email: str | None = None
    search: str | None = None
    fields: tuple[str, ...] | None = None

    @property
    def start(self) -> int:
        return self.offset if self.offset is not None else (self.page - 1) * self.per_page

    @property
    def desc(self) -> bool:
        return self.order == "desc"


class _InvalidParams(Exception):
    def __init__(self, problems: dict[str, str], details: dict[str, dict[str, Any]]) -> None:
        super().__init__(", ".join(problems))
        self.problems = problems
        self.details = details


_INTEGER = re.compile(r"^[+-]?\d+$")


def _values(query: MultiMapping[str], name: str) -> list[str]:
    values: list[str] = list(query.getall(name, ()))
    values.extend(query.getall(f"{name}[]", ()))
    return values


def _csv(query: MultiMapping[str], name: str) -> list[str]:
    """The parameter's items: every value (``name`` and ``name[]``) split at commas, blanks dropped."""
    return [item.strip() for value in _values(query, name) for item in value.split(",") if item.strip()]


def _id_list(
    query: Any, name: str, problems: dict[str, str], details: dict[str, dict[str, Any]]
) -> tuple[int, ...]:
    items = _csv(query, name)
    for index, item in enumerate(items):
        if not _INTEGER.match(item):
            message = f"{name}[{index}] is not of type integer."
            problems[name] = message
            details[name] = {
                "code": "rest_invalid_type",
                "message": message,
                "data": {"param": f"{name}[{index}]"},
            }
            return ()
    return tuple(int(item) for item in items)


def _parse_list_query(query: MultiMapping[str]) -> ListQuery:
    problems: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}

    def integer(name: str, default: int | None, minimum: int | None, maximum: int | None) -> int | None:
        raw = query.get(name)
        if raw is None:
            return default
        if not _INTEGER.match(raw.strip()):
            message = f"{name} is not of type integer."
            problems[name] = message
            details[name] = {"code": "rest_invalid_type", "message": message, "data": {"param": name}}
            return default
        value = int(raw)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            if maximum is None:
                message = f"{name} must be greater than or equal to {minimum}"
            else:
                message = f"{name} must be between {minimum} (inclusive) and {maximum} (inclusive)"
            problems[name] = message
            details[name] = {"code": "rest_out_of_bounds", "message": message, "data": None}
            return default
        return value

    def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = query.get(name)
        if raw is None:
            return default
        if raw not in allowed:
            listed = (
                ", ".join(allowed[:-1]) + f", and {allowed[-1]}"
                if len(allowed) > 2
                else " and ".join(allowed)
            )
            message = f"{name} is not one of {listed}."
            problems[name] = message
            details[name] = {"code": "rest_not_in_enum", "message": message, "data": None}
            return default
        return str(raw)

    page = integer("page", 1, 1, None)
    per_page = integer("per_page", 10, 1, MAX_PER_PAGE)
    offset = integer("offset", None, None, None)
    order = choice("order", "asc", ("asc", "desc"))
    orderby = choice("orderby", "name", ORDERBY_VALUES)
    role = choice("role", "customer", ("all", *SITE_ROLES))
    include = _id_list(query, "include", problems, details)
    exclude = _id_list(query, "exclude", problems, details)
    if problems:
        raise _InvalidParams(problems, details)
    fields_raw = _csv(query, "_fields")
    return ListQuery(
        page=page or 1,
        per_page=per_page or 10,
        offset=abs(offset) if offset is not None else None,
        order=order,
        orderby=orderby,
        role=role,
        include=include,
        exclude=exclude,
        email=query.get("email"),
        search=query.get("search") or None,
        fields=tuple(fields_raw) or None,
    )


def _filter_fields(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """WordPress's rest_filter_response_fields: top-level keys, and nested ones as `billing.city`."""
    result: dict[str, Any] = {}
    for name in fields:
        source: Any = obj
        target = result
        parts = name.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(source, dict) or part not in source:
                break
            source = source[part]
            if depth == len(parts) - 1:
                target[part] = copy.deepcopy(source)
            else:
                nested = target.setdefault(part, {})
                if not isinstance(nested, dict):
                    break
                target = nested
    return result


# --------------------------------------------------------------------------------------------------
# Responses


def _wc_error(status: int, code: str, message: str, **data: Any) -> web.Response:
    body = {"code": code, "message": message, "data": {"status": status, **data}}
    return web.json_response(body, status=status)


_NOT_FOUND_HTML = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="UTF-8"><title>Page not found &#8211; Sandbox Store</title>'
    "</head><body><h1>Oops! That page can&#8217;t be found.</h1></body></html>"
)
_ERROR_PAGES = {
    500: "<html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1>"
    "<p>There has been a critical error on this website.</p></body></html>",
    502: "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>"
    "<hr><center>nginx</center></body></html>",
    503: "<html><head><title>503 Service Unavailable</title></head><body><h1>Service Unavailable</h1>"
    "<p>The server is temporarily unable to service your request.</p></body></html>",
}
_HTML_200_PAGES = (
    "<!DOCTYPE html><html><head><title>Maintenance</title></head><body>"
    "<p>Briefly unavailable for scheduled maintenance. Check back in a minute.</p></body></html>",
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head><body>"
    "<h1>Checking your browser before accessing the site.</h1></body></html>",
)
_RATE_LIMIT_HTML = (
    "<html><head><title>429 Too Many Requests</title></head><body><center><h1>429 Too Many Requests</h1>"
    "</center><hr><center>nginx</center></body></html>"
)


def _html(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", charset="UTF-8")


def _enc(value: str) -> str:
    return quote(value, safe="~")


def _parse_oauth_header(value: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for match in re.finditer(r'([A-Za-z0-9_]+)="([^"]*)"', value):
        pairs.append((unquote(match.group(1)), unquote(match.group(2))))
    return pairs


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# --------------------------------------------------------------------------------------------------
# The store front: faults, auth, routes


class _StoreFront:
    def __init__(self, store: SandboxStore, config: SandboxConfig) -> None:
        self.store = store
        self.config = config
        self.faults = config.faults
        self.rng = random.Random(config.seed)
        self.churn_rng = random.Random(config.seed + 1)
        self.nonces: OrderedDict[str, float] = OrderedDict()
        self.accepted: deque[float] = deque()
        self.list_requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        response, in_window = await self._respond(request)
        self.store.note_request(response.status, in_window)
        # The path only: the query carries oauth_consumer_key and, over TLS, possibly the secret.
        logger.debug(
            "sandbox request served",
            method=request.method,
            path=request.path,
            status=response.status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return response

    async def _respond(self, request: web.Request) -> tuple[web.Response, int | None]:
        faults = self.faults
        in_window = self._accept(time.monotonic())
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if in_window is None:
            return self._rate_limited(), None
        if faults.slow_rate > 0 and self.rng.random() < faults.slow_rate:
            await asyncio.sleep(faults.slow_ms / 1000)
        if faults.error_rate > 0 and self.rng.random() < faults.error_rate:
            status = (500, 502, 503)[int(self.rng.random() * 3)]
            return _html(status, _ERROR_PAGES[status]), in_window
        if faults.html_rate > 0 and self.rng.random() < faults.html_rate:
            return _html(200, _HTML_200_PAGES[int(self.rng.random() * 2)]), in_window
        response = self._dispatch(request)
        if faults.truncated_rate > 0 and self.rng.random() < faults.truncated_rate and response.status == 200:
            body = response.body
            if isinstance(body, bytes) and len(body) > 1:
                cut = 1 + int(self.rng.random() * (len(body) - 1))
                truncated = web.Response(body=body[:cut], status=200, content_type="application/json")
                truncated.headers.extend(
                    (k, v) for k, v in response.headers.items() if k.startswith("X-WP") or k == "Link"
                )
                return truncated, in_window
        return response, in_window

    def _accept(self, now: float) -> int | None:
        """Count the request into the 1-second window; None when the rate limit refuses it."""
        window = self.accepted
        while window and window[0] <= now - 1.0:
            window.popleft()
        limit = self.faults.rate_limit
        if limit > 0 and len(window) >= limit:
            return None
        window.append(now)
        return len(window)

    def _rate_limited(self) -> web.Response:
        now = time.monotonic()
        wait = self.accepted[0] + 1.0 - now if self.accepted else 1.0
        headers = {"Retry-After": str(max(1, math.ceil(wait)))}
        if self.rng.random() < 0.5:
            response = _html(429, _RATE_LIMIT_HTML)
        else:
            response = web.json_response(
                {"code": "too_many_requests", "message": "Rate limit exceeded.", "data": {"status": 429}},
                status=429,
            )
        response.headers.update(headers)
        return response

    def _dispatch(self, request: web.Request) -> web.Response:
        path = request.path
        if not (path == "/wp-json" or path.startswith("/wp-json/")):
            return _html(404, _NOT_FOUND_HTML)
        error, authenticated = self._authenticate(request)
        if error is not None:
            return error
        if request.method in ("GET", "HEAD"):
            if path.rstrip("/") == CUSTOMERS_PATH:
                return self._list(request, authenticated)
            match = re.fullmatch(re.escape(CUSTOMERS_PATH) + r"/(\d+)/?", path)
            if match:
                return self._item(request, int(match.group(1)), authenticated)
        return _wc_error(404, "rest_no_route", "No route was found matching the URL and request method.")

    # -- authentication

    def _authenticate(self, request: web.Request) -> tuple[web.Response | None, bool]:
        """(error, authenticated). No credentials at all is not an error here: permissions refuse later."""
        if self.config.tls:
            return self._basic(request)
        return self._oauth(request)

    def _auth_error(self, message: str) -> tuple[web.Response, bool]:
        return _wc_error(401, "woocommerce_rest_authentication_error", message), False

    def _basic(self, request: web.Request) -> tuple[web.Response | None, bool]:
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None, False
            key, _, secret = decoded.partition(":")
        elif "consumer_key" in request.query and "consumer_secret" in request.query:
            key, secret = request.query["consumer_key"], request.query["consumer_secret"]
        else:
            return None, False
        if not _same(key, self.config.consumer_key):
            return self._auth_error("Consumer key is invalid.")
        if not _same(secret, self.config.consumer_secret):
            return self._auth_error("Consumer secret is invalid.")
        return None, True

    def _oauth(self, request: web.Request) -> tuple[web.Response | None, bool]:
        query_pairs = list(request.query.items())
        signed = [(k, v) for k, v in query_pairs if k != "oauth_signature"]
        params = {k: v for k, v in query_pairs if k.startswith("oauth_")}
        header = request.headers.get("Authorization", "")
        if header[:6].lower() == "oauth ":
            for key, value in _parse_oauth_header(header[6:]):
                if key == "realm":
                    continue
                params[key] = value
                if key != "oauth_signature":
                    signed.append((key, value))
        if not params:
            return None, False
        for name in (
            "oauth_consumer_key",
            "oauth_timestamp",
            "oauth_nonce",
            "oauth_signature",
            "oauth_signature_method",
        ):
            if not params.get(name):
                return self._auth_error(f"{name} parameter is missing")
        if not _same(params["oauth_consumer_key"], self.config.consumer_key):
            return self._auth_error("Consumer key is invalid.")
        digest = {"HMAC-SHA1": hashlib.sha1, "HMAC-SHA256": hashlib.sha256}.get(
            params["oauth_signature_method"]
        )
        if digest is None:
            return self._auth_error("Invalid signature - signature method is invalid.")
        scheme = "https" if self.config.tls else "http"
        host = request.host.lower()
        if host.endswith(":80") and scheme == "http":
            host = host[:-3]
        base_uri = f"{scheme}://{host}{request.raw_path.split('?', 1)[0]}"
        normalized = "&".join(f"{k}={v}" for k, v in sorted((_enc(k), _enc(v)) for k, v in signed))
        base_string = "&".join((request.method.upper(), _enc(base_uri), _enc(normalized)))
        signing_key = f"{self.config.consumer_secret}&".encode()
        expected = base64.b64encode(hmac.new(signing_key, base_string.encode(), digest).digest()).decode()
        if not _same(params["oauth_signature"], expected):
            return self._auth_error("Invalid signature - provided signature does not match.")
        now = time.time()
        try:
            timestamp = int(params["oauth_timestamp"])
        except ValueError:
            return self._auth_error("Invalid timestamp.")
        if abs(now - timestamp) > OAUTH_WINDOW_SECONDS:
            return self._auth_error("Invalid timestamp.")
        nonces = self.nonces
        while nonces:
            oldest, seen_at = next(iter(nonces.items()))
            if seen_at >= now - OAUTH_WINDOW_SECONDS and len(nonces) < MAX_REMEMBERED_NONCES:
                break
            del nonces[oldest]
        if params["oauth_nonce"] in nonces:
            return self._auth_error("Invalid nonce - nonce has already been used.")
        nonces[params["oauth_nonce"]] = now
        return None, True

    # -- routes

    def _list(self, request: web.Request, authenticated: bool) -> web.Response:
        try:
            query = _parse_list_query(request.query)
        except _InvalidParams as error:
            return _wc_error(
                400,
                "rest_invalid_param",
                f"Invalid parameter(s): {', '.join(error.problems)}",
                params=error.problems,
                details=error.details,
            )
        if not authenticated:
            return _wc_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        ordered = self.store.select(query)
        total = len(ordered)
        start = query.start
        window = ordered[start : start + query.per_page]
        repeating = self.faults.repeat_last_page
        if repeating and not window and total:
            last_start = (total - 1) // query.per_page * query.per_page
            window = ordered[last_start : last_start + query.per_page]
        if query.fields is None:
            body = self.store.encoded_list(window)
        else:
            objects = [self.store.api_object(i) for i in window]
            body = json.dumps([_filter_fields(o, query.fields) for o in objects if o is not None]).encode()
        total_pages = math.ceil(total / query.per_page)
        headers: dict[str, str] = {}
        if not repeating:
            headers["X-WP-Total"] = str(total)
            headers["X-WP-TotalPages"] = str(total_pages)
        links = []
        if query.page > 1:
            links.append(f'<{self._page_url(request, min(query.page - 1, max(total_pages, 1)))}>; rel="prev"')
        if repeating or total_pages > query.page:
            links.append(f'<{self._page_url(request, query.page + 1)}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        self._count_list_request()
        return web.Response(body=body, headers=headers, content_type="application/json", charset="UTF-8")

    def _item(self, request: web.Request, customer_id: int, authenticated: bool) -> web.Response:
        if not authenticated:
            return _wc_error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot view this resource.")
        fields = _csv(request.query, "_fields")
        if fields:
            obj = self.store.api_object(customer_id)
            body = None if obj is None else json.dumps(_filter_fields(obj, tuple(fields))).encode()
        else:
            body = self.store.encoded_one(customer_id)
        if body is None:
            return _wc_error(404, "wc_user_invalid_id", "Invalid user ID.")
        return web.Response(body=body, content_type="application/json", charset="UTF-8")

    def _page_url(self, request: web.Request, page: int) -> str:
        # Credentials stay out of links: a client re-signs every request anyway.
        kept = [
            (k, v)
            for k, v in request.query.items()
            if not k.startswith("oauth_") and k not in ("consumer_key", "consumer_secret", "page")
        ]
        kept.append(("page", str(page)))
        return f"{request.scheme}://{request.host}{request.path}?{urlencode(kept)}"

    def _count_list_request(self) -> None:
        every = self.faults.churn_every
        if every <= 0:
            return
        self.list_requests += 1
        if self.list_requests % every == 0:
            created, edited, deleted = self.store.churn(self.churn_rng)
            logger.debug("sandbox store churned", created=created, edited=edited, deleted=deleted)


# --------------------------------------------------------------------------------------------------
# Admin routes (sandbox only, no auth, no faults)


def _admin_routes(store: SandboxStore) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    async def body_object(request: web.Request) -> dict[str, Any] | None:
        if not request.can_read_body:
            return {}
        try:
            value = await request.json()
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    @routes.post("/_sandbox/fix-invalid")
    async def fix_invalid(request: web.Request) -> web.Response:
        return web.json_response({"fixed": store.fix_invalid()})

    @routes.post("/_sandbox/customers")
    async def create(request: web.Request) -> web.Response:
        record = await body_object(request)
        if record is None:
            return _wc_error(400, "rest_invalid_json", "Expected a JSON object.")
        created = store.create(record)
        return web.json_response(store.api_object(created["id"]), status=201)

    @routes.put(r"/_sandbox/customers/{customer_id:\d+}")
    async def update(request: web.Request) -> web.Response:
        changes = await body_object(request)
        if changes is None:
            return _wc_error(400, "rest_invalid_json", "Expected a JSON object.")
        try:
            updated = store.update(int(request.match_info["customer_id"]), changes)
        except KeyError:
            return _wc_error(404, "wc_user_invalid_id", "Invalid user ID.")
        return web.json_response(store.api_object(updated["id"]))

    @routes.delete(r"/_sandbox/customers/{customer_id:\d+}")
    async def delete(request: web.Request) -> web.Response:
        customer_id = int(request.match_info["customer_id"])
        try:
            store.delete(customer_id)
        except KeyError:
            return _wc_error(404, "wc_user_invalid_id", "Invalid user ID.")
        return web.json_response({"id": customer_id, "deleted": True})

    @routes.get("/_sandbox/stats")
    async def stats(request: web.Request) -> web.Response:
        return web.json_response(store.stats.as_dict())

    return routes


def build_app(store: SandboxStore, config: SandboxConfig) -> web.Application:
    app = web.Application()
    app.add_routes(_admin_routes(store))
    front = _StoreFront(store, config)
    app.router.add_route("*", "/{tail:.*}", front.handle)
    return app


# --------------------------------------------------------------------------------------------------
# Running it


def _write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, ::1 and localhost; returns (ca, cert, key)."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wcsync sandbox CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_file, cert_file, key_file


def _check_loopback(host: str) -> None:
    if not is_loopback(host):
        raise ValueError(
            f"the sandbox serves loopback addresses only (its admin routes have no auth), not {host!r}"
        )


@asynccontextmanager
async def start_sandbox(
    config: SandboxConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningSandbox]:
    """Generate the store, listen on host:port (0 = any free port), and yield once it accepts connections."""
    _check_loopback(host)
    records = generate_customers(config.customers, config.seed, config.invalid, config.other_roles)
    store = SandboxStore(records, seed=config.seed, copy_records=False)
    del records
    if config.customers + config.other_roles >= _FREEZE_FROM:
        # The store lives as long as the server: keep its millions of objects out of every later GC pass, or
        # a client in the same process (the benchmark) pays for scanning them on each full collection.
        # Small stores skip it: freezing also pins whatever cyclic garbage exists at that moment.
        gc.freeze()
    with tempfile.TemporaryDirectory(prefix="wcsync-sandbox-") as tls_dir:
        ssl_context: ssl.SSLContext | None = None
        ca_file: str | None = None
        if config.tls:
            ca_path, cert_path, key_path = _write_tls_files(Path(tls_dir))
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(cert_path, key_path)
            ca_file = str(ca_path)
        runner = web.AppRunner(build_app(store, config), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
            await site.start()
            bound_port = runner.addresses[0][1]
            url_host = f"[{host}]" if ":" in host else host
            url = f"{'https' if config.tls else 'http'}://{url_host}:{bound_port}"
            store.set_base_url(url)
            logger.info("sandbox listening", url=url, customers=config.customers, tls=config.tls)
            yield RunningSandbox(url, config.consumer_key, config.consumer_secret, store, ca_file)
        finally:
            await runner.cleanup()


class SandboxThread(LoopThread[RunningSandbox]):
    """Runs start_sandbox on its own event loop in a background thread, for synchronous code and tests."""

    def __init__(self, config: SandboxConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(lambda: start_sandbox(config, host, port), "the sandbox")


def serve_forever(config: SandboxConfig, host: str, port: int) -> None:
    """For `wcsync sandbox`: print one JSON line with the URL once listening, then serve until SIGINT/SIGTERM."""
    if not structlog.is_configured():
        # stdout carries exactly one line for whoever started us; logs go to stderr.
        structlog.configure(
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        )
    asyncio.run(_serve(config, host, port))


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with start_sandbox(config, host, port) as running:
        line: dict[str, str] = {"url": running.url}
        if running.ca_file is not None:
            line["ca_file"] = running.ca_file
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        await stop.wait()
