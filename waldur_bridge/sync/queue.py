"""A coalescing per-project work queue.

Web hooks, the events poll and sweeps all ask for "reconcile project P". A burst of requests for
one project becomes at most one run in progress plus one queued run after it: the queued run
sees everything that happened before it started, so further requests can merge into it.

Hints settle before they run: each hint about a key pushes its run `settle` seconds later, but
never later than `max_wait` after the first hint of the burst, so a steady stream of hints costs
one run per settle window at most and still runs (no starvation). A role change in Waldur is a
revoke then a grant; a run after the window sees both. Background requests (sweeps) run after
ready hints, so a sweep over every room never delays the room a web hook asked about.

With `lead`, hints do not wait: each hint runs as soon as the key is free (nothing of it
running), marked LEADING, and hints that arrive while a run is in progress merge into one run
queued behind it (the reads coalesce, the additions do not wait). The worker does in a leading
run what cannot flap (additions, promotions) and leaves what a half-seen role change could get
wrong (removals, demotions) to a settled run, which it asks for with `settle_later`: that run
comes once the key's hints have been quiet for `settle` seconds (at most `max_wait` after the
first), so a grant is felt within the homeserver's latency however many follow it, and a
revoke still waits out the window. Any run that starts while the key's window is open (a
sweep's too) is a leading one; only an admin's request runs in full at once.
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


@dataclass
class _Pending:
    reasons: set[str] = field(default_factory=set)
    not_before: float = 0.0
    failures: int = 0
    # When the first hint of the current burst arrived (monotonic); None when not settling.
    settling_since: float | None = None
    # Only background requests (sweeps) so far: runs after ready foreground work.
    background: bool = True
    # An admin asked: runs in full even while the key's hints settle.
    force_full: bool = False
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


@dataclass
class _Window:
    """A key's settle window with `lead`: open while its hints keep coming."""

    since: float
    due: float
    # A run left removals to the settled run: one runs in full when the window closes.
    armed: bool = False
    # What the window's hints said (event and people): a hint that says it again is noise (a
    # thousand copies of one hook, a hook and the events poll) and settles instead of leading.
    seen: set[str] = field(default_factory=set)


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
        # With `lead`: keys whose hints are settling (see the module doc).
        self._windows: dict[str, _Window] = {}
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
        self,
        key: str,
        reason: str,
        *,
        hint: bool = False,
        background: bool = False,
        signature: str | None = None,
    ) -> None:
        """Queue a run of `key`.

        hint: a change notice (web hook, events poll) that settles first (see the module doc).
        background: a sweep's request; it neither cuts a settle window short nor goes before
        foreground work. Anything else (admin actions) runs as soon as a slot is free.
        signature: what a hint says (event and people); with `lead`, a hint that repeats one
        already seen in the key's window settles instead of leading.
        """
        now = time.monotonic()
        if self.lead and self.settle > 0:
            self._request_leading(
                key, reason, hint=hint, background=background, now=now, signature=signature
            )
            return
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(reasons={reason}, background=background)
        else:
            pending.reasons.add(reason)
            pending.background = pending.background and background
        if hint and self.settle > 0:
            if pending.settling_since is None:
                pending.settling_since = now
            pending.not_before = min(now + self.settle, pending.settling_since + self.max_wait)
        elif not background:
            # An admin's request beats a settle window and a retry timer: run now, in full.
            pending.not_before = 0.0
            pending.settling_since = None
        elif pending.settling_since is None:
            # Fresh information beats a retry timer.
            pending.not_before = 0.0
        self._idle.clear()
        self._wakeup.set()

    def _request_leading(
        self,
        key: str,
        reason: str,
        *,
        hint: bool,
        background: bool,
        now: float,
        signature: str | None,
    ) -> None:
        """`request` with `lead`: hints run at once (or right after the run in progress)."""
        pending = self._pending.get(key)
        news_waits = pending is not None and pending.not_before == 0.0
        if pending is None:
            pending = self._pending[key] = _Pending(reasons={reason}, background=background)
        else:
            pending.reasons.add(reason)
            pending.background = pending.background and background
        if hint:
            window = self._windows.get(key)
            if window is None or window.due <= now:
                # A new burst (windows that are over are removed lazily): a settled run still
                # owed waits for the new window, which may hold half a role change.
                armed = window is not None and window.armed
                window = self._windows[key] = _Window(now, now + self.settle, armed=armed)
            else:
                window.due = min(now + self.settle, window.since + self.max_wait)
            pending.background = False
            if signature is None or signature not in window.seen:
                # News: it runs as soon as the key is free (it beats a retry timer too).
                if signature is not None:
                    window.seen.add(signature)
                pending.not_before = 0.0
            elif not news_waits:
                # A repeat: it waits for the window, unless something already waits to run.
                pending.not_before = window.due
        elif not background:
            # An admin's request beats a settle window and a retry timer: run now, in full.
            pending.not_before = 0.0
            pending.force_full = True
            self._windows.pop(key, None)
        else:
            pending.not_before = 0.0
        self._idle.clear()
        self._wakeup.set()

    def settle_later(self, key: str) -> None:
        """A leading run left removals or demotions: run `key` in full once its hints have
        settled (at once if its window is already over)."""
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(now, now + self.settle)
        window.armed = True
        self._idle.clear()
        self._wakeup.set()

    def _take(self, key: str, now: float) -> _Pending:
        """Pop the pending run of `key`, leading while its window is open."""
        pending = self._pending.pop(key)
        if not self.lead or self.settle <= 0:
            return pending
        window = self._windows.get(key)
        if pending.force_full or window is None or window.due <= now:
            # Nothing settling (a sweep, a retry), an admin, or the window is over: in full.
            self._windows.pop(key, None)
            pending.reasons.discard(LEADING)
        else:
            pending.reasons.add(LEADING)
        return pending

    def _close_windows(self, now: float) -> float | None:
        """Windows that are over: an armed one queues its settled run; returns how long
        until the next armed window closes."""
        soonest: float | None = None
        for key, window in list(self._windows.items()):
            if key in self._running:
                continue
            if window.due > now:
                if window.armed and (soonest is None or window.due < soonest):
                    soonest = window.due
                continue
            del self._windows[key]
            if window.armed:
                pending = self._pending.setdefault(key, _Pending(background=False))
                pending.reasons.add("settled")
                pending.background = False
                pending.not_before = 0.0
        return soonest

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

    def _armed(self) -> set[str]:
        return {k for k, w in self._windows.items() if w.armed}

    def is_queued(self, key: str) -> bool:
        """Whether a run of `key` waits (settling, on a retry timer or for a slot)."""
        return key in self._pending or key in self._armed()

    def busy(self) -> set[str]:
        """The keys running or due to run soon: queued, except those waiting out a retry."""
        ready = {k for k, p in self._pending.items() if not p.failures}
        return self._running | ready | self._armed()

    @property
    def size(self) -> int:
        return len(set(self._pending) | self._running | self._armed())

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
        soonest = self._close_windows(now) if self._windows else None
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
                if not self._pending and not self._running and not self._armed():
                    self._idle.set()
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    pass
                continue
            pending = self._take(key, time.monotonic())
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
