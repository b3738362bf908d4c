"""A small real Matrix client (raw client-server API over aiohttp) for tests, demo, benchmarks.

It plays the human on the other side of the bridge. Events are plain dicts as the homeserver
sends them, so tests can assert on exactly what went over the wire.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

import aiohttp

Event = dict[str, Any]

# Enough timeline per sync that a burst between two polls is not cut into a "limited" gap.
_SYNC_FILTER = json.dumps({"room": {"timeline": {"limit": 500}}, "presence": {"types": []}})


class MatrixRequestError(RuntimeError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.errcode = body.get("errcode") if isinstance(body, dict) else None
        super().__init__(f"{method} {path} -> {status} {body}")


class MatrixTestUser:
    """One logged-in Matrix user.

    ``wait_for_event`` consumes events from ``/sync`` (long-polling with a since token) in
    arrival order; each event is returned at most once and events that did not match stay
    buffered for later waits. ``mark()`` drops everything seen so far, so the next waits see
    only events that arrive after it. One waiter at a time per instance (one since token).
    """

    def __init__(
        self,
        hs_url: str,
        user_id: str,
        access_token: str,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.hs_url = hs_url.rstrip("/")
        self.user_id = user_id
        self.access_token = access_token
        self._session = session or aiohttp.ClientSession()
        self._own_session = session is None
        self._since: str | None = None
        self._pending: dict[str, list[Event]] = {}
        self._invited: set[str] = set()
        self._sync_lock = asyncio.Lock()

    @classmethod
    async def login(cls, hs_url: str, user_id: str, password: str) -> MatrixTestUser:
        user = cls(hs_url, user_id, "")
        try:
            resp = await user.request(
                "POST",
                "/_matrix/client/v3/login",
                {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user_id},
                    "password": password,
                },
                auth=False,
            )
        except BaseException:
            await user.close()
            raise
        user.user_id = resp["user_id"]
        user.access_token = resp["access_token"]
        return user

    async def close(self) -> None:
        if self._own_session and not self._session.closed:
            await self._session.close()

    async def __aenter__(self) -> MatrixTestUser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        auth: bool = True,
        timeout: float = 30.0,
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.access_token}"} if auth else {}
        async with self._session.request(
            method,
            self.hs_url + path,
            json=body,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = await resp.text()
            if resp.status >= 400:
                raise MatrixRequestError(method, path, resp.status, data)
            return data

    # --- rooms -----------------------------------------------------------------------------

    async def whoami(self) -> str:
        return (await self.request("GET", "/_matrix/client/v3/account/whoami"))["user_id"]

    async def create_room(self, invite: Iterable[str] = (), **content: Any) -> str:
        body = {"preset": "private_chat", "invite": list(invite), **content}
        return (await self.request("POST", "/_matrix/client/v3/createRoom", body))["room_id"]

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.request(
            "POST", f"/_matrix/client/v3/rooms/{q(room_id)}/invite", {"user_id": user_id}
        )

    async def join(self, room_id: str) -> str:
        resp = await self.request("POST", f"/_matrix/client/v3/join/{q(room_id)}", {})
        self._invited.discard(resp["room_id"])
        return str(resp["room_id"])

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/leave", {})
        self._invited.discard(room_id)

    async def send_text(self, room_id: str, body: str) -> str:
        return await self.send_event(
            room_id, "m.room.message", {"msgtype": "m.text", "body": body}
        )

    async def send_event(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        path = f"/_matrix/client/v3/rooms/{q(room_id)}/send/{q(event_type)}/{uuid.uuid4().hex}"
        return str((await self.request("PUT", path, content))["event_id"])

    async def get_members(self, room_id: str) -> dict[str, str]:
        """user_id -> membership (join, invite, leave, ban) of everyone the room has seen."""
        resp = await self.request("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/members")
        return {e["state_key"]: e["content"]["membership"] for e in resp["chunk"]}

    # --- sync ------------------------------------------------------------------------------

    async def sync_once(self, timeout: float = 0.0) -> None:
        """One ``/sync`` from the current since token; buffers timeline events and invites.

        The very first sync also buffers the rooms' recent history, so a wait that starts just
        after the awaited event was sent still finds it; use ``mark()`` to skip history.
        """
        async with self._sync_lock:
            params = {"timeout": str(int(timeout * 1000)), "filter": _SYNC_FILTER}
            if self._since is not None:
                params["since"] = self._since
            resp = await self.request(
                "GET", "/_matrix/client/v3/sync", params=params, timeout=timeout + 30
            )
            self._since = resp["next_batch"]
            rooms = resp.get("rooms", {})
            self._invited.update(rooms.get("invite", {}))
            for section in ("join", "leave"):
                for room_id, room in rooms.get(section, {}).items():
                    self._invited.discard(room_id)
                    buffer = self._pending.setdefault(room_id, [])
                    for event in room.get("timeline", {}).get("events", []):
                        buffer.append({**event, "room_id": room_id})

    async def mark(self) -> None:
        """Later waits see only events that arrive after this call."""
        await self.sync_once()
        self._pending.clear()

    async def wait_for_event(
        self,
        room_id: str,
        predicate: Callable[[Event], bool] = lambda _e: True,
        timeout: float = 10.0,
    ) -> Event:
        """The first not yet returned event in ``room_id`` matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self._pending.get(room_id, [])
            for i, event in enumerate(pending):
                if predicate(event):
                    return pending.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"{self.user_id}: no matching event in {room_id} within {timeout} s; "
                    f"unmatched: {[(e['type'], e.get('content')) for e in pending][-10:]}"
                )
            await self.sync_once(timeout=min(remaining, 5.0))

    async def wait_for_message(self, room_id: str, body: str, timeout: float = 10.0) -> Event:
        return await self.wait_for_event(
            room_id,
            lambda e: e["type"] == "m.room.message" and e["content"].get("body") == body,
            timeout,
        )

    async def invites(self) -> set[str]:
        """Room ids this user is currently invited to (and has not joined or rejected)."""
        await self.sync_once()
        return set(self._invited)

    async def wait_for_invite(self, room_id: str | None = None, timeout: float = 10.0) -> str:
        """A pending invite (to ``room_id`` if given); returns its room id."""
        deadline = time.monotonic() + timeout
        await self.sync_once()
        while True:
            found = sorted(r for r in self._invited if room_id is None or r == room_id)
            if found:
                return found[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.user_id}: no invite to {room_id or 'any room'}")
            await self.sync_once(timeout=min(remaining, 5.0))


def q(part: str) -> str:
    """Percent-encode one path segment (room ids contain '!' and ':')."""
    return quote(part, safe="")
