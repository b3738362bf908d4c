"""The bridge's own log, as an operator reads it: the real process (its logging config at DEBUG,
output to a file, not a terminal) against the real Synapse, driven through web hooks,
homeserver transactions, a room command and a provisioning login. No secret may appear."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from typing import Any
from urllib.parse import quote

import aiohttp

from waldur_devenv.matrix_user import MatrixTestUser

from .helpers import BridgeEnv, wait_for
from .test_commands import ask

DEBUG_EVERYWHERE = {
    "logging.root.level": "DEBUG",
    "logging.loggers.mau.level": "DEBUG",
    "logging.loggers.waldur.level": "DEBUG",
    "logging.loggers.aiohttp.level": "DEBUG",
}


async def _ready(session: aiohttp.ClientSession, port: int) -> bool:
    try:
        async with session.get(f"http://127.0.0.1:{port}/_matrix/mau/ready") as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def _room_of(env: BridgeEnv, project_uuid: str) -> str | None:
    """The project's room once the bot is in it: Synapse maps the alias before createRoom
    has joined its creator, and the bot's reads are refused until then."""
    alias = quote(f"#waldur_{project_uuid}:{env.hs.server_name}")
    try:
        room_id = (await env.hs_get(f"/directory/room/{alias}"))["room_id"]
        await env.hs_get(f"/rooms/{room_id}/joined_members")
    except aiohttp.ClientResponseError:
        return None
    return str(room_id)


async def test_no_secret_in_the_debug_log(bridge_env: BridgeEnv) -> None:
    env, sim = bridge_env, bridge_env.sim
    hook_secret = f"hook{secrets.token_hex(16)}"
    org = sim.add_customer("Ledger Org")
    project = sim.add_project(org, "Ledger")
    # Unique names: the session's Synapse keeps every account other tests look for.
    suffix = secrets.token_hex(3)
    erin = sim.add_user(f"erin{suffix}", "Erin Example")
    sim.grant(erin, project, "PROJECT.ADMIN")
    erin_waldur_token = sim.token_for(erin)
    # The bridge registers its own web hook in Waldur (its URL holds the secret).
    config = env.write_config(
        **{
            "waldur.webhook.secret": hook_secret,
            "waldur.webhook.register": True,
            **DEBUG_EVERYWHERE,
        }
    )
    log_path = env.tmp_path / "bridge.log"
    port = env.hs.as_port
    base = f"http://127.0.0.1:{port}"

    with open(log_path, "wb") as out:  # noqa: ASYNC230  (opened once, before the process)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "waldur_bridge",
            "-c",
            str(config),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            cwd=env.tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    issued: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as session:
            await wait_for(lambda: _ready(session, port), 60, "the bridge process to be ready")

            async def hook_registered() -> bool:
                return any(h.destination_url.endswith(hook_secret) for h in sim.hooks.values())

            await wait_for(hook_registered, 30, "the bridge to register its web hook")
            room = await wait_for(lambda: _room_of(env, project), 60, "the portal room")

            # A provisioning login: the Waldur token goes in, a Matrix access token comes out.
            auth = {"Authorization": f"Token {erin_waldur_token}"}
            async with session.post(f"{base}/_matrix/provision/v1/login", headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                issued = await resp.json()
            async with session.get(f"{base}/_matrix/provision/v1/whoami", headers=auth) as resp:
                assert resp.status == 200

            # A room command through a real homeserver transaction, as the logged-in puppet.
            puppet = MatrixTestUser(env.hs.url, issued["user_id"], issued["access_token"])
            try:

                async def joined() -> bool:
                    return (await env.members(room)).get(puppet.user_id) == "join"

                await wait_for(joined, 30, "the puppet to be in the room")
                reply = await ask(puppet, room, "!help", timeout=20)
                assert "!status" in reply["body"]
            finally:
                await puppet.close()

            # A grant: Waldur's web hook (secret in its path) makes the bridge invite Frank.
            frank = sim.add_user(f"frank{suffix}", "Frank Fisher")
            sim.grant(frank, project, "PROJECT.MEMBER")
            frank_mxid = env.puppet(f"frank{suffix}")

            async def frank_in() -> bool:
                return frank_mxid in await env.in_room(room)

            await wait_for(frank_in, 30, "the web hook to bring Frank in")

            async def frank_logged() -> bool:
                # The homeserver shows the invite a moment before the bridge logs it.
                return any(
                    frank_mxid in line and "[INFO@waldur.sync.executor] Invited" in line
                    for line in log_path.read_text(errors="replace").splitlines()
                )

            await wait_for(frank_logged, 30, "the INFO line of Frank's invite")

            # The hs_token as a query parameter (the legacy way), and a guessed hook secret.
            url = f"{base}/_matrix/app/v1/transactions/legacy1?access_token={env.hs.hs_token}"
            async with session.put(url, json={"events": []}) as resp:
                assert resp.status == 200
            async with session.post(f"{base}/waldur/webhook/not-the-secret", json={}) as resp:
                assert resp.status == 404
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    log = log_path.read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]

    leaks = {
        "web hook secret": hook_secret,
        "AS token": env.hs.as_token,
        "HS token": env.hs.hs_token,
        "Waldur staff token": sim.staff_token,
        "user's Waldur token": erin_waldur_token,
        "issued access token": issued["access_token"],
    }
    for what, secret in leaks.items():
        assert secret not in log, f"the {what} is in the log"

    lines = log.splitlines()
    assert len(lines) > 100 and any("[DEBUG@" in line for line in lines), "not a DEBUG log"
    assert "\x1b[" not in log, "colour codes in a log that is not a terminal"
    access = [line for line in lines if "aiohttp.access" in line]
    transactions = [line for line in access if "/transactions/" in line]
    assert transactions and all("[DEBUG@" in line for line in transactions)
    hooks = [line for line in access if "/waldur/webhook/" in line]
    assert hooks and all("/waldur/webhook/<redacted>" in line for line in hooks)
    assert any("access_token=<redacted>" in line for line in transactions)
    # Every membership change is one INFO line naming the person, the room and the cause.
    invited = [line for line in lines if "[INFO@waldur.sync.executor]" in line]
    assert any(frank_mxid in line and '"Ledger"' in line for line in invited), invited
