"""A database address as wcsync shows it (DatabaseConfig.display, in every message and log line that names
the database): no password, in any of the forms libpq takes one."""

from __future__ import annotations

import pytest

from infrastructure.support.config import DatabaseConfig


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("postgresql://wcsync:hunter2@db:5432/wcsync", "hunter2", "postgresql://wcsync:***@db:5432/wcsync"),
        ("postgresql://wcsync:p@ss/w0rd@db/wcsync", "p@ss/w0rd", "postgresql://wcsync:***@db/wcsync"),
        ("postgresql://db/wcsync?user=w&password=hunter2&sslmode=require", "hunter2", None),
        ("postgresql://db/wcsync?PASSWORD=hunter2", "hunter2", None),
        ("host=db dbname=wcsync user=w password=hunter2 sslmode=require", "hunter2", None),
        ("host=db password = 'hunter 2 \\' x' dbname=wcsync", "hunter 2", None),
        ("host=db sslpassword=hunter2", "hunter2", None),
    ],
)
def test_every_form_of_a_password_is_hidden(url: str, secret: str, shown: str | None) -> None:
    display = DatabaseConfig(url=url, backend="postgres").display
    assert secret not in display and "***" in display
    if shown is not None:
        assert display == shown
    assert "db" in display  # the rest of the address stays readable


def test_an_address_without_a_password_is_shown_as_it_is() -> None:
    for url in ("postgresql://wcsync@db:5432/wcsync?sslmode=require", "sqlite:///data/wcsync.db"):
        assert DatabaseConfig(url=url, backend="postgres").display == url
