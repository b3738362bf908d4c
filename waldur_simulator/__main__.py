"""Run the Waldur simulator standalone:

python -m waldur_simulator --port 8080 --generation current --seed demo
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal

from .seed import seed_bulk, seed_demo
from .server import WaldurSimulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="waldur-simulator", description="A simulated Waldur REST API for tests and demos."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--generation", choices=("7.0", "current"), default="current")
    parser.add_argument(
        "--seed",
        choices=("none", "demo", "bulk"),
        default="demo",
        help="initial data: nothing, the demo world, or a benchmark-sized world",
    )
    parser.add_argument("--bulk-projects", type=int, default=1000)
    parser.add_argument("--bulk-grants", type=int, default=10_000)
    parser.add_argument("--random-seed", type=int, default=None, help="deterministic uuids")
    parser.add_argument(
        "--hook-delay",
        type=float,
        default=None,
        help="seconds before delivery (7.0: 0.02, current: 0.05)",
    )
    parser.add_argument("--json", action="store_true", help="print the connection info as JSON")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    sim = WaldurSimulator(args.generation, seed=args.random_seed, hook_delay=args.hook_delay)
    await sim.start(args.host, args.port)
    seeded: dict[str, object] = {}
    if args.seed == "demo":
        seeded = dict(seed_demo(sim))
    elif args.seed == "bulk":
        bulk = seed_bulk(sim, projects=args.bulk_projects, grants=args.bulk_grants)
        seeded = {"grants": bulk["grants"], "projects": len(bulk["projects"])}
    info = {
        "url": sim.url,
        "staff_token": sim.staff_token,
        "generation": sim.generation,
        "seed": seeded,
    }
    if args.json:
        print(json.dumps(info), flush=True)
    else:
        print(f"Waldur simulator ({sim.generation}) at {sim.url}", flush=True)
        print(f"staff token: {sim.staff_token}", flush=True)
        print(f'try: curl -H "Authorization: Token {sim.staff_token}" {sim.url}/api/projects/')
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
