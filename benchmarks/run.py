"""waldur-matrix-bridge benchmark: the real bridge in-process against a local Synapse and the
Waldur simulator. Prints one JSON document (and writes it to --out).

    .venv/bin/python benchmarks/run.py            # default run, a few minutes
    .venv/bin/python benchmarks/run.py --quick    # smoke check, under a minute

Measures (1) initial sync against a bare invite+join loop on the same Synapse in the same run,
(2) a steady-state sweep over seed_bulk's 1,000 projects / 10,000 grants, (3) grant-to-join
latency through the web hook and the events poll against raw invite+join latency, and (4)
memory. Synapse comes from .venv-synapse or $WALDUR_BRIDGE_SYNAPSE_PYTHON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import signal
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
from scenarios import Context, initial_sync_and_latency, steady_state

log = logging.getLogger("bench")

# The goals of the issue.
RAW_RATIO_GOAL = 0.9
SWEEP_SECONDS_GOAL = 10.0
REQUESTS_PER_100_GOAL = 1.25  # "at most about one"
HOOK_FACTOR, HOOK_SLACK_MS = 1.5, 50.0
MEMORY_GOAL_MB = 200.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, help="initial sync: projects (default 20)")
    parser.add_argument("--members", type=int, help="initial sync: members each (default 10)")
    parser.add_argument("--samples", type=int, help="latency samples (default 30)")
    parser.add_argument("--event-samples", type=int, help="events-poll samples (default 20)")
    parser.add_argument("--events-interval", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8, help="bridge.membership.concurrency")
    parser.add_argument("--steady-projects", type=int, default=1000)
    parser.add_argument("--steady-grants", type=int, default=10_000)
    parser.add_argument(
        "--steady-portals",
        default=None,
        help="portals the bridge creates before the steady sweep: a number or 'all' "
        "(all takes ~15 min: ~10,000 invite+join pairs); default 50 (10 with --quick)",
    )
    parser.add_argument("--sweeps", type=int, default=3, help="steady sweeps to measure")
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
    if args.steady_portals in (None, ""):
        args.steady_portals = 5 if small else 50
    elif args.steady_portals == "all":
        args.steady_portals = None
    else:
        args.steady_portals = int(args.steady_portals)
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
    goals = []
    initial = results.get("initial_sync")
    if initial:
        goals.append(
            goal(
                "initial sync rate",
                f">= {RAW_RATIO_GOAL:.0%} of the raw invite+join rate",
                {
                    "bridge_pairs_per_s": initial["pairs_per_s"],
                    "raw_pairs_per_s": initial["raw"]["pairs_per_s"],
                    "ratio": initial["ratio_to_raw_pairs"],
                    "ratio_to_raw_same_work": initial["ratio_to_raw_same_work"],
                },
                initial["ratio_to_raw_pairs"] >= RAW_RATIO_GOAL,
                "bridge time is end to end (sweep start to idle: rooms, registrations, display "
                "names, invites, joins, power levels); raw is pairs only. ratio_to_raw_same_work "
                "compares with the bare loop doing rooms + registrations + pairs",
            )
        )
    steady = results.get("steady_state")
    if steady and steady.get("sweeps"):
        first = steady["sweeps"][0]
        worst = max(steady["sweeps"], key=lambda r: r["wall_seconds"])
        estimated = "estimated_wall_seconds_all_portals" in worst
        seconds = worst.get("estimated_wall_seconds_all_portals", worst["wall_seconds"])
        goals.append(
            goal(
                "steady sweep wall time",
                f"< {SWEEP_SECONDS_GOAL:.0f} s for 1,000 projects / 10,000 grants",
                {
                    "measured_wall_seconds": worst["wall_seconds"],
                    "portals_reconciled": worst["portals_reconciled"],
                    "seconds_for_all_portals": seconds,
                    "estimated": estimated,
                },
                seconds < SWEEP_SECONDS_GOAL,
                worst.get("estimate_basis", "all projects have portals: measured"),
            )
        )
        per100 = max(r["waldur_requests_per_100_grants_and_projects"] for r in steady["sweeps"])
        goals.append(
            goal(
                "steady sweep Waldur requests",
                f"about one per 100 grants and projects (<= {REQUESTS_PER_100_GOAL})",
                {"requests": first["waldur_requests"], "per_100": per100},
                per100 <= REQUESTS_PER_100_GOAL,
            )
        )
        writes = max(
            max(r["homeserver_writes_http"], r["homeserver_writes_executor"])
            for r in steady["sweeps"]
        )
        goals.append(goal("steady sweep homeserver writes", "0", writes, writes == 0))
    latency = results.get("latency")
    if latency:
        raw_p50 = latency["raw_invite_join"]["join_pushed_to_appservice"]["p50_ms"]
        hook_p50 = latency["webhook_existing_puppet"]["p50_ms"]
        limit = HOOK_FACTOR * raw_p50 + HOOK_SLACK_MS
        goals.append(
            goal(
                "web hook latency p50",
                f"<= {HOOK_FACTOR} x raw p50 + {HOOK_SLACK_MS:.0f} ms",
                {
                    "webhook_p50_ms": hook_p50,
                    "webhook_p99_ms": latency["webhook_existing_puppet"]["p99_ms"],
                    "raw_p50_ms": raw_p50,
                    "limit_ms": round(limit, 1),
                    "webhook_new_user_p50_ms": latency["webhook_new_user"]["p50_ms"],
                    "events_poll_p50_ms": latency["events_poll_existing_puppet"]["p50_ms"],
                },
                hook_p50 <= limit,
                "existing puppet gaining a role; includes the simulator's "
                f"{latency['webhook_delivery_delay_ms']:.0f} ms web hook delivery delay",
            )
        )
    if steady and steady.get("memory"):
        mem = steady["memory"]
        at_all = mem["portals"] >= steady["seed"]["projects"]
        goals.append(
            goal(
                "memory",
                f"< {MEMORY_GOAL_MB:.0f} MB at 1,000 portals",
                {
                    "process_rss_mb": mem["process_rss_mb"],
                    "bridge_estimate_rss_mb": mem["bridge_estimate_rss_mb"],
                    "peak_rss_mb": mem["snapshots"][-1]["peak_rss_mb"],
                    "portals": mem["portals"],
                    "projects_in_snapshot": steady["seed"]["projects"],
                },
                mem["process_rss_mb"] < MEMORY_GOAL_MB,
                "whole process (bridge + simulator + client) after the steady sweeps"
                + ("" if at_all else f"; only {mem['portals']} portals, not 1,000"),
            )
        )
    return goals


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
            "steady_portals": args.steady_portals or "all",
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
                portals=args.steady_portals,
                sweeps=args.sweeps,
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
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if "error" in results:
        return 2
    failed = any(g["result"] == "fail" for g in results["goals"])
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(run())
