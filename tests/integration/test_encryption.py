"""End-to-bridge encryption on the real Synapse, with a real encrypting client as the user.

The user is a matrix-nio client with its own Olm device. With ``bridge.encryption.allow`` and
``default`` on, the portal is created encrypted; the user's ``!status`` goes out as a Megolm
event, the bot decrypts it (mautrix crypto), and its reply comes back encrypted to the user's
device and decrypts to the status text.

The bot is the appservice's sender, and Synapse refuses /sync to that user, so the bot's
device gets its to-device traffic (room keys), one-time-key counts and device lists through
the appservice transactions (MSC2409/MSC3202, ``bridge.encryption.appservice``). That needs
keys in the registration, which Synapse reads only at start: this module runs its own Synapse
with the registration the bridge generates for these settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waldur_bridge.portal import Portal
from waldur_devenv.synapse import (
    AppserviceHomeserver,
    LocalSynapse,
    SynapseNotInstalled,
    free_port,
    write_registration,
)
from waldur_devenv.testing import generate_registration, write_config

from .helpers import BridgeEnv

if sys.version_info < (3, 13):
    # The dev extra installs python-olm here: a missing one is a broken setup, not a skip.
    import nio
    import olm  # noqa: F401
else:
    nio = pytest.importorskip("nio")
    pytest.importorskip(
        "olm", reason="python-olm (extra e2be) cannot be installed on Python 3.13 and later"
    )

# nio still sends the Megolm sender_key field, which mautrix warns about when it decrypts.
pytestmark = pytest.mark.filterwarnings("ignore:The sender_key field:DeprecationWarning")

ENCRYPTION = {
    "bridge.encryption.allow": True,
    "bridge.encryption.default": True,
    "bridge.encryption.appservice": True,
    # receive_ephemeral in the registration: Synapse pushes to-device events only with it.
    "appservice.ephemeral_events": True,
}
TEMPLATE_MODE = {
    "bridge.user_mapping.mode": "template",
    "bridge.user_mapping.template": "@{username}:localhost",
}


@pytest.fixture(scope="module")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppserviceHomeserver]:
    """A Synapse whose registration is what `waldur-bridge -g` writes with ENCRYPTION on."""
    workdir = tmp_path_factory.mktemp("synapse-e2ee")
    as_port = free_port()
    config_path = write_config(
        workdir / "bridge-config.yaml",
        homeserver_url="http://127.0.0.1:1",
        domain="localhost",
        as_port=as_port,
        waldur_url="http://127.0.0.1:1",
        waldur_token="unused",
        database="sqlite:unused.db",
        overrides=ENCRYPTION,
    )
    registration = generate_registration(config_path, workdir / "registration.yaml")
    assert registration.get("org.matrix.msc3202") is True
    assert registration.get("receive_ephemeral") is True
    registration_path = write_registration(workdir / "registration.yaml", registration)
    try:
        hs = LocalSynapse(workdir / "hs", registration_path=registration_path)
    except SynapseNotInstalled as e:
        pytest.skip(str(e))
    hs.start_blocking()
    try:
        yield AppserviceHomeserver(hs, registration, registration_path, as_port)
    finally:
        hs.stop_blocking()


class NioUser:
    """A real encrypting client (matrix-nio with its Olm device) and the room events it got."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.events: list[Any] = []  # nio keeps no timeline; the sync callback fills this
        self.undecrypted: list[Any] = []
        client.add_event_callback(self._collect, (nio.RoomMessage, nio.MegolmEvent))

    async def _collect(self, room: Any, event: Any) -> None:
        self.events.append(event)

    @classmethod
    async def login(cls, env: BridgeEnv, localpart: str, store: Path) -> NioUser:
        """Register, log in with the password, and put the device keys on the server."""
        user_id, _ = await env.hs.register_user(localpart, "password")
        await asyncio.to_thread(store.mkdir)
        config = nio.AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True)
        client = nio.AsyncClient(env.hs.url, user_id, store_path=str(store), config=config)
        login = await client.login("password", device_name="encryption test")
        assert isinstance(login, nio.LoginResponse), login
        if client.should_upload_keys:
            assert isinstance(await client.keys_upload(), nio.KeysUploadResponse)
        return cls(client)

    async def sync(self, timeout_ms: int = 500) -> None:
        client = self.client
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
        # A Megolm event that came before its room key: decrypt it once the key is in.
        for event in list(self.undecrypted):
            with contextlib.suppress(nio.EncryptionError):
                self.events.append(client.decrypt_event(event))
                self.undecrypted.remove(event)

    async def wait_for_invite(self, room_id: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while room_id not in self.client.invited_rooms:
            assert time.monotonic() < deadline, f"no invite to {room_id} within {timeout} s"
            await self.sync()

    async def wait_for_reply(self, sender: str, command_id: str, timeout: float = 20) -> Any:
        """The message from sender that replies to command_id, as nio decrypted it."""
        deadline = time.monotonic() + timeout
        while True:
            while self.events:
                event = self.events.pop(0)
                if event.sender != sender:
                    continue
                if isinstance(event, nio.MegolmEvent):
                    self.undecrypted.append(event)
                    continue
                relates = event.source.get("content", {}).get("m.relates_to", {})
                if relates.get("m.in_reply_to", {}).get("event_id") == command_id:
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no decrypted reply to {command_id} within {timeout} s "
                    f"({len(self.undecrypted)} events from {sender} not decryptable)"
                )
            await self.sync()


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
    user = await NioUser.login(bridge_env, username, tmp_path / "nio-store")
    client = user.client
    try:
        await bridge_env.start(**ENCRYPTION, **TEMPLATE_MODE)
        assert bridge_env.bridge.matrix.e2ee is not None
        await bridge_env.sweep()
        room_id = await bridge_env.portal_room(project)

        # The portal was created encrypted, on the homeserver and in the bridge's records.
        encryption = await bridge_env.state(room_id, "m.room.encryption")
        assert encryption["algorithm"] == "m.megolm.v1.aes-sha2"
        portal = await Portal.get_by_project(project)
        assert portal is not None and portal.encrypted

        await user.wait_for_invite(room_id)
        joined = await client.join(room_id)
        assert isinstance(joined, nio.JoinResponse), joined
        await user.sync()
        room = client.rooms[room_id]
        assert room.encrypted

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

        reply = await user.wait_for_reply(bridge_env.bot, sent.event_id)
        # nio decrypted it (with a Megolm session the bot shared with this device), and over
        # the wire it was m.room.encrypted.
        assert reply.decrypted and reply.session_id
        on_wire = await bridge_env.hs_get(f"/rooms/{room_id}/event/{reply.event_id}")
        assert on_wire["type"] == "m.room.encrypted"
        assert on_wire["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert isinstance(reply, nio.RoomMessageNotice)
        assert project_name in reply.body
        assert f"vm-broken-{suffix}" in reply.body

        # The bot's crypto state store finds the encrypted portal the user shares with it
        # (used to rotate the room key when the user's devices change).
        e2ee = bridge_env.bridge.matrix.e2ee
        assert await e2ee.state_store.find_shared_rooms(client.user_id) == [room_id]
    finally:
        await client.close()
