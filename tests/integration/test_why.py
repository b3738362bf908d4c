"""`why` explains memberships from Waldur grants (real Synapse, the simulator in both
generations): a joined admin, a revoke, an expired grant, a deactivated user, a held removal, an
unknown person, and `!why` about oneself in a direct chat. Nothing is changed by asking."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

import pytest

from waldur_bridge.db import PortalMember
from waldur_bridge.portal import Portal
from waldur_devenv.matrix_user import MatrixTestUser

from .helpers import BridgeEnv, wait_for
from .test_commands import _joined, ask


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_why_explains_grants_revokes_expiry_deactivation_holds_and_self(
    bridge_env: BridgeEnv,
) -> None:
    sim = bridge_env.sim
    s = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"whyadmin{s}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    kim_id, kim_token = await bridge_env.hs.register_user(f"kimown{s}", "pw")
    kim = MatrixTestUser(bridge_env.hs.url, kim_id, kim_token)
    org = sim.add_customer("Why Org")
    project = sim.add_project(org, "Tracked")
    crowded = sim.add_project(org, "Crowded")
    boss = sim.add_user(f"boss{s}", "Bea Boss", is_staff=True)
    gina = sim.add_user(f"gina{s}", "Gina Green")
    hal = sim.add_user(f"hal{s}", "Hal Hill")
    ivy = sim.add_user(f"ivy{s}", "Ivy Ives")
    jo = sim.add_user(f"jo{s}", "Jo Jones")
    kimw = sim.add_user(f"kim{s}", "Kim King")
    crowd = [sim.add_user(f"crowd{i}{s}", f"Crowd {i}") for i in range(4)]
    with sim.acting_as(boss):
        sim.grant(gina, project, "PROJECT.ADMIN")
        sim.grant(hal, project, "PROJECT.MEMBER")
        sim.grant(jo, project, "PROJECT.MEMBER")
        sim.grant(kimw, project, "PROJECT.MEMBER")
        sim.grant(ivy, project, "PROJECT.MEMBER", expiration_time=sim.now() + timedelta(days=9))
        for user in crowd:
            sim.grant(user, crowded, "PROJECT.MEMBER")
        # Enough people in Tracked that three leaving at once is no mass removal.
        for i in range(3):
            sim.grant(sim.add_user(f"pad{i}{s}", f"Pad {i}"), project, "PROJECT.MEMBER")
    try:
        await bridge_env.start(
            **{
                "bridge.management_room": f"#why-{s}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
                "bridge.spaces.enabled": False,
            }
        )
        await bridge_env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        room = await bridge_env.portal_room(project)
        await bridge_env.portal_room(crowded)

        # A joined admin: the grant, who gave it, the level and the policy's map.
        text = (await ask(admin, mgmt, f"why gina{s} Tracked", containing="Gina"))["body"]
        assert "Room: joined, power level 50 (moderator)" in text, text
        assert "In by PROJECT.ADMIN on Tracked: granted" in text and "by Bea Boss" in text
        assert "the highest wins: level 50" in text
        # Found by display name and by the room's alias as well; --exact gives UTC times.
        portal = await Portal.get_by_project(project)
        assert portal is not None and portal.alias
        by_alias = (
            await ask(admin, mgmt, f'why "Gina Green" {portal.alias} --exact', containing="Gina")
        )["body"]
        assert "In by PROJECT.ADMIN" in by_alias and " UTC by Bea Boss" in by_alias

        # Waldur's organization roles cannot be read: the answer says it is incomplete.
        rule = sim.faults.fail(re.compile(r"/api/customers/[0-9a-f-]+/list_users/"), status=503)
        try:
            text = (await ask(admin, mgmt, f"why gina{s} Tracked", containing="Gina"))["body"]
        finally:
            sim.faults.remove(rule)
        assert "In by PROJECT.ADMIN" in text and "Waldur's answer was incomplete" in text, text

        # Revoked, expired, deactivated: each names why, and when.
        with sim.acting_as(boss):
            sim.revoke(hal, project, "PROJECT.MEMBER")
        sim.deactivate_user(jo)
        # Ivy's grant ran out an hour ago; Waldur's daily clean-up has not revoked it yet.
        sim.set_expiration(ivy, project, "PROJECT.MEMBER", sim.now() - timedelta(hours=1))
        await bridge_env.sweep()
        assert bridge_env.puppet(f"hal{s}") not in await bridge_env.in_room(room)
        text = (await ask(admin, mgmt, f"why hal{s} Tracked", containing="Hal"))["body"]
        assert "Out: no qualifying role on Tracked since" in text, text
        ended = "revoked" if sim.generation == "current" else "ended"  # 7.0 cannot tell
        assert f"PROJECT.MEMBER on Tracked: {ended}" in text
        assert "Removed from the room just now: no qualifying role" in text
        assert "a PROJECT.MEMBER grant on Tracked would bring them in" in text
        if sim.generation == "current":
            assert "revoked just now by Bea Boss" in text  # 7.0 does not say who revoked
        text = (await ask(admin, mgmt, f"why ivy{s} Tracked", containing="Ivy"))["body"]
        ended = "expired" if sim.generation == "current" else "ended"
        assert f"PROJECT.MEMBER on Tracked: {ended} 1 h ago" in text, text
        text = (await ask(admin, mgmt, f"why {bridge_env.puppet(f'jo{s}')} Tracked"))["body"]
        assert "Out: deactivated in Waldur" in text, text
        assert "reactivating the user" in text

        # Three of four at once: held by the mass-removal guard.
        for user in crowd[:3]:
            sim.revoke(user, crowded, "PROJECT.MEMBER")
        await bridge_env.sweep()
        text = (await ask(admin, mgmt, f"why crowd0{s} Crowded", containing="Crowd"))["body"]
        assert "Removal held just now by the mass-removal guard" in text, text
        assert "`approve Crowded` removes them" in text

        # Nobody by that name.
        text = (await ask(admin, mgmt, f"why nobody{s} Tracked"))["body"]
        assert text.startswith(f"No Waldur user matches `nobody{s}`"), text

        # Asking changed nothing.
        members_before = await bridge_env.members(room)
        await ask(admin, mgmt, f"why gina{s} Tracked", containing="Gina")
        assert await bridge_env.members(room) == members_before

        # !why in a direct chat: about oneself only, for a linked own account.
        await ask(admin, mgmt, f"link kim{s} {kim_id}", containing="Linked")
        await bridge_env.settle()
        dm = await kim.create_room(invite=[bridge_env.bot], is_direct=True)
        await wait_for(lambda: _joined(bridge_env, dm, bridge_env.bot), 10, "the bot in the DM")
        text = (await ask(kim, dm, "!why Tracked", containing="Kim"))["body"]
        assert "In by PROJECT.MEMBER on Tracked" in text and kim_id in text, text
        other = (await ask(kim, dm, f"!why gina{s} Tracked"))["body"]
        assert other.startswith("Usage: `!why <project>"), other
        none = (await ask(kim, dm, "!why Crowded"))["body"]
        assert none == "You have no role on Crowded or its organization.", none

        async def kim_invited() -> bool:
            return (await bridge_env.members(room)).get(kim_id) == "invite"

        await wait_for(kim_invited, 10, "Kim's own account invited")
        await kim.join(room)
        in_room = (await ask(kim, room, "!why Tracked"))["body"]
        assert in_room.startswith("Ask me in a direct chat"), in_room

        # An own account that leaves has declined: why says so, and that it stays out.
        await kim.leave(room)

        async def kim_declined() -> bool:
            record = await PortalMember.get(project, kim_id)
            return record is not None and record.left_voluntarily

        await wait_for(kim_declined, 10, "Kim's leave recorded")
        text = (await ask(kim, dm, "!why Tracked", containing="Kim"))["body"]
        assert "Room: declined" in text and "Not invited again" in text, text
        assert "`!join Tracked` in a direct chat" in text

        # Asking to come back: the next why sees the new invite.
        await ask(kim, dm, "!join Tracked")
        await wait_for(kim_invited, 10, "Kim invited again")
        text = (await ask(kim, dm, "!why Tracked", containing="Kim"))["body"]
        assert "Room: invited, not joined yet" in text and "declined" not in text, text
    finally:
        await admin.close()
        await kim.close()
