"""waldur-matrix-bridge benchmark: the real bridge in-process against a local Synapse and the
Waldur simulator. Prints one JSON document (and writes it to --out).

    .venv/bin/python benchmarks/run.py            # default run, a few minutes
    .venv/bin/python benchmarks/run.py --quick    # smoke check, under a minute

Measures (1) initial sync against a bare invite+join loop on the same Synapse in the same run,
(2) steady-state sweeps over seed_bulk's 10,000 projects / 100,000 grants / 20,000 users with
a share of the projects in portals (the simulator in its own process), (3) grant-to-join
latency through the web hook and the events poll against raw invite+join latency, (4) the
bridge's memory over the sweeps, and (5) web hook latency while sweeps run. Ends with a table
of the goals of issue 10 on stderr (the JSON on stdout keeps the raw numbers).
Synapse comes from .venv-synapse or $WALDUR_BRIDGE_SYNAPSE_PYTHON.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

# The development packages (waldur_simulator, waldur_devenv) live at the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import raw
from harness import Homeserver, HomeserverCounter, JoinWatcher, memory
from scenarios import Context, initial_sync_and_latency
from sweeps import steady_state

log = logging.getLogger("bench")

# The goals of issue 10 (site scale).
SAME_WORK_RATIO_GOAL = 0.9  # initial sync against the bare loop doing the same homeserver work
RAW_RATIO_GOAL = 0.75  # initial sync against the bare invite+join loop
# Issue 20, spaces on: people in their project rooms at this share of the bare loop's rate,
# and the whole first sync (spaces included) at this one.
ROOMS_RATIO_GOAL = 0.9
WHOLE_WITH_SPACES_RATIO_GOAL = 0.6
SWEEP_SECONDS_GOAL = 30.0  # 10,000 projects / 100,000 grants, 1,000 portals
# The same sweep against the simulator's serving time of its requests (the sum of their
# durations in the simulator), the median over the sweeps: it holds on a slower or busier
# machine, unlike the 30 s. 1.32 to 1.38 before the simulator built each listing once instead
# of once per page; since then 1.58 to 2.02 (median 1.74) on a shared 2-core machine at load
# 4.5, 40 portals: the simulator serves the same requests in half the time.
SWEEP_RATIO_GOAL = 2.0
GOAL_PORTALS = 1000
REQUESTS_PER_100_GOAL = 1.2
PEAK_RSS_GOAL_MB = 300.0
GROWTH_GOAL_MB = 10.0  # "flat": RSS after the last sweep against after the first
GOAL_SWEEPS = 10
HOOK_FACTOR, HOOK_SLACK_MS = 1.5, 50.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, help="initial sync: projects (default 20)")
    parser.add_argument("--members", type=int, help="initial sync: members each (default 10)")
    parser.add_argument("--samples", type=int, help="latency samples (default 30)")
    parser.add_argument("--event-samples", type=int, help="events-poll samples (default 20)")
    parser.add_argument("--events-interval", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8, help="bridge.membership.concurrency")
    parser.add_argument("--steady-projects", type=int, help="default 10,000 (1,000 --quick)")
    parser.add_argument("--steady-grants", type=int, help="default 100,000 (10,000 --quick)")
    parser.add_argument("--steady-users", type=int, help="default grants / 5")
    parser.add_argument(
        "--steady-portals",
        type=int,
        help="projects with portals (whole organizations of 20 projects; the rest have no "
        f"room): default 100 (20 with --quick), timed for {GOAL_PORTALS:,} by a linear "
        f"estimate; --steady-portals {GOAL_PORTALS} measures it (~10,000 invite+join pairs)",
    )
    parser.add_argument(
        "--sweeps", type=int, help=f"steady sweeps to measure (default {GOAL_SWEEPS}, --quick 2)"
    )
    parser.add_argument(
        "--hook-samples", type=int, help="web hook grants idle and during sweeps (default 10)"
    )
    parser.add_argument(
        "--trace-memory",
        action="store_true",
        help="tracemalloc over the steady sweeps: the top allocation sites in the JSON (slow)",
    )
    parser.add_argument("--quick", action="store_true", help="a small run for smoke checks")
    parser.add_argument(
        "--only", choices=("steady", "initial"), help="run one phase (steady: (2)+(4))"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="cProfile the initial sync and the steady sweeps into DIR/*.prof (slows them)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal fails")
    parser.add_argument(
        "--no-spaces", action="store_true", help="bridge.spaces.enabled: false (for comparison)"
    )
    args = parser.parse_args(argv)
    small = args.quick
    args.projects = args.projects or (4 if small else 20)
    args.members = args.members or (5 if small else 10)
    args.samples = args.samples or (5 if small else 30)
    args.event_samples = args.event_samples or (3 if small else 20)
    if args.projects < 2 or args.members < 1:
        parser.error("--projects must be at least 2 (latency grants cross projects)")
    args.steady_projects = args.steady_projects or (1000 if small else 10_000)
    args.steady_grants = args.steady_grants or (10_000 if small else 100_000)
    args.steady_portals = args.steady_portals or (20 if small else 100)
    args.sweeps = args.sweeps or (2 if small else GOAL_SWEEPS)
    args.hook_samples = (
        args.hook_samples if args.hook_samples is not None else (3 if small else 10)
    )
    return args


def synapse_version(python: str) -> str:
    try:
        out = subprocess.run(
            [python, "-c", "import synapse; print(synapse.__version__)"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the bridge's code had uncommitted changes."""
    repo = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            out = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import waldur_bridge

    package = Path(waldur_bridge.__file__).resolve().parent
    return {
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
        "bridge_code_modified": bool(git("status", "--porcelain", "--", "waldur_bridge")),
        "bridge_package": str(package),
    }


def goal(name: str, target: str, value: Any, ok: bool | None, note: str = "") -> dict[str, Any]:
    entry = {"goal": name, "target": target, "measured": value}
    entry["result"] = "n/a" if ok is None else ("pass" if ok else "fail")
    if note:
        entry["note"] = note
    return entry


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per goal of issues 10 and 20 (and the web hook latency goal before them)."""
    goals = []
    initial = results.get("initial_sync")
    spaces = (results.get("settings") or {}).get("spaces", False)
    if initial and spaces:
        rooms = initial.get("rooms_ratio_to_raw_pairs")
        goals.append(
            goal(
                "rooms complete vs bare invite+join loop (spaces on)",
                f">= {ROOMS_RATIO_GOAL}",
                rooms,
                rooms is not None and rooms >= ROOMS_RATIO_GOAL,
                f"last project room join at {initial.get('rooms_complete_seconds')} s",
            )
        )
        whole = initial["ratio_to_raw_pairs"]
        goals.append(
            goal(
                "whole first sync, spaces included, vs bare loop",
                f">= {WHOLE_WITH_SPACES_RATIO_GOAL}",
                whole,
                whole >= WHOLE_WITH_SPACES_RATIO_GOAL,
                f"spaces complete at {initial.get('spaces_complete_seconds')} s, "
                f"{initial.get('space_joins_seen', 0)} space joins",
            )
        )
    if spaces:
        initial = results.get("initial_sync_spaces_off")
    if initial:
        same_work = initial["ratio_to_raw_same_work"]
        goals.append(
            goal(
                "initial sync vs bare loop, same work",
                f">= {SAME_WORK_RATIO_GOAL}",
                same_work,
                same_work >= SAME_WORK_RATIO_GOAL,
                "bare loop doing rooms + registrations + invite/join pairs, same run",
            )
        )
        ratio = initial["ratio_to_raw_pairs"]
        goals.append(
            goal(
                "initial sync vs bare invite+join loop",
                f">= {RAW_RATIO_GOAL}",
                ratio,
                ratio >= RAW_RATIO_GOAL,
                f"{initial['pairs_per_s']} vs {initial['raw']['pairs_per_s']} pairs/s",
            )
        )
        if "ratio_to_bare_loop_as_the_bridge" in initial:
            bare = initial["ratio_to_bare_loop_as_the_bridge"]
            goals.append(
                goal(
                    "(info) initial sync vs bare loop sending the bridge's requests",
                    "-",
                    bare,
                    None,
                    "what the bridge adds to the homeserver work it asks for",
                )
            )
    steady = results.get("steady_state")
    if steady and steady.get("sweeps"):
        seed, sweeps = steady["seed"], steady["sweeps"]
        site = f"{seed['projects']:,} projects / {seed['grants']:,} grants"
        worst = max(sweeps, key=lambda r: r["wall_seconds"])
        estimated = "estimated_wall_seconds_goal_portals" in worst
        seconds = worst.get("estimated_wall_seconds_goal_portals", worst["wall_seconds"])
        portals = steady["memory"]["portals"]
        goals.append(
            goal(
                "sweep time (slowest sweep)",
                f"< {SWEEP_SECONDS_GOAL:.0f} s",
                seconds,
                seconds < SWEEP_SECONDS_GOAL,
                f"{site}, "
                + (
                    f"estimated for {GOAL_PORTALS:,} portals from {portals} "
                    f"(measured {worst['wall_seconds']} s)"
                    if estimated
                    else f"{portals} portals, measured"
                ),
            )
        )
        ratios = [r["wall_to_simulator_ratio"] for r in sweeps if r.get("wall_to_simulator_ratio")]
        if ratios:
            # The median: one sweep slowed by another process says nothing about the bridge.
            ratio = round(statistics.median(ratios), 3)
            goals.append(
                goal(
                    "sweep time / simulator serving time (median)",
                    f"<= {SWEEP_RATIO_GOAL}",
                    ratio,
                    ratio <= SWEEP_RATIO_GOAL,
                    f"{portals} portals, measured; {min(ratios)} to {max(ratios)} over the "
                    f"sweeps; the simulator's serving time "
                    f"{min(r['simulator_busy_seconds'] for r in sweeps)} to "
                    f"{max(r['simulator_busy_seconds'] for r in sweeps)} s",
                )
            )
        per100 = max(r["waldur_requests_per_100_grants_and_projects"] for r in sweeps)
        goals.append(
            goal(
                "Waldur requests per 100 items",
                f"<= {REQUESTS_PER_100_GOAL}",
                per100,
                per100 <= REQUESTS_PER_100_GOAL,
                f"{sweeps[0]['waldur_requests']} requests; items = projects + grants",
            )
        )
        writes = max(
            max(r["homeserver_writes_http"], r["homeserver_writes_executor"]) for r in sweeps
        )
        goals.append(goal("homeserver writes per sweep", "0", writes, writes == 0))
        mem = steady["memory"]
        goals.append(
            goal(
                "peak RSS of the bridge",
                f"< {PEAK_RSS_GOAL_MB:.0f} MB",
                mem["peak_rss_mb"],
                mem["peak_rss_mb"] < PEAK_RSS_GOAL_MB,
                f"{site}, {portals} portals; simulator in its own process",
            )
        )
        growth = mem["growth_mb_first_to_last_sweep"]
        enough = len(sweeps) >= GOAL_SWEEPS
        goals.append(
            goal(
                f"memory growth over {GOAL_SWEEPS} sweeps",
                f"<= {GROWTH_GOAL_MB:.0f} MB",
                growth,
                (growth <= GROWTH_GOAL_MB) if enough else None,
                f"RSS after sweep 1 to after sweep {len(sweeps)}"
                + ("" if enough else f" (only {len(sweeps)} sweeps: not judged)"),
            )
        )
    hook = (steady or {}).get("hook_latency")
    if hook and hook["during_sweep"].get("n"):
        idle, during = hook["idle"]["p50_ms"], hook["during_sweep"]["p50_ms"]
        limit = HOOK_FACTOR * idle + HOOK_SLACK_MS
        goals.append(
            goal(
                "web hook p50 during a sweep",
                f"<= {HOOK_FACTOR} x idle p50 + {HOOK_SLACK_MS:.0f} ms",
                during,
                during <= limit,
                f"idle p50 {idle} ms (limit {limit:.0f} ms); "
                f"during bulk read {hook['during_bulk_read'].get('p50_ms', '-')} ms, "
                f"during reconciles {hook['during_reconciles'].get('p50_ms', '-')} ms",
            )
        )
    latency = results.get("latency")
    if latency:
        raw_p50 = latency["raw_invite_join"]["join_pushed_to_appservice"]["p50_ms"]
        hook_p50 = latency["webhook_existing_puppet"]["p50_ms"]
        limit = HOOK_FACTOR * raw_p50 + HOOK_SLACK_MS
        goals.append(
            goal(
                "web hook p50 vs raw invite+join",
                f"<= {HOOK_FACTOR} x raw p50 + {HOOK_SLACK_MS:.0f} ms",
                hook_p50,
                hook_p50 <= limit,
                f"raw p50 {raw_p50} ms; includes the simulator's "
                f"{latency['webhook_delivery_delay_ms']:.0f} ms delivery delay",
            )
        )
    return goals


def goals_table(goals: list[dict[str, Any]]) -> str:
    """The goals as an aligned text table: goal, target, measured, result, note."""
    rows = [("goal", "target", "measured", "result", "note")]
    rows += [
        (g["goal"], g["target"], str(g["measured"]), g["result"].upper(), g.get("note", ""))
        for g in goals
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    # SIGTERM (timeout, CI) cancels the run so that the finally below still stops Synapse.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    workdir = Path(tempfile.mkdtemp(prefix="waldur-bench-"))
    counter = HomeserverCounter()
    counter.install()
    hs = Homeserver(workdir)
    results: dict[str, Any] = {
        "benchmark": "waldur-matrix-bridge",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "quick": args.quick,
            "projects": args.projects,
            "members": args.members,
            "samples": args.samples,
            "event_samples": args.event_samples,
            "events_interval_s": args.events_interval,
            "concurrency": args.concurrency,
            "steady_projects": args.steady_projects,
            "steady_grants": args.steady_grants,
            "steady_users": args.steady_users or args.steady_grants // 5,
            "steady_portals": args.steady_portals,
            "sweeps": args.sweeps,
            "hook_samples": args.hook_samples,
            "spaces": not args.no_spaces,
            "database": "sqlite (bridge and Synapse)",
        },
        "environment": {
            "python": platform.python_version(),
            "synapse": synapse_version(hs.synapse.python),
            "cpus": os.cpu_count(),
            **git_state(),
        },
    }
    client: raw.RawClient | None = None
    try:
        await hs.start()
        results["environment"]["synapse_startup_s"] = round(hs.synapse.startup_seconds or 0, 2)
        client = raw.RawClient(hs.url, hs.as_token, hs.domain, hs.bot)
        ctx = Context(
            hs,
            client,
            JoinWatcher(),
            counter,
            workdir,
            args.concurrency,
            args.profile,
            spaces=not args.no_spaces,
        )
        if args.only in (None, "steady"):
            # First, so that the peak memory it reports is not the other phase's.
            results["steady_state"] = await steady_state(
                ctx,
                projects=args.steady_projects,
                grants=args.steady_grants,
                users=args.steady_users,
                portals=args.steady_portals,
                sweeps=args.sweeps,
                goal_portals=GOAL_PORTALS,
                hook_samples=args.hook_samples,
                trace_memory=args.trace_memory,
            )
        if args.only in (None, "initial"):
            results.update(
                await initial_sync_and_latency(
                    ctx,
                    projects=args.projects,
                    members=args.members,
                    samples=args.samples,
                    event_samples=args.event_samples,
                    events_interval=args.events_interval,
                    cost_samples=5 if args.quick else 20,
                )
            )
            if ctx.spaces:
                # The goals set with spaces off are judged in the same run (issue 20).
                off = dataclasses.replace(ctx, spaces=False)
                results["initial_sync_spaces_off"] = (
                    await initial_sync_and_latency(
                        off,
                        projects=args.projects,
                        members=args.members,
                        samples=0,
                        event_samples=0,
                        events_interval=args.events_interval,
                        sync_only=True,
                    )
                )["initial_sync"]
            results["space_join_cost"] = await raw.space_join_costs(
                client, hs.cpu, "sj", space_members=args.projects * args.members
            )
        results["memory_end"] = memory("end of run")
    except Exception as e:
        log.exception("The benchmark failed")
        results["error"] = f"{type(e).__name__}: {e}"
    finally:
        if client is not None:
            await client.close()
        await hs.stop()
        counter.uninstall()
        if args.keep:
            results["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["goals"] = evaluate(results)
    results["total_seconds"] = round(time.monotonic() - started, 1)
    return results


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # mautrix 0.21 passes loop= to aiohttp.web.Application: harmless.
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        results = asyncio.run(main(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("benchmark interrupted; Synapse stopped", file=sys.stderr)
        return 130
    text = json.dumps(results, indent=2)
    print(text, flush=True)
    # The table goes to stderr so that stdout stays one JSON document.
    print("\nGoals (issues 10 and 20):\n" + goals_table(results["goals"]), file=sys.stderr)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if "error" in results:
        return 2
    failed = any(g["result"] == "fail" for g in results["goals"])
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(run())
