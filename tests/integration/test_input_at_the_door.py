"""Input at the door: malformed appservice transactions and oversized chunked web hooks, sent
to the real bridge running against the real Synapse."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from .helpers import BridgeEnv
from .test_commands import TEMPLATE_MODE, Team


async def put_transaction(env: BridgeEnv, body: bytes, *, token: str | None = None) -> int:
    txn = f"door-{secrets.token_hex(4)}"
    url = f"http://127.0.0.1:{env.hs.as_port}/_matrix/app/v1/transactions/{txn}"
    headers = {"Authorization": f"Bearer {token or env.hs.hs_token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, data=body, headers=headers) as resp,
    ):
        return resp.status


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_malformed_transactions_get_400_and_good_items_are_handled(
    bridge_env: BridgeEnv,
) -> None:
    team = Team(bridge_env)
    try:
        ann = await team.person("ann", "Ann Able", "PROJECT.ADMIN")
        await bridge_env.start(**TEMPLATE_MODE)
        await bridge_env.sweep()
        room = await bridge_env.portal_room(team.project)
        await ann.wait_for_invite(room)
        await ann.join(room)

        for body in (
            {"events": "not a list"},
            {"events": {"an": "object"}},
            {"events": None},
            [{"events": []}],
            {"no_events": []},
        ):
            assert await put_transaction(bridge_env, json.dumps(body).encode()) == 400, body
        assert await put_transaction(bridge_env, b"{not json") == 400
        # The token is checked first: a wrong one is 401 whatever the body.
        assert await put_transaction(bridge_env, b"[]", token="wrong") == 401

        # Bad items beside a valid command: they are skipped, the command is answered.
        event_id = f"$door{secrets.token_hex(6)}"
        command = {
            "type": "m.room.message",
            "room_id": room,
            "sender": ann.user_id,
            "event_id": event_id,
            "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "!status"},
            "unsigned": {"age": 1},
        }
        broken = {**command, "event_id": f"{event_id}x", "unsigned": "not an object"}
        body = {"events": [5, "text", None, broken, command]}
        assert await put_transaction(bridge_env, json.dumps(body).encode()) == 200

        def is_reply(event: dict[str, Any]) -> bool:
            relates = event.get("content", {}).get("m.relates_to", {})
            return (
                event.get("sender") == bridge_env.bot
                and relates.get("m.in_reply_to", {}).get("event_id") == event_id
            )

        reply = await ann.wait_for_event(room, is_reply, 20)
        assert reply["content"]["msgtype"] == "m.notice"
        # Still alive and answering the homeserver (the ping raises otherwise).
        await bridge_env.bridge.az.ping_self()
    finally:
        await team.close()


async def _chunks(total: int, size: int = 8192) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b" " * piece


async def test_chunked_web_hook_over_the_limit_gets_413(bridge_env: BridgeEnv) -> None:
    await bridge_env.start()
    url = f"http://127.0.0.1:{bridge_env.hs.as_port}{bridge_env.bridge.config.webhook_path}"
    before = bridge_env.bridge.webhook.rejected
    async with aiohttp.ClientSession() as session:
        # A generator body is sent chunked: no Content-Length to check up front.
        async with session.post(
            url, data=_chunks(160_000), headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 413
            assert resp.request_info.headers.get("Transfer-Encoding") == "chunked"
        assert bridge_env.bridge.webhook.rejected == before + 1
        # A small chunked hook within the limit is still read whole (and parsed: 400 here).
        async with session.post(
            url, data=_chunks(1000), headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 400
