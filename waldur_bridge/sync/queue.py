"""A coalescing per-project work queue.

Web hooks, the events poll and sweeps all ask for "reconcile project P". A burst of requests for
one project becomes at most one run in progress plus one queued run after it: the queued run
sees everything that happened before it started, so further requests can merge into it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("waldur.sync.queue")

Worker = Callable[[str, frozenset[str]], Awaitable[None]]


@dataclass
class _Pending:
    reasons: set[str] = field(default_factory=set)
    not_before: float = 0.0
    failures: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class CoalescingQueue:
    """Runs `worker(key, reasons)` for queued keys, one run per key at a time.

    A worker that raises is retried with exponential backoff (base_delay doubling up to
    max_delay) unless a newer request arrives first, which runs as soon as a slot is free.

    Keys whose reasons are all in `background` (a sweep's routine look at every portal) wait
    behind any key with another reason: a web hook's grant during a sweep of thousands of
    portals runs in the next free slot instead of after the whole sweep.
    """

    def __init__(
        self,
        worker: Worker,
        *,
        concurrency: int = 4,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        name: str = "queue",
        background: frozenset[str] = frozenset(),
    ) -> None:
        self._worker = worker
        self._concurrency = concurrency
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._name = name
        self._pending: dict[str, _Pending] = {}
        self._background = background
        # Pending keys with a reason outside `background`, in arrival order (an ordered set).
        self._urgent: dict[str, None] = {}
        self._running: set[str] = set()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self.runs = 0
        self.failures = 0

    async def request_and_wait(self, key: str, reason: str, timeout: float = 120) -> None:
        """Queue a run and wait for it (or a later one) to finish; re-raises its error."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.request(key, reason)
        self._pending[key].waiters.append(future)
        await asyncio.wait_for(future, timeout)

    def request(self, key: str, reason: str) -> None:
        pending = self._pending.get(key)
        if pending is None:
            self._pending[key] = _Pending(reasons={reason})
        else:
            pending.reasons.add(reason)
            # Fresh information beats a retry timer: run as soon as possible.
            pending.not_before = 0.0
        if reason not in self._background:
            self._urgent[key] = None
        self._idle.clear()
        self._wakeup.set()

    def _retry_later(self, key: str, reasons: set[str], failures: int) -> None:
        pending = self._pending.get(key)
        if pending is not None:
            # A newer request arrived during the failed run: it runs now and carries the count.
            pending.reasons |= reasons
            pending.failures = failures
            return
        delay = min(self._max_delay, self._base_delay * 2 ** (failures - 1))
        self._pending[key] = _Pending(
            reasons=set(reasons), not_before=time.monotonic() + delay, failures=failures
        )
        if not reasons <= self._background:
            self._urgent[key] = None
        log.info("%s: %s failed %d time(s), retrying in %.0f s", self._name, key, failures, delay)

    @property
    def size(self) -> int:
        return len(self._pending) + len(self._running)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{self._name}-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until nothing is queued or running (retries waiting on a timer count as queued)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    def _next_ready(self) -> tuple[str | None, float | None]:
        """The oldest ready urgent key, else the oldest ready key (dicts keep arrival order),
        else how long until one is ready."""
        now = time.monotonic()
        for key in self._urgent:
            if key not in self._running and self._pending[key].not_before <= now:
                return key, None
        soonest: float | None = None
        for key, pending in self._pending.items():
            if key in self._running:
                continue
            if pending.not_before <= now:
                return key, None
            if soonest is None or pending.not_before < soonest:
                soonest = pending.not_before
        return None, (None if soonest is None else max(0.0, soonest - now))

    async def _run(self) -> None:
        while True:
            key, wait = self._next_ready()
            if key is None:
                if not self._pending and not self._running:
                    self._idle.set()
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
                continue
            pending = self._pending.pop(key)
            self._urgent.pop(key, None)
            self._running.add(key)
            try:
                await self._worker(key, frozenset(pending.reasons))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                log.exception("%s: run for %s failed", self._name, key)
                self._retry_later(key, pending.reasons, pending.failures + 1)
                for waiter in pending.waiters:
                    if not waiter.done():
                        waiter.set_exception(e)
            else:
                for waiter in pending.waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            finally:
                self.runs += 1
                self._running.discard(key)
                self._wakeup.set()
