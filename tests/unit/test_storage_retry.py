"""The one storage retry helper: transient errors retried with backoff, others raised at once (a real save
retried: tests/integration/test_storage_retry.py)."""

from __future__ import annotations

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError

from infrastructure.adapters.eventstore import retry_storage
from infrastructure.support.errors import StorageError


def flaky(failures: int, error: type[Exception] = OperationalError) -> tuple[list[int], object]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error("server closed the connection unexpectedly")
        return "saved"

    return calls, call


def test_a_transient_error_is_retried_until_it_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr("infrastructure.adapters.eventstore.time.sleep", pauses.append)
    calls, call = flaky(2)
    assert retry_storage(call, max_retries=3, backoff_s=1.0) == "saved"  # type: ignore[arg-type]
    assert len(calls) == 3
    # Exponential with jitter: 1 s then 2 s, each scaled by 0.5..1.5.
    assert 0.5 <= pauses[0] <= 1.5 and 1.0 <= pauses[1] <= 3.0


def test_a_storage_that_keeps_failing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infrastructure.adapters.eventstore.time.sleep", lambda _: None)
    calls, call = flaky(10)
    with pytest.raises(StorageError, match="failed 4 times: server closed the connection"):
        retry_storage(call, max_retries=3)  # type: ignore[arg-type]
    assert len(calls) == 4


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("infrastructure.adapters.eventstore.time.sleep", lambda _: None)
    calls, call = flaky(1, IntegrityError)
    with pytest.raises(IntegrityError):
        retry_storage(call)  # type: ignore[arg-type]
    assert len(calls) == 1
