"""The simulator in a child process (benchmarks measure the bridge's memory alone with it)."""

from __future__ import annotations

import aiohttp
import pytest

from waldur_simulator.process import SimulatorError, SimulatorProcess


async def test_child_simulator_serves_and_takes_control_calls() -> None:
    sim = SimulatorProcess("7.0", seed=1)
    await sim.start()
    try:
        assert sim.pid is not None
        seeded = await sim.call("seed_bulk", projects=12, grants=60)
        assert len(seeded["projects"]) == 12 and seeded["grants"] == 60
        user = await sim.call("add_user", "newcomer", "New Comer")
        await sim.call("grant", user, seeded["projects"][0], "PROJECT.MEMBER")
        headers = {"Authorization": f"Token {sim.staff_token}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            url = f"{sim.url}/api/projects/{seeded['projects'][0]}/list_users/"
            async with http.get(url) as response:
                assert response.status == 200
                people = {item["user_uuid"] for item in await response.json()}
        assert user in people
        stats = await sim.call("stats")
        assert stats["requests"] == 1 and stats["rss_mb"] > 0
        with pytest.raises(SimulatorError, match="grant"):
            await sim.call("grant", user, seeded["projects"][0], "NO.SUCH.ROLE")
    finally:
        await sim.stop()
    assert sim.pid is None
