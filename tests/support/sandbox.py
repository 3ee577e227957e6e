"""The sandbox store (infrastructure.sandbox) as a fixture, configured by a ``sandbox`` mark.

    pytestmark = pytest.mark.sandbox(customers=600, invalid=3)   # the module's store
    @pytest.mark.sandbox(customers=10)                            # one test's own

The mark's arguments are SandboxConfig's; ``shared=True`` gives the whole module one store (for modules whose
tests only read it). Without a mark the store is SandboxConfig's default.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infrastructure.sandbox import RunningSandbox, SandboxConfig, SandboxThread

MARK = "sandbox"
MARK_HELP = f"{MARK}(shared=False, **SandboxConfig): the store the `sandbox` fixture starts (tests/support/sandbox.py)"


def _mark_arguments(node: pytest.Item | pytest.Collector) -> dict[str, Any]:
    mark = node.get_closest_marker(MARK)
    if mark is None:
        return {}
    assert not mark.args, f"@pytest.mark.{MARK} takes SandboxConfig's fields by name"
    return dict(mark.kwargs)


def _running(arguments: dict[str, Any]) -> Iterator[RunningSandbox]:
    arguments.pop("shared", None)
    with SandboxThread(SandboxConfig(**arguments)) as running:
        yield running


@pytest.fixture(scope="module")
def shared_sandbox(request: pytest.FixtureRequest) -> Iterator[RunningSandbox]:
    """One store for a whole module, as its ``sandbox(shared=True, ...)`` mark configures it."""
    yield from _running(_mark_arguments(request.node))


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[RunningSandbox]:
    """The sandbox store over a real socket, as the test's (or else its module's) ``sandbox`` mark configures
    it: the test's own, or the module's ``shared_sandbox`` when the mark says ``shared=True``."""
    arguments = _mark_arguments(request.node)
    if arguments.get("shared"):
        yield request.getfixturevalue("shared_sandbox")
        return
    yield from _running(arguments)
