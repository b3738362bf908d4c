"""Whether the bridge can use Waldur right now, reported once per change of state.

Every loop that reads Waldur (sweeps, the events poll, web hook registration, commands) fails
the same way when the token is wrong or Waldur is away. The client tells this tracker the
outcome of each request; the tracker logs one line and posts one management-room notice when
access is lost and when it is back, so the loops can keep their own lines at DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from . import messages
from .waldur import WaldurAuthError, WaldurError, WaldurUnavailable

log = logging.getLogger("waldur.access")

OK = "ok"
TOKEN_REJECTED = "token rejected"
UNREACHABLE = "unreachable"


class WaldurAccess:
    def __init__(self, url: str, notify: Callable[[str], Awaitable[None]] | None) -> None:
        # notify: posts to the management room; None without one (the log line is the report).
        self.url = url
        self.notify = notify
        self.state = OK
        self.since = time.time()
        self.problem = ""
        self.fix = ""
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def lost(self) -> bool:
        return self.state != OK

    def reported(self, error: BaseException) -> bool:
        """Whether this error is the lost access already logged (callers log it at DEBUG)."""
        return self.lost and self._state_of(error) == self.state

    def observe(self, error: WaldurError | None) -> None:
        """The outcome of one Waldur request (None: it succeeded)."""
        state = OK if error is None else self._state_of(error)
        if state is None or state == self.state:
            return
        now = time.time()
        if state == OK:
            down = now - self.since
            log.info("Waldur access is back after %.0f s (%s)", down, self.url)
            self._post(messages.waldur_access_back_notice(down))
        else:
            assert error is not None
            self.problem, self.fix = self._describe(state, error)
            log.error("Waldur access lost: %s %s", self.problem, self.fix)
            self._post(messages.waldur_access_lost_notice(self.problem, self.fix))
        self.state = state
        self.since = now

    def _state_of(self, error: BaseException) -> str | None:
        if isinstance(error, WaldurAuthError) and error.status == 401:
            return TOKEN_REJECTED
        if isinstance(error, WaldurUnavailable):
            return UNREACHABLE
        return None  # a 404 or a bad field says nothing about access as a whole

    def _describe(self, state: str, error: WaldurError) -> tuple[str, str]:
        if state == TOKEN_REJECTED:
            return (
                f"Waldur at {self.url} rejects waldur.token (HTTP 401 on {error.path}).",
                "Set waldur.token to a valid API token of the service account (a staff user "
                "whose token_lifetime is null) and restart the bridge.",
            )
        if error.status is not None:
            # Waldur (or the proxy in front of it) answered: the network is fine, Waldur is not.
            return (
                f"Waldur at {self.url} answers HTTP {error.status} on {error.path}: "
                f"{error.message}.",
                "Waldur itself is failing or overloaded (see its logs and status, or the proxy "
                "in front of it); the bridge keeps retrying.",
            )
        return (
            f"Waldur at {self.url} cannot be reached: {error.message}.",
            "Check waldur.url and the network path to Waldur; the bridge keeps retrying.",
        )

    def _post(self, text: str) -> None:
        if self.notify is None:
            return
        try:
            task = asyncio.get_running_loop().create_task(self._send(text))
        except RuntimeError:
            return  # no loop (a synchronous caller in a test): the log line is the report
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, text: str) -> None:
        assert self.notify is not None
        try:
            await self.notify(text)
        except Exception as e:
            log.warning("Could not post the Waldur access notice to the management room: %s", e)
