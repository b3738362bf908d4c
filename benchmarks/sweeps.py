"""(2) Steady sweeps at site scale, (4) the bridge's memory, and (5) web hook latency while a
sweep runs.

The Waldur simulator runs in a child process (waldur_simulator.process), so this process's
RSS and CPU are the bridge's (plus the benchmark's small client and the interpreter).
"""

from __future__ import annotations

import asyncio
import random
import time
import tracemalloc
from typing import Any

from harness import BridgeHandle, memory, summarize_ms
from scenarios import WEBHOOK_GROUPS, Context, _counts, _delta

from waldur_simulator.process import SimulatorProcess

# seed_bulk puts project i into organization i % (projects // 20): 20 projects each.
PROJECTS_PER_CUSTOMER = 20


async def steady_state(
    ctx: Context,
    *,
    projects: int,
    grants: int,
    users: int | None,
    portals: int,
    sweeps: int,
    goal_portals: int,
    hook_samples: int,
    trace_memory: bool = False,
) -> dict[str, Any]:
    """seed_bulk in a child simulator; the bridge runs with `portals.create: customers` naming
    enough organizations for `portals` portals (the rest of the projects have no room), builds
    them in its first sweep, then sweeps `sweeps` times with nothing changed."""
    mem = [memory("start of the steady-state phase")]
    sim = SimulatorProcess()
    await sim.start()
    handle = BridgeHandle(ctx.hs, sim, ctx.workdir / "bridge-steady", ctx.watcher, ctx.overrides)  # type: ignore[arg-type]
    result: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        seeded = await sim.call("seed_bulk", projects=projects, grants=grants, users=users)
        n_customers = len(seeded["customers"])
        per_customer = max(1, len(seeded["projects"]) // n_customers)
        chosen_customers = seeded["customers"][: max(1, -(-portals // per_customer))]
        chosen = [
            p for i, p in enumerate(seeded["projects"]) if i % n_customers < len(chosen_customers)
        ]
        sim_stats = await sim.call("stats")
        result["seed"] = {
            "projects": len(seeded["projects"]),
            "grants": seeded["grants"],
            "users": len(seeded["users"]),
            "customers": n_customers,
            "seconds": round(time.perf_counter() - started, 2),
            "simulator_rss_mb": sim_stats["rss_mb"],
        }
        mem.append(memory("simulator seeded (in its own process)"))

        # The first sweep at start builds the portals of the chosen organizations.
        h0 = ctx.counter.snapshot()
        started = time.perf_counter()
        await handle.start(
            **{
                "bridge.portals.create": "customers",
                "bridge.portals.customers": chosen_customers,
            }
        )
        await handle.wait_first_sweep(timeout=7200)
        creation_s = time.perf_counter() - started
        bridge = handle.bridge
        hs_delta = ctx.counter.delta(h0, ctx.counter.snapshot())
        joins = hs_delta["writes_by_endpoint"].get("POST /_matrix/client/v3/rooms/{id}/join", 0)
        result["portal_creation"] = {
            "portals": len(chosen),
            "organizations": len(chosen_customers),
            "seconds": round(creation_s, 2),
            "joins": joins,
            "pairs_per_s": round(joins / creation_s, 2),
            "homeserver_writes": hs_delta["writes"],
            "failed_runs": bridge.sync.queue.failures,
        }
        mem.append(memory(f"bridge started, {len(chosen)} portals built"))

        if trace_memory:
            tracemalloc.start(1)
        runs = []
        scale = len(seeded["projects"]) + seeded["grants"]
        for i in range(sweeps):
            await asyncio.sleep(0.5)
            await sim.call("reset_request_log")
            sim0 = await sim.call("stats")
            c0, h0 = _counts(handle), ctx.counter.snapshot()
            reconciles0 = bridge.sync.queue.runs
            meter = await ctx.hs.cpu()
            with ctx.profiler(f"steady-sweep-{i + 1}") as profiler:
                started = time.perf_counter()
                queued = await bridge.sync.sweep()
                read_s = time.perf_counter() - started
                await handle.settle(timeout=3600)
                wall = time.perf_counter() - started
            usage = meter.stop()
            sim1 = await sim.call("stats")
            counts = _delta(c0, _counts(handle))
            hs_delta = ctx.counter.delta(h0, ctx.counter.snapshot())
            after = memory("")
            run = {
                "sweep": i + 1,
                "portals_reconciled": bridge.sync.queue.runs - reconciles0,
                "portals_queued": queued,
                "wall_seconds": round(wall, 3),
                "bulk_read_seconds": round(read_s, 3),
                "reconcile_seconds": round(wall - read_s, 3),
                "simulator_busy_seconds": round(sim1["busy_seconds"], 3),
                # The sweep against the simulator's time serving the same requests: measures
                # the bridge whatever the machine's speed (the absolute time does not).
                "wall_to_simulator_ratio": (
                    round(wall / sim1["busy_seconds"], 3) if sim1["busy_seconds"] else None
                ),
                "simulator_cpu_seconds": round(sim1["cpu_seconds"] - sim0["cpu_seconds"], 2),
                "waldur_requests": counts["waldur_requests"],
                "waldur_requests_by_endpoint": sim1["request_counts"],
                "waldur_requests_per_100_grants_and_projects": round(
                    100 * counts["waldur_requests"] / scale, 3
                ),
                "homeserver_writes_executor": counts["executor_writes"],
                "homeserver_writes_http": hs_delta["writes"],
                "homeserver_writes_by_endpoint": hs_delta["writes_by_endpoint"],
                "homeserver_reads": hs_delta["reads"],
                "homeserver_reads_by_endpoint": hs_delta["reads_by_endpoint"],
                "cpu": usage,
                "rss_mb_after": after["rss_mb"],
                "peak_rss_mb_after": after["peak_rss_mb"],
            }
            if profiler.top() is not None:
                run["profile_top_tottime"] = profiler.top()
            if len(chosen) < min(goal_portals, len(seeded["projects"])):
                target = min(goal_portals, len(seeded["projects"]))
                per_portal = (wall - read_s) / len(chosen)
                run["estimated_wall_seconds_goal_portals"] = round(read_s + per_portal * target, 2)
                run["estimate_basis"] = (
                    f"linear: bulk read measured, reconcile time per portal "
                    f"({per_portal * 1000:.1f} ms) x {target} portals"
                )
            runs.append(run)
        result["sweeps"] = runs
        mem.append(memory(f"after {sweeps} steady sweeps"))
        if trace_memory:
            result["tracemalloc_top"] = _traced_top()
            tracemalloc.stop()
        rss = [r["rss_mb_after"] for r in runs]
        sim_stats = await sim.call("stats")
        result["memory"] = {
            "snapshots": mem,
            "portals": len(chosen),
            "rss_mb_after_each_sweep": rss,
            "growth_mb_first_to_last_sweep": round(rss[-1] - rss[0], 1) if rss else None,
            "peak_rss_mb": mem[-1]["peak_rss_mb"],
            "simulator_process_rss_mb": sim_stats["rss_mb"],
            "simulator_process_peak_rss_mb": sim_stats["peak_rss_mb"],
            "note": (
                "rss and peak are this process: the bridge, the benchmark's client and the "
                "interpreter; the simulator runs in its own process (simulator_process_*)"
            ),
        }
        if hook_samples:
            result["hook_latency"] = await hook_latency_during_sweeps(
                ctx, handle, sim, chosen, hook_samples
            )
        return result
    finally:
        await handle.stop()
        await sim.stop()


def _traced_top(limit: int = 12) -> list[str]:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    return [str(stat) for stat in snapshot.statistics("lineno")[:limit]]


# region (5) web hook latency while a sweep runs


def _newcomers(bridge: Any, portals: list[str]) -> list[tuple[str, str, str]]:
    """(user uuid, username, project uuid): people in one portal (registered puppets) who hold
    no role on another portal's project nor its organization, each pair used once."""
    snapshot = bridge.sync.directory.last_snapshot
    portal_set = set(portals)
    rooms_of: dict[str, set[str]] = {}
    for project in portals:
        for grant in snapshot.grants_of(project):
            rooms_of.setdefault(grant.user_uuid, set()).add(project)
    owners = {
        g.user_uuid
        for p in portals
        for g in snapshot.grants_of(snapshot.projects[p].customer_uuid)
    }
    rng = random.Random(7)
    people = sorted(u for u in rooms_of if u not in owners and snapshot.users[u].is_active)
    rng.shuffle(people)
    pairs = []
    for i, user in enumerate(people):
        targets = sorted(portal_set - rooms_of[user])
        if targets:
            pairs.append((user, snapshot.users[user].username, targets[i % len(targets)]))
    return pairs


async def _one_grant(
    ctx: Context,
    handle: BridgeHandle,
    sim: SimulatorProcess,
    pair: tuple[str, str, str],
    timeout: float = 120,
) -> float:
    user, username, project = pair
    room_id = await handle.portal_room(project)
    seen = ctx.watcher.expect(room_id, handle.puppet(username))
    await sim.call("grant", user, project, "PROJECT.MEMBER")
    # From the moment the grant exists: the child applies it and answers in one step, while a
    # busy child (serving the sweep's pages) could make the call itself wait before it.
    started = time.perf_counter()
    return await asyncio.wait_for(seen, timeout) - started


async def hook_latency_during_sweeps(
    ctx: Context,
    handle: BridgeHandle,
    sim: SimulatorProcess,
    portals: list[str],
    samples: int,
) -> dict[str, Any]:
    """Grant-to-join through the web hook with the bridge idle, then while sweeps run back to
    back (bulk read and the reconciles it queues), in the same run."""
    bridge = handle.bridge
    pairs = iter(_newcomers(bridge, portals))
    await sim.call("add_hook", handle.webhook_url, event_groups=list(WEBHOOK_GROUPS))
    await asyncio.sleep(0.2)
    rng = random.Random(samples)

    idle: list[float] = []
    for _ in range(samples):
        idle.append(await _one_grant(ctx, handle, sim, next(pairs)))
        await handle.settle()
        await asyncio.sleep(0.1)

    during: list[float] = []
    phases: dict[str, list[float]] = {"bulk_read": [], "reconciling": []}
    sweep_task: asyncio.Task | None = None
    sweeps_run = 0
    failed_sweeps = 0
    try:
        while len(during) < samples:
            if sweep_task is None or (sweep_task.done() and bridge.sync.queue.size == 0):
                if sweep_task is not None and sweep_task.exception() is not None:
                    failed_sweeps += 1
                sweep_task = asyncio.create_task(bridge.sync.sweep())
                sweeps_run += 1
            # Spread the grants over the sweep: its bulk read, then its reconciles.
            await asyncio.sleep(rng.uniform(0.1, 1.5))
            phase = "bulk_read" if not sweep_task.done() else "reconciling"
            if phase == "reconciling" and bridge.sync.queue.size == 0:
                continue  # the sweep is over: not a sample "during a sweep"
            value = await _one_grant(ctx, handle, sim, next(pairs))
            during.append(value)
            phases[phase].append(value)
    finally:
        if sweep_task is not None:
            try:
                await sweep_task
            except Exception:
                failed_sweeps += 1
        await handle.settle(timeout=3600)
    return {
        "definition": (
            "grant of PROJECT.MEMBER to an existing puppet (simulator, web hook) to the "
            "homeserver pushing its join; idle: nothing else running; during: sweeps of the "
            "whole site running back to back"
        ),
        "idle": summarize_ms(idle),
        "during_sweep": summarize_ms(during),
        "during_bulk_read": summarize_ms(phases["bulk_read"]),
        "during_reconciles": summarize_ms(phases["reconciling"]),
        "sweeps_run": sweeps_run,
        "sweeps_failed": failed_sweeps,
    }


# endregion
