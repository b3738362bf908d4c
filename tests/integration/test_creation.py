"""Room creation against the real Synapse: crash safety, adoption, duplicates, and power levels
that arrive with the invite."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest
from mautrix.api import HTTPAPI

from waldur_bridge import room_creation
from waldur_bridge.db import AuditEntry, Portal as DBPortal, portal as states
from waldur_devenv.matrix_user import MatrixTestUser

from .helpers import BridgeEnv, wait_for
from .test_commands import ask

both_generations = pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)


def two_projects(env: BridgeEnv) -> dict[str, str]:
    """Two projects with an admin and a member each; usernames fresh for this test (the
    session's Synapse keeps every puppet)."""
    sim = env.sim
    suffix = secrets.token_hex(3)
    org = sim.add_customer("Crash Test Org")
    ids = {
        "org": org,
        "p1": sim.add_project(org, "Vega", "first"),
        "p2": sim.add_project(org, "Deneb", "second"),
    }
    for username, project, role in [
        ("ann", "p1", "PROJECT.ADMIN"),
        ("ben", "p1", "PROJECT.MEMBER"),
        ("cid", "p2", "PROJECT.ADMIN"),
        ("dot", "p2", "PROJECT.MEMBER"),
    ]:
        ids[username] = sim.add_user(f"{username}{suffix}", username.title())
        sim.grant(ids[username], ids[project], role)
    ids["suffix"] = suffix
    return ids


def username(env: BridgeEnv, ids: dict[str, str], name: str) -> str:
    return env.puppet(f"{name}{ids['suffix']}")


async def hs_call(env: BridgeEnv, method: str, path: str, body: Any = None) -> Any:
    """A client-server call as the bridge's bot (the appservice token)."""
    url = f"{env.hs.url}/_matrix/client/v3{path}"
    headers = {"Authorization": f"Bearer {env.hs.as_token}"}
    async with env._session.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
        assert resp.status < 300, (method, path, resp.status, data)
        return data


async def resolve_alias(env: BridgeEnv, project_uuid: str) -> str:
    alias = quote(f"#waldur_{project_uuid}:{env.hs.server_name}")
    return (await env.hs_get(f"/directory/room/{alias}"))["room_id"]


async def rooms_linked_to(env: BridgeEnv, project_uuid: str) -> list[str]:
    """Every room the bot is in that carries the project's link state."""
    found = []
    for room_id in (await env.hs_get("/joined_rooms"))["joined_rooms"]:
        state = await env.hs_get(f"/rooms/{room_id}/state")
        for event in state:
            if (
                event["type"] == "org.waldur.project"
                and event.get("content", {}).get("project_uuid") == project_uuid
            ):
                found.append(room_id)
    return found


async def timeline(env: BridgeEnv, room_id: str) -> list[dict[str, Any]]:
    data = await env.hs_get(f"/rooms/{room_id}/messages?dir=f&limit=200")
    return data["chunk"]


@both_generations
async def test_crash_between_create_room_and_saving(bridge_env: BridgeEnv) -> None:
    """The bridge stops after createRoom returned and before the room ID was saved; after a
    restart every project has exactly one room, reachable by its alias, with its team."""
    ids = two_projects(bridge_env)
    created: dict[str, str] = {}
    never = asyncio.Event()

    async def crash_here(room_id: str) -> None:
        created[room_id] = room_id
        await never.wait()  # the process "dies" here: the test stops the bridge

    room_creation.after_create_room = crash_here
    try:
        await bridge_env.start()
        await bridge_env.bridge.sync.sweep()
        await wait_for(lambda: _true(len(created) == 2), 30, "both createRoom calls")
        # What the crash left: intent rows with the planned alias and no room ID.
        for project in ("p1", "p2"):
            row = await DBPortal.get_by_project(ids[project])
            assert row is not None and row.state == states.CREATING and row.room_id is None
            assert row.alias == f"#waldur_{ids[project]}:{bridge_env.hs.server_name}"
        await bridge_env.stop()
    finally:
        room_creation.after_create_room = None

    await bridge_env.start()
    await bridge_env.sweep()
    for project, admin, member in (("p1", "ann", "ben"), ("p2", "cid", "dot")):
        room = await bridge_env.portal_room(ids[project])
        assert room in created, "the room made before the crash was adopted"
        assert await resolve_alias(bridge_env, ids[project]) == room
        assert await rooms_linked_to(bridge_env, ids[project]) == [room]
        members = await bridge_env.members(room)
        assert members[username(bridge_env, ids, admin)] == "join"
        assert members[username(bridge_env, ids, member)] == "join"
        levels = (await bridge_env.power_levels(room))["users"]
        assert levels[username(bridge_env, ids, admin)] == 50
        row = await DBPortal.get_by_project(ids[project])
        assert row is not None and row.state == states.ACTIVE
    # And a second restart changes nothing.
    await bridge_env.stop()
    await bridge_env.start()
    await bridge_env.sweep()
    assert bridge_env.bridge.sync.executor.writes == 0
    assert len(await rooms_linked_to(bridge_env, ids["p1"])) == 1


async def test_an_admins_create_cut_short_is_finished_after_restart(bridge_env: BridgeEnv) -> None:
    """With portals.create none, only the recorded intent says the room should exist."""
    ids = two_projects(bridge_env)
    created: list[str] = []
    never = asyncio.Event()

    async def crash_here(room_id: str) -> None:
        created.append(room_id)
        await never.wait()

    room_creation.after_create_room = crash_here
    try:
        await bridge_env.start(**{"bridge.portals.create": "none"})
        await bridge_env.bridge.sync.create_portal(ids["p1"])
        await wait_for(lambda: _true(len(created) == 1), 30, "createRoom")
        await bridge_env.stop()
    finally:
        room_creation.after_create_room = None
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["p1"])
    assert room == created[0]
    assert await resolve_alias(bridge_env, ids["p1"]) == room
    assert (await bridge_env.members(room))[username(bridge_env, ids, "ben")] == "join"
    assert await DBPortal.get_by_project(ids["p2"]) is None


async def _true(value: bool) -> bool:
    return value


async def test_new_room_has_levels_before_anyone_joins(bridge_env: BridgeEnv) -> None:
    """One power-level event in a new room, before every invite; for a grant in an existing
    room the level is set before the invite."""
    ids = two_projects(bridge_env)
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["p1"])
    ann = username(bridge_env, ids, "ann")
    events = await timeline(bridge_env, room)
    kinds = [
        (e["type"], e.get("state_key"), e["content"].get("membership"))
        for e in events
        if e["type"] in ("m.room.power_levels", "m.room.member")
    ]
    power_events = [i for i, k in enumerate(kinds) if k[0] == "m.room.power_levels"]
    assert len(power_events) == 1, kinds
    first_invite = next(i for i, k in enumerate(kinds) if k[2] == "invite")
    assert power_events[0] < first_invite
    levels = next(e for e in events if e["type"] == "m.room.power_levels")["content"]["users"]
    assert levels.get(ann) == 50
    # The invites were audited with their cause.
    audit = await AuditEntry.recent(ids["p1"])
    invites = {e.target: e.cause for e in audit if e.action == "invite"}
    assert "PROJECT.ADMIN" in invites[ann]

    # A new admin in the existing room: the level is written before the invite.
    await bridge_env.register_webhook()
    eve = bridge_env.sim.add_user(f"eve{ids['suffix']}", "Eve")
    bridge_env.sim.grant(eve, ids["p1"], "PROJECT.ADMIN")
    eve_id = username(bridge_env, ids, "eve")
    await wait_for(
        lambda: _member_is(bridge_env, room, eve_id, "join"), 20, "the new admin's join"
    )
    events = await timeline(bridge_env, room)
    level_at = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "m.room.power_levels" and e["content"]["users"].get(eve_id) == 50
    )
    invite_at = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "m.room.member"
        and e.get("state_key") == eve_id
        and e["content"].get("membership") == "invite"
    )
    assert level_at < invite_at


async def test_new_room_invites_its_puppets_with_the_first_state(bridge_env: BridgeEnv) -> None:
    """The puppets' invites are initial state of createRoom (persisted in one batch with the
    room's first events, before the name that createRoom adds after its initial state), carry
    the Waldur name, and the puppets join from them."""
    ids = two_projects(bridge_env)
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["p1"])
    events = await timeline(bridge_env, room)
    name_at = next(i for i, e in enumerate(events) if e["type"] == "m.room.name")
    invites = {
        e["state_key"]: (i, e)
        for i, e in enumerate(events)
        if e["type"] == "m.room.member" and e["content"].get("membership") == "invite"
    }
    ann, ben = username(bridge_env, ids, "ann"), username(bridge_env, ids, "ben")
    assert set(invites) == {ann, ben}
    for user_id, name in ((ann, "Ann"), (ben, "Ben")):
        at, event = invites[user_id]
        assert at < name_at, "invited by createRoom's invite list, not its initial state"
        assert event["sender"] == bridge_env.bot
        assert event["content"]["displayname"] == name
    members = await bridge_env.members(room)
    assert members[ann] == members[ben] == "join"


async def test_writes_stay_within_the_limit_while_more_rooms_are_in_flight(
    bridge_env: BridgeEnv,
) -> None:
    """bridge.membership.concurrency bounds the homeserver writes in flight, room creation
    included, while more rooms than that are worked on at once (each room's joins one at a
    time): a few rooms with long queues of joins never leave the homeserver idle."""
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    org = sim.add_customer("Limit Org")
    for p in range(6):
        project = sim.add_project(org, f"Limit {p}")
        for m in range(3):
            user = sim.add_user(f"lim{p}m{m}{suffix}", f"Limit {p}.{m}")
            sim.grant(user, project, "PROJECT.MEMBER")
    in_flight = 0
    most = 0
    # Per room: when its createRoom started and its last join ended.
    spans: dict[str, list[float]] = {}
    original = HTTPAPI._send
    loop = asyncio.get_running_loop()

    async def watched(api: HTTPAPI, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal in_flight, most
        if str(method) == "GET":
            return await original(api, method, url, *args, **kwargs)
        in_flight += 1
        most = max(most, in_flight)
        started = loop.time()
        try:
            result = await original(api, method, url, *args, **kwargs)
        finally:
            in_flight -= 1
        path = str(url.path)
        if path.endswith("/createRoom"):
            spans[str(result[0]["room_id"])] = [started, started]
        elif path.endswith("/join") and "/rooms/" in path:
            room = unquote(path.split("/rooms/")[1].split("/")[0])
            if room in spans:
                spans[room][1] = loop.time()
        return result

    await bridge_env.start(**{"bridge.membership.concurrency": 2, "bridge.spaces.enabled": False})
    HTTPAPI._send = watched  # type: ignore[method-assign]
    try:
        await bridge_env.sweep()
    finally:
        HTTPAPI._send = original  # type: ignore[method-assign]
    assert len(spans) == 6
    assert 1 <= most <= 2
    # Rooms in progress (created, joins not all done) at the busiest moment: more than the
    # write limit, or the rooms would run in waves as wide as the limit.
    busiest = max(sum(1 for a, b in spans.values() if a <= t <= b) for t, _ in spans.values())
    assert busiest > 2, spans


async def _member_is(env: BridgeEnv, room: str, user: str, membership: str) -> bool:
    return (await env.members(room)).get(user) == membership


async def test_alias_held_by_a_foreign_room_is_reported_not_duplicated(
    bridge_env: BridgeEnv,
) -> None:
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"admin{suffix}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    org = sim.add_customer("Alias Org")
    project = sim.add_project(org, "Taken")
    # A room under the project's alias without the project's link state.
    squatter = await hs_call(
        bridge_env,
        "POST",
        "/createRoom",
        {"room_alias_name": f"waldur_{project}", "name": "not a portal"},
    )
    try:
        await bridge_env.start(
            **{
                "bridge.management_room": f"#waldur_adm{suffix}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
            }
        )
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        await bridge_env.sweep()
        row = await DBPortal.get_by_project(project)
        assert row is not None and row.state == states.ERROR and row.room_id is None
        assert "no Waldur project link" in (row.error or "")
        assert await rooms_linked_to(bridge_env, project) == []
        assert await resolve_alias(bridge_env, project) == squatter["room_id"]
        await admin.wait_for_event(
            mgmt, lambda e: "No room for" in e.get("content", {}).get("body", ""), 10
        )
        # A second sweep neither creates a room nor reports again; an admin's `create` says why.
        await bridge_env.sweep()
        assert await rooms_linked_to(bridge_env, project) == []
        refused = await ask(admin, mgmt, f"create {project}")
        assert "No room for" in refused["body"] and "no Waldur project link" in refused["body"]
        assert await rooms_linked_to(bridge_env, project) == []
    finally:
        await admin.close()


async def test_initial_sync_logs_its_summary(
    bridge_env: BridgeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="waldur.sync.progress")
    ids = two_projects(bridge_env)
    await bridge_env.start(**{"bridge.portals.progress_interval": 0.05})
    await wait_for(
        lambda: _true(any("Initial sync done" in r.message for r in caplog.records)),
        60,
        "the initial sync summary",
    )
    summary = next(r.message for r in caplog.records if "Initial sync done" in r.message)
    assert "2 rooms (2 created)" in summary, summary
    assert "4 members (4 added)" in summary, summary
    assert "0 removals held" in summary, summary
    for project in ("p1", "p2"):
        assert await bridge_env.portal_room(ids[project])


async def test_duplicates_from_an_older_version_are_reported_and_tidied(
    bridge_env: BridgeEnv,
) -> None:
    """An older version's crash left two rooms with the project's link: the tracked one
    without the alias, and a leftover holding the alias. The bridge reports it after the
    initial sync; `duplicates --tidy` closes the leftover and moves the alias."""
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"admin{suffix}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    org = sim.add_customer("Dup Org")
    project = sim.add_project(org, "Twin")
    ann = sim.add_user(f"ann{suffix}", "Ann")
    sim.grant(ann, project, "PROJECT.ADMIN")
    ann_id = bridge_env.puppet(f"ann{suffix}")
    link = {
        "type": "org.waldur.project",
        "state_key": "",
        "content": {"project_uuid": project, "customer_uuid": org},
    }
    leftover = (
        await hs_call(
            bridge_env,
            "POST",
            "/createRoom",
            {"room_alias_name": f"waldur_{project}", "name": "Twin", "initial_state": [link]},
        )
    )["room_id"]
    await hs_call(bridge_env, "POST", f"/rooms/{leftover}/invite", {"user_id": ann_id})
    tracked = (
        await hs_call(bridge_env, "POST", "/createRoom", {"name": "Twin", "initial_state": [link]})
    )["room_id"]
    settings = {
        "bridge.portals.create": "none",
        "bridge.management_room": f"#waldur_dup{suffix}:localhost",
        "bridge.permissions": {"*": "user", admin_id: "admin"},
    }
    try:
        # The older version's database: the project's portal is the room without the alias.
        await bridge_env.start(**settings)
        await DBPortal(
            project_uuid=project, customer_uuid=org, room_id=tracked, state=states.ACTIVE
        ).save()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        await bridge_env.stop()

        await bridge_env.start()
        report = await admin.wait_for_event(
            mgmt, lambda e: "duplicate project room" in e["content"].get("body", ""), 30
        )
        assert leftover in report["content"]["body"]
        assert "holds the project's alias" in report["content"]["body"]
        await bridge_env.settle()
        assert (await bridge_env.members(tracked)).get(ann_id) == "join"

        listing = await ask(admin, mgmt, "duplicates")
        assert leftover in listing["body"] and tracked in listing["body"]
        tidied = await ask(admin, mgmt, "duplicates --tidy")
        assert "Closed 1 duplicate room" in tidied["body"], tidied["body"]

        assert await resolve_alias(bridge_env, project) == tracked
        assert leftover not in (await bridge_env.hs_get("/joined_rooms"))["joined_rooms"]
        assert await rooms_linked_to(bridge_env, project) == [tracked]
        audit = [e for e in await AuditEntry.recent(project) if e.action == "close-duplicate"]
        assert len(audit) == 1 and audit[0].room_id == leftover
        row = await DBPortal.get_by_project(project)
        assert row is not None and row.alias == f"#waldur_{project}:localhost"
        # The person invited into the leftover was removed; the team's room is untouched.
        assert (await bridge_env.members(tracked)).get(ann_id) == "join"
        # (The session's Synapse holds other tests' rooms too: look at this project only.)
        again = await ask(admin, mgmt, "duplicates")
        assert leftover not in again["body"] and project not in again["body"]
    finally:
        await admin.close()


async def test_kill_during_the_first_sync_leaves_one_room_per_project(
    bridge_env: BridgeEnv,
) -> None:
    """The issue's run: `kill -9` of the bridge process while its first sync creates rooms,
    then a restart: every project has exactly one room, the one its alias leads to."""
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    org = sim.add_customer("Kill Org")
    projects = [sim.add_project(org, f"Kill {i}") for i in range(10)]
    for i, project in enumerate(projects):
        for m in range(2):
            user = sim.add_user(f"k{i}m{m}{suffix}", f"Kill {i}.{m}")
            sim.grant(user, project, "PROJECT.ADMIN" if m == 0 else "PROJECT.MEMBER")
    # One room at a time, so that the kill lands with some rooms made and others not.
    config = bridge_env.write_config(**{"bridge.membership.concurrency": 1})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waldur_bridge",
        "-c",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=bridge_env.tmp_path,
    )
    try:

        async def some_rooms() -> bool:
            linked = 0
            for room_id in (await bridge_env.hs_get("/joined_rooms"))["joined_rooms"]:
                try:
                    link = await bridge_env.state(room_id, "org.waldur.project")
                except aiohttp.ClientResponseError:
                    continue
                linked += link.get("project_uuid") in projects
            return linked >= 3

        await wait_for(some_rooms, 60, "the first rooms of the first sync")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    await bridge_env.start()
    await bridge_env.sweep()
    for project in projects:
        room = await bridge_env.portal_room(project)
        assert await rooms_linked_to(bridge_env, project) == [room], project
        assert await resolve_alias(bridge_env, project) == room
        joined = {u for u, m in (await bridge_env.members(room)).items() if m == "join"}
        assert len(joined) == 3  # the bot and the two members
