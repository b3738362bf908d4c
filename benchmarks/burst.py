"""Web hook bursts and expiry on the local Synapse with the Waldur simulator. Prints JSON.

    .venv/bin/python benchmarks/burst.py [--hooks 1000] [--seconds 10] [--projects 6]
                                         [--latency 0] [--out FILE]

Burst: `--hooks` valid role hooks about `--projects` projects arrive evenly over `--seconds`
(as a busy Waldur or a replaying proxy would post them), while a real grant and a real revoke
happen in Waldur mid-stream. Reported: every Waldur request the bridge made from the first hook
until it was idle again, the reads of each project (its own grant listing, one per read), and
whether every room ended exact. The same burst runs once with the settle window off
(`settle_seconds: 0`, what the bridge did before) and once with the default window.

Expiry: a grant's expiration time is set a few seconds ahead (Waldur emits nothing when it
passes; the sweep is an hour away); reported is the time from the expiry to the removal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import BridgeHandle, Homeserver, JoinWatcher, summarize_ms
from waldur_bridge.sync.changes import WEBHOOK_EVENTS
from waldur_simulator import WaldurSimulator

MEMBERS = 5


def build(sim: WaldurSimulator, projects: int) -> list[dict[str, Any]]:
    teams = []
    with sim.quiet():
        org = sim.add_customer("Burst Org")
        for p in range(projects):
            project = sim.add_project(org, f"Burst project {p}", "bench")
            users = []
            for m in range(MEMBERS):
                user = sim.add_user(f"b{p}m{m}", f"Burst User {p}.{m}")
                sim.grant(user, project, "PROJECT.ADMIN" if m == 0 else "PROJECT.MEMBER")
                users.append(user)
            teams.append({"project": project, "org": org, "users": users})
    return teams


def hook_body(team: dict[str, Any], user: str, i: int) -> bytes:
    return json.dumps(
        {
            "created": datetime.now(UTC).isoformat(),
            "message": f"User {user} has gained role of PROJECT.MEMBER (hook {i}).",
            "event_type": "role_granted",
            "context": {
                "scope_type": "project",
                "scope_uuid": team["project"],
                "customer_uuid": team["org"],
                "affected_user_uuid": user,
                "role_name": "PROJECT.MEMBER",
            },
        }
    ).encode()


async def room_members(hs: Homeserver, session: aiohttp.ClientSession, room: str) -> set[str]:
    url = f"{hs.url}/_matrix/client/v3/rooms/{room}/members"
    async with session.get(url, headers={"Authorization": f"Bearer {hs.as_token}"}) as resp:
        resp.raise_for_status()
        chunk = (await resp.json())["chunk"]
    return {e["state_key"] for e in chunk if e["content"]["membership"] in ("join", "invite")}


async def expected_members(handle: BridgeHandle, sim: WaldurSimulator, project: str) -> set[str]:
    return {handle.puppet(g.user.username) for g in sim.active_grants(project)} | {handle.hs.bot}


def project_reads(sim: WaldurSimulator, project: str, since: float) -> int:
    return sum(
        1
        for r in sim.request_log
        if r.at >= since
        and r.method == "GET"
        and r.path.endswith(f"/api/projects/{project}/list_users/")
    )


async def burst(
    hs: Homeserver, work: Path, args: argparse.Namespace, settle: float | None
) -> dict[str, Any]:
    sim = WaldurSimulator()
    await sim.start()
    overrides: dict[str, Any] = {}
    if settle is not None:
        overrides["bridge.membership.settle_seconds"] = settle
    name = "settle-off" if settle == 0 else "settle-default"
    handle = BridgeHandle(hs, sim, work / name, JoinWatcher())
    try:
        teams = build(sim, args.projects)
        newcomer = sim.add_user("newcomer", "New Comer")
        bridge = await handle.start(**overrides)
        await bridge.sync.sweep()
        await handle.settle()
        sim.add_hook(handle.webhook_url, event_types=sorted(WEBHOOK_EVENTS))
        sim.faults.latency = args.latency
        rooms = {t["project"]: await handle.portal_room(t["project"]) for t in teams}

        interval = args.seconds / args.hooks
        started_wall = time.time()
        before = sim.total_requests
        before_bridge = bridge.waldur.stats.requests
        statuses: dict[int, int] = {}
        async with aiohttp.ClientSession() as session:

            async def post(body: bytes) -> None:
                headers = {"Content-Type": "application/json"}
                async with session.post(handle.webhook_url, data=body, headers=headers) as r:
                    statuses[r.status] = statuses.get(r.status, 0) + 1

            posts = []
            t0 = time.monotonic()
            for i in range(args.hooks):
                team = teams[i % len(teams)]
                user = team["users"][i % MEMBERS]
                delay = t0 + i * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                posts.append(asyncio.create_task(post(hook_body(team, user, i))))
                if i == args.hooks // 3:
                    sim.grant(newcomer, teams[0]["project"], "PROJECT.MEMBER")
                if i == 2 * args.hooks // 3:
                    sim.revoke(teams[1]["users"][1], teams[1]["project"], "PROJECT.MEMBER")
            await asyncio.gather(*posts)
            stream_seconds = time.monotonic() - t0
            await handle.settle()
            idle_after = time.monotonic() - t0
            exact = {}
            for team in teams:
                room = rooms[team["project"]]
                exact[team["project"]] = await room_members(hs, session, room) == (
                    await expected_members(handle, sim, team["project"])
                )
        reads = {t["project"]: project_reads(sim, t["project"], started_wall) for t in teams}
        return {
            "settle_seconds": bridge.sync.queue.settle,
            "settle_max_wait": bridge.sync.queue.max_wait,
            "hooks": args.hooks,
            "hook_statuses": statuses,
            "stream_seconds": round(stream_seconds, 2),
            "idle_after_seconds": round(idle_after, 2),
            "waldur_requests": sim.total_requests - before,
            "waldur_requests_by_bridge": bridge.waldur.stats.requests - before_bridge,
            "reads_per_project": list(reads.values()),
            "reads_total": sum(reads.values()),
            "rooms_exact": all(exact.values()),
            "grant_and_revoke_mid_stream_applied": exact[teams[0]["project"]]
            and exact[teams[1]["project"]],
        }
    finally:
        await handle.stop()
        await sim.stop()


async def expiry(hs: Homeserver, work: Path, samples: int) -> dict[str, Any]:
    sim = WaldurSimulator()
    await sim.start()
    handle = BridgeHandle(hs, sim, work / "expiry", JoinWatcher())
    try:
        teams = build(sim, 1)
        project, users = teams[0]["project"], teams[0]["users"]
        bridge = await handle.start()
        await bridge.sync.sweep()
        await handle.settle()
        sim.add_hook(handle.webhook_url, event_types=sorted(WEBHOOK_EVENTS))
        room = await handle.portal_room(project)
        results = []
        async with aiohttp.ClientSession() as session:
            for i in range(samples):
                user = users[1 + i]
                puppet = handle.puppet(sim.users[user].username)
                expires = datetime.now(UTC) + timedelta(seconds=3)
                sim.set_expiration(user, project, "PROJECT.MEMBER", expires)
                deadline = time.monotonic() + 60
                while puppet in await room_members(hs, session, room):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{puppet} was not removed within 60 s")
                    await asyncio.sleep(0.02)
                results.append((datetime.now(UTC) - expires).total_seconds())
        return {"samples": len(results), "expiry_to_removal": summarize_ms(results)}
    finally:
        await handle.stop()
        await sim.stop()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wb-burst-bench-") as tmp:
        work = Path(tmp)
        hs = Homeserver(work)
        await hs.start()
        try:
            results: dict[str, Any] = {}
            if not args.skip_baseline:
                results["burst_without_settle_window"] = await burst(hs, work, args, 0.0)
            results["burst"] = await burst(hs, work, args, None)
            results["expiry"] = await expiry(hs, work, args.expiry_samples)
            return results
        finally:
            await hs.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hooks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--projects", type=int, default=6)
    parser.add_argument("--latency", type=float, default=0.0, help="Waldur latency, seconds")
    parser.add_argument("--expiry-samples", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    results = asyncio.run(measure(args))
    document = {
        "benchmark": "hook_burst_and_expiry",
        "parameters": {
            "hooks": args.hooks,
            "seconds": args.seconds,
            "projects": args.projects,
            "members_per_project": MEMBERS,
            "waldur_latency_s": args.latency,
        },
        "results": results,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
