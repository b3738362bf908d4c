"""The harness itself: a real Synapse, real users, and the appservice registration in effect."""

from __future__ import annotations

import urllib.request
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from waldur_devenv.matrix_user import MatrixRequestError, MatrixTestUser
from waldur_devenv.synapse import AppserviceHomeserver

MakeUser = Callable[..., Awaitable[MatrixTestUser]]


def test_synapse_is_up(synapse: AppserviceHomeserver) -> None:
    with urllib.request.urlopen(f"{synapse.url}/_matrix/client/versions", timeout=5) as resp:
        assert resp.status == 200
    assert synapse.server_name == "localhost"
    assert synapse.as_token and synapse.hs_token and synapse.as_port


async def test_two_users_talk(synapse: AppserviceHomeserver, matrix_user: MakeUser) -> None:
    alice = await matrix_user("alice")
    bob = await matrix_user("bob")
    assert await alice.whoami() == alice.user_id

    room_id = await alice.create_room()
    with pytest.raises(MatrixRequestError) as denied:
        await bob.join(room_id)  # private room, no invite yet
    assert denied.value.status == 403
    await bob.mark()
    await alice.invite(room_id, bob.user_id)
    assert await bob.wait_for_invite(room_id) == room_id
    assert room_id in await bob.invites()
    await bob.join(room_id)
    assert room_id not in await bob.invites()
    members = await alice.get_members(room_id)
    assert members[bob.user_id] == "join"

    event_id = await alice.send_text(room_id, "hello bob")
    event = await bob.wait_for_message(room_id, "hello bob", timeout=5)
    assert event["event_id"] == event_id
    assert event["sender"] == alice.user_id

    await bob.leave(room_id)
    assert (await alice.get_members(room_id))[bob.user_id] == "leave"


async def test_password_login(synapse: AppserviceHomeserver) -> None:
    user_id, _ = await synapse.register_user("carol_login", "s3cret")
    user = await MatrixTestUser.login(synapse.url, user_id, "s3cret")
    async with user:
        assert await user.whoami() == user_id


async def test_appservice_registration_is_active(synapse: AppserviceHomeserver) -> None:
    headers = {"Authorization": f"Bearer {synapse.as_token}"}
    whoami = f"{synapse.url}/_matrix/client/v3/account/whoami"
    bot = f"@waldurbot:{synapse.server_name}"
    async with aiohttp.ClientSession(headers=headers) as http:
        # The AS token alone is the registration's sender user.
        async with http.get(whoami) as resp:
            assert resp.status == 200
            assert (await resp.json())["user_id"] == f"@{synapse.sender_localpart}:localhost"
        # The bot lives in the exclusive namespace: register it as the bridge would, then
        # masquerade as it.
        async with http.post(
            f"{synapse.url}/_matrix/client/v3/register",
            json={
                "type": "m.login.application_service",
                "username": "waldurbot",
                "inhibit_login": True,
            },
        ) as resp:
            assert resp.status in (200, 400), await resp.text()
            if resp.status == 400:  # already registered by an earlier run of this test
                assert (await resp.json())["errcode"] == "M_USER_IN_USE"
        async with http.get(whoami, params={"user_id": bot}) as resp:
            assert resp.status == 200
            assert (await resp.json())["user_id"] == bot

    # Exclusive namespaces keep real users out of the bridge's localparts.
    try:
        await synapse.register_user("waldur_intruder", "x")
    except RuntimeError as e:
        assert "M_EXCLUSIVE" in str(e)
    else:
        raise AssertionError("registering inside the AS namespace should fail")
