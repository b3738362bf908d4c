"""The bridge against the real Synapse: registration, bot, ping, shutdown, and the CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import aiohttp

from .helpers import BridgeEnv, ping, wait_for


async def test_bridge_starts_registers_bot_and_is_pinged(bridge_env: BridgeEnv) -> None:
    bridge = await bridge_env.start()
    # The bot exists on the homeserver and the AS token acts as it.
    whoami = await bridge_env.hs_get(f"/account/whoami?user_id={bridge_env.bot}")
    assert whoami["user_id"] == bridge_env.bot
    profile = await bridge_env.hs_get(f"/profile/{bridge_env.bot}")
    assert profile.get("displayname") == "Waldur"
    # The homeserver reaches the bridge: an appservice ping round trip through Synapse.
    assert await ping(bridge) >= 0
    await bridge_env.stop()
    # After a clean stop nothing listens on the appservice port any more.
    async with aiohttp.ClientSession() as session:
        try:
            async with session.get(f"http://127.0.0.1:{bridge_env.hs.as_port}/_matrix/mau/live"):
                raise AssertionError("the appservice is still listening after stop")
        except aiohttp.ClientConnectorError:
            pass


async def test_cli_runs_and_stops_cleanly_on_sigterm(bridge_env: BridgeEnv) -> None:
    config = bridge_env.write_config()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waldur_bridge",
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=bridge_env.tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{bridge_env.hs.as_port}/_matrix/mau/ready"
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            try:
                async with session.get(url) as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        try:
            await wait_for(ready, 30, "the bridge process to be ready")
        except AssertionError:
            proc.kill()
            output = (await proc.communicate())[0].decode()
            raise AssertionError(f"bridge did not become ready:\n{output[-3000:]}") from None
    proc.send_signal(signal.SIGTERM)
    try:
        output = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
    except TimeoutError:
        # Never leave a bridge holding the appservice port for the tests after this one.
        proc.kill()
        await proc.wait()
        raise AssertionError("the bridge did not stop within 30 s of SIGTERM") from None
    assert proc.returncode == 0, output[-3000:]
    assert "Everything stopped" in output
    assert "Traceback" not in output


async def test_bad_config_exits_with_named_key(bridge_env: BridgeEnv) -> None:
    config = bridge_env.write_config(**{"waldur.token": "your-waldur-api-token"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waldur_bridge",
        "-c",
        str(config),
        "-n",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=bridge_env.tmp_path,
    )
    output = (await asyncio.wait_for(proc.communicate(), 30))[0].decode()
    assert proc.returncode == 11
    assert "waldur.token: still has the example value" in output
    assert "Traceback" not in output
