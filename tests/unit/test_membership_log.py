"""Every membership change is one INFO line naming the person, the room and the cause."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from waldur_bridge.sync.executor import _log_change

PORTAL: Any = SimpleNamespace(name="Apollo", room_id="!r:x", project_uuid="p1")


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]


def test_one_line_per_person_for_a_power_level_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "waldur.sync.executor")
    _log_change(
        "power-levels",
        "@a:x=50, @b:x=default",
        "@a:x: 0 -> 50 (power level from role PROJECT.ADMIN); @b:x: 50 -> 0 (role revoked)",
        PORTAL,
    )
    assert _lines(caplog) == [
        'Set power level of @a:x to 50 in "Apollo" (!r:x): '
        "@a:x: 0 -> 50 (power level from role PROJECT.ADMIN)",
        'Set power level of @b:x to default in "Apollo" (!r:x): @b:x: 50 -> 0 (role revoked)',
    ]


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("invite", 'Invited @a:x to "Apollo" (!r:x): role PROJECT.MEMBER'),
        ("join", 'Joined @a:x to "Apollo" (!r:x): role PROJECT.MEMBER'),
        ("kick", 'Removed @a:x from "Apollo" (!r:x): role PROJECT.MEMBER'),
    ],
)
def test_invites_joins_and_removals(
    caplog: pytest.LogCaptureFixture, action: str, expected: str
) -> None:
    caplog.set_level(logging.INFO, "waldur.sync.executor")
    _log_change(action, "@a:x", "role PROJECT.MEMBER", PORTAL)
    assert _lines(caplog) == [expected]
