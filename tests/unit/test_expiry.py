"""Expiry timers: a project is reconciled just after its earliest grant in force expires."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from waldur_bridge.sync.expiry import ExpiryTimers
from waldur_bridge.sync.policy import Grant


async def test_expiry_timers_fire_at_the_earliest_upcoming_expiry() -> None:
    fired: list[str] = []
    due = asyncio.Event()

    def on_due(project: str) -> None:
        fired.append(project)
        due.set()

    timers = ExpiryTimers(on_due)
    now = datetime.now(UTC)
    grants = [
        Grant("u1", "PROJECT.MEMBER", "project", "p", expiration_time=now + timedelta(hours=1)),
        Grant(
            "u2", "PROJECT.MEMBER", "project", "p", expiration_time=now + timedelta(seconds=0.2)
        ),
        Grant("u3", "PROJECT.MEMBER", "project", "p", expiration_time=now - timedelta(hours=1)),
        Grant("u4", "PROJECT.MEMBER", "project", "p", expiration_time=now, is_active=False),
    ]
    timers.schedule("p", grants)
    timers.schedule("q", grants[2:])  # nothing upcoming: no timer
    assert len(timers) == 1
    await asyncio.wait_for(due.wait(), 10)
    assert fired == ["p"] and len(timers) == 0
    timers.schedule("p", grants[:1])
    timers.schedule("p", [])  # the grant went away: its timer too
    assert len(timers) == 0
    timers.cancel_all()
