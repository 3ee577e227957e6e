"""Unit tests do no I/O: no file, socket, database or subprocess (tests/support/no_io.py fails a test that
tries, even if the code under test caught the error). What needs I/O is an integration test."""

from __future__ import annotations

from collections.abc import Generator

import pytest
from hypothesis import settings

from tests.support.no_io import forbidding_io

# Hypothesis keeps no example database under .hypothesis/ for unit tests (that would be I/O, and a failure
# found once is kept as an @example instead). Loaded when this conftest is: a whole-suite run uses it too.
settings.register_profile("unit", database=None)
settings.load_profile("unit")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """The test itself (each of hypothesis's examples included) runs with every kind of I/O forbidden."""
    with forbidding_io() as guard:
        result = yield
    if guard.violations:
        pytest.fail(f"{item.nodeid} did I/O: " + "; ".join(guard.violations), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[object]) -> Generator[None, object, object]:
    """So are the unit tests' own fixtures (pytest's and the shared tmp_path/environment ones are not)."""
    if not fixturedef.baseid.startswith("tests/unit"):
        return (yield)
    with forbidding_io() as guard:
        result = yield
    if guard.violations:
        pytest.fail(f"fixture {fixturedef.argname} did I/O: " + "; ".join(guard.violations), pytrace=False)
    return result
