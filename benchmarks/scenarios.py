"""The measured scenarios: initial sync, steady-state sweep, grant-to-join latency, memory."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import raw
from harness import (
    BridgeHandle,
    Homeserver,
    HomeserverCounter,
    JoinWatcher,
    Profiler,
    summarize_ms,
)

from waldur_simulator import WaldurSimulator

WEBHOOK_GROUPS = ("permissions", "projects", "users")


@dataclass
class Team:
    project: str
    customer: str
    users: list[str] = field(default_factory=list)
    usernames: list[str] = field(default_factory=list)


@dataclass
class Context:
    hs: Homeserver
    client: raw.RawClient
    watcher: JoinWatcher
    counter: HomeserverCounter
    workdir: Path
    concurrency: int
    profile_dir: Path | None = None
    spaces: bool = True
    # Names a run's users, ghosts and bridge directory apart from other runs on the same Synapse.
    tag: str = ""

    def profiler(self, name: str) -> Profiler:
        return Profiler(self.profile_dir / f"{name}.prof" if self.profile_dir else None)

    @property
    def overrides(self) -> dict[str, Any]:
        return {
            "bridge.membership.concurrency": self.concurrency,
            "bridge.spaces.enabled": self.spaces,
        }


def build_teams(sim: WaldurSimulator, projects: int, members: int, tag: str) -> list[Team]:
    """`projects` projects of `members` distinct users each: the first is PROJECT.ADMIN (one
    power-level change per room), the rest PROJECT.MEMBER. No organization roles, so the
    rooms hold exactly projects*members people besides the bot. Built without events."""
    teams: list[Team] = []
    with sim.quiet():
        customers = [sim.add_customer(f"{tag} Org {i}") for i in range((projects + 9) // 10)]
        for p in range(projects):
            customer = customers[p // 10]
            team = Team(sim.add_project(customer, f"{tag} project {p}", "bench"), customer)
            for m in range(members):
                username = f"{tag}{p:03d}m{m:03d}"
                user = sim.add_user(username, f"{tag.title()} User {p}.{m}")
                role = "PROJECT.ADMIN" if m == 0 else "PROJECT.MEMBER"
                sim.grant(user, team.project, role)
                team.users.append(user)
                team.usernames.append(username)
            teams.append(team)
    return teams


def cross_grants(teams: list[Team]) -> Iterator[tuple[str, str, str]]:
    """(user uuid, username, project uuid) for people already in one room (registered puppets)
    who get a role in another project: every pair at most once, round-robin over projects."""
    n = len(teams)
    members = len(teams[0].users)
    for m in range(members):
        for offset in range(1, n):
            for j in range(n):
                source = teams[(j + offset) % n]
                yield source.users[m], source.usernames[m], teams[j].project


def _counts(handle: BridgeHandle) -> dict[str, Any]:
    bridge = handle.bridge
    return {
        "executor_writes": bridge.sync.executor.writes,
        "waldur_requests": bridge.waldur.stats.requests,
        # A simulator in a child process (the steady phase) counts its requests itself.
        "sim_requests": getattr(handle.sim, "total_requests", 0),
    }


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: after[k] - before[k] for k in before}


async def _timeline(
    handle: BridgeHandle,
    teams: list[Team],
    seen: dict[tuple[str, str, str], float],
    started: float,
) -> dict[str, Any]:
    """When the last person was in their project room, and when the last one was in their
    organization's space, joined or (bridge.spaces.join_puppets: false) invited: seconds from
    the start of the sync, membership events as Synapse pushed them."""
    rooms = {await handle.portal_room(team.project) for team in teams}
    spaces = {
        space.room_id
        for space in handle.bridge.sync.spaces.spaces.values()
        if space.room_id and not space.is_closed
    }
    room_joins = [t for (room, _, m), t in seen.items() if room in rooms and m == "join"]
    result: dict[str, Any] = {
        "rooms_complete_seconds": round(max(room_joins) - started, 3) if room_joins else None,
        "room_joins_seen": len(room_joins),
    }
    if spaces:
        # A person is in the space from their last membership event there (invite or join).
        bot = str(handle.bridge.az.bot_mxid)
        last: dict[tuple[str, str], float] = {}
        for (room, user, _), t in seen.items():
            if room in spaces and user != bot:
                last[(room, user)] = max(t, last.get((room, user), t))
        joins = sum(
            1 for (room, user, m) in seen if room in spaces and m == "join" and user != bot
        )
        result["spaces_complete_seconds"] = (
            round(max(last.values()) - started, 3) if last else None
        )
        result["space_members_seen"] = len(last)
        result["space_joins_seen"] = joins
        if last:
            result["first_space_member_seconds"] = round(min(last.values()) - started, 3)
    return result


async def _room_members_ok(ctx: Context, handle: BridgeHandle, teams: list[Team]) -> bool:
    for team in teams:
        room_id = await handle.portal_room(team.project)
        joined = {u for u, m in (await ctx.client.members(room_id)).items() if m == "join"}
        expected = {handle.puppet(name) for name in team.usernames} | {ctx.hs.bot}
        if not expected <= joined:
            return False
    return True


# region (1) initial sync and (3) latency


async def initial_sync_and_latency(
    ctx: Context,
    *,
    projects: int,
    members: int,
    samples: int,
    event_samples: int,
    events_interval: float,
    cost_samples: int = 20,
    sync_only: bool = False,
) -> dict[str, Any]:
    sim = WaldurSimulator()
    await sim.start()
    # A second run in the same Synapse (the other spaces setting) uses new names throughout.
    run = ctx.tag or ("" if ctx.spaces else "n")
    handle = BridgeHandle(
        ctx.hs, sim, ctx.workdir / f"bridge-initial{run}", ctx.watcher, ctx.overrides
    )
    result: dict[str, Any] = {}
    try:
        await handle.start()
        await handle.wait_first_sweep()  # an empty Waldur: nothing to do yet
        bridge = handle.bridge

        raw_before = await raw.throughput(
            ctx.client, "a" + run, projects, members, ctx.concurrency, ctx.hs.cpu
        )
        teams = build_teams(sim, projects, members, "isync" + run)

        c0, h0 = _counts(handle), ctx.counter.snapshot()
        meter = await ctx.hs.cpu()
        ctx.watcher.recording = {}
        with ctx.profiler("initial-sync") as profiler:
            started = time.perf_counter()
            await bridge.sync.sweep()
            read_s = time.perf_counter() - started
            await handle.settle(timeout=3600)
            sync_s = time.perf_counter() - started
        usage = meter.stop()
        timeline = await _timeline(handle, teams, ctx.watcher.recording, started)
        ctx.watcher.recording = None
        synapse_split = await meter.breakdown()
        counts = _delta(c0, _counts(handle))
        hs_delta = ctx.counter.delta(h0, ctx.counter.snapshot())
        complete = await _room_members_ok(ctx, handle, teams)

        raw_after = await raw.throughput(
            ctx.client, "b" + run, projects, members, ctx.concurrency, ctx.hs.cpu
        )
        raw_room_major = await raw.throughput(
            ctx.client, "c" + run, projects, members, ctx.concurrency, ctx.hs.cpu, room_major=True
        )
        pairs = projects * members
        raw_rate = (raw_before["pairs_per_s"] + raw_after["pairs_per_s"]) / 2
        raw_create = (raw_before["create_room_per_s"] + raw_after["create_room_per_s"]) / 2
        raw_register = (raw_before["registrations_per_s"] + raw_after["registrations_per_s"]) / 2
        # The same work as the bridge's (rooms, registrations, pairs) done by the bare loop.
        raw_full_s = projects / raw_create + pairs / raw_register + pairs / raw_rate
        writes = hs_delta["writes_by_endpoint"]
        result["initial_sync"] = {
            "projects": projects,
            "members_per_project": members,
            "pairs": pairs,
            "rooms_complete": complete,
            "seconds": round(sync_s, 3),
            "bulk_read_seconds": round(read_s, 3),
            "pairs_per_s": round(pairs / sync_s, 2),
            "membership_changes_per_s": round(2 * pairs / sync_s, 2),
            "rooms_created": writes.get("POST /_matrix/client/v3/createRoom", 0),
            "rooms_per_s": round(projects / sync_s, 2),
            "homeserver_writes": hs_delta["writes"],
            "homeserver_writes_by_endpoint": writes,
            "homeserver_reads": hs_delta["reads"],
            "homeserver_reads_by_endpoint": hs_delta["reads_by_endpoint"],
            "homeserver_mean_ms_by_endpoint": hs_delta["mean_ms_by_endpoint"],
            "cpu": usage,
            "synapse_cpu_split": synapse_split,
            "waldur_requests": counts["waldur_requests"],
            "raw": {
                "room_major": {k: v for k, v in raw_room_major.items() if k != "room_ids"},
                "before": {k: v for k, v in raw_before.items() if k != "room_ids"},
                "after": {k: v for k, v in raw_after.items() if k != "room_ids"},
                "pairs_per_s": round(raw_rate, 2),
                "create_room_per_s": round(raw_create, 2),
                "registrations_per_s": round(raw_register, 1),
                "same_work_seconds": round(raw_full_s, 2),
                "same_work_pairs_per_s": round(pairs / raw_full_s, 2),
            },
            "ratio_to_raw_pairs": round(pairs / sync_s / raw_rate, 3),
            "ratio_to_raw_same_work": round(raw_full_s / sync_s, 3),
            **timeline,
        }
        if timeline.get("rooms_complete_seconds"):
            # People are in their rooms: the pairs over the time until the last room join.
            result["initial_sync"]["rooms_ratio_to_raw_pairs"] = round(
                pairs / timeline["rooms_complete_seconds"] / raw_rate, 3
            )
        if profiler.top() is not None:
            result["initial_sync"]["profile_top_tottime"] = profiler.top()

        raw_cpu = sum(r["cpu_during_pairs"]["synapse_cpu_s"] for r in (raw_before, raw_after))
        result["initial_sync"]["synapse_cpu_ms_per_pair"] = {
            "bridge": round(1000 * usage["synapse_cpu_s"] / pairs, 1),
            "raw_pairs_only": round(1000 * raw_cpu / (2 * pairs), 1),
        }
        if sync_only:
            # A comparison run (the other spaces setting): the sync and its yardstick only.
            return result
        result["synapse_cost_per_operation"] = await raw.operation_costs(
            ctx.client, ctx.hs.cpu, "k", cost_samples
        )
        result["initial_sync"]["synapse_cpu_by_operation"] = _where_synapse_time_goes(
            writes, result["synapse_cost_per_operation"], members, usage["synapse_cpu_s"]
        )
        # The same rooms and pairs built by the bare loop in the bridge's shapes: which part
        # of the bridge's way costs Synapse more per pair.
        patterns = await raw.room_patterns(
            ctx.client, ctx.hs.cpu, "q", projects, members, ctx.concurrency
        )
        result["synapse_cpu_by_room_pattern"] = patterns
        if not ctx.spaces:
            # The bridge against the bare loop sending its very requests in its order (that
            # loop registers beforehand, untimed, and makes no spaces): what the bridge adds.
            result["initial_sync"]["ratio_to_bare_loop_as_the_bridge"] = round(
                pairs / sync_s / patterns["as_the_bridge"]["pairs_per_s"], 3
            )

        # A second sweep with nothing changed: no writes.
        c0, h0 = _counts(handle), ctx.counter.snapshot()
        started = time.perf_counter()
        await bridge.sync.sweep()
        await handle.settle()
        result["initial_sync"]["second_sweep"] = {
            "seconds": round(time.perf_counter() - started, 3),
            "homeserver_writes_http": ctx.counter.delta(h0, ctx.counter.snapshot())["writes"],
            **_delta(c0, _counts(handle)),
        }

        # (3) latency: raw, then the bridge through the web hook, then through the events poll.
        grants = cross_grants(teams)
        raw_latency = await raw.latency(ctx.client, ctx.watcher, "lat", samples, members)
        hook = sim.add_hook(handle.webhook_url, event_groups=WEBHOOK_GROUPS)
        await asyncio.sleep(0.2)
        via_hook = await _grant_latency(ctx, handle, grants, samples)
        via_hook_new = await _grant_latency(ctx, handle, None, samples, teams=teams, tag="hook")
        sim.remove_hook(hook)
        await handle.stop()

        await handle.start(
            **{"waldur.events.interval": events_interval, "waldur.events.overlap": 5}
        )
        h0 = ctx.counter.snapshot()
        await handle.wait_first_sweep()
        restart_writes = ctx.counter.delta(h0, ctx.counter.snapshot())["writes"]
        await asyncio.sleep(events_interval * 2)  # the poller's first rounds
        await handle.settle()
        # Random start times: right after a sample the next poll is a fixed time away, which
        # would lock every sample to the same phase of the poll timer.
        via_events = await _grant_latency(
            ctx, handle, grants, event_samples, jitter=events_interval
        )
        result["latency"] = {
            "definition": (
                "from the Waldur change (grant call) to the homeserver pushing the puppet's "
                "join to the appservice; raw: from the invite call to the same push"
            ),
            "raw_invite_join": raw_latency,
            "webhook_existing_puppet": via_hook,
            "webhook_new_user": via_hook_new,
            "events_poll_existing_puppet": via_events,
            "webhook_delivery_delay_ms": round(sim.hook_dispatcher.delay * 1000, 1),
            "events_poll_interval_s": events_interval,
            "restart_sweep_homeserver_writes": restart_writes,
        }
        return result
    finally:
        await handle.stop()
        await sim.stop()


def _where_synapse_time_goes(
    writes: dict[str, int], costs: dict[str, Any], members: int, measured_s: float
) -> dict[str, Any]:
    """The initial sync's Synapse CPU split by operation: the bridge's requests counted by
    endpoint times the per-operation cost measured one at a time in the same run."""
    team_key = next(k for k in costs if "invited in the initial state" in k)
    team_size = int(team_key.split(", ")[1].split()[0])
    portal = costs["create_room (portal-like: name, topic, alias, 5 initial state events)"]
    per_invite = (costs[team_key]["synapse_cpu_ms"] - portal["synapse_cpu_ms"]) / team_size
    by_endpoint = {
        "POST /_matrix/client/v3/register": costs["register"]["synapse_cpu_ms"],
        "PUT /_matrix/client/v3/profile/{id}/displayname": costs[
            "set_displayname (in no room yet)"
        ]["synapse_cpu_ms"],
        # The bridge's createRoom carries the team's invites (no separate invite requests).
        "POST /_matrix/client/v3/createRoom": portal["synapse_cpu_ms"] + per_invite * members,
        "POST /_matrix/client/v3/rooms/{id}/invite": costs["invite"]["synapse_cpu_ms"],
        "POST /_matrix/client/v3/rooms/{id}/join": costs["join"]["synapse_cpu_ms"],
        "PUT /_matrix/client/v3/rooms/{id}/state/m.room.power_levels/": costs[
            "power_levels (get + put)"
        ]["synapse_cpu_ms"],
    }
    split = {
        endpoint: {
            "count": count,
            "synapse_cpu_s": round(count * by_endpoint[endpoint] / 1000, 2),
        }
        for endpoint, count in writes.items()
        if endpoint in by_endpoint
    }
    explained = sum(v["synapse_cpu_s"] for v in split.values())
    return {
        "by_endpoint": split,
        "invite_in_initial_state_cpu_ms": round(per_invite, 1),
        "explained_s": round(explained, 2),
        "measured_s": round(measured_s, 2),
        "rest_s": round(measured_s - explained, 2),
        "note": "per-operation costs measured alone; concurrency and reads make up the rest",
    }


async def _grant_latency(
    ctx: Context,
    handle: BridgeHandle,
    grants: Iterator[tuple[str, str, str]] | None,
    samples: int,
    *,
    teams: list[Team] | None = None,
    tag: str = "",
    jitter: float = 0.0,
    timeout: float = 30,
) -> dict[str, Any]:
    """Grant PROJECT.MEMBER, then wait for the puppet's join. With `grants`, people who are
    already puppets in another room; otherwise a new Waldur user each time (registration and
    display name come first)."""
    sim = handle.sim
    values: list[float] = []
    reads: list[int] = []
    rng = random.Random(samples)
    for i in range(samples):
        if jitter:
            await asyncio.sleep(rng.uniform(0, jitter))
        if grants is not None:
            user, username, project = next(grants)
        else:
            assert teams is not None
            project = teams[i % len(teams)].project
            username = f"latnew{tag}{i:03d}"
            user = sim.add_user(username, f"New User {i}")
            await sim.drain_hooks()
            await handle.settle()
        room_id = await handle.portal_room(project)
        seen = ctx.watcher.expect(room_id, handle.puppet(username))
        requests0 = handle.bridge.waldur.stats.requests
        started = time.perf_counter()
        sim.grant(user, project, "PROJECT.MEMBER")
        values.append(await asyncio.wait_for(seen, timeout) - started)
        await handle.settle()
        reads.append(handle.bridge.waldur.stats.requests - requests0)
        await asyncio.sleep(0.05)
    summary = summarize_ms(values)
    summary["waldur_requests_per_change"] = round(sum(reads) / max(1, len(reads)), 1)
    return summary


# endregion
