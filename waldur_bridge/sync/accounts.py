"""Whether people's own Matrix accounts exist before the bridge invites them.

Synapse accepts an invite to a local user ID nobody registered, and the invite then shows as
pending forever. In own-account mode (template or links) many Waldur users have not logged into
Matrix yet (their first single sign-on creates the account), so each local account is checked
once with the profile API before its first invite: 404 means no such user. Answers are kept for
a while; a missing account is asked about again at the next sweep, so it is invited within one
sweep of its first login. Remote accounts (another server) are invited as they are.

Missing accounts are told once, in one line and one management-room message per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from mautrix.appservice import AppService
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import UserID

log = logging.getLogger("waldur.sync.accounts")

# An account that exists is not checked again for this long (accounts are rarely deleted).
FOUND_TTL = 3600.0
# A missing account is asked about again after this long, and at every sweep.
MISSING_TTL = 60.0
# Newly missing accounts are gathered this long into one report (a sweep finds them all).
REPORT_DELAY = 2.0
# How many Matrix IDs a report names; the rest are counted.
REPORT_NAMES = 10

Notify = Callable[[str], Awaitable[None]]


class AccountCheck:
    def __init__(
        self,
        az: AppService,
        domain: str,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The appservice's bot intent exists only once the appservice started.
        self.az = az
        self.suffix = f":{domain}"
        self.notify = notify
        self.clock = clock
        # user ID -> (exists, when asked)
        self._known: dict[str, tuple[bool, float]] = {}
        # Missing accounts already told to the admins (told again only after they appeared).
        self._reported: set[str] = set()
        self._pending: set[str] = set()
        self._report_task: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(4)

    @property
    def missing(self) -> list[str]:
        """The local accounts last found missing, sorted (for `diagnose` and the admins)."""
        return sorted(u for u, (exists, _) in self._known.items() if not exists)

    @property
    def asked(self) -> int:
        """How many local accounts have been asked about (found or missing)."""
        return len(self._known)

    def is_local(self, user_id: str) -> bool:
        return user_id.endswith(self.suffix)

    def forget_missing(self) -> None:
        """A sweep asks again about every missing account."""
        self._known = {u: v for u, v in self._known.items() if v[0]}

    def seen(self, user_id: str) -> None:
        """The account spoke (a command): it exists."""
        if self.is_local(user_id):
            self._learn(user_id, True, self.clock())

    async def missing_of(self, user_ids: Iterable[str]) -> frozenset[str]:
        """Which of these local accounts the homeserver says do not exist."""
        now = self.clock()
        ask: list[str] = []
        missing: set[str] = set()
        for user_id in user_ids:
            if not self.is_local(user_id):
                continue
            known = self._known.get(user_id)
            if known is not None and now - known[1] < (FOUND_TTL if known[0] else MISSING_TTL):
                if not known[0]:
                    missing.add(user_id)
                continue
            ask.append(user_id)
        log.debug("Checking %d account(s) (%d cached missing)", len(ask), len(missing))
        if ask:
            answers = await asyncio.gather(*(self._exists(u) for u in ask))
            for user_id, exists in zip(ask, answers, strict=True):
                if exists is None:
                    continue  # could not tell: invite as before rather than hold anyone back
                self._learn(user_id, exists, now)
                if not exists:
                    missing.add(user_id)
        return frozenset(missing)

    def _learn(self, user_id: str, exists: bool, now: float) -> None:
        before = self._known.get(user_id)
        self._known[user_id] = (exists, now)
        if exists and before is not None and not before[0]:
            self._reported.discard(user_id)
            log.info("%s exists on the homeserver now; inviting it where its roles say", user_id)
        elif not exists and user_id not in self._reported:
            self._reported.add(user_id)
            self._pending.add(user_id)
            if self._report_task is None or self._report_task.done():
                self._report_task = asyncio.create_task(self._report(), name="missing-accounts")

    async def _exists(self, user_id: str) -> bool | None:
        async with self._slots:
            try:
                await self.az.intent.get_profile(UserID(user_id))
            except MNotFound:
                return False
            except MatrixRequestError as e:
                if e.http_status == 404:
                    # Synapse 1.163 answers a user it never registered with 404 M_UNKNOWN
                    # ("No row found"), not M_NOT_FOUND.
                    return False
                # 403 where profiles are limited to people who share a room: unknown.
                log.debug("Could not tell whether %s exists: %s", user_id, e)
                return None
            return True

    async def _report(self) -> None:
        await asyncio.sleep(REPORT_DELAY)
        batch, self._pending = sorted(self._pending), set()
        if not batch:
            return
        text = missing_accounts_text(batch)
        log.warning("%s", text)
        if self.notify is not None:
            try:
                await self.notify(text)
            except Exception as e:
                log.warning("Could not tell the management room about missing accounts: %s", e)

    async def stop(self) -> None:
        if self._report_task is not None:
            self._report_task.cancel()
            await asyncio.gather(self._report_task, return_exceptions=True)


def missing_accounts_text(user_ids: list[str]) -> str:
    named = ", ".join(user_ids[:REPORT_NAMES])
    more = len(user_ids) - REPORT_NAMES
    if more > 0:
        named += f" and {more} more"
    people = "1 Waldur user has" if len(user_ids) == 1 else f"{len(user_ids)} Waldur users have"
    return (
        f"{people} no Matrix account yet: {named}. They are invited once the account exists"
        " (a first single sign-on login creates it); `diagnose` lists them."
    )
