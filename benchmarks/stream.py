"""A class arrives: grants in a steady stream into one project, on the local Synapse with the
Waldur simulator's web hooks. Prints JSON.

    .venv/bin/python benchmarks/stream.py [--grants 60] [--rate 3] [--out FILE]
                                          [--heavy-grants 300 --heavy-rate 10]

Stream: `--grants` people are granted PROJECT.MEMBER one after another at `--rate` per second
(Waldur posts a web hook for each, as it does). Reported: grant -> joined (the homeserver's
push of the puppet's join to the appservice, seen as the bare loop's joins are) p50/p95/max,
the time from the last grant until everyone is in, Waldur reads of the project per grant
(its own grant listing, one per read), and, in the same run on the same Synapse, the raw
invite+join latency of one ghost at a time (the yardstick). A heavy stream (`--heavy-*`)
reports the same with Synapse's and the bridge's CPU shares, to see what saturates first.
Goals (issue 20), on a quiet machine: 60 grants at 3/s: p95 <= 1.5 s, everyone in <= 1.5 s
after the last grant, <= 1 read of the project per grant.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import raw
from benchmarks.burst import project_reads
from benchmarks.harness import BridgeHandle, Homeserver, JoinWatcher, percentile, summarize_ms
from waldur_bridge.sync.changes import WEBHOOK_EVENTS
from waldur_simulator import WaldurSimulator

GOAL_P95_S = 1.5
GOAL_LAST_S = 1.5
GOAL_READS_PER_GRANT = 1.0
TEAM = 5  # people in the room before the stream


async def stream(
    hs: Homeserver,
    work: Path,
    tag: str,
    grants: int,
    rate: float,
    watcher: JoinWatcher,
    raw_samples: int = 0,
    per_room: int | None = None,
) -> dict[str, Any]:
    sim = WaldurSimulator()
    await sim.start()
    handle = BridgeHandle(hs, sim, work / tag, watcher)
    try:
        with sim.quiet():
            org = sim.add_customer(f"Stream Org {tag}")
            project = sim.add_project(org, f"Course {tag}", "bench")
            for m in range(TEAM):
                user = sim.add_user(f"{tag}t{m}", f"Teacher {m}")
                sim.grant(user, project, "PROJECT.ADMIN" if m == 0 else "PROJECT.MEMBER")
            students = [sim.add_user(f"{tag}s{i}", f"Student {i}") for i in range(grants)]
        bridge = await handle.start()
        if per_room is not None:
            bridge.sync.executor.per_room = per_room
        per_room = bridge.sync.executor.per_room
        await bridge.sync.sweep()
        await handle.settle()
        sim.add_hook(handle.webhook_url, event_types=sorted(WEBHOOK_EVENTS))
        room = await handle.portal_room(project)
        # Each student's puppet is registered and named within the measured time, as for a
        # person new to the bridge.
        meter = await hs.cpu()
        since = time.time()
        joined: list[asyncio.Future[float]] = []
        granted_at: list[float] = []
        t0 = time.perf_counter()
        for i, student in enumerate(students):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            joined.append(watcher.expect(room, handle.puppet(sim.users[student].username)))
            granted_at.append(time.perf_counter())
            sim.grant(student, project, "PROJECT.MEMBER")
        last_grant = granted_at[-1]
        done = await asyncio.wait_for(asyncio.gather(*joined), timeout=120 + grants / rate)
        cpu = meter.stop()
        split = await meter.breakdown()
        latencies = [d - g for d, g in zip(done, granted_at, strict=True)]
        reads = project_reads(sim, project, since)
        await handle.settle()
        yardstick = None
        if raw_samples:
            # The same Synapse in the same run: one ghost at a time, its join seen through the
            # bridge's appservice like the bridge's own joins.
            client = raw.RawClient(hs.url, hs.as_token, hs.domain, hs.bot)
            try:
                await hs.quiet()
                yardstick = await raw.latency(client, watcher, tag, raw_samples, TEAM)
            finally:
                await client.close()
        return {
            "grants": grants,
            "rate_per_s": rate,
            "stream_seconds": round(last_grant - t0, 2),
            "grant_to_joined": summarize_ms(latencies),
            "grant_to_joined_p95_ms": round(percentile(latencies, 95) * 1000, 1),
            "everyone_in_after_last_grant_s": round(max(done) - last_grant, 3),
            "project_reads": reads,
            "reads_per_grant": round(reads / grants, 3),
            "joins_in_flight_per_room": per_room,
            "synapse_cpu_ms_per_join": round(1000 * cpu["synapse_cpu_s"] / grants, 1),
            "cpu": cpu,
            "synapse_cpu_split": split,
            "raw_invite_join": yardstick,
        }
    finally:
        await handle.stop()
        await sim.stop()


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wb-stream-bench-") as tmp:
        work = Path(tmp)
        hs = Homeserver(work)
        await hs.start()
        watcher = JoinWatcher()
        try:
            results: dict[str, Any] = {}
            results["stream"] = await stream(
                hs, work, "a", args.grants, args.rate, watcher, args.raw_samples
            )
            if args.heavy_grants:
                results["heavy_stream"] = await stream(
                    hs, work, "b", args.heavy_grants, args.heavy_rate, watcher
                )
            for k in args.per_room:
                # The same streams with k people brought into the room at once (issue 20).
                results[f"stream_per_room_{k}"] = await stream(
                    hs, work, f"c{k}", args.grants, args.rate, watcher, per_room=k
                )
                if args.heavy_grants:
                    results[f"heavy_stream_per_room_{k}"] = await stream(
                        hs,
                        work,
                        f"d{k}",
                        args.heavy_grants,
                        args.heavy_rate,
                        watcher,
                        per_room=k,
                    )
            return results
        finally:
            await hs.stop()


def goals(results: dict[str, Any]) -> dict[str, Any]:
    s = results["stream"]
    return {
        "p95_s": {"value": s["grant_to_joined_p95_ms"] / 1000, "goal": GOAL_P95_S},
        "everyone_in_after_last_grant_s": {
            "value": s["everyone_in_after_last_grant_s"],
            "goal": GOAL_LAST_S,
        },
        "reads_per_grant": {"value": s["reads_per_grant"], "goal": GOAL_READS_PER_GRANT},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grants", type=int, default=60)
    parser.add_argument("--rate", type=float, default=3.0, help="grants per second")
    parser.add_argument("--heavy-grants", type=int, default=0, help="e.g. 300 (10/s for 30 s)")
    parser.add_argument("--heavy-rate", type=float, default=10.0)
    parser.add_argument("--raw-samples", type=int, default=20)
    parser.add_argument(
        "--per-room",
        type=lambda text: [int(k) for k in text.split(",") if k],
        default=[],
        help="also run the streams with these joins in flight per room, e.g. 1,2,4",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    results = asyncio.run(measure(args))
    table = goals(results)
    for row in table.values():
        row["ok"] = row["value"] <= row["goal"]
    document = {
        "benchmark": "grant_stream",
        "parameters": {"grants": args.grants, "rate": args.rate, "team": TEAM},
        "results": results,
        "goals": table,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    text = json.dumps(document, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    for name, row in table.items():
        mark = "ok" if row["ok"] else "MISSED"
        print(f"{name}: {row['value']} (goal <= {row['goal']}) {mark}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
