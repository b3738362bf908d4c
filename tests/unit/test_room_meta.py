"""The state the bridge owns in its rooms: bridge info, space links, orders, room versions."""

from __future__ import annotations

import pytest

from waldur_bridge import room_meta
from waldur_bridge.portal import room_power_levels
from waldur_bridge.sync.drift import changed_levels
from waldur_bridge.sync.planner import DesiredMember
from waldur_bridge.sync.policy import MembershipPolicy
from waldur_bridge.sync.spaces import PortalTeam, merge_teams

BOT = "@waldurbot:example.org"


@pytest.mark.parametrize(
    ("version", "creators"),
    [("12", True), ("13", True), ("11", False), ("10", False), ("1", False), ("x.12", False)],
)
def test_creator_rules_by_room_version(version: str, creators: bool) -> None:
    assert room_meta.creators_have_power(version) is creators
    for levels in (room_power_levels(BOT, version), room_meta.space_power_levels(BOT, version)):
        # v12 refuses the creator in `users`; on v11 an empty map would demote it.
        assert (BOT in levels["users"]) is (not creators)
        assert levels["events"]["m.room.tombstone"] == (150 if creators else 100)


def test_space_levels_keep_links_and_settings_with_the_bot() -> None:
    levels = room_meta.space_power_levels(BOT, "12")
    assert levels["events"][room_meta.SPACE_CHILD] == 100
    assert levels["state_default"] == 100
    assert levels["invite"] == 50


def test_child_order_sorts_by_name_and_fits_the_spec() -> None:
    names = ["Zeta", "alpha", "Beta", "Éclair", "beta", "日本語 project", "x" * 80]
    orders = {n: room_meta.child_order(n, f"{i:08x}{0:024x}") for i, n in enumerate(names)}
    for order in orders.values():
        assert len(order) <= room_meta.ORDER_LIMIT
        assert all(0x20 <= ord(c) <= 0x7E for c in order)
    ranked = sorted(names, key=lambda n: orders[n])
    assert ranked.index("alpha") < ranked.index("Beta") < ranked.index("Zeta")
    assert ranked.index("Éclair") < ranked.index("Zeta")  # accent folded: sorts as "eclair"
    # Two projects with the same name get distinct, stable orders.
    assert orders["Beta"] != orders["beta"]
    assert room_meta.child_order("Beta", "1" * 32) == room_meta.child_order("Beta", "1" * 32)


def test_bridge_info_names_project_and_organization() -> None:
    info = room_meta.bridge_info(
        bot=BOT,
        channel_id="p1",
        channel_name="Apollo",
        network_id="c1",
        network_name="Acme",
        channel_avatar="mxc://example.org/abc",
    )
    assert info == {
        "bridgebot": BOT,
        "protocol": {"id": "waldur", "displayname": "Waldur"},
        "network": {"id": "c1", "displayname": "Acme"},
        "channel": {"id": "p1", "displayname": "Apollo", "avatar_url": "mxc://example.org/abc"},
    }
    renamed = room_meta.bridge_info(
        bot=BOT, channel_id="p1", channel_name="Zephyr", network_id="c1", network_name="Acme"
    )
    assert room_meta.content_hash(info) != room_meta.content_hash(renamed)
    assert room_meta.content_hash(renamed) == room_meta.content_hash(dict(renamed))


def test_links_count_only_with_via() -> None:
    live = room_meta.child_content("example.org", "a")
    assert room_meta.is_live_link(live)
    assert not room_meta.is_live_link({})
    assert not room_meta.is_live_link({"via": []})
    assert not room_meta.is_live_link(None)
    current = {"!a": live, "!b": {}, "!c": live}
    assert room_meta.dead_links(["!a"], current) == ["!c"]
    wanted = {"!a": live, "!d": live}
    assert room_meta.missing_or_changed(wanted, current) == ["!d"]
    assert room_meta.parent_content("example.org") == {"via": ["example.org"], "canonical": True}


def test_changed_levels_names_only_changed_entries() -> None:
    before = {"users": {"@a:x": 50, "@b:x": 0, "@c:x": 10}}
    after = {"users": {"@a:x": 100, "@c:x": 10, "@d:x": 20}}
    assert changed_levels(before, after) == {"@a:x", "@b:x", "@d:x"}
    assert changed_levels(None, after) is None


def member(user_id: str, *roles: str) -> DesiredMember:
    return DesiredMember(user_id, user_id.strip("@").split(":")[0], 0, roles, True)


def team(complete: bool, *members: DesiredMember) -> PortalTeam:
    return PortalTeam("c1", "Acme", complete, {m.user_id: m for m in members})


def test_space_team_is_the_union_with_organization_levels() -> None:
    policy = MembershipPolicy()
    owner = member("@carol:x", "CUSTOMER.OWNER")
    room, merged = merge_teams(
        [
            team(True, member("@alice:x", "PROJECT.ADMIN"), owner),
            team(
                True,
                member("@alice:x", "PROJECT.MEMBER"),
                member("@dave:x", "PROJECT.MEMBER"),
                owner,
            ),
        ],
        policy,
    )
    assert room.complete and room.active
    assert set(room.members) == {"@alice:x", "@carol:x", "@dave:x"}
    assert room.members["@carol:x"].power_level == 50
    assert room.members["@alice:x"].power_level == 0  # project admin: no power in the space
    assert room.members["@alice:x"].roles == ("PROJECT.ADMIN", "PROJECT.MEMBER")
    assert merged.signatures["@alice:x"] == "PROJECT.ADMIN|PROJECT.MEMBER"


@pytest.mark.parametrize(
    "teams", [[team(True), None], [team(True), team(False)]], ids=["unknown", "incomplete"]
)
def test_space_team_incomplete_when_any_portal_is(teams: list[PortalTeam | None]) -> None:
    room, _ = merge_teams(teams, MembershipPolicy())
    assert not room.complete  # the planner then removes nobody
