"""The coalescing queue: bursts merge, one run per project at a time, failures retry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from waldur_bridge.sync.queue import LEADING, CoalescingQueue


async def until(condition: Callable[[], object], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def test_burst_for_one_project_coalesces() -> None:
    runs: list[tuple[str, frozenset[str]]] = []
    release = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append((key, reasons))
        await release.wait()

    queue = CoalescingQueue(worker, concurrency=2)
    queue.start()
    try:
        queue.request("p1", "hook")
        await until(lambda: runs)
        for i in range(50):
            queue.request("p1", f"event-{i % 3}")
        release.set()
        await queue.wait_idle(2)
    finally:
        await queue.stop()
    assert [k for k, _ in runs] == ["p1", "p1"]
    assert runs[1][1] == {"event-0", "event-1", "event-2"}


async def test_one_run_per_key_and_parallel_keys() -> None:
    active: dict[str, int] = {}
    peak = 0

    release = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        nonlocal peak
        active[key] = active.get(key, 0) + 1
        assert active[key] == 1
        peak = max(peak, sum(active.values()))
        await release.wait()
        active[key] -= 1

    queue = CoalescingQueue(worker, concurrency=4)
    queue.start()
    try:
        for i in range(20):
            queue.request(f"p{i % 5}", "x")
        # Held until several keys run at once, however slow the machine.
        await until(lambda: peak > 1)
        release.set()
        await queue.wait_idle(5)
    finally:
        await queue.stop()
    assert peak > 1


async def test_failure_is_retried_with_backoff() -> None:
    attempts = 0

    async def worker(key: str, reasons: frozenset[str]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("Waldur down")

    queue = CoalescingQueue(worker, concurrency=1, base_delay=0.02, max_delay=0.05)
    queue.start()
    try:
        queue.request("p", "sweep")
        await queue.wait_idle(2)
    finally:
        await queue.stop()
    assert attempts == 3
    assert queue.failures == 2


class _Outage(Exception):
    pass


async def test_a_burst_of_hints_settles_into_one_run() -> None:
    runs: list[frozenset[str]] = []

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(reasons)

    queue = CoalescingQueue(worker, concurrency=2, settle=0.2, max_wait=5)
    queue.start()
    try:
        queue.request("p1", "revoke", hint=True)
        await asyncio.sleep(0)  # the workers look, and find nothing ready
        for i in range(200):
            queue.request("p1", "grant" if i == 0 else f"hook-{i % 4}", hint=True)
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert len(runs) == 1
    assert {"revoke", "grant"} <= runs[0]


async def test_a_steady_stream_of_hints_is_read_once_per_window_and_never_starves() -> None:
    runs: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(loop.time())

    settle, max_wait = 0.1, 0.3
    queue = CoalescingQueue(worker, concurrency=1, settle=settle, max_wait=max_wait)
    queue.start()
    started = loop.time()
    try:
        # Hints keep coming faster than the window; each would postpone the run forever
        # without the cap. Stream until three runs happened (generous limit on hints).
        for i in range(5000):
            queue.request("p1", f"hook-{i}", hint=True)
            await asyncio.sleep(0.01)
            if len(runs) >= 3:
                break
        elapsed = loop.time() - started
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert len(runs) >= 3, "a steady stream starved the project's read"
    # At most one run per settle window, whatever the machine's speed.
    assert len(runs) <= elapsed / settle + 2
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert all(gap >= settle for gap in gaps[:2]), gaps


async def test_an_admin_request_does_not_wait_for_a_settle_window() -> None:
    ran = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        ran.set()

    queue = CoalescingQueue(worker, concurrency=1, settle=3600, max_wait=3600)
    queue.start()
    try:
        queue.request("p1", "webhook", hint=True)
        await asyncio.sleep(0)
        assert not ran.is_set()
        queue.request("p1", "admin")
        await asyncio.wait_for(ran.wait(), 10)
    finally:
        await queue.stop()


async def test_sweeps_run_after_hints_and_do_not_cut_a_window_short() -> None:
    order: list[str] = []
    gate = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        if key == "busy":
            await gate.wait()
        order.append(key)

    queue = CoalescingQueue(worker, concurrency=1)
    queue.start()
    try:
        queue.request("busy", "admin")
        await asyncio.sleep(0.01)
        for key in ("s1", "s2", "s3"):
            queue.request(key, "sweep", background=True)
        queue.request("hooked", "webhook", hint=True)
        gate.set()
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert order == ["busy", "hooked", "s1", "s2", "s3"]

    settling = CoalescingQueue(worker, concurrency=1, settle=3600, max_wait=3600)
    settling.request("p", "webhook", hint=True)
    settling.request("p", "sweep", background=True)
    key, wait = settling._next_ready()
    assert key is None and wait is not None and wait > 1000


async def test_expected_failures_are_one_warning_line(caplog) -> None:
    attempts = 0

    async def worker(key: str, reasons: frozenset[str]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise _Outage("Waldur answered 503")

    queue = CoalescingQueue(worker, concurrency=1, base_delay=0.01, expected=(_Outage,))
    queue.start()
    try:
        queue.request("p", "webhook")
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    records = [r for r in caplog.records if r.name == "waldur.sync.queue"]
    assert len(records) == 1
    assert records[0].levelname == "WARNING" and records[0].exc_info is None
    assert "Waldur answered 503" in records[0].getMessage()


async def test_stop_lets_the_run_in_progress_finish_and_starts_nothing_new() -> None:
    started: list[str] = []
    finished: list[str] = []
    release = asyncio.Event()
    running = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        started.append(key)
        running.set()
        await release.wait()
        finished.append(key)

    queue = CoalescingQueue(worker, concurrency=1)
    queue.start()
    queue.request("p1", "hook")
    await asyncio.wait_for(running.wait(), 30)
    queue.request("p2", "hook")  # waits behind p1: must not start once stopping
    stopping = asyncio.create_task(queue.stop(grace=30))
    await asyncio.sleep(0.05)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 30)
    assert started == ["p1"]
    assert finished == ["p1"]


async def test_stop_cancels_a_run_that_outlasts_the_grace() -> None:
    cancelled = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    queue = CoalescingQueue(worker, concurrency=1)
    queue.start()
    queue.request("p1", "hook")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(queue.stop(grace=0.1), 30)
    assert cancelled.is_set()


async def test_reported_changes_run_before_queued_sweep_work() -> None:
    """A web hook's project requested behind a sweep's thousand portals runs next."""
    runs: list[str] = []
    gate = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(key)
        await gate.wait()

    queue = CoalescingQueue(worker, concurrency=1)
    queue.start()
    try:
        for i in range(1000):
            queue.request(f"p{i}", "sweep", background=True)
        await asyncio.sleep(0.01)  # p0 is running, the rest wait
        queue.request("hooked", "webhook:role_granted")
        queue.request("p500", "events:role_revoked")  # sweep work that Waldur reported on
        gate.set()
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    # Both reported projects run before the rest of the sweep (among themselves, in the order
    # they were first queued).
    assert runs[0] == "p0" and set(runs[1:3]) == {"hooked", "p500"}
    assert sorted(runs) == sorted([f"p{i}" for i in range(1000)] + ["hooked"])


async def test_without_background_reasons_arrival_order_holds() -> None:
    runs: list[str] = []

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(key)

    queue = CoalescingQueue(worker, concurrency=1)
    for key in ("a", "b", "c"):
        queue.request(key, "sweep")
    queue.request("d", "webhook")
    queue.start()
    try:
        await queue.wait_idle(5)
    finally:
        await queue.stop()
    assert runs == ["a", "b", "c", "d"]


async def test_hints_lead_at_once_and_coalesce_behind_the_run_in_progress() -> None:
    """With `lead`, a hint runs at once (marked LEADING); the hints that arrive while it runs
    become one run right after it, without waiting for a settle window."""
    runs: list[frozenset[str]] = []
    gate = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(reasons)
        await gate.wait()

    # A window no machine outlasts: any run that waited for it would never happen here.
    queue = CoalescingQueue(worker, concurrency=2, settle=3600, max_wait=3600, lead=True)
    queue.start()
    try:
        queue.request("p1", "grant-0", hint=True)
        await until(lambda: runs)
        for i in range(1, 50):
            queue.request("p1", f"grant-{i}", hint=True)
        await asyncio.sleep(0.05)
        assert len(runs) == 1, "a second run of the key started while one was in progress"
        gate.set()
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert runs[0] == {"grant-0", LEADING}
    assert runs[1] == {f"grant-{i}" for i in range(1, 50)} | {LEADING}
    assert len(runs) == 2, "nothing asked for a settled run, so none came"


async def test_a_settled_run_follows_once_the_hints_are_quiet() -> None:
    """A leading run that leaves removals asks for a settled run: it runs in full once the
    key's hints have been quiet for the window, never during a stream beyond max_wait."""
    runs: list[tuple[float, frozenset[str]]] = []
    loop = asyncio.get_running_loop()
    queue: CoalescingQueue

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append((loop.time(), reasons))
        if "revoke" in reasons and LEADING in reasons:
            queue.settle_later(key)

    settle = 0.2
    queue = CoalescingQueue(worker, concurrency=1, settle=settle, max_wait=5, lead=True)
    queue.start()
    try:
        queue.request("p1", "revoke", hint=True)
        await until(lambda: runs)
        queue.request("p1", "grant", hint=True)
        last_hint = loop.time()
        assert queue.is_queued("p1")
        await queue.wait_idle(10)  # an armed settled run counts as work to wait for
    finally:
        await queue.stop()
    kinds = [LEADING in reasons for _, reasons in runs]
    assert kinds == [True, True, False], runs
    settled_at, settled = runs[-1]
    assert "settled" in settled
    assert settled_at - last_hint >= settle * 0.9


async def test_a_stream_of_hints_never_starves_the_settled_run() -> None:
    runs: list[tuple[float, frozenset[str]]] = []
    loop = asyncio.get_running_loop()
    queue: CoalescingQueue

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append((loop.time(), reasons))
        if LEADING in reasons and not any(LEADING not in r for _, r in runs):
            queue.settle_later(key)

    settle, max_wait = 0.1, 0.4
    queue = CoalescingQueue(worker, concurrency=1, settle=settle, max_wait=max_wait, lead=True)
    queue.start()
    started = loop.time()
    try:
        # Hints faster than the window, until the settled run came (a generous limit).
        for i in range(5000):
            queue.request("p1", f"hook-{i}", hint=True)
            await asyncio.sleep(0.01)
            if any(LEADING not in r for _, r in runs):
                break
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    full = [t for t, r in runs if LEADING not in r]
    assert full, "a steady stream starved the settled run"
    assert full[0] - started >= max_wait * 0.9


async def test_an_admin_run_is_full_even_while_hints_settle() -> None:
    runs: list[frozenset[str]] = []

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(reasons)

    queue = CoalescingQueue(worker, concurrency=1, settle=3600, max_wait=3600, lead=True)
    queue.start()
    try:
        queue.request("p1", "webhook", hint=True)
        await queue.wait_idle(10)
        queue.request("p1", "sweep", background=True)  # inside the window: additions only
        await queue.wait_idle(10)
        queue.request("p1", "admin")
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert runs == [
        frozenset({"webhook", LEADING}),
        frozenset({"sweep", LEADING}),
        frozenset({"admin"}),
    ]


async def test_a_hint_leads_past_queued_sweep_work_and_an_admin_run_is_never_leading() -> None:
    runs: list[tuple[str, frozenset[str]]] = []
    gate = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append((key, reasons))
        await gate.wait()

    queue = CoalescingQueue(worker, concurrency=1, settle=3600, max_wait=3600, lead=True)
    queue.start()
    try:
        queue.request("busy", "admin")
        await until(lambda: runs)
        queue.request("s1", "sweep", background=True)
        queue.request("p1", "sweep", background=True)
        queue.request("p1", "webhook", hint=True)  # queued sweep work does not stop a lead
        queue.request("p2", "webhook", hint=True)
        queue.request("p2", "admin")  # an admin's run is a full one
        gate.set()
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert runs[1:] == [
        ("p1", frozenset({"sweep", "webhook", LEADING})),
        ("p2", frozenset({"webhook", "admin"})),
        ("s1", frozenset({"sweep"})),
    ]


async def test_without_lead_every_hint_settles() -> None:
    runs: list[frozenset[str]] = []

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(reasons)

    queue = CoalescingQueue(worker, concurrency=1, settle=3600, max_wait=3600)
    queue.start()
    try:
        queue.request("p1", "webhook", hint=True)
        await asyncio.sleep(0.05)
        assert runs == []
    finally:
        await queue.stop()


async def test_busy_keys_and_the_done_callback() -> None:
    """`busy` holds running and queued keys but not one waiting out a retry; `on_done` sees
    each finished run, failed or not, once its key no longer counts as running."""
    release = asyncio.Event()
    seen: list[tuple[str, set[str]]] = []
    queue: CoalescingQueue

    async def worker(key: str, reasons: frozenset[str]) -> None:
        await release.wait()
        if key == "bad":
            raise RuntimeError("boom")

    def done(key: str) -> None:
        seen.append((key, queue.busy()))

    queue = CoalescingQueue(worker, concurrency=1, base_delay=60, on_done=done)
    queue.start()
    try:
        queue.request("bad", "sweep")
        queue.request("good", "sweep")
        await until(lambda: queue.busy() == {"bad", "good"} and queue.size == 2)
        release.set()
        await until(lambda: len(seen) == 2)
    finally:
        await queue.stop()
    assert seen[0] == ("bad", {"good"})  # the failed key waits 60 s: not busy
    assert seen[1] == ("good", set())
    assert queue.is_queued("bad")


async def test_repeats_of_a_hint_settle_and_news_still_leads() -> None:
    """A thousand copies of one hook: the first leads and the repeats become one run when the
    window closes, not a read each; a new hint in the middle of them still leads at once."""
    runs: list[frozenset[str]] = []
    gate = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(reasons)
        await gate.wait()

    # A window no machine outlasts: a repeat that led would run at once, one that settles
    # waits for an hour, whatever the machine's speed.
    settle = 3600.0
    queue = CoalescingQueue(worker, concurrency=2, settle=settle, max_wait=settle, lead=True)
    queue.start()
    try:
        queue.request("p1", "hook-0", hint=True, signature="granted:bob")
        await until(lambda: runs)
        gate.set()
        await until(lambda: queue.busy() == set())
        for i in range(1, 200):
            queue.request("p1", f"hook-{i}", hint=True, signature="granted:bob")
        key, wait = queue._next_ready()
        assert key is None and wait is not None and wait > settle / 2, "a repeat led"
        queue.request("p1", "eve", hint=True, signature="granted:eve")
        await until(lambda: len(runs) >= 2)
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert runs[0] == {"hook-0", LEADING}
    assert LEADING in runs[1] and "eve" in runs[1] and "hook-199" in runs[1]
    assert len(runs) == 2


async def test_a_hint_after_a_window_closed_opens_a_new_one() -> None:
    """Windows that are over linger until the workers look; a hint then must start a new
    window (a leading run), not run in full in the middle of a role change."""
    runs: list[frozenset[str]] = []

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(reasons)

    settle = 0.05
    queue = CoalescingQueue(worker, concurrency=1, settle=settle, max_wait=0.1, lead=True)
    queue.start()
    try:
        queue.request("p1", "grant", hint=True, signature="granted:bob")
        await queue.wait_idle(10)
        await asyncio.sleep(0.2)  # the window is over, and nothing looked at it since
        queue.request("p1", "revoke", hint=True, signature="revoked:bob")
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert runs == [frozenset({"grant", LEADING}), frozenset({"revoke", LEADING})]
