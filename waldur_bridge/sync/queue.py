"""A coalescing per-project work queue.

Web hooks, the events poll and sweeps all ask for "reconcile project P". A burst of requests for
one project becomes at most one run in progress plus one queued run after it: the queued run
sees everything that happened before it started, so further requests can merge into it.

Hints settle before they run: each hint about a key pushes its run `settle` seconds later, but
never later than `max_wait` after the first hint of the burst, so a steady stream of hints costs
one run per settle window at most and still runs (no starvation). A role change in Waldur is a
revoke then a grant; a run after the window sees both. Background requests (sweeps) run after
ready hints, so a sweep over every room never delays the room a web hook asked about.

With `lead`, the first hint about a quiet key (no hint in the last `settle` seconds, nothing
running or settling) runs at once with the extra reason LEADING, and the hints after it settle
as above. The worker does at once what cannot flap (additions, promotions) and leaves what a
half-seen role change could get wrong (removals, demotions) to a settled run, which it asks
for: a grant is felt within the homeserver's latency, a revoke still waits out the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

log = logging.getLogger("waldur.sync.queue")

Worker = Callable[[str, frozenset[str]], Awaitable[None]]

# The reason added to a leading run (see the module doc).
LEADING = "leading"
# Hint times kept per key for leading runs; older ones are pruned past this many keys.
_HINT_MEMORY = 4096


@dataclass
class _Pending:
    reasons: set[str] = field(default_factory=set)
    not_before: float = 0.0
    failures: int = 0
    # When the first hint of the current burst arrived (monotonic); None when not settling.
    settling_since: float | None = None
    # Only background requests (sweeps) so far: runs after ready foreground work.
    background: bool = True
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class CoalescingQueue:
    """Runs `worker(key, reasons)` for queued keys, one run per key at a time.

    A worker that raises is retried with exponential backoff (base_delay doubling up to
    max_delay) unless a newer request arrives first, which runs as soon as a slot is free.
    """

    def __init__(
        self,
        worker: Worker,
        *,
        concurrency: int = 4,
        base_delay: float = 2.0,
        max_delay: float = 300.0,
        settle: float = 0.0,
        max_wait: float = 0.0,
        name: str = "queue",
        expected: tuple[type[Exception], ...] = (),
        lead: bool = False,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self._worker = worker
        # Called with the key after each run, failed or not, once the key no longer counts
        # as running.
        self._on_done = on_done
        self._concurrency = concurrency
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._name = name
        self.settle = settle
        self._expected = expected
        self.max_wait = max(max_wait, settle)
        self.lead = lead
        self._last_hint: dict[str, float] = {}
        self._pending: dict[str, _Pending] = {}
        self._running: set[str] = set()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._run_done = asyncio.Event()
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

    def request(
        self, key: str, reason: str, *, hint: bool = False, background: bool = False
    ) -> None:
        """Queue a run of `key`.

        hint: a change notice (web hook, events poll) that settles first (see the module doc).
        background: a sweep's request; it neither cuts a settle window short nor goes before
        foreground work. Anything else (admin actions) runs as soon as a slot is free.
        """
        now = time.monotonic()
        pending = self._pending.get(key)
        leading = hint and self._quiet(key, pending, now)
        if pending is None:
            pending = self._pending[key] = _Pending(reasons={reason}, background=background)
        else:
            pending.reasons.add(reason)
            pending.background = pending.background and background
        if hint and self.settle > 0:
            self._remember_hint(key, now)
        if leading:
            pending.reasons.add(LEADING)
            pending.background = False
            pending.not_before = 0.0
        elif hint and self.settle > 0:
            if pending.settling_since is None:
                pending.settling_since = now
            pending.not_before = min(now + self.settle, pending.settling_since + self.max_wait)
        elif not background:
            # An admin's request beats a settle window and a retry timer: run now, in full.
            pending.not_before = 0.0
            pending.settling_since = None
            pending.reasons.discard(LEADING)
        elif pending.settling_since is None:
            # Fresh information beats a retry timer.
            pending.not_before = 0.0
        self._idle.clear()
        self._wakeup.set()

    def _quiet(self, key: str, pending: _Pending | None, now: float) -> bool:
        """Whether a hint about `key` may run at once as a leading run."""
        if not self.lead or self.settle <= 0 or key in self._running:
            return False
        if pending is not None and not (pending.background and pending.settling_since is None):
            return False  # a hint, an admin's request or a retry is already waiting
        last = self._last_hint.get(key)
        return last is None or now - last >= self.settle

    def _remember_hint(self, key: str, now: float) -> None:
        self._last_hint[key] = now
        if len(self._last_hint) > _HINT_MEMORY:
            self._last_hint = {k: t for k, t in self._last_hint.items() if now - t < self.settle}

    def _retry_later(self, key: str, failed: _Pending) -> float | None:
        """Queue a retry; returns its delay, or None when a newer request already waits."""
        failures = failed.failures + 1
        pending = self._pending.get(key)
        if pending is not None:
            # A newer request arrived during the failed run: it runs as planned, with the count.
            pending.reasons |= failed.reasons
            pending.failures = failures
            pending.background = pending.background and failed.background
            return None
        delay = min(self._max_delay, self._base_delay * 2 ** (failures - 1))
        self._pending[key] = _Pending(
            reasons=set(failed.reasons),
            not_before=time.monotonic() + delay,
            failures=failures,
            background=failed.background,
        )
        return delay

    def is_queued(self, key: str) -> bool:
        """Whether a run of `key` waits (settling, on a retry timer or for a slot)."""
        return key in self._pending

    def busy(self) -> set[str]:
        """The keys running or due to run soon: queued, except those waiting out a retry."""
        return self._running | {k for k, p in self._pending.items() if not p.failures}

    @property
    def size(self) -> int:
        return len(self._pending) + len(self._running)

    def start(self) -> None:
        self._stopping = False
        self._tasks = [
            asyncio.create_task(self._run(), name=f"{self._name}-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop the workers. Runs in progress may finish first (up to grace seconds), so that a
        handover to another instance does not cut a room's changes in half; nothing new starts."""
        self._stopping = True
        self._wakeup.set()
        deadline = time.monotonic() + grace
        while self._running and (remaining := deadline - time.monotonic()) > 0:
            self._run_done.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._run_done.wait(), remaining)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until nothing is queued or running (retries waiting on a timer count as queued)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    def _next_ready(self) -> tuple[str | None, float | None]:
        """The oldest ready foreground key (dicts keep arrival order), else the oldest ready
        background key, else how long until one is ready."""
        now = time.monotonic()
        soonest: float | None = None
        background: str | None = None
        for key, pending in self._pending.items():
            if key in self._running:
                continue
            if pending.not_before <= now:
                if not pending.background:
                    return key, None
                if background is None:
                    background = key
                continue
            if soonest is None or pending.not_before < soonest:
                soonest = pending.not_before
        if background is not None:
            return background, None
        return None, (None if soonest is None else max(0.0, soonest - now))

    async def _run(self) -> None:
        while True:
            if self._stopping:
                # Return rather than wait to be cancelled: a cancel that lands as the wake-up
                # event fires is swallowed by the wait, and the worker would sleep forever.
                return
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
            self._running.add(key)
            try:
                await self._worker(key, frozenset(pending.reasons))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                delay = self._retry_later(key, pending)
                when = "a newer request runs next" if delay is None else f"retry in {delay:.0f} s"
                if isinstance(e, self._expected):
                    # Expected trouble (Waldur down, an incomplete read): one line, no traceback.
                    log.warning("%s: %s not finished (%s); %s", self._name, key, e, when)
                else:
                    log.exception("%s: run for %s failed; %s", self._name, key, when)
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
                self._run_done.set()
                self._wakeup.set()
                if self._on_done is not None:
                    self._on_done(key)
