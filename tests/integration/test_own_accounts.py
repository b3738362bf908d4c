"""Own-account mode (template mapping) with real accounts registered on the real Synapse:
people who lose their role leave, a "no" is respected, missing accounts are reported.

Each test starts one bridge and walks several cases through it, on both simulator
generations. Localparts carry a per-test suffix: the Synapse and its users live for the session.
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

import pytest

from waldur_bridge.db import AuditEntry, CustomerSpace
from waldur_devenv.matrix_user import MatrixTestUser

from .helpers import BridgeEnv, wait_for
from .test_commands import _joined, ask

pytestmark = pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)

TEMPLATE_MODE = {
    "bridge.user_mapping.mode": "template",
    "bridge.user_mapping.template": "@{username}:localhost",
    # Several people go at once here; the guard has its own tests (planner fixture 35).
    "bridge.membership.max_removal_min": 50,
}


class Site:
    """One organization and project; Waldur users with (optionally) real Matrix accounts."""

    def __init__(self, env: BridgeEnv) -> None:
        self.env = env
        self.suffix = secrets.token_hex(3)
        self.org = env.sim.add_customer(f"Acme {self.suffix}")
        self.project = env.sim.add_project(self.org, "Apollo", "Telescope pipeline")
        self.uuids: dict[str, str] = {}
        self.clients: dict[str, MatrixTestUser] = {}

    def mxid(self, name: str) -> str:
        return f"@{name}{self.suffix}:localhost"

    async def person(
        self, name: str, role: str | None = "PROJECT.MEMBER", *, account: bool = True
    ) -> MatrixTestUser | None:
        username = f"{name}{self.suffix}"
        self.uuids[name] = self.env.sim.add_user(username, name.title())
        if role:
            self.env.sim.grant(self.uuids[name], self.project, role)
        if not account:
            return None
        return await self.account(name)

    async def account(self, name: str) -> MatrixTestUser:
        user_id, token = await self.env.hs.register_user(f"{name}{self.suffix}", "pw")
        client = MatrixTestUser(self.env.hs.url, user_id, token)
        self.clients[name] = client
        return client

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


async def removals(project_uuid: str) -> dict[str, str]:
    """Person -> audit cause of the bridge's kicks in the project's room."""
    entries = await AuditEntry.recent(project_uuid, limit=200)
    return {e.target or "": e.cause for e in entries if e.action == "kick" and e.outcome == "done"}


async def test_lost_roles_remove_own_accounts(bridge_env: BridgeEnv) -> None:
    """Revoke (joined and invited), deactivation and expiry remove a person's own account
    from the room and from the organization's space; their sessions stay untouched."""
    env = bridge_env
    site = Site(env)
    try:
        alice = await site.person("alice", "PROJECT.ADMIN")
        bob = await site.person("bob")
        await site.person("carol")  # invited, never accepts
        dave = await site.person("dave")
        erin = await site.person("erin")
        await env.start(**TEMPLATE_MODE)
        await env.sweep()
        room = await env.portal_room(site.project)
        space = (await CustomerSpace.get(site.org)).room_id
        for client in (alice, bob, dave, erin):
            assert client is not None
            await client.wait_for_invite(room)
            await client.join(room)
        assert site.mxid("carol") in await env.in_room(room)  # invited, never accepts
        assert bob is not None
        await bob.wait_for_invite(space)
        await bob.join(space)

        sim = env.sim
        sim.revoke(site.uuids["bob"], site.project, "PROJECT.MEMBER")
        sim.revoke(site.uuids["carol"], site.project, "PROJECT.MEMBER")
        sim.deactivate_user(site.uuids["dave"])
        sim.set_expiration(
            site.uuids["erin"], site.project, "PROJECT.MEMBER", sim.now() - timedelta(minutes=1)
        )
        await env.sweep()

        members = await env.members(room)
        for name in ("bob", "carol", "dave", "erin"):
            assert members.get(site.mxid(name)) == "leave", (name, members)
        assert members[site.mxid("alice")] == "join"
        assert (await env.members(space)).get(site.mxid("bob")) == "leave"
        causes = await removals(site.project)
        assert {site.mxid(n) for n in ("bob", "carol", "dave", "erin")} <= set(causes)
        # Their own sessions are theirs: nothing was logged out.
        for client in (bob, dave, erin):
            assert client is not None
            assert await client.whoami() == client.user_id

        # Idempotent: the next sweep changes nothing and kicks nobody again.
        kicks = len(causes)
        await env.sweep()
        assert len(await removals(site.project)) == kicks
        assert (await env.members(room))[site.mxid("alice")] == "join"
    finally:
        await site.close()


async def test_a_no_is_respected_until_roles_change_or_they_ask(bridge_env: BridgeEnv) -> None:
    env = bridge_env
    site = Site(env)
    try:
        alice = await site.person("alice", "PROJECT.ADMIN")
        frank = await site.person("frank")
        guest = await site.account("guest")  # no Waldur user at all
        gina = await site.person("gina", None)  # a Waldur user without a role
        assert alice is not None and frank is not None and gina is not None
        await env.start(**TEMPLATE_MODE, **{"bridge.permissions": {"*": "user"}})
        await env.sweep()
        room = await env.portal_room(site.project)
        await alice.wait_for_invite(room)
        await alice.join(room)
        await frank.wait_for_invite(room)

        # Frank rejects: recorded as a decline, not invited again across two sweeps.
        await frank.leave(room)
        await wait_for(
            lambda: declined(site.project, site.mxid("frank")), 10, "the decline in the audit"
        )
        for _ in range(2):
            await env.sweep()
            assert (await env.members(room))[site.mxid("frank")] == "leave"
        answer = await ask(alice, room, "!members", containing="Frank")
        assert "declined" in answer["body"], answer["body"]

        # A moderator's guests stay: someone without a Waldur account, and a Waldur user
        # without a role on the project.
        await alice.invite(room, guest.user_id)
        await alice.invite(room, site.mxid("gina"))
        await env.sweep()
        present = await env.in_room(room)
        assert {guest.user_id, site.mxid("gina")} <= present

        # Frank asks to come back, in a direct chat with the bot.
        dm = await frank.create_room(invite=[env.bot], is_direct=True)
        await wait_for(lambda: bot_joined(env, dm), 10, "the bot to accept the DM")
        listing = await ask(frank, dm, "!rooms", containing="Apollo")
        assert "declined" in listing["body"], listing["body"]
        refused = await ask(frank, dm, "!join Zeus")
        assert "None of the rooms" in refused["body"]
        joined = await ask(frank, dm, "!join apollo", containing="Apollo")
        assert "Invited you" in joined["body"], joined["body"]
        await frank.wait_for_invite(room)
        await env.settle()

        # He rejects again; the role goes and comes back: a new grant brings a new invite.
        await frank.leave(room)
        await wait_for(
            lambda: declined(site.project, site.mxid("frank"), 2), 10, "the second decline"
        )
        env.sim.revoke(site.uuids["frank"], site.project, "PROJECT.MEMBER")
        await env.sweep()
        assert (await env.members(room))[site.mxid("frank")] == "leave"
        env.sim.grant(site.uuids["frank"], site.project, "PROJECT.MEMBER")
        await env.sweep()
        assert (await env.members(room))[site.mxid("frank")] == "invite"
        # Gina without a role asks to join: refused in words.
        gina_dm = await gina.create_room(invite=[env.bot], is_direct=True)
        await wait_for(lambda: bot_joined(env, gina_dm), 10, "the bot to accept Gina's DM")
        no_role = await ask(gina, gina_dm, "!join Apollo")
        assert "None of the rooms" in no_role["body"]
    finally:
        await site.close()


async def test_missing_accounts_are_reported_once_and_invited_later(
    bridge_env: BridgeEnv,
) -> None:
    env = bridge_env
    site = Site(env)
    try:
        admin = await site.account("admin")
        alice = await site.person("alice", "PROJECT.ADMIN")
        await site.person("hugo", account=False)
        assert alice is not None
        await env.start(
            **TEMPLATE_MODE,
            **{
                "bridge.management_room": f"#own-{site.suffix}:localhost",
                "bridge.permissions": {"*": "user", admin.user_id: "admin"},
            },
        )
        await env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        room = await env.portal_room(site.project)
        await alice.wait_for_invite(room)
        hugo = site.mxid("hugo")
        assert hugo not in await env.members(room)
        await env.sweep()
        assert hugo not in await env.members(room)

        reports = await wait_for(
            lambda: notices(admin, mgmt, "no Matrix account yet"), 15, "the report"
        )
        assert len(reports) == 1 and hugo in reports[0], reports
        assert env.bridge.sync.accounts.missing == [hugo]
        whois = await ask(admin, mgmt, f"whois hugo{site.suffix}")
        assert "no such account" in whois["body"], whois["body"]

        # Alice turns the invite down; an admin asks her back.
        await alice.leave(room)
        await wait_for(lambda: declined(site.project, site.mxid("alice")), 10, "her decline")
        rooms = await ask(admin, mgmt, "rooms Apollo")
        assert "1 declined" in rooms["body"], rooms["body"]
        again = await ask(admin, mgmt, f"invite alice{site.suffix} {site.project}")
        assert "decline is forgotten" in again["body"], again["body"]
        await alice.wait_for_invite(room)
        nobody = await ask(admin, mgmt, f"invite hugo{site.suffix} nonexistent-project")
        assert "No project" in nobody["body"], nobody["body"]

        # Hugo's first login creates his account: the next sweep invites him.
        await site.account("hugo")
        await env.sweep()
        assert (await env.members(room)).get(hugo) == "invite"
        assert env.bridge.sync.accounts.missing == []
        assert len(await notices(admin, mgmt, "no Matrix account yet")) == 1
    finally:
        await site.close()


async def declined(project_uuid: str, mxid: str, count: int = 1) -> bool:
    entries = await AuditEntry.recent(project_uuid, limit=200)
    return sum(1 for e in entries if e.action == "decline" and e.target == mxid) >= count


async def bot_joined(env: BridgeEnv, room_id: str) -> bool:
    return await _joined(env, room_id, env.bot)


async def notices(client: MatrixTestUser, room_id: str, text: str) -> list[str]:
    data: dict[str, Any] = await client.request(
        "GET", f"/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"
    )
    return [
        e["content"].get("body", "")
        for e in data.get("chunk", [])
        if e.get("type") == "m.room.message" and text in e["content"].get("body", "")
    ]


async def test_a_linked_account_leaves_with_its_role_and_its_decline_holds(
    bridge_env: BridgeEnv,
) -> None:
    """Puppet mode with an admin's link to a person's own account: the link behaves like an
    own account (an invite, a respected "no") and leaves with the role; after `unlink` the
    old account is removed even though it is no longer mapped to anyone."""
    env = bridge_env
    site = Site(env)
    try:
        admin = await site.account("admin")
        await site.person("alice", "PROJECT.ADMIN", account=False)  # a puppet
        ivan = await site.person("ivan")
        judy = await site.person("judy")
        assert ivan is not None and judy is not None
        await env.start(
            **{
                "bridge.management_room": f"#links-{site.suffix}:localhost",
                "bridge.permissions": {"*": "user", admin.user_id: "admin"},
                "bridge.membership.max_removal_min": 50,
            }
        )
        await env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        for name, client in (("ivan", ivan), ("judy", judy)):
            linked = await ask(admin, mgmt, f"link {name}{site.suffix} {client.user_id}")
            assert "Linked" in linked["body"], linked["body"]
        await env.settle()
        room = await env.portal_room(site.project)
        await ivan.wait_for_invite(room)
        await ivan.join(room)
        await judy.wait_for_invite(room)
        assert env.puppet(f"alice{site.suffix}") in await env.in_room(room)

        # Judy says no: it holds across a sweep, as for template accounts.
        await judy.leave(room)
        await wait_for(lambda: declined(site.project, judy.user_id), 10, "judy's decline")
        await env.sweep()
        assert (await env.members(room))[judy.user_id] == "leave"

        # Ivan's role goes: his own account leaves the room, his session stays.
        env.sim.revoke(site.uuids["ivan"], site.project, "PROJECT.MEMBER")
        await env.sweep()
        assert (await env.members(room))[ivan.user_id] == "leave"
        assert await ivan.whoami() == ivan.user_id
        assert ivan.user_id in await removals(site.project)

        # Judy asks back in, then her link is removed: the unmapped account leaves.
        env.bridge.sync.accounts.seen(judy.user_id)
        dm = await judy.create_room(invite=[env.bot], is_direct=True)
        await wait_for(lambda: bot_joined(env, dm), 10, "the bot to accept the DM")
        back = await ask(judy, dm, "!join Apollo", containing="Apollo")
        assert "Invited you" in back["body"], back["body"]
        await judy.wait_for_invite(room)
        await judy.join(room)
        unlinked = await ask(admin, mgmt, f"unlink {judy.user_id}")
        assert "Unlinked" in unlinked["body"], unlinked["body"]
        await env.settle()
        await env.sweep()
        members = await env.members(room)
        assert members[judy.user_id] == "leave", members
        assert members[env.puppet(f"judy{site.suffix}")] == "join", members
    finally:
        await site.close()
