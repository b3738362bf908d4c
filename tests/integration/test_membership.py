"""Membership sync against the real Synapse and the Waldur simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from waldur_bridge.db import AuditEntry, HeldRemoval, PortalMember
from waldur_simulator import WaldurSimulator

from .helpers import BridgeEnv, wait_for

both_generations = pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)


def team(sim: WaldurSimulator) -> dict[str, str]:
    """An organization with one project and four people in different roles."""
    org = sim.add_customer("Acme Research")
    project = sim.add_project(org, "Apollo", "Telescope pipeline")
    other = sim.add_project(org, "Gemini", "Another project")
    ids = {"org": org, "project": project, "other": other}
    for username, full_name in [
        ("alice", "Alice Archer"),
        ("bob", "Bob Baker"),
        ("carol", "Carol Chen"),
        ("dave", "Dave Dunn"),
    ]:
        ids[username] = sim.add_user(username, full_name)
    sim.grant(ids["alice"], project, "PROJECT.ADMIN")
    sim.grant(ids["bob"], project, "PROJECT.MEMBER")
    sim.grant(ids["carol"], org, "CUSTOMER.OWNER")
    sim.grant(ids["dave"], other, "PROJECT.MEMBER")
    return ids


@both_generations
async def test_initial_sync_builds_rooms_with_power_levels(bridge_env: BridgeEnv) -> None:
    ids = team(bridge_env.sim)
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["project"])
    p = bridge_env.puppet
    members = await bridge_env.members(room)
    assert {u for u, m in members.items() if m == "join"} == {
        bridge_env.bot,
        p("alice"),
        p("bob"),
        p("carol"),
    }
    levels = (await bridge_env.power_levels(room))["users"]
    assert levels.get(p("alice")) == 50
    assert levels.get(p("carol")) == 50
    assert p("bob") not in levels  # default level: no entry
    assert bridge_env.bot not in levels  # v12: the creator's power is implicit
    name = await bridge_env.state(room, "m.room.name")
    assert name["name"] == "Apollo"
    topic = await bridge_env.state(room, "m.room.topic")
    assert topic["topic"] == "Acme Research: Telescope pipeline"
    link = await bridge_env.state(room, "org.waldur.project")
    assert link == {"project_uuid": ids["project"], "customer_uuid": ids["org"]}
    join_rules = await bridge_env.state(room, "m.room.join_rules")
    assert join_rules["join_rule"] == "invite"
    profile = await bridge_env.hs_get(f"/profile/{p('alice')}")
    assert profile["displayname"] == "Alice Archer"
    # Dave is only in the other project.
    other = await bridge_env.portal_room(ids["other"])
    assert p("dave") in await bridge_env.in_room(other)
    assert p("dave") not in await bridge_env.in_room(room)

    # Idempotent: a second sweep makes no homeserver writes.
    writes = bridge_env.bridge.sync.executor.writes
    await bridge_env.sweep()
    assert bridge_env.bridge.sync.executor.writes == writes


@both_generations
async def test_web_hook_grant_revoke_and_role_change(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    ids = team(sim)
    await bridge_env.start()
    await bridge_env.sweep()
    await bridge_env.register_webhook()
    room = await bridge_env.portal_room(ids["project"])
    p = bridge_env.puppet

    eve = sim.add_user("eve", "Eve Evans")
    sim.grant(eve, ids["project"], "PROJECT.MEMBER")
    await wait_for(lambda: _joined(bridge_env, room, p("eve")), 10, "eve to join")

    sim.revoke(ids["bob"], ids["project"], "PROJECT.MEMBER")
    await wait_for(lambda: _gone(bridge_env, room, p("bob")), 10, "bob to be removed")

    # Role change: Eve becomes admin -> power level 50, in one power-level event.
    sim.grant(eve, ids["project"], "PROJECT.ADMIN")
    await wait_for(lambda: _level(bridge_env, room, p("eve"), 50), 10, "eve at 50")
    sim.revoke(eve, ids["project"], "PROJECT.ADMIN")
    await wait_for(lambda: _level(bridge_env, room, p("eve"), None), 10, "eve back to default")
    assert p("eve") in await bridge_env.in_room(room)

    kicks = [e for e in await AuditEntry.recent(ids["project"]) if e.action == "kick"]
    assert [(k.target, k.outcome, k.cause) for k in kicks] == [
        (p("bob"), "done", "no qualifying role")
    ]


async def test_expiry_deactivation_and_rename(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    ids = team(sim)
    await bridge_env.start()
    await bridge_env.sweep()
    await bridge_env.register_webhook()
    room = await bridge_env.portal_room(ids["project"])
    p = bridge_env.puppet

    # An expiry in the past counts as revoked before Waldur's daily clean-up runs.
    sim.set_expiration(
        ids["bob"], ids["project"], "PROJECT.MEMBER", datetime.now(UTC) - timedelta(minutes=1)
    )
    await wait_for(lambda: _gone(bridge_env, room, p("bob")), 10, "bob (expired) to be removed")

    sim.deactivate_user(ids["alice"])
    await wait_for(lambda: _gone(bridge_env, room, p("alice")), 10, "alice (deactivated) removed")

    sim.rename_project(ids["project"], name="Apollo II", description="Second phase")
    await wait_for(lambda: _room_name(bridge_env, room, "Apollo II"), 10, "the room rename")
    await wait_for(
        lambda: _topic(bridge_env, room, "Acme Research: Second phase"), 10, "the new topic"
    )


@both_generations
async def test_project_deletion_closes_the_room(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    ids = team(sim)
    await bridge_env.start()
    await bridge_env.sweep()
    await bridge_env.register_webhook()
    room = await bridge_env.portal_room(ids["project"])
    outsider = bridge_env.puppet("never_in_waldur")
    sim.delete_project(ids["project"])
    await wait_for(
        lambda: _only(bridge_env, room, {bridge_env.bot}), 15, "everyone removed from the room"
    )
    from waldur_bridge.portal import Portal

    async def disabled() -> bool:
        portal = await Portal.get_by_project(ids["project"])
        return portal is not None and portal.state == "disabled"

    await wait_for(disabled, 10, "the portal to be disabled")
    assert outsider not in await bridge_env.in_room(room)


async def test_waldur_outage_mid_sweep_removes_nobody(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    ids = team(sim)
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["project"])
    before = await bridge_env.in_room(room)

    # The bulk grant listing breaks on its second page: the sweep must not act on a part.
    for i in range(150):
        sim.grant(sim.add_user(f"filler{i}", f"Filler {i}"), ids["other"], "PROJECT.MEMBER")
    sim.faults.fail_page("/api/user-permissions/", 2, status=502, times=10)
    with pytest.raises(Exception):  # noqa: B017 - any Waldur error; the point is what follows
        await bridge_env.bridge.sync.sweep()
    await bridge_env.settle()
    assert await bridge_env.in_room(room) == before

    # Per-project reads failing (timeouts and 5xx) while a hint arrives: no removals either.
    sim.faults.clear()
    sim.faults.fail("/api/customers/", status=503)
    sim.revoke(ids["bob"], ids["project"], "PROJECT.MEMBER")
    sim.grant(ids["dave"], ids["project"], "PROJECT.MEMBER")
    bridge_env.bridge.sync.request_project(ids["project"], "test")
    await wait_for(
        lambda: _joined(bridge_env, room, bridge_env.puppet("dave")), 10, "dave added meanwhile"
    )
    assert bridge_env.puppet("bob") in await bridge_env.in_room(room)
    assert bridge_env.puppet("carol") in await bridge_env.in_room(room)
    sim.faults.clear()
    bridge_env.bridge.sync.request_project(ids["project"], "test")
    await wait_for(lambda: _gone(bridge_env, room, bridge_env.puppet("bob")), 15, "bob removed")


async def test_mass_removal_is_held_and_reported(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    org = sim.add_customer("Big Org")
    project = sim.add_project(org, "Crowd")
    users = [sim.add_user(f"member{i}", f"Member {i}") for i in range(6)]
    for user in users:
        sim.grant(user, project, "PROJECT.MEMBER")
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(project)
    assert len(await bridge_env.in_room(room)) == 7
    for user in users[:5]:
        sim.revoke(user, project, "PROJECT.MEMBER")
    await bridge_env.sweep()
    assert len(await bridge_env.in_room(room)) == 7  # nobody removed
    held = await HeldRemoval.all(project)
    assert sorted(h.mxid for h in held) == sorted(
        bridge_env.puppet(f"member{i}") for i in range(5)
    )
    audit = [e for e in await AuditEntry.recent(project) if e.outcome == "held"]
    assert len(audit) == 5


async def test_restart_does_not_repeat_work(bridge_env: BridgeEnv) -> None:
    ids = team(bridge_env.sim)
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["project"])
    audit_before = await AuditEntry.count()
    await bridge_env.stop()
    await bridge_env.start()
    await bridge_env.sweep()
    assert bridge_env.bridge.sync.executor.writes == 0
    assert await AuditEntry.count() == audit_before
    assert await bridge_env.portal_room(ids["project"]) == room


@pytest.mark.parametrize("room_version", ["11", "12"])
async def test_room_versions(bridge_env: BridgeEnv, room_version: str) -> None:
    ids = team(bridge_env.sim)
    await bridge_env.start(**{"bridge.portals.room_version": room_version})
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["project"])
    create = await bridge_env.state(room, "m.room.create")
    assert create.get("room_version") == room_version
    levels = (await bridge_env.power_levels(room))["users"]
    if room_version == "11":
        assert levels[bridge_env.bot] == 100
    else:
        assert bridge_env.bot not in levels
    assert levels[bridge_env.puppet("alice")] == 50
    writes = bridge_env.bridge.sync.executor.writes
    await bridge_env.sweep()
    assert bridge_env.bridge.sync.executor.writes == writes


async def _joined(env: BridgeEnv, room: str, user: str) -> bool:
    return (await env.members(room)).get(user) == "join"


async def _gone(env: BridgeEnv, room: str, user: str) -> bool:
    return (await env.members(room)).get(user) in (None, "leave")


async def _only(env: BridgeEnv, room: str, users: set[str]) -> bool:
    return await env.in_room(room) == users


async def _level(env: BridgeEnv, room: str, user: str, level: int | None) -> bool:
    return (await env.power_levels(room))["users"].get(user) == level


async def _room_name(env: BridgeEnv, room: str, name: str) -> bool:
    return (await env.state(room, "m.room.name")).get("name") == name


async def _topic(env: BridgeEnv, room: str, topic: str) -> bool:
    return (await env.state(room, "m.room.topic")).get("topic") == topic


async def test_voluntary_leave_is_respected_until_the_role_changes(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    ids = team(sim)
    await bridge_env.start()
    await bridge_env.sweep()
    await bridge_env.register_webhook()
    room = await bridge_env.portal_room(ids["project"])
    bob = bridge_env.puppet("bob")
    # Bob leaves on his own (through his puppet, as a person logged into it would).
    await bridge_env.bridge.az.intent.user(bob).leave_room(room)
    await wait_for(lambda: _gone(bridge_env, room, bob), 10, "bob to leave")

    async def leave_recorded() -> bool:
        # The homeserver shows the leave before its transaction reaches the bridge.
        member = await PortalMember.get(ids["project"], bob)
        return member is not None and member.left_voluntarily

    await wait_for(leave_recorded, 10, "the bridge to record bob's leave")
    await bridge_env.settle()
    await bridge_env.sweep()
    assert (await bridge_env.members(room)).get(bob) == "leave"
    # A new role for Bob is a reason to bring him back.
    sim.grant(ids["bob"], ids["project"], "PROJECT.MANAGER")
    await wait_for(lambda: _joined(bridge_env, room, bob), 10, "bob back after a role change")
