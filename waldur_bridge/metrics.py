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
HINTS = Counter("waldur_bridge_change_hints_total", "Change hints received", ["source"])
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
    ) -> None:
        self.queue_size = queue_size
        self.waldur_stats = waldur_stats
        self.held_removals = held_removals

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


_collector: LiveCollector | None = None


def register_live(
    queue_size: Callable[[], int],
    waldur_stats: Callable[[], Any],
    held_removals: Callable[[], int],
) -> None:
    """Point the scrape-time metrics at this bridge's queue and Waldur client (once per process;
    a later bridge in the same process, as in tests, takes over)."""
    global _collector
    if REGISTRY is None:
        return
    if _collector is None:
        _collector = LiveCollector(queue_size, waldur_stats, held_removals)
        REGISTRY.register(_collector)
    else:
        _collector.queue_size = queue_size
        _collector.waldur_stats = waldur_stats
        _collector.held_removals = held_removals


__all__ = [
    "HINTS",
    "LAST_GOOD_SWEEP",
    "MEMBERSHIP_ACTIONS",
    "RECONCILES",
    "RECONCILE_TIME",
    "SWEEPS",
    "LiveCollector",
    "mark_good_sweep",
    "register_live",
]
