"""Sessions of people who lose access: when Waldur confirms a user deactivated or deleted, every
device of their puppet is logged out (the appservice acts as its puppets), as Waldur's own
Matrix integration does. Audited; done once per person and process, and only when the puppet
has devices, so repeated sweeps cost one homeserver read at most."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import aiohttp
from mautrix.api import Method, Path
from mautrix.errors import MatrixError

from ..db import AuditEntry
from ..puppet import Puppet
from ..waldur import WaldurClient, WaldurError, WaldurNotFound
from .policy import canonical_uuid

log = logging.getLogger("waldur.sync.sessions")

LOGOUT_CAUSE = "Waldur user deactivated or deleted"


class SessionCloser:
    def __init__(self, client: WaldurClient) -> None:
        self.client = client
        # Users whose sessions were closed (or found closed) since the process started.
        self._closed: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # The first sweep may name many inactive users at once: a few homeserver calls at a time.
        self._slots = asyncio.Semaphore(4)

    def user_lost(self, user_uuid: str) -> None:
        """Waldur confirmed the user inactive or deleted: close their puppet's sessions."""
        user_uuid = canonical_uuid(user_uuid)
        if user_uuid in self._closed:
            return
        self._closed.add(user_uuid)
        self._spawn(self._close(user_uuid))

    def check(self, user_uuid: str) -> None:
        """An event says the user may be gone: read them directly, close sessions if so."""
        self._spawn(self._check(canonical_uuid(user_uuid)))

    def user_back(self, user_uuid: str) -> None:
        """Reactivated: a later deactivation closes their sessions again."""
        self._closed.discard(canonical_uuid(user_uuid))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name="waldur-sessions")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _check(self, user_uuid: str) -> None:
        try:
            user = await self.client.get_user(user_uuid)
        except WaldurNotFound:
            self.user_lost(user_uuid)
            return
        except WaldurError as e:
            # The sweep reads every user again; it closes the sessions then.
            log.warning("Could not check Waldur user %s after an event: %s", user_uuid, e)
            return
        if user.is_active:
            self.user_back(user_uuid)
        else:
            self.user_lost(user_uuid)

    async def _close(self, user_uuid: str) -> None:
        async with self._slots:
            await self._close_now(user_uuid)

    async def _close_now(self, user_uuid: str) -> None:
        puppet = Puppet.by_waldur_user.get(user_uuid) or await Puppet.get_by_waldur_user(user_uuid)
        if puppet is None or not puppet.is_registered:
            return  # no puppet, no sessions
        api = puppet.intent.api
        try:
            devices = (await api.request(Method.GET, Path.v3.devices)).get("devices") or []
            if not devices:
                return
            await api.request(Method.POST, Path.v3.logout.all)
        except (MatrixError, aiohttp.ClientError, OSError, TimeoutError) as e:
            # Try again on the next confirmation (the next sweep at the latest).
            self._closed.discard(user_uuid)
            log.warning(
                "Could not log out the sessions of %s (%s); retrying at the next sweep",
                puppet.mxid,
                e,
            )
            await _audit(puppet.mxid, "failed", str(e)[:500])
            return
        log.info(
            "Logged out %d session(s) of %s: %s", len(devices), puppet.mxid, LOGOUT_CAUSE.lower()
        )
        await _audit(puppet.mxid, "ok", f"{len(devices)} device(s)")


async def _audit(mxid: str, outcome: str, detail: str) -> None:
    await AuditEntry(
        action="logout", outcome=outcome, target=mxid, cause=LOGOUT_CAUSE, detail=detail
    ).insert()
