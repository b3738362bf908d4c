"""Room-command reply latency on the local Synapse, beside the homeserver's own message round
trip in the same run. Prints JSON.

    .venv/bin/python benchmarks/command_latency.py [--rounds 40] [--out FILE]

A real Matrix user (template mapping, so the bridge invites their own account) sends a command
and waits on /sync for the bot's reply: that is "sent to reply received". The baseline is one
real user sending a message and another receiving it on /sync, in the same room kind, with the
same clients: the homeserver's own round trip.
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

from benchmarks.harness import BridgeHandle, Homeserver, JoinWatcher, summarize_ms
from waldur_devenv.matrix_user import MatrixTestUser
from waldur_simulator import WaldurSimulator


def is_reply_to(event_id: str):
    def match(event: dict[str, Any]) -> bool:
        relates = event.get("content", {}).get("m.relates_to", {})
        return relates.get("m.in_reply_to", {}).get("event_id") == event_id

    return match


async def measure(rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wb-cmd-bench-") as tmp:
        work = Path(tmp)
        hs = Homeserver(work)
        await hs.start()
        sim = WaldurSimulator()
        await sim.start()
        bridge = BridgeHandle(hs, sim, work / "bridge", JoinWatcher())
        try:
            org = sim.add_customer("Bench Org")
            project = sim.add_project(org, "Bench Project")
            for i in range(3):
                sim.add_resource(project, f"vm-{i}", "Erred" if i == 0 else "OK")
            user_uuid = sim.add_user("asker", "Ann Asker")
            sim.grant(user_uuid, project, "PROJECT.ADMIN")
            asker_id, asker_token = await hs.register_user("asker", "pw")
            other_id, other_token = await hs.register_user("listener", "pw")
            asker = MatrixTestUser(hs.url, asker_id, asker_token)
            listener = MatrixTestUser(hs.url, other_id, other_token)
            await bridge.start(
                **{
                    "bridge.user_mapping.mode": "template",
                    "bridge.user_mapping.template": "@{username}:localhost",
                    "bridge.commands.rate_limit_per_minute": 100000,
                    "bridge.commands.role_notices": False,
                }
            )
            await bridge.bridge.sync.sweep()
            await bridge.settle()
            room = await bridge.portal_room(project)
            await asker.wait_for_invite(room)
            await asker.join(room)

            results: dict[str, Any] = {}
            for command in ("!help", "!status", "!members"):
                samples = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    event_id = await asker.send_text(room, command)
                    await asker.wait_for_event(room, is_reply_to(event_id), 15)
                    samples.append(time.perf_counter() - started)
                results[command] = summarize_ms(samples)

            # The homeserver's own round trip: one user sends, another receives on /sync.
            raw_room = await asker.create_room(invite=[other_id])
            await listener.wait_for_invite(raw_room)
            await listener.join(raw_room)
            await listener.mark()
            samples = []
            for i in range(rounds):
                body = f"ping {i}"
                started = time.perf_counter()
                await asker.send_text(raw_room, body)
                await listener.wait_for_message(raw_room, body, 15)
                samples.append(time.perf_counter() - started)
            results["homeserver_round_trip"] = summarize_ms(samples)
            raw_p50 = results["homeserver_round_trip"]["p50_ms"]
            for command in ("!help", "!status", "!members"):
                results[command]["p50_over_raw"] = round(results[command]["p50_ms"] / raw_p50, 2)
            await asker.close()
            await listener.close()
            return results
        finally:
            await bridge.stop()
            await sim.stop()
            await hs.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    results = asyncio.run(measure(args.rounds))
    document = {
        "benchmark": "command_reply_latency",
        "rounds": args.rounds,
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
