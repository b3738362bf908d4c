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
