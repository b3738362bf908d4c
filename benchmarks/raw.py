"""The bare-loop baseline: what the same Synapse does for the same appservice with plain HTTP.

Everything goes through the bridge's own registration (the only appservice Synapse knows):
the bot creates and invites with the AS token, ghosts in the ``@waldur_`` namespace are
registered with ``m.login.application_service`` + ``inhibit_login`` and impersonated with
``?user_id=``. The ghosts' localparts (``waldur_raw<tag>_...``) never collide with puppets.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from harness import CpuMeter, JoinWatcher, bounded, summarize_ms

from waldur_bridge.sync.service import ROOMS_PER_WRITE

_txn = itertools.count(1)


class RawHomeserverError(RuntimeError):
    pass


class RawClient:
    def __init__(self, url: str, as_token: str, domain: str, bot: str) -> None:
        self.url = url.rstrip("/")
        self.domain = domain
        self.bot = bot
        self._headers = {"Authorization": f"Bearer {as_token}"}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        self.requests = 0

    async def close(self) -> None:
        await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        user_id: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        query = dict(params or {})
        if user_id is not None:
            query["user_id"] = user_id
        self.requests += 1
        async with self._session.request(
            method,
            f"{self.url}/_matrix/client/v3{path}",
            json=body if method != "GET" else None,
            params=query,
            headers=self._headers,
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 300:
                raise RawHomeserverError(f"{method} {path}: {resp.status} {data}")
            return data

    def mxid(self, localpart: str) -> str:
        return f"@{localpart}:{self.domain}"

    async def register(self, localpart: str) -> str:
        try:
            await self.call(
                "POST",
                "/register",
                {
                    "type": "m.login.application_service",
                    "username": localpart,
                    "inhibit_login": True,
                },
                params={"kind": "user"},
            )
        except RawHomeserverError as e:
            if "M_USER_IN_USE" not in str(e):
                raise
        return self.mxid(localpart)

    async def set_displayname(self, user_id: str, name: str) -> None:
        await self.call(
            "PUT",
            f"/profile/{quote(user_id)}/displayname",
            {"displayname": name},
            user_id=user_id,
        )

    async def create_room(self, name: str) -> str:
        data = await self.call("POST", "/createRoom", {"preset": "private_chat", "name": name})
        return str(data["room_id"])

    async def invite(self, room_id: str, user_id: str) -> None:
        await self.call("POST", f"/rooms/{quote(room_id)}/invite", {"user_id": user_id})

    async def join(self, room_id: str, user_id: str) -> None:
        await self.call("POST", f"/rooms/{quote(room_id)}/join", {}, user_id=user_id)

    async def members(self, room_id: str) -> dict[str, str]:
        data = await self.call("GET", f"/rooms/{quote(room_id)}/members")
        return {e["state_key"]: e["content"]["membership"] for e in data["chunk"]}


async def throughput(
    client: RawClient,
    tag: str,
    rooms: int,
    per_room: int,
    concurrency: int,
    cpu: Callable[[], Awaitable[CpuMeter]] | None = None,
    room_major: bool = False,
    named: bool = False,
) -> dict[str, Any]:
    """Register rooms*per_room ghosts, create `rooms` rooms one at a time, then invite+join
    every ghost into its room with `concurrency` pairs in flight (each pair: the bot's invite,
    then the ghost's join). Pairs are ordered round-robin over the rooms, the best case for
    Synapse (membership events of one room are persisted one after another), or room after
    room with `room_major`."""
    ghosts = [[f"waldur_raw{tag}_{r:03d}_{m:03d}" for m in range(per_room)] for r in range(rooms)]
    flat = [g for row in ghosts for g in row]

    started = time.perf_counter()
    await bounded(concurrency, [lambda g=g: client.register(g) for g in flat])
    register_s = time.perf_counter() - started
    displayname_s = 0.0
    if named:
        started = time.perf_counter()
        await bounded(
            concurrency,
            [lambda g=g: client.set_displayname(client.mxid(g), f"Raw {g[-7:]}") for g in flat],
        )
        displayname_s = time.perf_counter() - started

    started = time.perf_counter()
    room_ids = [await client.create_room(f"raw {tag} {r}") for r in range(rooms)]
    create_s = time.perf_counter() - started

    async def pair(room_id: str, localpart: str) -> None:
        user_id = client.mxid(localpart)
        await client.invite(room_id, user_id)
        await client.join(room_id, user_id)

    if room_major:
        order = [(room_ids[r], ghosts[r][m]) for r in range(rooms) for m in range(per_room)]
    else:
        order = [(room_ids[r], ghosts[r][m]) for m in range(per_room) for r in range(rooms)]
    meter = await cpu() if cpu is not None else None
    started = time.perf_counter()
    await bounded(concurrency, [lambda p=p: pair(*p) for p in order])
    pairs_s = time.perf_counter() - started
    usage = meter.stop() if meter is not None else None

    pairs = rooms * per_room
    return {
        "rooms": rooms,
        "pairs": pairs,
        "concurrency": concurrency,
        "register_seconds": round(register_s, 3),
        "registrations_per_s": round(pairs / register_s, 1),
        "create_room_seconds": round(create_s, 3),
        "create_room_per_s": round(rooms / create_s, 2),
        "pairs_seconds": round(pairs_s, 3),
        "pairs_per_s": round(pairs / pairs_s, 2),
        "membership_changes_per_s": round(2 * pairs / pairs_s, 2),
        "order": "room-major" if room_major else "round-robin",
        "display_names": named,
        "displayname_seconds": round(displayname_s, 3) if named else None,
        "cpu_during_pairs": usage,
        "room_ids": room_ids,
    }


async def latency(
    client: RawClient,
    watcher: JoinWatcher,
    tag: str,
    samples: int,
    room_size: int,
    pause: float = 0.1,
) -> dict[str, Any]:
    """Invite+join of one registered ghost at a time into a room of `room_size` members:
    the time until the join call returns, and until the homeserver pushes the join to the
    appservice (observed the same way as the bridge's joins)."""
    room_id = await client.create_room(f"raw latency {tag}")
    fillers = [await client.register(f"waldur_raw{tag}_fill_{i:03d}") for i in range(room_size)]
    for user_id in fillers:
        await client.invite(room_id, user_id)
        await client.join(room_id, user_id)
    ghosts = [await client.register(f"waldur_raw{tag}_lat_{i:03d}") for i in range(samples)]
    returned: list[float] = []
    observed: list[float] = []
    for user_id in ghosts:
        seen = watcher.expect(room_id, user_id)
        started = time.perf_counter()
        await client.invite(room_id, user_id)
        await client.join(room_id, user_id)
        returned.append(time.perf_counter() - started)
        observed.append(await asyncio.wait_for(seen, 10) - started)
        await asyncio.sleep(pause)
    return {
        "room_size": room_size + 1,
        "call_return": summarize_ms(returned),
        "join_pushed_to_appservice": summarize_ms(observed),
    }


def _portal_like_room(
    tag: str, i: int, invite: list[str] | None = None, levels: dict[str, int] | None = None
) -> dict[str, Any]:
    """A createRoom body shaped like the bridge's portals (room_creation.create_room_request),
    optionally with the team invited and their levels, as the bridge sends it."""
    from waldur_bridge.portal import room_power_levels

    power_levels = room_power_levels("", "12")
    power_levels["users"] = dict(levels or {})
    info = {"protocol": {"id": "waldur"}, "channel": {"id": f"{tag}{i}"}}
    return {
        "preset": "private_chat",
        "name": f"cost {tag} {i}",
        "topic": "Org: a project",
        "room_alias_name": f"waldur_cost{tag}{i}",
        "initial_state": [
            {"type": "org.waldur.project", "state_key": "", "content": {"project_uuid": "x"}},
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "shared"},
            },
            {"type": "m.bridge", "state_key": f"waldur://{tag}{i}", "content": info},
            {"type": "uk.half-shot.bridge", "state_key": f"waldur://{tag}{i}", "content": info},
        ],
        "power_level_content_override": power_levels,
        **({"invite": invite} if invite else {}),
    }


async def operation_costs(
    client: RawClient, cpu: Callable[[], Awaitable[CpuMeter]], tag: str, n: int
) -> dict[str, Any]:
    """Synapse CPU and wall time per homeserver operation, one at a time (n of each), for the
    operations an initial sync makes: where the homeserver's time goes."""
    results: dict[str, Any] = {}

    async def measure(name: str, ops: list[Callable[[], Any]]) -> None:
        meter = await cpu()
        for op in ops:
            await op()
        usage = meter.stop()
        results[name] = {
            "synapse_cpu_ms": round(1000 * usage["synapse_cpu_s"] / len(ops), 1),
            "wall_ms": round(1000 * usage["wall_s"] / len(ops), 1),
        }

    ghosts = [client.mxid(f"waldur_cost{tag}_{i:03d}") for i in range(n)]
    await measure("register", [lambda g=g: client.register(g[1:].split(":")[0]) for g in ghosts])
    await measure(
        "get_displayname",
        [
            lambda g=g: client.call("GET", f"/profile/{quote(g)}/displayname", user_id=g)
            for g in ghosts
        ],
    )
    await measure(
        "set_displayname (in no room yet)",
        [lambda g=g: client.set_displayname(g, f"Cost {g[-3:]}") for g in ghosts],
    )
    await measure(
        "create_room (plain private_chat)",
        [lambda i=i: client.create_room(f"cost {tag} {i}") for i in range(max(2, n // 4))],
    )
    portal_rooms: list[str] = []

    async def create_portal_like(i: int) -> None:
        data = await client.call("POST", "/createRoom", _portal_like_room(tag, i))
        portal_rooms.append(str(data["room_id"]))

    await measure(
        "create_room (portal-like: name, topic, alias, 5 initial state events)",
        [lambda i=i: create_portal_like(i) for i in range(max(2, n // 4))],
    )
    team = ghosts[:10]

    async def create_portal_with_team(i: int) -> None:
        body = _portal_like_room(f"{tag}t", i, invite=team, levels={team[0]: 50})
        await client.call("POST", "/createRoom", body)

    await measure(
        f"create_room (portal-like, {len(team)} invited by the invite list, with levels)",
        [lambda i=i: create_portal_with_team(i) for i in range(max(2, n // 4))],
    )

    async def create_portal_with_state_invites(i: int) -> None:
        body = _portal_like_room(f"{tag}s", i, levels={team[0]: 50})
        body["initial_state"] += _state_invites(team)
        await client.call("POST", "/createRoom", body)

    await measure(
        f"create_room (portal-like, {len(team)} invited in the initial state, as the bridge "
        "sends it)",
        [lambda i=i: create_portal_with_state_invites(i) for i in range(max(2, n // 4))],
    )
    room_id = portal_rooms[0]
    await measure("invite", [lambda g=g: client.invite(room_id, g) for g in ghosts])
    await measure("join", [lambda g=g: client.join(room_id, g) for g in ghosts])

    async def power_level(i: int) -> None:
        path = f"/rooms/{quote(room_id)}/state/m.room.power_levels/"
        levels = await client.call("GET", path)
        levels.setdefault("users", {})[ghosts[i]] = 50 if i % 2 else 0
        await client.call("PUT", path, levels)

    await measure("power_levels (get + put)", [lambda i=i: power_level(i) for i in range(n)])
    await measure("get_members", [lambda: client.members(room_id) for _ in range(n)])
    return results


async def space_join_costs(
    client: RawClient,
    cpu: Callable[[], Awaitable[CpuMeter]],
    tag: str,
    space_members: int,
    room_size: int = 10,
    concurrency: int = 8,
) -> dict[str, Any]:
    """What a join into an organization's space costs Synapse against a join into a project
    room, as the bridge would send them: ghosts named and invited in the initial state, each
    first joined to a room of `room_size`, then all of them to a space of `space_members`, one
    join at a time and, into a second space, 4 in flight."""
    ghosts = [client.mxid(f"waldur_sj{tag}_{i:04d}") for i in range(space_members)]
    await bounded(concurrency, [lambda g=g: client.register(g[1:].split(":")[0]) for g in ghosts])
    await bounded(
        concurrency, [lambda g=g: client.set_displayname(g, _ghost_name(g)) for g in ghosts]
    )

    async def create(name: str, team: list[str], space: bool) -> str:
        body: dict[str, Any] = {
            "preset": "private_chat",
            "name": name,
            "initial_state": _state_invites(team),
        }
        if space:
            body["creation_content"] = {"type": "m.space"}
        return str((await client.call("POST", "/createRoom", body))["room_id"])

    async def joins(pairs: list[tuple[str, str]], in_flight: int) -> dict[str, Any]:
        meter = await cpu()
        await bounded(in_flight, [lambda p=p: client.join(*p) for p in pairs])
        usage = meter.stop()
        split = await meter.breakdown()
        return {
            "joins": len(pairs),
            "in_flight": in_flight,
            "synapse_cpu_ms_per_join": round(1000 * usage["synapse_cpu_s"] / len(pairs), 1),
            "wall_ms_per_join": round(1000 * usage["wall_s"] / len(pairs), 1),
            "synapse_top": {
                k: v["cpu_s"] for k, v in list((split or {"top": {}})["top"].items())[:6]
            },
        }

    teams = [ghosts[i : i + room_size] for i in range(0, len(ghosts), room_size)]
    rooms = [await create(f"sj {tag} room {r}", team, False) for r, team in enumerate(teams)]
    room = await joins([(rooms[r], g) for r, team in enumerate(teams) for g in team], 1)
    spaces = [await create(f"sj {tag} space {k}", ghosts, True) for k in (1, 4)]
    one = await joins([(spaces[0], g) for g in ghosts], 1)
    four = await joins([(spaces[1], g) for g in ghosts], 4)
    return {
        "definition": (
            f"Synapse CPU per join: into rooms of {room_size}, then the same {space_members} "
            "ghosts into a space of all of them (one at a time, and 4 in flight into another)"
        ),
        "room_join": room,
        "space_join": one,
        "space_join_4_in_flight": four,
        "space_to_room_cpu_ratio": round(
            one["synapse_cpu_ms_per_join"] / max(room["synapse_cpu_ms_per_join"], 0.1), 2
        ),
    }


async def room_patterns(
    client: RawClient,
    cpu: Callable[[], Awaitable[CpuMeter]],
    tag: str,
    rooms: int,
    per_room: int,
    concurrency: int,
) -> dict[str, Any]:
    """The same rooms and memberships built five ways by the bare loop, Synapse's CPU for
    each (rooms and memberships, registrations excluded): where the bridge's extra cost per
    pair comes from. Memberships go round robin over the rooms, `concurrency` in flight,
    except for `as_the_bridge`.

    plain: plain private rooms, then invite+join pairs (the bare loop).
    portal: rooms shaped like the bridge's (name, topic, alias, link and bridge info state,
        the team's levels), then invite+join pairs.
    portal_invited: the same rooms with the team invited by createRoom's invite list, then
        the joins.
    portal_state_invited: the team's invites as member events in createRoom's initial state
        (as the bridge sends them), then the joins.
    as_the_bridge: what the bridge does, in its order: per project (`ROOMS_PER_WRITE` x
        `concurrency` projects at a time) the team's display names, createRoom with their
        invites in the initial state, then their joins one after another; every request takes
        one of `concurrency` write slots, as the bridge's do.
    """
    results: dict[str, Any] = {}
    patterns = ("plain", "portal", "portal_invited", "portal_state_invited", "as_the_bridge")
    for i, pattern in enumerate(patterns):
        results[pattern] = await _pattern(
            client, cpu, f"{tag}{i}", pattern, rooms, per_room, concurrency
        )
    return results


def _ghost_name(user_id: str) -> str:
    """The display name the patterns give a ghost (its invite carries the same)."""
    return f"Pattern {user_id[-9:-1]}"


def _state_invites(team: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "type": "m.room.member",
            "state_key": user_id,
            "content": {"membership": "invite", "displayname": _ghost_name(user_id)},
        }
        for user_id in team
    ]


async def _pattern(
    client: RawClient,
    cpu: Callable[[], Awaitable[CpuMeter]],
    tag: str,
    pattern: str,
    rooms: int,
    per_room: int,
    concurrency: int,
) -> dict[str, Any]:
    ghosts = [
        [client.mxid(f"waldur_pat{tag}_{r:03d}_{m:03d}") for m in range(per_room)]
        for r in range(rooms)
    ]
    flat = [g for row in ghosts for g in row]
    await bounded(concurrency, [lambda g=g: client.register(g[1:].split(":")[0]) for g in flat])
    meter = await cpu()

    def body(r: int) -> dict[str, Any]:
        team = ghosts[r]
        invite = team if pattern == "portal_invited" else None
        room = _portal_like_room(f"p{tag}", r, invite=invite, levels={team[0]: 50})
        if pattern in ("portal_state_invited", "as_the_bridge"):
            room["initial_state"] += _state_invites(team)
        return room

    async def create(r: int) -> str:
        if pattern == "plain":
            return await client.create_room(f"pattern {tag} {r}")
        return str((await client.call("POST", "/createRoom", body(r)))["room_id"])

    # The bridge's write limit: every request of as_the_bridge takes a slot.
    writes = asyncio.Semaphore(concurrency)

    async def named(user_id: str) -> None:
        async with writes:
            await client.set_displayname(user_id, _ghost_name(user_id))

    async def project(r: int) -> None:
        team = ghosts[r]
        await asyncio.gather(*(named(g) for g in team))
        async with writes:
            room_id = await create(r)
        for user_id in team:
            async with writes:
                await client.join(room_id, user_id)

    async def membership(room_id: str, user_id: str) -> None:
        if pattern in ("plain", "portal"):
            await client.invite(room_id, user_id)
        await client.join(room_id, user_id)

    if pattern == "as_the_bridge":
        await bounded(
            ROOMS_PER_WRITE * concurrency, [lambda r=r: project(r) for r in range(rooms)]
        )
    else:
        room_ids = await bounded(concurrency, [lambda r=r: create(r) for r in range(rooms)])
        order = [(room_ids[r], ghosts[r][m]) for m in range(per_room) for r in range(rooms)]
        await bounded(concurrency, [lambda p=p: membership(*p) for p in order])
    usage = meter.stop()
    pairs = rooms * per_room
    result: dict[str, Any] = {
        "synapse_cpu_ms_per_pair": round(1000 * usage["synapse_cpu_s"] / pairs, 1),
        "wall_s": usage["wall_s"],
        "pairs_per_s": round(pairs / usage["wall_s"], 2),
    }
    if pattern == "as_the_bridge":
        # Synapse's own split, to set beside the bridge's (the other patterns need none).
        result["synapse_cpu_split"] = await meter.breakdown()
    return result
