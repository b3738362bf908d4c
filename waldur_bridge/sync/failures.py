"""Failures a reconcile expects now and then, shared by the rooms' and the spaces' queues."""

from __future__ import annotations

import aiohttp
from mautrix.errors import MatrixError

from ..waldur import WaldurError


class IncompleteRead(Exception):
    """Part of Waldur's answer was missing: additions were made, removals wait for a retry."""


class HomeserverWritesFailed(RuntimeError):
    """Some invites, kicks or power-level writes failed; the queue retries the room."""


# Failures a reconcile expects now and then (Waldur or the homeserver down, an incomplete read):
# logged as one warning line and retried with backoff, never a traceback.
EXPECTED_FAILURES: tuple[type[Exception], ...] = (
    WaldurError,
    IncompleteRead,
    HomeserverWritesFailed,
    MatrixError,
    aiohttp.ClientError,
    TimeoutError,
)
