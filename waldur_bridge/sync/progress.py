"""Progress of the initial sync (the first sweep after start) for the operator's log.

A large site's first sync creates thousands of rooms and takes minutes: a line every few
seconds says how far it is and how long it will take, and one line at the end sums it up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .planner import Invite

if TYPE_CHECKING:
    from .reconciler import Result

log = logging.getLogger("waldur.sync.progress")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 120:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class InitialSyncProgress:
    """Counts the rooms of the first sweep as their first reconcile ends (done or failed)."""

    def __init__(
        self, projects: Iterable[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.pending = set(projects)
        self.total = len(self.pending)
        self.clock = clock
        self.started = clock()
        self.finished_at: float | None = None
        self.created = 0
        self.members = 0
        self.added = 0
        self.held = 0
        self.failed = 0
        self.done = asyncio.Event()
        if not self.pending:
            self._finish()

    @property
    def processed(self) -> int:
        return self.total - len(self.pending)

    def room_done(
        self, project_uuid: str, *, members: int, added: int, held: int, created: bool
    ) -> None:
        if project_uuid not in self.pending:
            return  # a later run of a room already counted (a hint, a retry)
        self.pending.discard(project_uuid)
        self.members += members
        self.added += added
        self.held += held
        self.created += int(created)
        self._check_done()

    def reconciled(
        self, project_uuid: str, result: Result | None, created_invites: int | None
    ) -> None:
        """A room's reconcile ended; `created_invites` counts createRoom's invites (None: the
        room existed)."""
        plan = result.plan if result is not None else None
        self.room_done(
            project_uuid,
            members=result.members if result is not None else 0,
            added=(created_invites or 0)
            + (sum(isinstance(a, Invite) for a in plan.actions) if plan else 0),
            held=len(plan.held) if plan else 0,
            created=created_invites is not None,
        )

    def room_failed(self, project_uuid: str) -> None:
        """Counted once; the queue retries it in the background."""
        if project_uuid in self.pending:
            self.pending.discard(project_uuid)
            self.failed += 1
            self._check_done()

    def _check_done(self) -> None:
        if not self.pending:
            self._finish()

    def _finish(self) -> None:
        self.finished_at = self.clock()
        self.done.set()

    def line(self) -> str:
        """e.g. "Initial sync: 120/200 rooms, 1,050 members, about 40 s left"."""
        elapsed = self.clock() - self.started
        processed = self.processed
        if processed and elapsed > 0:
            left = f"about {_duration(elapsed / processed * (self.total - processed))} left"
        else:
            left = "time left not known yet"
        return (
            f"Initial sync: {processed:,}/{self.total:,} rooms, {self.members:,} members, {left}"
        )

    def summary(self) -> str:
        end = self.finished_at if self.finished_at is not None else self.clock()
        failed = f", {self.failed:,} failed (retried in the background)" if self.failed else ""
        return (
            f"Initial sync done in {_duration(end - self.started)}: {self.total:,} rooms "
            f"({self.created:,} created{failed}), {self.members:,} members "
            f"({self.added:,} added), {self.held:,} removals held"
        )

    async def report(self, interval: float) -> None:
        """Log a progress line every `interval` seconds (0: none) and the summary at the end."""
        while not self.done.is_set():
            try:
                await asyncio.wait_for(self.done.wait(), interval if interval > 0 else None)
            except TimeoutError:
                log.info(self.line())
        log.info(self.summary())
