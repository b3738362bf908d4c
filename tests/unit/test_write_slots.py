"""The write limit's two lanes: room writes first, space writes when no room write waits."""

from __future__ import annotations

import asyncio

import pytest

from waldur_bridge.sync.slots import WriteSlots


async def test_a_space_write_waits_while_a_room_write_waits() -> None:
    slots = WriteSlots(1)
    order: list[str] = []
    release = asyncio.Event()

    async def holder() -> None:
        async with slots:
            await release.wait()

    async def write(name: str, later: bool) -> None:
        async with slots.later() if later else slots:
            order.append(name)

    first = asyncio.create_task(holder())
    await asyncio.sleep(0)
    # The space's write asked first; the room writes that came after it still go first.
    tasks = [asyncio.create_task(write("space", True))]
    await asyncio.sleep(0)
    tasks += [asyncio.create_task(write(f"room{i}", False)) for i in range(3)]
    await asyncio.sleep(0)
    assert slots.waiting == 4
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["room0", "room1", "room2", "space"]
    assert slots.in_use == 0 and slots.waiting == 0


async def test_free_slots_serve_both_lanes_at_once_and_the_limit_holds() -> None:
    slots = WriteSlots(3)
    peak = 0
    busy = 0

    async def write(later: bool) -> None:
        nonlocal peak, busy
        async with slots.later() if later else slots:
            busy += 1
            peak = max(peak, busy)
            await asyncio.sleep(0.001)
            busy -= 1

    await asyncio.gather(*(write(i % 2 == 0) for i in range(20)))
    assert peak == 3
    assert slots.in_use == 0


async def test_a_cancelled_waiter_neither_keeps_nor_loses_a_slot() -> None:
    slots = WriteSlots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire(later=True))
    room = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    slots.release()  # handed to the room write, not to the cancelled space write
    await room
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.in_use == 1
    slots.release()
    await asyncio.wait_for(slots.acquire(later=True), 1)
    assert slots.in_use == 1


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        WriteSlots(0)
