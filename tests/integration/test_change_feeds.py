"""The three change feeds: the web hook receiver (and its bad input), the events poll with its
persisted cursor, and the bridge registering its own web hook in Waldur."""

from __future__ import annotations

import json

import aiohttp
import pytest

from waldur_bridge.db import Cursor

from .helpers import BridgeEnv, ping, wait_for


def project_with_admin(env: BridgeEnv) -> tuple[str, str]:
    org = env.sim.add_customer("Org")
    project = env.sim.add_project(org, "Feeds")
    env.sim.grant(env.sim.add_user("owner", "Owner O"), project, "PROJECT.ADMIN")
    return org, project


async def post(env: BridgeEnv, path: str, body: bytes, content_type: str = "application/json"):
    url = f"http://127.0.0.1:{env.hs.as_port}{path}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers={"Content-Type": content_type}) as resp,
    ):
        return resp.status, await resp.text()


async def test_malformed_web_hooks_get_4xx_and_change_nothing(bridge_env: BridgeEnv) -> None:
    _, project = project_with_admin(bridge_env)
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(project)
    path = bridge_env.bridge.config.webhook_path
    prefix = bridge_env.bridge.config["waldur.webhook.path_prefix"]
    valid = {
        "created": "2026-11-21T20:18:37.087545+00:00",
        "message": "User X has gained role of PROJECT.MEMBER in Feeds.",
        "context": {"scope_type": "project", "scope_uuid": project, "role_name": "PROJECT.MEMBER"},
        "event_type": "role_granted",
    }
    before = await bridge_env.in_room(room)

    assert (await post(bridge_env, f"{prefix}/wrong-secret", json.dumps(valid).encode()))[0] == 404
    status, text = await post(bridge_env, path, b"{not json")
    assert status == 400 and "JSON" in text
    status, _ = await post(bridge_env, path, json.dumps({"event_type": 5}).encode())
    assert status == 400
    status, _ = await post(bridge_env, path, json.dumps([1, 2]).encode())
    assert status == 400
    status, _ = await post(bridge_env, path, b"x" * 70000)
    assert status == 413

    # A forged but well-formed hook is only a hint: the REST API says nothing changed.
    status, _ = await post(bridge_env, path, json.dumps(valid).encode())
    assert status == 202
    await bridge_env.settle()
    assert await bridge_env.in_room(room) == before
    assert bridge_env.bridge.webhook.rejected == 5
    # The bridge still works after all that.
    assert await ping(bridge_env.bridge) >= 0


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_events_poll_brings_changes_and_keeps_its_cursor(bridge_env: BridgeEnv) -> None:
    _, project = project_with_admin(bridge_env)
    await bridge_env.start(**{"waldur.events.interval": 0.2, "waldur.events.overlap": 5})
    await bridge_env.sweep()
    room = await bridge_env.portal_room(project)
    newcomer = bridge_env.sim.add_user("newcomer", "New Comer")
    bridge_env.sim.grant(newcomer, project, "PROJECT.MEMBER")
    puppet = bridge_env.puppet("newcomer")

    async def joined() -> bool:
        return (await bridge_env.members(room)).get(puppet) == "join"

    await wait_for(joined, 10, "the events poll to bring the new member in")
    cursor = await Cursor.get("events")
    assert cursor is not None and cursor.seen

    # After a restart the cursor is read back: the same events are not handled again.
    await bridge_env.stop()
    await bridge_env.start()
    handled = await bridge_env.bridge.sync.poller.poll_once()
    assert handled == 0


async def test_bridge_registers_its_own_web_hook(bridge_env: BridgeEnv) -> None:
    _, project = project_with_admin(bridge_env)
    await bridge_env.start(**{"waldur.webhook.register": True})
    await bridge_env.sweep()
    room = await bridge_env.portal_room(project)
    config = bridge_env.bridge.config
    expected = config["appservice.address"] + config.webhook_path

    async def registered() -> bool:
        return any(h.destination_url == expected for h in bridge_env.sim.hooks.values())

    await wait_for(registered, 10, "the web hook in Waldur")
    user = bridge_env.sim.add_user("hooked", "Hooked User")
    bridge_env.sim.grant(user, project, "PROJECT.MEMBER")

    async def joined() -> bool:
        return (await bridge_env.members(room)).get(bridge_env.puppet("hooked")) == "join"

    await wait_for(joined, 10, "the web hook to bring the new member in")
    # A restart does not register a second hook.
    await bridge_env.stop()
    await bridge_env.start()
    await bridge_env.bridge.sync.register_webhook()
    assert sum(h.destination_url == expected for h in bridge_env.sim.hooks.values()) == 1


async def test_a_new_address_moves_the_bridges_hook_and_removes_stale_ones(
    bridge_env: BridgeEnv,
) -> None:
    """appservice.address changes (here to another name of the same host, so the moved hook
    can be seen to work): the bridge's hook is updated in place, a stale copy pointing at a
    dead address is deleted, somebody else's hook stays."""
    sim = bridge_env.sim
    _, project = project_with_admin(bridge_env)
    secret = "fixed-test-secret-0123456789abcdef"
    port = bridge_env.hs.as_port
    await bridge_env.start(**{"waldur.webhook.register": True, "waldur.webhook.secret": secret})
    await bridge_env.sweep()
    room = await bridge_env.portal_room(project)
    path = bridge_env.bridge.config.webhook_path
    first = f"http://127.0.0.1:{port}{path}"

    async def registered() -> str | None:
        return next((u for u, h in sim.hooks.items() if h.destination_url == first), None)

    original = await wait_for(registered, 10, "the web hook in Waldur")
    stale = sim.add_hook(f"http://192.0.2.1:29334{path}", event_types=["role_granted"])
    foreign = sim.add_hook("http://192.0.2.2/waldur/webhook/another-bridge", ["role_granted"])
    await bridge_env.stop()

    moved = f"http://localhost:{port}{path}"
    await bridge_env.start(
        **{
            "waldur.webhook.register": True,
            "waldur.webhook.secret": secret,
            "appservice.address": f"http://localhost:{port}",
        }
    )

    async def only_the_moved_hook() -> bool:
        ours = {
            u: h.destination_url
            for u, h in sim.hooks.items()
            if h.destination_url != (sim.hooks[foreign].destination_url)
        }
        return ours == {original: moved}

    await wait_for(only_the_moved_hook, 10, "the hook moved in place and the stale one deleted")
    assert stale not in sim.hooks and foreign in sim.hooks
    user = sim.add_user("moved", "Moved Hook")
    sim.grant(user, project, "PROJECT.MEMBER")

    async def joined() -> bool:
        return (await bridge_env.members(room)).get(bridge_env.puppet("moved")) == "join"

    await wait_for(joined, 10, "the moved web hook to bring the new member in")


async def test_new_project_reported_by_web_hook_gets_a_room(bridge_env: BridgeEnv) -> None:
    await bridge_env.start()
    await bridge_env.sweep()
    await bridge_env.register_webhook()
    org = bridge_env.sim.add_customer("Fresh Org")
    project = bridge_env.sim.add_project(org, "Brand New")
    bridge_env.sim.grant(
        bridge_env.sim.add_user("first", "First Member"), project, "PROJECT.ADMIN"
    )
    room = await bridge_env.portal_room(project, timeout=10)

    async def joined() -> bool:
        return (await bridge_env.members(room)).get(bridge_env.puppet("first")) == "join"

    await wait_for(joined, 10, "the first member in the new project's room")
