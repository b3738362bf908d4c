"""Room commands and admin commands, sent by real Matrix users on the real Synapse."""

from __future__ import annotations

import logging
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from waldur_bridge.db import HeldRemoval
from waldur_devenv.matrix_user import MatrixTestUser

from .helpers import BridgeEnv, wait_for

# Every command against both Waldur generations: 7.x answers 400 to filter values it lacks.
pytestmark = pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)

TEMPLATE_MODE = {
    "bridge.user_mapping.mode": "template",
    "bridge.user_mapping.template": "@{username}:localhost",
}


class Team:
    """A project with an admin, a member and an outsider, each with a real Matrix account."""

    def __init__(self, env: BridgeEnv) -> None:
        self.env = env
        self.suffix = secrets.token_hex(3)
        sim = env.sim
        self.org = sim.add_customer("Acme Research")
        self.project = sim.add_project(self.org, "Apollo", "Telescope pipeline")
        self.users: dict[str, str] = {}
        self.clients: dict[str, MatrixTestUser] = {}

    def username(self, name: str) -> str:
        return f"{name}{self.suffix}"

    def mxid(self, name: str) -> str:
        return f"@{self.username(name)}:localhost"

    async def person(self, name: str, full_name: str, role: str | None = None) -> MatrixTestUser:
        user_uuid = self.env.sim.add_user(self.username(name), full_name)
        self.users[name] = user_uuid
        if role:
            self.env.sim.grant(user_uuid, self.project, role)
        user_id, token = await self.env.hs.register_user(self.username(name), "password")
        client = MatrixTestUser(self.env.hs.url, user_id, token)
        self.clients[name] = client
        return client

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def ask(
    client: MatrixTestUser, room: str, body: str, timeout: float = 10, containing: str = ""
) -> dict[str, Any]:
    """Send a command and return the bot's reply to it (the one containing the given text)."""
    event_id = await client.send_text(room, body)

    def is_reply(event: dict[str, Any]) -> bool:
        content = event.get("content", {})
        reply_to = content.get("m.relates_to", {}).get("m.in_reply_to", {}).get("event_id")
        return (
            event.get("sender", "").startswith("@waldurbot:")
            and reply_to == event_id
            and containing in content.get("body", "")
        )

    event = await client.wait_for_event(room, is_reply, timeout)
    return event["content"]


async def no_reply(client: MatrixTestUser, room: str, body: str) -> bool:
    try:
        await ask(client, room, body, timeout=2)
    except (AssertionError, TimeoutError):
        return True
    return False


async def setup_room(env: BridgeEnv, **overrides: Any) -> tuple[Team, str]:
    team = Team(env)
    alice = await team.person("alice", "Alice Archer", "PROJECT.ADMIN")
    bob = await team.person("bob", "Bob Baker", "PROJECT.MEMBER")
    sim = env.sim
    offering = "Cloud VM"
    sim.add_resource(team.project, "vm-broken", "Erred", offering_name=offering)
    sim.add_resource(team.project, "vm-new", "Creating", offering_name=offering)
    sim.add_order(
        team.project,
        "Create",
        "pending-project",
        resource_name="db-1",
        offering_name=offering,
        created_by=team.users["alice"],
    )
    sim.add_order(
        team.project,
        "Terminate",
        "done",
        resource_name="vm-old",
        offering_name=offering,
        created_by=team.users["bob"],
    )
    await env.start(**{**TEMPLATE_MODE, **overrides})
    await env.sweep()
    room = await env.portal_room(team.project)
    for client in (alice, bob):
        await client.wait_for_invite(room)
        await client.join(room)
    return team, room


async def test_room_commands_for_members(bridge_env: BridgeEnv) -> None:
    team, room = await setup_room(bridge_env)
    try:
        alice = team.clients["alice"]
        reply = await ask(alice, room, "!status")
        assert reply["msgtype"] == "m.notice"
        assert "vm-broken" in reply["body"] and "2 resources being created" in reply["body"]
        assert "waiting for the project" in reply["body"]
        assert "<" in reply["formatted_body"] and reply["format"] == "org.matrix.custom.html"
        assert reply["m.mentions"] == {}

        orders = await ask(alice, room, "!orders")
        assert "Create" in orders["body"] and "Terminate" in orders["body"]
        assert "unknown" not in orders["body"].lower()

        members = await ask(team.clients["bob"], room, "!members")
        assert "Alice Archer" in members["body"] and "Project Admin" in members["body"]
        assert "Bob Baker" in members["body"] and "Project Member" in members["body"]
        assert "@" not in members["body"].split("\n", 1)[1]  # names, not Matrix IDs

        prefixed = await ask(alice, room, "!waldur status")
        assert "vm-broken" in prefixed["body"]
        help_reply = await ask(alice, room, "!help")
        assert "!orders" in help_reply["body"]
    finally:
        await team.close()


async def test_room_commands_refused_without_a_role(bridge_env: BridgeEnv) -> None:
    team, room = await setup_room(bridge_env)
    try:
        alice = team.clients["alice"]
        # A person with a Matrix account but no role, invited by the project admin (a
        # moderator): they stay, but get no data.
        mallory = await team.person("mallory", "Mallory M")
        await alice.invite(room, team.mxid("mallory"))
        await mallory.join(room)
        refused = await ask(mallory, room, "!status")
        assert "no role" in refused["body"].lower()
        assert "vm-broken" not in refused["body"]
        # Without a role, but added by a moderator: the bridge leaves Mallory alone.
        await bridge_env.sweep()
        assert (await bridge_env.members(room)).get(team.mxid("mallory")) == "join"

        # An account that maps to no Waldur user at all (like a federated user).
        stranger_id, token = await bridge_env.hs.register_user(f"stranger{team.suffix}", "pw")
        stranger = MatrixTestUser(bridge_env.hs.url, stranger_id, token)
        team.clients["stranger"] = stranger
        await alice.invite(room, stranger_id)
        await stranger.join(room)
        refused = await ask(stranger, room, "!orders")
        assert "no role" in refused["body"].lower()

        # Bob's role expires; Waldur has not cleaned it up and no hook told the bridge.
        bridge_env.sim.set_expiration(
            team.users["bob"],
            team.project,
            "PROJECT.MEMBER",
            datetime.now(UTC) - timedelta(minutes=5),
        )
        refused = await ask(team.clients["bob"], room, "!members")
        assert "no role" in refused["body"].lower()
        assert "Alice" not in refused["body"]
    finally:
        await team.close()


async def test_room_commands_are_rate_limited(bridge_env: BridgeEnv) -> None:
    team, room = await setup_room(bridge_env, **{"bridge.commands.rate_limit_per_minute": 3})
    try:
        alice = team.clients["alice"]
        for _ in range(3):
            await ask(alice, room, "!help")
        assert await no_reply(alice, room, "!help")
    finally:
        await team.close()


async def test_admin_commands_and_held_removals(
    bridge_env: BridgeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"admin{suffix}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    caplog.set_level(logging.INFO, logger="waldur.management")
    org = sim.add_customer("Big Org")
    project = sim.add_project(org, "Crowd Sourcing")
    users = [sim.add_user(f"m{i}{suffix}", f"Member {i}") for i in range(6)]
    for user in users:
        sim.grant(user, project, "PROJECT.MEMBER")
    try:
        await bridge_env.start(
            **{
                "bridge.management_room": f"#waldur-admins-{suffix}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
            }
        )
        await bridge_env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        room = await bridge_env.portal_room(project)
        # The alias is outside the bridge's namespace (waldur_...): the homeserver refuses it,
        # and the log says the room has none rather than naming the alias.
        created = [r.getMessage() for r in caplog.records if "Created the management" in r.msg]
        assert created == [
            f"Created the management room {mgmt} without an alias (admins find it by the invite)"
        ]

        listing = await ask(admin, mgmt, "rooms")
        assert "Crowd Sourcing" in listing["body"] and "active" in listing["body"]

        for user in users[:5]:
            sim.revoke(user, project, "PROJECT.MEMBER")
        dry = await ask(admin, mgmt, 'sync "Crowd Sourcing" --dry-run')
        assert "would hold removal" in dry["body"]
        await bridge_env.sweep()
        assert len(await bridge_env.in_room(room)) == 7
        held = await ask(admin, mgmt, "held")
        assert "Crowd Sourcing" in held["body"] and "5" in held["body"]

        # Reject keeps them; approve (after a new revocation wave) removes after a fresh read.
        rejected = await ask(admin, mgmt, f"reject {project}")
        assert "Kept 5" in rejected["body"]
        await bridge_env.sweep()
        assert len(await bridge_env.in_room(room)) == 7
        assert await HeldRemoval.all(project) == []

        sim.revoke(users[5], project, "PROJECT.MEMBER")
        sim.grant(users[0], project, "PROJECT.MEMBER")
        await bridge_env.sweep()
        approved = await ask(admin, mgmt, "approve all")
        assert "Nothing on hold" in approved["body"] or "removed" in approved["body"]

        # Non-admins cannot use admin commands, even in a direct chat with the bot.
        outsider_id, outsider_token = await bridge_env.hs.register_user(f"out{suffix}", "pw")
        outsider = MatrixTestUser(bridge_env.hs.url, outsider_id, outsider_token)
        dm = await outsider.create_room(invite=[bridge_env.bot], is_direct=True)
        await wait_for(
            lambda: _joined(bridge_env, dm, bridge_env.bot), 10, "the bot to accept the DM"
        )
        denied = await ask(outsider, dm, "rooms")
        assert "administrators" in denied["body"]
        await outsider.close()

        version = await ask(admin, mgmt, "version")
        assert "waldur-matrix-bridge" in version["body"]
        # Commands here take no prefix, so the pointer to help has none either.
        unknown = await ask(admin, mgmt, "frobnicate")
        assert "Unknown command `frobnicate`. Send `help` for the list." in unknown["body"]
    finally:
        await admin.close()


async def test_diagnose_reports_each_broken_part(bridge_env: BridgeEnv) -> None:
    suffix = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"diag{suffix}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    try:
        await bridge_env.start(
            **{
                "bridge.management_room": f"#diag-{suffix}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
                "waldur.events.interval": 1,
            }
        )
        await bridge_env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        await bridge_env.register_webhook()
        await bridge_env.bridge.sync.poller.poll_once()

        report = (await ask(admin, mgmt, "diagnose", timeout=20))["body"]
        assert "24 of 24 checks ok" in report, report
        # This in-process bridge is the active instance, named by host and PID.
        assert f"active: {socket.gethostname()} (PID {os.getpid()})" in report, report
        assert bridge_env.hs.as_token not in report and bridge_env.sim.staff_token not in report
        assert "sha256:" in report

        # One part broken at a time.
        rule = bridge_env.sim.faults.fail("/api/users/me/", status=503)
        report = (await ask(admin, mgmt, "diagnose", timeout=30))["body"]
        assert "❌ **Waldur reachable, token valid**" in report and "unreachable" in report
        bridge_env.sim.faults.remove(rule)

        bridge_env.sim.remove_hook(next(iter(bridge_env.sim.hooks)))
        report = (await ask(admin, mgmt, "diagnose", timeout=20))["body"]
        assert "no web hook in Waldur points at this bridge" in report
    finally:
        await admin.close()


async def _joined(env: BridgeEnv, room: str, user: str) -> bool:
    try:
        return (await env.members(room)).get(user) == "join"
    except aiohttp.ClientResponseError as e:
        if e.status == 403:  # the bot is not in the room (yet)
            return False
        raise


async def test_role_and_order_notices(bridge_env: BridgeEnv) -> None:
    team, room = await setup_room(bridge_env)
    try:
        await bridge_env.register_webhook()
        alice = team.clients["alice"]
        await alice.mark()
        sim = bridge_env.sim

        def notice_with(text: str):
            def match(event: dict[str, Any]) -> bool:
                content = event.get("content", {})
                return (
                    event.get("sender", "").startswith("@waldurbot:")
                    and content.get("msgtype") == "m.notice"
                    and text in content.get("body", "")
                    and "m.relates_to" not in content
                )

            return match

        sim.grant(team.users["bob"], team.project, "PROJECT.MANAGER")
        gained = await alice.wait_for_event(room, notice_with("Project Manager"), 10)
        assert "Bob Baker" in gained["content"]["body"]

        sim.revoke(team.users["bob"], team.project, "PROJECT.MEMBER")
        lost = await alice.wait_for_event(room, notice_with("Project Member"), 10)
        assert "Bob Baker" in lost["content"]["body"]

        order = sim.add_order(
            team.project,
            "Update",
            "pending-consumer",
            resource_name="vm-big",
            offering_name="Cloud VM",
            created_by=team.users["alice"],
        )
        sim.set_order_state(order, "executing")
        moved = await alice.wait_for_event(room, notice_with("vm-big"), 10)
        assert "Update" in moved["content"]["body"]
    finally:
        await team.close()


async def test_admin_export_disable_and_reactivate(bridge_env: BridgeEnv, tmp_path) -> None:
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"ops{suffix}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    org = sim.add_customer("Ops Org")
    project = sim.add_project(org, "Lifecycle Project")
    for i in range(2):
        sim.grant(sim.add_user(f"lc{i}{suffix}", f"Life {i}"), project, "PROJECT.MEMBER")
    exports = tmp_path / "exports"
    try:
        await bridge_env.start(
            **{
                "bridge.management_room": f"#waldur_ops{suffix}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
                "bridge.history_export": str(exports),
            }
        )
        await bridge_env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        room = await bridge_env.portal_room(project)
        assert len(await bridge_env.in_room(room)) == 3

        exported = await ask(admin, mgmt, f"export {project}", timeout=20)
        assert str(exports) in exported["body"]
        assert len(list((exports / project).glob("*.json"))) == 1

        closed = await ask(
            admin, mgmt, 'disable "Lifecycle Project" --export --reason audit', 20, "Disabled"
        )
        assert "0 failed" in closed["body"]
        assert await bridge_env.in_room(room) == {bridge_env.bot}
        assert len(list((exports / project).glob("*.txt"))) == 2

        rooms = await ask(admin, mgmt, "rooms --state disabled")
        assert "Lifecycle Project" in rooms["body"]

        reopened = await ask(admin, mgmt, f"reactivate {project}", timeout=20)
        assert "Reactivated" in reopened["body"]
        assert len(await bridge_env.in_room(room)) == 3
    finally:
        await admin.close()
