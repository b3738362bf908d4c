"""The pure half of `why`: grants sorted into in force, expired, revoked and not counted, and the
few lines an admin reads in Element."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from waldur_bridge.db import AuditEntry
from waldur_bridge.explain import Facts, GrantFact, RoomFacts, format_why, grant_facts
from waldur_bridge.messages import AuditLine, audit_reply, relative_time
from waldur_bridge.sync.policy import Grant, MembershipPolicy
from waldur_bridge.waldur import RoleGrant

NOW = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
PROJECT = "a" * 32
ORG = "b" * 32
USER = "c" * 32
POLICY = MembershipPolicy(power_levels={"PROJECT.ADMIN": 50, "CUSTOMER.OWNER": 50})


def _grant(role: str, scope: str, **kw: object) -> RoleGrant:
    fields: dict[str, object] = {
        "user_uuid": USER,
        "role_name": role,
        "scope_type": "project" if scope == PROJECT else "customer",
        "scope_uuid": scope,
        "expiration_time": None,
        "is_active": True,
        "customer_uuid": ORG,
        "user_username": "ann",
        "user_full_name": "Ann Lee",
        "user_email": "",
        "created": NOW - timedelta(days=3),
        "created_by": "Bob Boss",
    }
    fields.update(kw)
    return RoleGrant(**fields)  # type: ignore[arg-type]


def test_relative_times_read_like_a_chat() -> None:
    assert relative_time(NOW - timedelta(seconds=10), NOW) == "just now"
    assert relative_time(NOW - timedelta(minutes=5), NOW) == "5 min ago"
    assert relative_time(NOW - timedelta(hours=3), NOW) == "3 h ago"
    assert relative_time(NOW - timedelta(hours=23), NOW) == "23 h ago"
    assert relative_time(NOW - timedelta(days=4), NOW) == "4 d ago"
    assert relative_time(NOW + timedelta(hours=2), NOW) == "in 2 h"


def test_grant_facts_sort_states_and_ignore_other_scopes() -> None:
    history = [
        _grant("PROJECT.ADMIN", PROJECT),
        _grant(
            "PROJECT.MEMBER",
            PROJECT,
            is_active=False,
            revoked_by="Xavier",
            expiration_time=NOW - timedelta(hours=1),
        ),
        _grant("PROJECT.MANAGER", PROJECT, expiration_time=NOW - timedelta(minutes=5)),
        # 7.0: a revoked grant shows only as a past expiry, with who revoked it unknown.
        _grant("CUSTOMER.OWNER", ORG, is_active=None, expiration_time=NOW - timedelta(days=1)),
        _grant("CUSTOMER.MANAGER", ORG),
        _grant("PROJECT.ADMIN", "d" * 32),
    ]
    facts = grant_facts(history, [], USER, PROJECT, ORG, "Apollo", "Acme", POLICY, NOW)
    states = [(g.role, g.state) for g in facts]
    assert states[0] == ("PROJECT.ADMIN", "in force")
    assert facts[0].level == 50 and facts[0].on_project
    assert ("PROJECT.MEMBER", "revoked") in states
    assert ("PROJECT.MANAGER", "expired") in states
    assert ("CUSTOMER.OWNER", "ended") in states
    assert ("CUSTOMER.MANAGER", "not counted") in states
    assert len(facts) == 5  # the grant on another project is not this room's business


def test_grant_facts_are_the_persons_own_and_fill_in_from_the_project_read() -> None:
    others = [Grant("d" * 32, "PROJECT.ADMIN", "project", PROJECT)]
    assert grant_facts([], others, USER, PROJECT, ORG, "Apollo", "Acme", POLICY, NOW) == []
    # The history read failed: the project read's grant in force still shows, once.
    own = Grant(USER, "PROJECT.MEMBER", "project", PROJECT, is_active=True)
    facts = grant_facts([], [own, own], USER, PROJECT, ORG, "Apollo", "Acme", POLICY, NOW)
    assert [(g.role, g.state, g.created_by) for g in facts] == [("PROJECT.MEMBER", "in force", "")]
    # The history has it with who granted it: the project read adds nothing.
    history = [_grant("PROJECT.MEMBER", PROJECT)]
    facts = grant_facts(history, [own], USER, PROJECT, ORG, "Apollo", "Acme", POLICY, NOW)
    assert [(g.role, g.created_by) for g in facts] == [("PROJECT.MEMBER", "Bob Boss")]


def _facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "person": "Ann Lee",
        "username": "ann",
        "user_uuid": USER,
        "mxid": "@waldur_ann:x",
        "project_name": "Apollo",
        "project_uuid": PROJECT,
        "organization_name": "Acme",
        "room_id": "!r:x",
        "portal_state": "active",
        "organization_roles": frozenset({"CUSTOMER.OWNER"}),
        "power_levels": {"PROJECT.ADMIN": 50, "CUSTOMER.OWNER": 50},
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def test_joined_admin_names_grant_level_policy_and_what_would_change_it() -> None:
    grant = GrantFact(
        "PROJECT.ADMIN", True, "Apollo", NOW - timedelta(days=3), "Bob Boss", level=50
    )
    invited = AuditEntry(
        action="invite",
        outcome="done",
        cause="PROJECT.ADMIN",
        ts=int((NOW - timedelta(days=3)).timestamp() * 1000),
    )
    text = format_why(
        _facts(
            grants=[grant],
            in_team=True,
            level=50,
            last_addition=invited,
            room=RoomFacts(membership="join", power_level=50),
        ),
        NOW,
    )
    lines = text.splitlines()
    assert lines[0] == "**Ann Lee** (`ann`, `@waldur_ann:x`) in **Apollo** (Acme)"
    assert lines[1] == "- Room: joined, power level 50 (moderator)"
    assert lines[2] == (
        "- In by PROJECT.ADMIN on Apollo: granted 3 d ago by Bob Boss, no expiry, level 50"
    )
    assert "Policy: role map PROJECT.ADMIN → 50; the highest wins: level 50" in text
    assert "- Invited by the bridge 3 d ago: PROJECT.ADMIN" in text
    assert "revoking PROJECT.ADMIN (or letting it expire) would remove them" in text
    exact = format_why(_facts(grants=[grant], in_team=True, level=50), NOW, exact=True)
    assert "granted 2026-12-04 20:00:00 UTC by Bob Boss" in exact
    assert all(len(line) < 120 for line in lines)


def test_removed_by_revoke_says_when_by_whom_and_what_would_bring_them_back() -> None:
    revoked = GrantFact(
        "PROJECT.MEMBER", True, "Apollo", None, "", NOW - timedelta(minutes=7), "revoked", "Xavier"
    )
    removal = AuditEntry(
        action="kick",
        outcome="done",
        cause="no qualifying role",
        ts=int((NOW - timedelta(minutes=6)).timestamp() * 1000),
    )
    text = format_why(
        _facts(grants=[revoked], room=RoomFacts(membership="leave"), last_removal=removal),
        NOW,
    )
    assert "- Room: not there (removed)" in text
    assert "- Out: no qualifying role on Apollo since 7 min ago" in text
    assert "- PROJECT.MEMBER on Apollo: revoked 7 min ago by Xavier" in text
    assert "- Removed from the room 6 min ago: no qualifying role" in text
    assert "a PROJECT.MEMBER grant on Apollo would bring them in (or CUSTOMER.OWNER on Acme)" in (
        text
    )


def test_deactivated_held_declined_incomplete_and_unknown() -> None:
    deactivated = format_why(_facts(user_active=False), NOW)
    assert "deactivated in Waldur" in deactivated and "reactivating the user" in deactivated
    held = format_why(
        _facts(held_since=NOW - timedelta(hours=2), held_cause="5 removal(s) held in this room"),
        NOW,
    )
    assert "Removal held 2 h ago by the mass-removal guard" in held and "`approve Apollo`" in held
    grant = GrantFact("PROJECT.MEMBER", True, "Apollo")
    declined = format_why(
        _facts(
            grants=[grant],
            in_team=True,
            level=0,
            puppet=False,
            room=RoomFacts(membership="leave", left_by_self=True, declined=True),
        ),
        NOW,
    )
    assert "Room: declined" in declined and "Not invited again" in declined
    partial = format_why(_facts(complete=False, problems=["organization roles: 503"]), NOW)
    assert "incomplete (organization roles: 503)" in partial
    unknown = format_why(Facts(person="@who:x", mxid="@who:x", project_name="Apollo"), NOW)
    assert "Not a Waldur user the bridge knows" in unknown
    closed = format_why(
        _facts(portal_state="disabled", grants=[grant], in_team=True, level=0), NOW
    )
    assert "Out: an admin closed the room" in closed and "`reactivate Apollo`" in closed
    assert "In by" not in closed
    never = format_why(_facts(never_kick=True), NOW)
    assert "never_kick" in never


def test_audit_reads_relative_times_unless_exact() -> None:
    line = AuditLine(NOW - timedelta(hours=3), "invite", "@a:x", "Apollo", "role X", "done")
    relative = audit_reply("Apollo", None, [line], 1, NOW).markdown
    assert "- 3 h ago · **invited**" in relative and "(newest first)" in relative
    exact = audit_reply("Apollo", None, [line], 1).markdown
    assert "- 2026-12-07 17:00 · **invited**" in exact
