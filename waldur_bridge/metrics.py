"""Prometheus metrics of the bridge, all named ``waldur_bridge_*``.

Values that the bridge already keeps (the queue, the Waldur client's counters) are read when
Prometheus scrapes, so they are never stale: the queue gauge reads 0 when the queue is idle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from mautrix.util.opt_prometheus import Counter, Gauge, Histogram

try:
    from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
except (
    ImportError
):  # pragma: no cover  (prometheus_client is a dependency; mautrix makes it optional)
    REGISTRY = None

RECONCILES = Counter("waldur_bridge_reconciles_total", "Portal reconciles", ["outcome"])
RECONCILE_TIME = Histogram("waldur_bridge_reconcile_seconds", "Time to reconcile one portal")
SWEEPS = Counter("waldur_bridge_sweeps_total", "Full sweeps of Waldur", ["outcome"])
LAST_GOOD_SWEEP = Gauge(
    "waldur_bridge_last_good_sweep_timestamp_seconds",
    "Unix time at which the last full sweep of Waldur succeeded",
)
SWEEP_TIME = Histogram(
    "waldur_bridge_sweep_seconds",
    "Time a full sweep takes to read every project, grant and user from Waldur",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
HINTS = Counter("waldur_bridge_change_hints_total", "Change hints received", ["source"])
HINT_TO_ACTION = Histogram(
    "waldur_bridge_hint_to_action_seconds",
    "From a web hook or polled event about a project to the end of that project's reconcile",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300),
)
MEMBERSHIP_ACTIONS = Counter(
    "waldur_bridge_membership_actions_total",
    "Homeserver writes of reconciles (invite, join, kick, power-levels, ...) by outcome",
    ["action", "outcome"],
)


def mark_good_sweep(at: float | None = None) -> None:
    LAST_GOOD_SWEEP.set(time.time() if at is None else at)


class LiveCollector:
    """Reads the queue length and the Waldur client's counters at scrape time."""

    def __init__(
        self,
        queue_size: Callable[[], int],
        waldur_stats: Callable[[], Any],
        held_removals: Callable[[], int],
        room_facts: Callable[[], RoomFacts] | None = None,
    ) -> None:
        self.queue_size = queue_size
        self.waldur_stats = waldur_stats
        self.held_removals = held_removals
        self.room_facts = room_facts

    def collect(self) -> Iterator[Any]:
        queue = GaugeMetricFamily(
            "waldur_bridge_sync_queue_size", "Projects waiting for or in a reconcile"
        )
        queue.add_metric([], self.queue_size())
        yield queue
        held = GaugeMetricFamily(
            "waldur_bridge_held_removals", "Removals held for an admin by the mass-removal guard"
        )
        held.add_metric([], self.held_removals())
        yield held
        stats = self.waldur_stats()
        requests = CounterMetricFamily(
            "waldur_bridge_waldur_requests", "HTTP requests to Waldur, retries included"
        )
        requests.add_metric([], stats.requests)
        yield requests
        failures = CounterMetricFamily(
            "waldur_bridge_waldur_request_failures",
            "Waldur calls that failed after their retries (or at once, when not repeatable)",
        )
        failures.add_metric([], stats.failures)
        yield failures
        retries = CounterMetricFamily(
            "waldur_bridge_waldur_request_retries", "Waldur requests repeated after a failure"
        )
        retries.add_metric([], stats.retries)
        yield retries
        if self.room_facts is not None:
            yield from self.room_facts().families()


class RoomFacts:
    """Rooms, members, held removals' age and Waldur access, as the bridge last saw them."""

    def __init__(
        self,
        portals: dict[str, int],
        members: int,
        oldest_held_age: float,
        waldur_access_ok: bool,
    ) -> None:
        self.portals = portals
        self.members = members
        self.oldest_held_age = oldest_held_age
        self.waldur_access_ok = waldur_access_ok

    def families(self) -> Iterator[Any]:
        portals = GaugeMetricFamily(
            "waldur_bridge_portals",
            "Project rooms by state, as of the last sweep",
            labels=["state"],
        )
        for state, count in sorted(self.portals.items()):
            portals.add_metric([state], count)
        yield portals
        members = GaugeMetricFamily(
            "waldur_bridge_room_members",
            "People who belong in the bridge's rooms by their Waldur roles (all rooms together)",
        )
        members.add_metric([], self.members)
        yield members
        oldest = GaugeMetricFamily(
            "waldur_bridge_oldest_held_removal_seconds",
            "Age of the oldest removal held for an admin (0 when none is held)",
        )
        oldest.add_metric([], self.oldest_held_age)
        yield oldest
        access = GaugeMetricFamily(
            "waldur_bridge_waldur_access_ok",
            "1 while the bridge can read Waldur with its token, 0 while access is lost",
        )
        access.add_metric([], 1 if self.waldur_access_ok else 0)
        yield access


_collector: LiveCollector | None = None


def register_live(
    queue_size: Callable[[], int],
    waldur_stats: Callable[[], Any],
    held_removals: Callable[[], int],
    room_facts: Callable[[], RoomFacts] | None = None,
) -> None:
    """Point the scrape-time metrics at this bridge's queue and Waldur client (once per process;
    a later bridge in the same process, as in tests, takes over)."""
    global _collector
    if REGISTRY is None:
        return
    if _collector is None:
        _collector = LiveCollector(queue_size, waldur_stats, held_removals, room_facts)
        REGISTRY.register(_collector)
    else:
        _collector.queue_size = queue_size
        _collector.waldur_stats = waldur_stats
        _collector.held_removals = held_removals
        _collector.room_facts = room_facts


__all__ = [
    "HINTS",
    "HINT_TO_ACTION",
    "SWEEP_TIME",
    "RoomFacts",
    "LAST_GOOD_SWEEP",
    "MEMBERSHIP_ACTIONS",
    "RECONCILES",
    "RECONCILE_TIME",
    "SWEEPS",
    "LiveCollector",
    "mark_good_sweep",
    "register_live",
]
