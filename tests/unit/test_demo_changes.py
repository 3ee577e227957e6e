"""The changes `wcsync demo` makes in its sandbox and how it decides the mirror followed each: whatever the
store's size, one customer is created and, when there is one, the last mirrored one deleted; a deletion is
followed once the row is marked deleted, an edit once the row has every field sent; the exit code says
whether a change was never followed (the loop is broken) or refused by wcsync (like a failed line)."""

from __future__ import annotations

from typing import Any

import pytest

from cli.demo import Change, demo_changes, exit_code_of
from domain.errors import EXIT_OK, EXIT_STORE, EXIT_UNFINISHED


def kinds(changes: list[Change]) -> list[tuple[str, int | None]]:
    return [(change.kind, change.customer_id) for change in changes]


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([], [("created", None)]),
        ([9], [("created", None), ("deleted", 9)]),
        ([9, 10], [("updated", 9), ("created", None), ("deleted", 10)]),
        (
            [9, 10, 11, 12, 40],
            [("updated", 9), ("updated", 10), ("updated", 11), ("created", None), ("deleted", 40)],
        ),
    ],
)
def test_the_demo_edits_up_to_three_creates_one_and_deletes_the_last(
    ids: list[int], expected: list[tuple[str, int | None]]
) -> None:
    changes = demo_changes(ids)
    assert kinds(changes) == expected
    edits = [c.label for c in changes if c.kind == "updated"]
    assert edits == ["email", "name", "email"][: len(edits)]


def row(**fields: Any) -> dict[str, Any]:
    return {"is_deleted": False, "email": "old@example.org", "first_name": "Ann", **fields}


def test_an_edit_is_followed_once_the_row_has_every_field_sent() -> None:
    edit = Change("updated", "name", {"first_name": "Renée", "last_name": "Okafor"}, 9)
    assert not edit.followed_by(None)
    assert not edit.followed_by(row(first_name="Renée", last_name="Smith"))
    assert edit.followed_by(row(first_name="Renée", last_name="Okafor"))
    assert not edit.followed_by(row(first_name="Renée", last_name="Okafor", is_deleted=True))


def test_a_deletion_is_followed_once_the_row_is_marked_deleted() -> None:
    deletion = Change("deleted", "", {}, 40)
    assert not deletion.followed_by(None) and not deletion.followed_by(row())
    assert deletion.followed_by(row(is_deleted=True))


def test_the_lines_name_the_customer_the_change_and_the_seconds() -> None:
    assert Change("updated", "email", {}, 17, seconds=0.424).line() == (
        "customer 17 updated (email) via webhook in 0.42 s"
    )
    assert Change("created", "", {}, 801, seconds=1.0).line() == "customer 801 created via webhook in 1.00 s"
    assert Change("deleted", "", {}, 23, seconds=0.5).line() == (
        "customer 23 marked deleted via webhook in 0.50 s"
    )
    refused = Change("created", "", {}, 801, delivery={"state": "failed", "error": "invalid email"})
    assert refused.done() and refused.line() == (
        "customer 801 created: wcsync refused the delivery: invalid email"
    )


def test_the_exit_code_says_whether_a_change_was_lost_or_refused() -> None:
    followed = Change("updated", "email", {}, 9, seconds=0.2)
    refused = Change("created", "", {}, 801, delivery={"state": "failed", "error": "bad"})
    lost = Change("deleted", "", {}, 40, delivery={"state": "pending"})
    assert exit_code_of([followed]) == EXIT_OK
    assert exit_code_of([followed, refused]) == EXIT_UNFINISHED
    assert exit_code_of([followed, refused, lost]) == EXIT_STORE
