"""Initial sync progress lines and summary."""

from __future__ import annotations

import asyncio
import logging

import pytest

from waldur_bridge.sync.progress import InitialSyncProgress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_line_estimates_the_time_left_from_the_rate_so_far() -> None:
    clock = Clock()
    progress = InitialSyncProgress([f"p{i}" for i in range(200)], clock=clock)
    assert progress.line() == "Initial sync: 0/200 rooms, 0 members, time left not known yet"
    for i in range(120):
        progress.room_done(f"p{i}", members=9, added=9, held=0, created=True)
    progress.room_done("p0", members=9, added=9, held=0, created=True)  # counted once
    clock.now += 60
    assert progress.line() == "Initial sync: 120/200 rooms, 1,080 members, about 40 s left"


def test_summary_counts_created_added_held_and_failed() -> None:
    clock = Clock()
    progress = InitialSyncProgress(["a", "b", "c"], clock=clock)
    progress.room_done("a", members=5, added=5, held=0, created=True)
    progress.room_done("b", members=3, added=1, held=2, created=False)
    assert not progress.done.is_set()
    clock.now += 150
    progress.room_failed("c")
    progress.room_failed("c")
    assert progress.done.is_set()
    clock.now += 30  # after the end: not counted
    assert progress.summary() == (
        "Initial sync done in 2 min 30 s: 3 rooms (1 created, 1 failed (retried in the "
        "background)), 8 members (6 added), 2 removals held"
    )


async def test_report_logs_lines_then_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="waldur.sync.progress")
    line_seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Initial sync: 0/2 rooms"):
                line_seen.set()

    watch = Watch()
    logging.getLogger("waldur.sync.progress").addHandler(watch)
    try:
        progress = InitialSyncProgress(["a", "b"])
        reporter = asyncio.create_task(progress.report(0.01))
        await asyncio.wait_for(line_seen.wait(), 30)
        progress.room_done("a", members=1, added=1, held=0, created=True)
        progress.room_done("b", members=1, added=1, held=0, created=True)
        await asyncio.wait_for(reporter, 30)
    finally:
        logging.getLogger("waldur.sync.progress").removeHandler(watch)
    assert caplog.records[-1].message.startswith("Initial sync done in")


async def test_nothing_to_sync_is_done_at_once() -> None:
    progress = InitialSyncProgress([])
    assert progress.done.is_set()
    await asyncio.wait_for(progress.report(10), 1)
