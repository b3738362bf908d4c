"""The bridge-wide limit on homeserver writes in flight, with room work first.

Project rooms and organization spaces share the homeserver, which a first sync or a class
arriving keeps busy: a space's invites, made while people still wait for their project rooms,
would only delay the rooms. Writes for spaces therefore take the `later` lane: they get a free
slot only when no room write is waiting for one. Within a lane slots go first come, first
served, and nothing is ever taken from a write in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class WriteSlots:
    """`async with slots:` for a room's write; `async with slots.later():` for a space's."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.in_use = 0
        self._first: deque[asyncio.Future[None]] = deque()
        self._later: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return sum(not f.done() for f in (*self._first, *self._later))

    async def acquire(self, later: bool = False) -> None:
        lane = self._later if later else self._first
        ahead = any(not f.done() for f in self._first) or (
            later and any(not f.done() for f in self._later)
        )
        if self.in_use < self.limit and not ahead:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # The slot was handed over as the waiter was cancelled: pass it on.
                self.release()
            raise

    def release(self) -> None:
        self.in_use -= 1
        while self.in_use < self.limit:
            lane = self._first if self._first else self._later
            if not lane:
                return
            future = lane.popleft()
            if future.done():
                continue  # cancelled while waiting
            self.in_use += 1
            future.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    @asynccontextmanager
    async def later(self) -> AsyncIterator[None]:
        await self.acquire(later=True)
        try:
            yield
        finally:
            self.release()
