"""The coalescing queue: bursts merge, one run per project at a time, failures retry."""

from __future__ import annotations

import asyncio

from waldur_bridge.sync.queue import CoalescingQueue


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
        await asyncio.sleep(0.01)
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

    async def worker(key: str, reasons: frozenset[str]) -> None:
        nonlocal peak
        active[key] = active.get(key, 0) + 1
        assert active[key] == 1
        peak = max(peak, sum(active.values()))
        await asyncio.sleep(0.01)
        active[key] -= 1

    queue = CoalescingQueue(worker, concurrency=4)
    queue.start()
    try:
        for i in range(20):
            queue.request(f"p{i % 5}", "x")
            await asyncio.sleep(0.001)
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


async def test_reported_changes_run_before_queued_sweep_work() -> None:
    """A web hook's project requested behind a sweep's thousand portals runs next."""
    runs: list[str] = []
    gate = asyncio.Event()

    async def worker(key: str, reasons: frozenset[str]) -> None:
        runs.append(key)
        await gate.wait()

    queue = CoalescingQueue(worker, concurrency=1, background=frozenset({"sweep"}))
    queue.start()
    try:
        for i in range(1000):
            queue.request(f"p{i}", "sweep")
        await asyncio.sleep(0.01)  # p0 is running, the rest wait
        queue.request("hooked", "webhook:role_granted")
        queue.request("p500", "events:role_revoked")  # sweep work that Waldur reported on
        gate.set()
        await queue.wait_idle(10)
    finally:
        await queue.stop()
    assert runs[:3] == ["p0", "hooked", "p500"]
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
