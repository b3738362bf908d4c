"""Reconciles at expiry: Waldur emits nothing when a grant's expiration time passes (its
clean-up revokes it hours later), so each project is looked at again just after the earliest
expiry among its grants in force, instead of at the next sweep."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from .policy import Grant, aware

log = logging.getLogger("waldur.sync.expiry")

# Read a little after the expiry: Waldur's clock may run slightly behind ours.
MARGIN = 0.5


class ExpiryTimers:
    """One timer per project, set to its earliest upcoming expiry; `due(project)` fires then."""

    def __init__(self, due: Callable[[str], None]) -> None:
        self._due = due
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}

    def schedule(self, project_uuid: str, grants: Iterable[Grant]) -> None:
        now = datetime.now(UTC)
        upcoming = [
            aware(g.expiration_time)
            for g in grants
            if g.expiration_time is not None
            and g.is_active is not False
            and aware(g.expiration_time) > now
        ]
        existing = self._timers.pop(project_uuid, None)
        if not upcoming:
            if existing is not None:
                existing[1].cancel()
            return
        at = min(upcoming).timestamp()
        if existing is not None:
            if existing[0] == at:
                self._timers[project_uuid] = existing
                return
            existing[1].cancel()
        delay = max(0.0, at - now.timestamp()) + MARGIN
        timer = asyncio.get_running_loop().call_later(delay, self._fire, project_uuid)
        self._timers[project_uuid] = (at, timer)

    def _fire(self, project_uuid: str) -> None:
        self._timers.pop(project_uuid, None)
        log.info("A role grant of project %s expired; reconciling it", project_uuid)
        self._due(project_uuid)

    def __len__(self) -> int:
        return len(self._timers)

    def cancel_all(self) -> None:
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
