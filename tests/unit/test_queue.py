"""The coalescing queue: bursts merge, one run per project at a time, failures retry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from waldur_bridge.sync.queue import CoalescingQueue


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
