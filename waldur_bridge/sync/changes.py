"""How the bridge learns of changes: what a Waldur event asks to look at again, and the
events poll with its persisted cursor."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..db import Cursor
from ..waldur import Event, WaldurClient, WaldurError

log = logging.getLogger("waldur.sync.changes")

# Event types that can change who belongs in which room, or a room's name. All exist in
# Waldur 7.0, which refuses unknown types when a web hook is registered.
ROLE_EVENTS = ("role_granted", "role_revoked", "role_updated")
PROJECT_EVENTS = (
    "project_creation_succeeded",
    "project_update_succeeded",
    "project_deletion_succeeded",
    "project_deletion_triggered",
)
USER_EVENTS = (
    "user_activated",
    "user_deactivated",
    "user_update_succeeded",
    "user_deletion_succeeded",
)
# An organization's own fields (name, description, image): they show in its space.
CUSTOMER_EVENTS = ("customer_update_succeeded",)
# Order events only drive the optional order notices; they never change membership.
ORDER_EVENTS = (
    "marketplace_order_created",
    "marketplace_order_approved",
    "marketplace_order_rejected",
    "marketplace_order_completed",
    "marketplace_order_terminated",
    "marketplace_order_failed",
)
WATCHED_EVENTS = ROLE_EVENTS + PROJECT_EVENTS + USER_EVENTS + CUSTOMER_EVENTS
POLLED_EVENTS = WATCHED_EVENTS + ORDER_EVENTS
# The web hook subscribes to exactly the types the bridge acts on. A group would be expanded by
# Waldur into every type it holds ("resources" alone is about 166): a post per resource change.
WEBHOOK_EVENTS: frozenset[str] = frozenset(POLLED_EVENTS)


@dataclass(frozen=True)
class Hint:
    """What to read again. Never what to do: access changes come only from the REST API."""

    project_uuids: frozenset[str]
    customer_uuids: frozenset[str]
    user_uuids: frozenset[str]
    event_type: str

    @property
    def is_empty(self) -> bool:
        return not (self.project_uuids or self.customer_uuids or self.user_uuids)


def hint_from_event(event: Event) -> Hint:
    projects = set(event.project_uuids())
    customers = set(event.customer_uuids())
    users = set(event.user_uuids())
    if event.event_type in ROLE_EVENTS + PROJECT_EVENTS and projects:
        # A project-scoped grant or a project's own event names its organization too; only
        # the project needs a look (not every project of the organization).
        customers.clear()
    return Hint(frozenset(projects), frozenset(customers), frozenset(users), event.event_type)


class EventsPoller:
    """Polls /api/events/ from a persisted cursor, with overlap and de-duplication by UUID."""

    CURSOR = "events"

    def __init__(
        self,
        client: WaldurClient,
        handle: Callable[[Event, str], Awaitable[None]],
        *,
        interval: float,
        overlap: float,
        already_reported: Callable[[BaseException], bool] = lambda error: False,
    ) -> None:
        self.client = client
        # Errors someone else logs once per change of state (lost Waldur access): DEBUG here.
        self.already_reported = already_reported
        self.handle = handle
        self.interval = interval
        self.overlap = overlap
        self.errors = 0
        self.last_success: float | None = None
        self.lag: float | None = None

    async def poll_once(self) -> int:
        """One poll; returns how many new events were handed on."""
        started = time.time()
        cursor = await Cursor.get(self.CURSOR)
        if cursor is None:
            # First start: the initial sweep covers the past, so history is not replayed.
            cursor = Cursor(self.CURSOR, started - self.overlap, [])
        events = await self.client.list_events(cursor.position, POLLED_EVENTS)
        seen = set(cursor.seen)
        fresh = [e for e in events if e.dedup_key() not in seen]
        for event in fresh:
            await self.handle(event, "events")
        next_position = max(cursor.position, started - self.overlap)
        # Only events the next poll can return again need remembering.
        keep = {e.dedup_key() for e in events if e.created.timestamp() >= next_position - 1}
        cursor.position = next_position
        cursor.seen = sorted(keep)
        await cursor.save()
        self.last_success = time.time()
        self.lag = self.last_success - started
        return len(fresh)

    async def run(self) -> None:
        while True:
            try:
                count = await self.poll_once()
                if self.errors:
                    log.info("Events poll recovered after %d failure(s)", self.errors)
                self.errors = 0
                if count:
                    log.debug("Events poll: %d new event(s)", count)
                delay = self.interval
            except WaldurError as e:
                self.errors += 1
                delay = min(self.interval * 2**self.errors, 600)
                level = logging.DEBUG if self.already_reported(e) else logging.WARNING
                log.log(level, "Events poll failed (%s), next try in %.0f s", e, delay)
            await asyncio.sleep(delay)
