"""The sandbox's customers: realistic, deterministic generated records (names and addresses from ten
countries, non-contiguous ids, documented null dates, meta data), rules broken on purpose, and their repair.
Pure Python: no I/O, no server."""

from __future__ import annotations

import gc
import hashlib
import json
import random
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from domain.validation import ADDRESS_FIELDS, MAX_TEXT_LENGTH, InvalidCustomerRecord, validate_customer

# The site's timezone setting is a manual offset ("UTC+1"), so local dates need no DST tables.
SITE_UTC_OFFSET_SECONDS = 3600


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
_SHIPPING_FIELDS = tuple(name for name in ADDRESS_FIELDS if name != "email")
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


def format_gmt(timestamp: float) -> str:
    # strftime for each of 400,000 dates was a third of generate_customers' time: days repeat and a day has
    # only 86,400 clock readings, so both are looked up.
    if not _CLOCK:
        _CLOCK.extend(f"{h:02d}:{m:02d}:{s:02d}" for h in range(24) for m in range(60) for s in range(60))
    day, seconds = divmod(int(timestamp), 86_400)
    prefix = _DAYS.get(day)
    if prefix is None:
        prefix = _DAYS[day] = time.strftime("%Y-%m-%dT", time.gmtime(day * 86_400))
    return prefix + _CLOCK[seconds]


def format_local(timestamp: float) -> str:
    return format_gmt(timestamp + SITE_UTC_OFFSET_SECONDS)


def empty_address(section: str) -> dict[str, str]:
    return dict.fromkeys(ADDRESS_FIELDS if section == "billing" else _SHIPPING_FIELDS, "")


def make_customer(
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
        shipping = {key: billing[key] for key in _SHIPPING_FIELDS}
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
        "date_created": format_local(created),
        "date_created_gmt": format_gmt(created),
        "date_modified": None if modified is None else format_local(modified),
        "date_modified_gmt": None if modified is None else format_gmt(modified),
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
        record, meta_id = make_customer(rng, customer_id, created, role, meta_id)
        records.append(record)
        step = rng.random()
        # Ids are not contiguous: deleted users, and orders/posts sharing the auto-increment in old imports.
        customer_id += 1 if step < 0.8 else 2 + int(step * 50) % 9
        created += 1 + int(step * 2 * mean_gap)
    customer_positions = [index for index in range(total) if index not in others]
    for turn, position in enumerate(sorted(rng.sample(customer_positions, invalid))):
        _break_rule(records[position], _INVALID_KINDS[turn % len(_INVALID_KINDS)])
    return records


def meta_entries(record: Mapping[str, Any], numbered: bool = True) -> list[dict[str, Any]]:
    meta = record.get("meta_data")
    if not isinstance(meta, list):
        return []
    return [e for e in meta if isinstance(e, dict) and (not numbered or isinstance(e.get("id"), int))]


def repair(record: dict[str, Any], encoded_size: int) -> bool:
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
            record[name] = format_gmt(stamp) if name.endswith("_gmt") else format_local(stamp)
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
