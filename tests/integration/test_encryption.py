"""End-to-bridge encryption on the real Synapse, with a real encrypting client as the user.

The user is a matrix-nio client with its own Olm device. With ``bridge.encryption.allow`` and
``default`` on, the portal is created encrypted; the user's ``!status`` goes out as a Megolm
event, the bot decrypts it (mautrix crypto), and its reply comes back encrypted to the user's
device and decrypts to the status text.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from waldur_bridge.portal import Portal

from .helpers import BridgeEnv

nio = pytest.importorskip("nio", reason="the encryption test needs matrix-nio[e2e]")
pytest.importorskip("olm", reason="the encryption test needs python-olm")

ENCRYPTION = {
    "bridge.user_mapping.mode": "template",
    "bridge.user_mapping.template": "@{username}:localhost",
    "bridge.encryption.allow": True,
    "bridge.encryption.default": True,
}


async def nio_client(env: BridgeEnv, localpart: str, store: Path) -> Any:
    """A logged-in nio client with its device keys on the server."""
    user_id, _ = await env.hs.register_user(localpart, "password")
    store.mkdir()
    config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
    client = nio.AsyncClient(env.hs.url, user_id, store_path=str(store), config=config)
    login = await client.login("password", device_name="encryption test")
    assert isinstance(login, nio.LoginResponse), login
    if client.should_upload_keys:
        assert isinstance(await client.keys_upload(), nio.KeysUploadResponse)
    return client


async def sync(client: Any, timeout_ms: int = 500) -> None:
    response = await client.sync(timeout=timeout_ms, full_state=client.next_batch is None)
    assert isinstance(response, nio.SyncResponse), response
    # What sync_forever does between syncs: keep the Olm side of the device in order.
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()


async def wait_for_invite(client: Any, room_id: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while room_id not in client.invited_rooms:
        assert time.monotonic() < deadline, f"no invite to {room_id} within {timeout} s"
        await sync(client)


async def wait_for_reply(
    client: Any, room_id: str, bot: str, command_id: str, timeout: float = 20
) -> tuple[Any, list[Any]]:
    """The bot's reply to command_id as nio decrypted it, and every encrypted event it saw."""
    encrypted: list[Any] = []
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        await sync(client)
        room = client.rooms[room_id]
        # nio keeps no timeline per room; collect from the callbacks registered below.
        for event in client.waldur_events[seen:]:
            seen += 1
            if event.sender != bot:
                continue
            if isinstance(event, nio.MegolmEvent):
                encrypted.append(event)
                continue
            if not isinstance(event, (nio.RoomMessageText, nio.RoomMessageNotice)):
                continue
            relates = event.source.get("content", {}).get("m.relates_to", {})
            if relates.get("m.in_reply_to", {}).get("event_id") == command_id:
                return event, encrypted
        # A Megolm event that came before its room key: retry once the key is in.
        for index, event in enumerate(encrypted):
            if not isinstance(event, nio.MegolmEvent):
                continue
            decrypted = client.decrypt_event(event)
            if isinstance(decrypted, nio.Event) and not isinstance(decrypted, nio.MegolmEvent):
                encrypted[index] = decrypted
                client.waldur_events.append(decrypted)
        assert room.encrypted
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no decrypted reply to {command_id} within {timeout} s; bot events: "
                f"{[type(e).__name__ for e in encrypted]}"
            )
        await asyncio.sleep(0)


async def test_status_in_an_encrypted_portal(bridge_env: BridgeEnv, tmp_path: Path) -> None:
    suffix = secrets.token_hex(3)
    username = f"crypt{suffix}"
    sim = bridge_env.sim
    org = sim.add_customer("Cipher Labs")
    project_name = f"Enigma {suffix}"
    project = sim.add_project(org, project_name, "Encrypted project")
    user_uuid = sim.add_user(username, "Carol Cipher")
    sim.grant(user_uuid, project, "PROJECT.ADMIN")
    sim.add_resource(project, f"vm-broken-{suffix}", "Erred", offering_name="Cloud VM")

    # The user's device exists (keys uploaded) before the bridge invites them.
    client = await nio_client(bridge_env, username, tmp_path / "nio-store")
    client.waldur_events = []

    async def collect(room: Any, event: Any) -> None:
        client.waldur_events.append(event)

    client.add_event_callback(collect, (nio.RoomMessage, nio.MegolmEvent))
    try:
        await bridge_env.start(**ENCRYPTION)
        assert bridge_env.bridge.matrix.e2ee is not None
        await bridge_env.sweep()
        room_id = await bridge_env.portal_room(project)

        # The portal was created encrypted, on the homeserver and in the bridge's records.
        encryption = await bridge_env.state(room_id, "m.room.encryption")
        assert encryption["algorithm"] == "m.megolm.v1.aes-sha2"
        portal = await Portal.get_by_project(project)
        assert portal is not None and portal.encrypted

        await wait_for_invite(client, room_id)
        joined = await client.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        await sync(client)
        room = client.rooms[room_id]
        assert room.encrypted
        assert room.encryption_algorithm == "m.megolm.v1.aes-sha2"

        # The command goes out encrypted to the bot's device (unverified: nio is told to go on).
        sent = await client.room_send(
            room_id,
            "m.room.message",
            {"msgtype": "m.text", "body": "!status"},
            ignore_unverified_devices=True,
        )
        assert isinstance(sent, nio.RoomSendResponse), sent
        raw = await bridge_env.hs_get(f"/rooms/{room_id}/event/{sent.event_id}")
        assert raw["type"] == "m.room.encrypted"

        reply, encrypted = await wait_for_reply(client, room_id, bridge_env.bot, sent.event_id)
        # nio decrypted it: it came over the wire as m.room.encrypted.
        assert reply.decrypted
        assert reply.source["type"] == "m.room.encrypted" or encrypted
        on_wire = await bridge_env.hs_get(f"/rooms/{room_id}/event/{reply.event_id}")
        assert on_wire["type"] == "m.room.encrypted"
        assert on_wire["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert isinstance(reply, nio.RoomMessageNotice)
        assert project_name in reply.body
        assert f"vm-broken-{suffix}" in reply.body
    finally:
        await client.close()
