"""The benchmark's environment: one Synapse, a Waldur simulator, the real bridge in-process,
and the instruments that watch them (homeserver request counter, join watcher, memory)."""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import logging
import os
import pstats
import re
import resource
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from mautrix.api import HTTPAPI
from mautrix.types import EventType, Membership

from waldur_devenv.synapse import (
    AppserviceHomeserver,
    LocalSynapse,
    free_port,
    write_registration,
)
from waldur_devenv.testing import BridgeRunner, make_registration, write_config
from waldur_simulator import WaldurSimulator

log = logging.getLogger("bench")

# The timers stay out of the way: the benchmark drives sweeps itself.
QUIET_FEEDS: dict[str, Any] = {
    "waldur.sweep_interval": 3600,
    "waldur.events.interval": 3600,
    "waldur.retry.attempts": 2,
    "waldur.retry.backoff_initial": 0.05,
    "waldur.retry.backoff_max": 0.2,
    "waldur.timeout": 30,
    "bridge.portals.create": "all",
    "waldur.webhook.enabled": True,
    "waldur.webhook.register": False,
}


# region homeserver request counter


_ID_SEGMENT = re.compile(r"/(?:[!@#$%][^/]*|\d+|[A-Za-z0-9_=@-]{20,})(?=/|$)")


class HomeserverCounter:
    """Counts every homeserver request the bridge's mautrix client sends (class-level patch of
    HTTPAPI._send, so child intents of puppets are counted too). The benchmark's own traffic
    uses plain aiohttp and is not counted."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self._original: Any = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = HTTPAPI._send
        counts, seconds = self.counts, self.seconds

        async def counting_send(api: HTTPAPI, method: Any, url: Any, *args: Any, **kw: Any):
            key = f"{method} {_ID_SEGMENT.sub('/{id}', str(url.path))}"
            counts[key] += 1
            started = time.perf_counter()
            try:
                return await original(api, method, url, *args, **kw)
            finally:
                seconds[key] += time.perf_counter() - started

        self._original = original
        HTTPAPI._send = counting_send  # type: ignore[method-assign]

    def uninstall(self) -> None:
        if self._original is not None:
            HTTPAPI._send = self._original  # type: ignore[method-assign]
            self._original = None

    def snapshot(self) -> tuple[Counter[str], Counter[str]]:
        return Counter(self.counts), Counter(self.seconds)

    @staticmethod
    def delta(
        before: tuple[Counter[str], Counter[str]], after: tuple[Counter[str], Counter[str]]
    ) -> dict[str, Any]:
        diff = after[0].copy()
        diff.subtract(before[0])
        busy = after[1].copy()
        busy.subtract(before[1])
        items = {k: v for k, v in diff.items() if v}
        writes = {k: v for k, v in items.items() if not k.startswith("GET ")}
        return {
            "requests": sum(items.values()),
            "reads": sum(v for k, v in items.items() if k.startswith("GET ")),
            "writes": sum(writes.values()),
            "writes_by_endpoint": dict(sorted(writes.items(), key=lambda kv: -kv[1])),
            "reads_by_endpoint": dict(
                sorted(
                    ((k, v) for k, v in items.items() if k.startswith("GET ")),
                    key=lambda kv: -kv[1],
                )
            ),
            "mean_ms_by_endpoint": {
                k: round(1000 * busy[k] / v, 1) for k, v in sorted(items.items())
            },
            "busy_seconds": round(sum(busy[k] for k in items), 3),
        }


# endregion
# region join watcher


class JoinWatcher:
    """Sees joins as the homeserver pushes them to the appservice (the bridge's own AS server),
    so the bridge's joins and the bare loop's joins are observed the same way."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, str], asyncio.Future[float]] = {}
        self.seen = 0
        # Every join and invite seen while recording, (room ID, user ID, membership) -> when:
        # a phase's timeline.
        self.recording: dict[tuple[str, str, str], float] | None = None

    def attach(self, bridge: Any) -> None:
        bridge.az.matrix_event_handler(self.on_event)

    def expect(self, room_id: str, user_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[(room_id, user_id)] = future
        return future

    async def on_event(self, evt: Any) -> None:
        if evt.type != EventType.ROOM_MEMBER:
            return
        now = time.perf_counter()
        membership = evt.content.membership
        if self.recording is not None and membership in (Membership.JOIN, Membership.INVITE):
            key = (str(evt.room_id), str(evt.state_key), str(membership))
            self.recording.setdefault(key, now)
        if membership != Membership.JOIN:
            return
        self.seen += 1
        future = self._waiting.pop((str(evt.room_id), str(evt.state_key)), None)
        if future is not None and not future.done():
            future.set_result(now)


# endregion
# region memory


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        return -1.0


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def memory(label: str) -> dict[str, Any]:
    gc.collect()
    return {"at": label, "rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}


def process_cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds of a process (this one by default), from /proc."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return -1.0


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")
# Synapse's CPU and database time, per request servlet and per background job.
_CPU_METRICS = {
    "synapse_http_server_response_ru_utime_seconds_total": ("servlet", "cpu"),
    "synapse_http_server_response_ru_stime_seconds_total": ("servlet", "cpu"),
    "synapse_http_server_response_db_txn_count_total": ("servlet", "db_txns"),
    "synapse_http_server_response_count_total": ("servlet", "count"),
    "synapse_background_process_ru_utime_seconds_total": ("name", "cpu"),
    "synapse_background_process_ru_stime_seconds_total": ("name", "cpu"),
    "synapse_background_process_db_txn_count_total": ("name", "db_txns"),
    "synapse_background_process_start_count_total": ("name", "count"),
}


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text format into {(name, labels): value}."""
    values: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _METRIC_LINE.match(line)
        if match and not line.startswith("#"):
            try:
                values[(match[1], match[2] or "")] = float(match[3])
            except ValueError:
                continue
    return values


def _label(labels: str, key: str) -> str:
    found = re.search(key + r'="([^"]*)"', labels)
    return found[1] if found else "?"


def cpu_breakdown(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], top: int = 25
) -> dict[str, Any]:
    """Synapse's CPU over a span by request servlet and by background job (its own
    accounting): where a phase's homeserver time went."""
    rows: dict[str, dict[str, float]] = {}
    for (name, labels), value in after.items():
        spec = _CPU_METRICS.get(name)
        if spec is None:
            continue
        delta = value - before.get((name, labels), 0.0)
        if not delta:
            continue
        kind = "request" if spec[0] == "servlet" else "background"
        key = f"{kind} {_label(labels, spec[0])}"
        if kind == "request":
            key += f" {_label(labels, 'method')}"
        row = rows.setdefault(key, {"cpu": 0.0, "db_txns": 0.0, "count": 0.0})
        row[spec[1]] += delta
    ranked = sorted(rows.items(), key=lambda kv: -kv[1]["cpu"])
    return {
        "note": (
            "Synapse's own accounting (its main thread, per request and job); the rest of "
            "its CPU is the database threads and the reactor"
        ),
        "total_cpu_s": round(sum(r["cpu"] for r in rows.values()), 2),
        "top": {
            k: {
                "cpu_s": round(r["cpu"], 3),
                "count": int(r["count"]),
                "db_txns": int(r["db_txns"]),
            }
            for k, r in ranked[:top]
        },
    }


class CpuMeter:
    """CPU seconds used by Synapse and by this process (bridge, simulator, client) over a span."""

    def __init__(
        self,
        synapse_pid: int | None,
        metrics: Callable[[], Awaitable[dict[tuple[str, str], float]]] | None = None,
    ) -> None:
        self.synapse_pid = synapse_pid
        self._start = (0.0, 0.0, 0.0)
        self._metrics = metrics
        self.metrics_start: dict[tuple[str, str], float] = {}

    async def breakdown(self) -> dict[str, Any] | None:
        """Synapse's own split of its CPU since the meter started."""
        if self._metrics is None:
            return None
        return cpu_breakdown(self.metrics_start, await self._metrics())

    def start(self) -> CpuMeter:
        self._start = (
            time.perf_counter(),
            process_cpu_seconds(self.synapse_pid) if self.synapse_pid else -1.0,
            process_cpu_seconds(),
        )
        return self

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._start[0]
        syn = process_cpu_seconds(self.synapse_pid) - self._start[1] if self.synapse_pid else -1
        own = process_cpu_seconds() - self._start[2]
        return {
            "wall_s": round(wall, 3),
            "synapse_cpu_s": round(syn, 2),
            "synapse_cpu_share": round(syn / wall, 2) if wall else 0.0,
            "bench_process_cpu_s": round(own, 2),
            "bench_process_cpu_share": round(own / wall, 2) if wall else 0.0,
        }


class Profiler:
    """cProfile over a span of the benchmark (the whole event loop thread), optional."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._profile: cProfile.Profile | None = None

    def __enter__(self) -> Profiler:
        if self.path is not None:
            self._profile = cProfile.Profile()
            self._profile.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._profile is None or self.path is None:
            return
        self._profile.disable()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._profile.dump_stats(str(self.path))

    def top(self, limit: int = 25) -> list[str] | None:
        if self._profile is None:
            return None
        stream = io.StringIO()
        stats = pstats.Stats(self._profile, stream=stream)
        stats.sort_stats("tottime").print_stats(limit)
        return [line for line in stream.getvalue().splitlines() if line.strip()][-limit - 1 :]


# endregion
# region environment


class BenchmarkError(RuntimeError):
    """The run cannot give a valid measurement."""


class Homeserver(AppserviceHomeserver):
    """One Synapse for the whole run, with the bridge's own registration."""

    def __init__(self, workdir: Path) -> None:
        as_port = free_port()
        tokens = {"as_token": secrets.token_hex(16), "hs_token": secrets.token_hex(16)}
        registration = make_registration(as_port, tokens)
        registration_path = write_registration(
            workdir / "synapse" / "registration.yaml", registration
        )
        synapse = LocalSynapse(
            workdir / "synapse", registration_path=registration_path, metrics_port=free_port()
        )
        super().__init__(synapse, registration, registration_path, as_port)
        self.workdir = workdir

    @property
    def domain(self) -> str:
        return self.server_name

    @property
    def bot(self) -> str:
        return f"@{self.sender_localpart}:{self.domain}"

    async def start(self) -> None:
        await self.synapse.start()

    @property
    def pid(self) -> int | None:
        proc = self.synapse._proc
        return proc.pid if proc is not None else None

    async def cpu(self) -> CpuMeter:
        """A meter started once Synapse is idle: the background work a phase leaves behind
        (event persistence, stats, the appservice's transactions) is not charged to the next."""
        await self.quiet()
        meter = CpuMeter(self.pid, self.metrics)
        meter.metrics_start = await self.metrics()
        return meter.start()

    async def metrics(self) -> dict[tuple[str, str], float]:
        """Synapse's Prometheus counters, by (name, labels)."""
        url = f"http://127.0.0.1:{self.synapse.metrics_port}/_synapse/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return parse_metrics(await resp.text())

    async def quiet(
        self, window: float = 0.5, idle_share: float = 0.1, timeout: float = 30.0
    ) -> float:
        """Wait until Synapse uses under `idle_share` of a core over `window`; the seconds
        waited (gives up after `timeout`: a busy machine must not hang the benchmark)."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            before = process_cpu_seconds(self.pid)
            await asyncio.sleep(window)
            if process_cpu_seconds(self.pid) - before < idle_share * window:
                break
        return time.perf_counter() - started

    async def stop(self) -> None:
        await self.synapse.stop()


class BridgeHandle:
    """The real bridge on this event loop, against the given simulator, with its own DB."""

    def __init__(
        self,
        hs: Homeserver,
        sim: WaldurSimulator,
        workdir: Path,
        watcher: JoinWatcher,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        self.defaults = dict(defaults or {})
        self.hs = hs
        self.sim = sim
        self.workdir = workdir
        self.watcher = watcher
        self.config_path = workdir / "config.yaml"
        self.runner: BridgeRunner | None = None
        self.bridge: Any = None

    async def start(self, **overrides: Any) -> Any:
        self.workdir.mkdir(parents=True, exist_ok=True)
        write_config(
            self.config_path,
            homeserver_url=self.hs.url,
            domain=self.hs.domain,
            as_port=self.hs.as_port,
            waldur_url=self.sim.url,
            waldur_token=self.sim.staff_token,
            database=f"sqlite:{self.workdir / 'bridge.db'}",
            as_token=self.hs.as_token,
            hs_token=self.hs.hs_token,
            overrides={**QUIET_FEEDS, **self.defaults, **overrides},
        )
        self.runner = BridgeRunner(self.config_path)
        self.bridge = await self.runner.start()
        self.watcher.attach(self.bridge)
        return self.bridge

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        self.runner = None
        self.bridge = None

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.hs.as_port}{self.bridge.config.webhook_path}"

    async def wait_first_sweep(self, timeout: float = 300) -> None:
        """The sweep loop sweeps once at start; wait for it and for the work it queued."""
        deadline = time.monotonic() + timeout
        while not self.bridge.sync.last_sweep:
            if time.monotonic() > deadline:
                raise TimeoutError("the bridge's first sweep did not finish")
            await asyncio.sleep(0.05)
        await self.settle(timeout)

    async def settle(self, timeout: float = 300) -> None:
        """Wait until web hooks are delivered and the bridge's queue is idle. A failed
        reconcile would be retried on a timer and spoil the numbers: stop right there."""
        await self.sim.drain_hooks()
        queue = self.bridge.sync.queue
        failures = queue.failures
        deadline = time.monotonic() + timeout
        idle = False
        while True:
            try:
                await self.bridge.sync.wait_idle(0.5)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the bridge was not idle after {timeout} s") from None
            else:
                idle = True
            if queue.failures > failures:
                raise BenchmarkError(
                    f"{queue.failures - failures} reconcile(s) failed (see the log above); "
                    "the measurement would include retries"
                )
            if idle:
                return

    async def portal_room(self, project_uuid: str) -> str:
        from waldur_bridge.portal import Portal

        portal = await Portal.get_by_project(project_uuid)
        if portal is None or not portal.room_id:
            raise RuntimeError(f"project {project_uuid} has no portal room")
        return str(portal.room_id)

    def puppet(self, username: str) -> str:
        return f"@waldur_{username}:{self.hs.domain}"


async def timed(coro: Awaitable[Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summarize_ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
        "mean_ms": round(sum(ms) / len(ms), 1),
    }


async def bounded(limit: int, jobs: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run the jobs with at most `limit` in flight, in order of the list."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[Any]]) -> Any:
        async with semaphore:
            return await job()

    return await asyncio.gather(*(run(job) for job in jobs))


# endregion
