"""The shape checks of appservice transactions (the HTTP side is in the integration tests)."""

from __future__ import annotations

import pytest

from waldur_bridge.web.transactions import event_problem, transaction_problem, usable_events


@pytest.mark.parametrize(
    "body",
    [
        [],
        [{"events": []}],
        "events",
        None,
        {},
        {"events": "x"},
        {"events": {"a": 1}},
        {"events": None},
        {"events": [], "ephemeral": "x"},
    ],
)
def test_malformed_transactions_are_refused(body: object) -> None:
    assert transaction_problem(body)


@pytest.mark.parametrize(
    "body",
    [{"events": []}, {"events": [{"type": "m.room.message"}]}, {"events": [], "ephemeral": None}],
)
def test_well_formed_transactions_pass(body: object) -> None:
    assert transaction_problem(body) is None


def test_bad_items_are_skipped_and_good_ones_kept() -> None:
    good = {"type": "m.room.message", "event_id": "$1", "content": {"body": "!help"}}
    items = [1, "x", None, {"event_id": "$2", "unsigned": "nope"}, good, {"content": []}]
    assert usable_events("7", items) == [good]
    assert event_problem({"unsigned": None}) is None
    assert event_problem({"unsigned": {"age": 1}}) is None
