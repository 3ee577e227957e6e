"""The customers listing's query, as WordPress and WooCommerce have it: parameter checks with WordPress's
error codes and messages, filters (role, include/exclude, email, search), ordering (MySQL's unstable order
for equal keys included), paging and _fields. Pure Python: no I/O, no server."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multidict import MultiMapping

from domain.bounds import MAX_PER_PAGE

SITE_ROLES = ("administrator", "editor", "author", "contributor", "subscriber", "customer", "shop_manager")
ORDERBY_VALUES = ("id", "include", "name", "registered_date")


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


class InvalidParams(Exception):
    def __init__(self, problems: dict[str, str], details: dict[str, dict[str, Any]]) -> None:
        super().__init__(", ".join(problems))
        self.problems = problems
        self.details = details


_INTEGER = re.compile(r"^[+-]?\d+$")


def _values(query: MultiMapping[str], name: str) -> list[str]:
    values: list[str] = list(query.getall(name, ()))
    values.extend(query.getall(f"{name}[]", ()))
    return values


def csv_values(query: MultiMapping[str], name: str) -> list[str]:
    """The parameter's items: every value (``name`` and ``name[]``) split at commas, blanks dropped."""
    return [item.strip() for value in _values(query, name) for item in value.split(",") if item.strip()]


def _id_list(
    query: Any, name: str, problems: dict[str, str], details: dict[str, dict[str, Any]]
) -> tuple[int, ...]:
    items = csv_values(query, name)
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


def parse_list_query(query: MultiMapping[str]) -> ListQuery:
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
        raise InvalidParams(problems, details)
    fields_raw = csv_values(query, "_fields")
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


def filter_fields(obj: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
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


def select_ids(ids: list[int], records: Mapping[int, Mapping[str, Any]], query: ListQuery) -> list[int]:
    """Of ``ids`` (the role's, in id order), those matching the query's filters, in the query's order (no
    paging). ``records`` holds every id's record."""
    if query.include:
        wanted = set(query.include)
        ids = [i for i in ids if i in wanted]
    elif query.exclude:
        unwanted = set(query.exclude)
        ids = [i for i in ids if i not in unwanted]
    if query.email is not None:
        email = query.email.casefold()
        ids = [i for i in ids if str(records[i].get("email", "")).casefold() == email]
    if query.search:
        needle = query.search.strip("*").casefold()
        ids = [i for i in ids if needle in _search_text(records[i])]
    if query.orderby == "id" or (query.orderby == "include" and not query.include):
        return list(reversed(ids)) if query.order == "desc" else ids
    if query.orderby == "include":
        position = {value: index for index, value in enumerate(query.include)}
        return sorted(ids, key=position.__getitem__, reverse=query.order == "desc")
    start = query.start
    ordered = sorted(ids, key=lambda i: _tie_breaker(i, start))
    if query.orderby == "name":
        return sorted(ordered, key=lambda i: _display_name(records[i]).casefold(), reverse=query.desc)
    return sorted(ordered, key=lambda i: str(records[i].get("date_created_gmt")), reverse=query.desc)


def page_window(ordered: Sequence[int], query: ListQuery, repeat_last_page: bool = False) -> Sequence[int]:
    """The ids on the page asked for (page/per_page, or offset): none past the end, or with the
    repeat_last_page fault (a cache that ignores the query string) the last page again."""
    start = query.start
    window = ordered[start : start + query.per_page]
    if repeat_last_page and not window and ordered:
        last_start = (len(ordered) - 1) // query.per_page * query.per_page
        window = ordered[last_start : last_start + query.per_page]
    return window


def _search_text(record: Mapping[str, Any]) -> str:
    parts = (record.get("username"), record.get("email"), _display_name(record))
    return "\n".join(str(part) for part in parts if part).casefold()


def _display_name(record: Mapping[str, Any]) -> str:
    name = f"{record.get('first_name') or ''} {record.get('last_name') or ''}".strip()
    return name or str(record.get("username") or "")


def _tie_breaker(customer_id: int, start: int) -> int:
    # MySQL returns rows with equal sort keys in whatever order the plan gives, which differs with LIMIT/OFFSET.
    mixed = (customer_id ^ (start * 0x9E3779B1)) & 0xFFFFFFFF
    mixed = ((mixed ^ (mixed >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
    mixed = ((mixed ^ (mixed >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
    return mixed ^ (mixed >> 16)
