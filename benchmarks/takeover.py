"""Takeover time of a standby and the delay of a command sent across a takeover. Prints JSON.

    WALDUR_BRIDGE_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test \\
        .venv/bin/python benchmarks/takeover.py [--kills 7] [--out FILE]

Two real bridge processes on a fresh PostgreSQL database, the local Synapse with its
registration URL on a proxy that forwards to the ready instance (as a Kubernetes Service or
haproxy would). Each round: the active instance is frozen (SIGSTOP) so that no instance is
ready, a person sends `!help`, the active instance is killed (SIGKILL), and the standby takes
over. Measured: kill to standby ready ("takeover"), command sent to reply seen ("command delay";
it includes the frozen moment before the kill). Then the killed instance is started again as
the new standby. The same for SIGTERM handovers (no freeze).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Homeserver, summarize_ms
from tests.integration.helpers import FAST_FEEDS
from waldur_devenv.ha import (
    LIVE,
    READY,
    BridgeProcess,
    ReadyProxy,
    fresh_postgres_database,
    http_status,
    wait_status,
)
from waldur_devenv.matrix_user import MatrixTestUser
from waldur_devenv.synapse import free_port
from waldur_devenv.testing import write_config
from waldur_simulator import WaldurSimulator


class Bench:
    def __init__(self, work: Path, hs: Homeserver, sim: WaldurSimulator, database: str) -> None:
        self.work, self.hs, self.sim, self.database = work, hs, sim, database
        self.ports = [free_port(), free_port()]
        self.proxy = ReadyProxy(hs.as_port, self.ports)
        self.session = aiohttp.ClientSession()
        self.processes: list[BridgeProcess] = []
        self._n = 0

    async def start_instance(self, port: int) -> BridgeProcess:
        self._n += 1
        config = write_config(
            self.work / f"bridge-{self._n}.yaml",
            homeserver_url=self.hs.url,
            domain=self.hs.server_name,
            as_port=self.hs.as_port,
            waldur_url=self.sim.url,
            waldur_token=self.sim.staff_token,
            database=self.database,
            as_token=self.hs.as_token,
            hs_token=self.hs.hs_token,
            overrides={**FAST_FEEDS, "appservice.port": port},
        )
        proc = BridgeProcess(config, port, self.work / f"bridge-{self._n}.log")
        await proc.start()
        self.processes.append(proc)
        await wait_status(self.session, proc.base_url + LIVE, 200, 60)
        return proc

    async def as_bot(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.hs.url}/_matrix/client/v3{path}"
        headers = {"Authorization": f"Bearer {self.hs.as_token}"}
        async with self.session.request(method, url, json=body, headers=headers) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def room_of(self, project: str) -> str | None:
        alias = f"%23waldur_{project}:{self.hs.server_name}"
        try:
            return (await self.as_bot("GET", f"/directory/room/{alias}"))["room_id"]
        except aiohttp.ClientResponseError:
            return None

    async def replied(self, room: str, event_id: str) -> bool:
        data = await self.as_bot("GET", f"/rooms/{room}/messages?dir=b&limit=50")
        return any(
            e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
            == event_id
            for e in data["chunk"]
        )

    async def until(self, check: Any, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not met")
            await asyncio.sleep(0.05)
        return time.monotonic()

    async def close(self) -> None:
        for proc in self.processes:
            await proc.kill()
        await self.proxy.stop()
        await self.session.close()


async def measure(kills: int, admin_url: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wb-takeover-bench-") as tmp:
        work = Path(tmp)
        hs = Homeserver(work)
        await hs.start()
        sim = WaldurSimulator()
        await sim.start()
        try:
            async with fresh_postgres_database(admin_url) as database:
                bench = Bench(work, hs, sim, database)
                await bench.proxy.start()
                try:
                    return await _rounds(bench, kills)
                finally:
                    await bench.close()
        finally:
            await sim.stop()
            await hs.stop()


async def _rounds(bench: Bench, kills: int) -> dict[str, Any]:
    sim, hs = bench.sim, bench.hs
    org = sim.add_customer("Bench Org")
    project = sim.add_project(org, "Bench Project")
    person = sim.add_user("ann", "Ann Admin")
    sim.grant(person, project, "PROJECT.ADMIN")
    active = await bench.start_instance(bench.ports[0])
    await wait_status(bench.session, active.base_url + READY, 200, 60)
    standby = await bench.start_instance(bench.ports[1])
    room = None
    deadline = time.monotonic() + 60
    while room is None and time.monotonic() < deadline:
        room = await bench.room_of(project)
        await asyncio.sleep(0.1)
    assert room is not None, "no portal"
    user_id, token = await hs.register_user(f"asker{secrets.token_hex(3)}", "pw")
    asker = MatrixTestUser(hs.url, user_id, token)
    await bench.as_bot("POST", f"/rooms/{room}/invite", {"user_id": user_id})
    await asker.join(room)

    takeover: list[float] = []
    command_delay: list[float] = []
    handover: list[float] = []
    handover_command: list[float] = []
    try:
        for _ in range(kills):
            await _standby_settled(bench, standby)
            active.signal(signal.SIGSTOP)
            await bench.until(lambda: _none_ready(bench), 10)
            sent = time.monotonic()
            event_id = await asker.send_text(room, "!help")
            killed = time.monotonic()
            active.signal(signal.SIGKILL)
            await active.wait()
            ready = await wait_status(bench.session, standby.base_url + READY, 200, 60)
            replied = await bench.until(lambda e=event_id: bench.replied(room, e), 600)
            takeover.append(ready - killed)
            command_delay.append(replied - sent)
            port = active.port
            active, standby = standby, await bench.start_instance(port)

        for _ in range(kills):
            await _standby_settled(bench, standby)
            stopped = time.monotonic()
            active.signal(signal.SIGTERM)
            event_id = await asker.send_text(room, "!help")
            ready = await wait_status(bench.session, standby.base_url + READY, 200, 60)
            replied = await bench.until(lambda e=event_id: bench.replied(room, e), 600)
            await active.wait()
            handover.append(ready - stopped)
            handover_command.append(replied - stopped)
            port = active.port
            active, standby = standby, await bench.start_instance(port)
    finally:
        await asker.close()
    return {
        "kill_9_takeover": summarize_ms(takeover),
        "kill_9_command_delay": summarize_ms(command_delay),
        "sigterm_takeover": summarize_ms(handover),
        "sigterm_command_delay": summarize_ms(handover_command),
    }


async def _none_ready(bench: Bench) -> bool:
    return await bench.proxy._ready_backend() is None


async def _standby_settled(bench: Bench, standby: BridgeProcess) -> None:
    """The new standby has polled the lock at least once (it logged that it waits)."""
    deadline = time.monotonic() + 60
    while "waits as a standby" not in standby.output():
        if time.monotonic() > deadline:
            raise TimeoutError(standby.output()[-2000:])
        await asyncio.sleep(0.05)
    assert await http_status(bench.session, standby.base_url + READY) == 503


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=7)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    admin_url = os.environ.get("WALDUR_BRIDGE_TEST_POSTGRES", "")
    if not admin_url:
        print("set WALDUR_BRIDGE_TEST_POSTGRES=postgres://... (a database to create others from)")
        return 2
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    results = asyncio.run(measure(args.kills, admin_url))
    document = {
        "benchmark": "takeover",
        "kills": args.kills,
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
