"""Table tests for desired_team: Waldur grants -> the people who belong in a project's portal."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from waldur_bridge.sync.policy import (
    Grant,
    MembershipPolicy,
    ProjectInfo,
    TeamMember,
    WaldurUser,
    desired_team,
    effective,
    role_power_level,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PAST = NOW - timedelta(hours=1)
SOON = NOW + timedelta(days=1)
LATER = NOW + timedelta(days=30)

PROJECT = "a1" * 16
OTHER_PROJECT = "b2" * 16
CUSTOMER = "c3" * 16
OTHER_CUSTOMER = "d4" * 16
ALICE, BOB, CAROL = "11" * 16, "22" * 16, "33" * 16

USERS = {
    ALICE: WaldurUser(ALICE, "alice", "Alice A", True),
    BOB: WaldurUser(BOB, "bob", "Bob B", True),
    CAROL: WaldurUser(CAROL, "carol", "Carol C", False),  # deactivated
}
PROJ = ProjectInfo(PROJECT, CUSTOMER, "Proj", "About", "Org")


def pg(user: str, role: str, expires: datetime | None = None, active: bool | None = True) -> Grant:
    return Grant(user, role, "project", PROJECT, expires, active)


def cg(user: str, role: str, customer: str = CUSTOMER, active: bool | None = True) -> Grant:
    return Grant(user, role, "customer", customer, None, active)


@dataclass
class Case:
    name: str
    grants: list[Grant]
    expected: dict[str, tuple[tuple[str, ...], int, datetime | None]]
    policy: MembershipPolicy = field(default_factory=MembershipPolicy)
    project: ProjectInfo = PROJ


CASES = [
    Case(
        "system project role",
        [pg(ALICE, "PROJECT.MEMBER")],
        {ALICE: (("PROJECT.MEMBER",), 0, None)},
    ),
    Case(
        "custom role counts by scope and inherits the base level",
        [pg(ALICE, "PROJECT.acme.ADMIN"), pg(BOB, "PROJECT.acme.MEMBER")],
        {ALICE: (("PROJECT.acme.ADMIN",), 50, None), BOB: (("PROJECT.acme.MEMBER",), 0, None)},
    ),
    Case(
        "customer owner counts, other customer roles do not",
        [cg(ALICE, "CUSTOMER.OWNER"), cg(BOB, "CUSTOMER.MANAGER")],
        {ALICE: (("CUSTOMER.OWNER",), 50, None)},
    ),
    Case(
        "organization_roles is configurable",
        [cg(ALICE, "CUSTOMER.OWNER"), cg(BOB, "CUSTOMER.MANAGER")],
        {BOB: (("CUSTOMER.MANAGER",), 0, None)},
        policy=MembershipPolicy(organization_roles=frozenset({"CUSTOMER.MANAGER"})),
    ),
    Case("expired grant counts as revoked", [pg(ALICE, "PROJECT.ADMIN", expires=PAST)], {}),
    Case("grant expiring exactly now is revoked", [pg(ALICE, "PROJECT.ADMIN", expires=NOW)], {}),
    Case(
        "future expiry is reported",
        [pg(ALICE, "PROJECT.ADMIN", expires=SOON)],
        {ALICE: (("PROJECT.ADMIN",), 50, SOON)},
    ),
    Case("revoked grant (is_active false)", [pg(ALICE, "PROJECT.ADMIN", active=False)], {}),
    Case(
        "7.0-style grant without is_active counts",
        [pg(ALICE, "PROJECT.MEMBER", active=None)],
        {ALICE: (("PROJECT.MEMBER",), 0, None)},
    ),
    Case(
        "7.0-style revoked grant: no is_active, expiration set to revocation time",
        [pg(ALICE, "PROJECT.MEMBER", expires=PAST, active=None)],
        {},
    ),
    Case("inactive user holds no access", [pg(CAROL, "PROJECT.ADMIN")], {}),
    Case("unknown user holds no access", [pg("99" * 16, "PROJECT.ADMIN")], {}),
    Case(
        "highest role wins, roles sorted, earliest expiry",
        [
            pg(ALICE, "PROJECT.MEMBER", expires=LATER),
            cg(ALICE, "CUSTOMER.OWNER"),
            pg(ALICE, "PROJECT.ADMIN", expires=SOON),
        ],
        {ALICE: (("CUSTOMER.OWNER", "PROJECT.ADMIN", "PROJECT.MEMBER"), 50, SOON)},
    ),
    Case(
        "expired higher role does not lift the level",
        [pg(ALICE, "PROJECT.MEMBER"), pg(ALICE, "PROJECT.ADMIN", expires=PAST)],
        {ALICE: (("PROJECT.MEMBER",), 0, None)},
    ),
    Case(
        "grants for other projects, customers and scope types are ignored",
        [
            Grant(ALICE, "PROJECT.ADMIN", "project", OTHER_PROJECT, None, True),
            cg(ALICE, "CUSTOMER.OWNER", customer=OTHER_CUSTOMER),
            Grant(BOB, "OFFERING.MANAGER", "offering", PROJECT, None, True),
            # A project-scope grant whose uuid is the customer's must not count either.
            Grant(BOB, "PROJECT.ADMIN", "project", CUSTOMER, None, True),
        ],
        {},
    ),
    Case(
        "dashed and upper-case UUIDs compare equal",
        [
            Grant(
                ALICE.upper(),
                "PROJECT.ADMIN",
                "project",
                "-".join(
                    [PROJECT[:8], PROJECT[8:12], PROJECT[12:16], PROJECT[16:20], PROJECT[20:]]
                ),
                None,
                True,
            )
        ],
        {ALICE: (("PROJECT.ADMIN",), 50, None)},
    ),
    Case(
        "removed project has no team",
        [pg(ALICE, "PROJECT.ADMIN")],
        {},
        project=ProjectInfo(PROJECT, CUSTOMER, "Proj", "", "Org", removed=True),
    ),
    Case(
        "exact map entry beats the custom-role fallback; unknown roles get the default",
        [pg(ALICE, "PROJECT.acme.MEMBER"), pg(BOB, "PROJECT.OBSERVER")],
        {ALICE: (("PROJECT.acme.MEMBER",), 30, None), BOB: (("PROJECT.OBSERVER",), 5, None)},
        policy=MembershipPolicy(
            power_levels={"PROJECT.acme.MEMBER": 30, "PROJECT.MEMBER": 10},
            default_power_level=5,
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_desired_team(case: Case) -> None:
    team = desired_team(case.project, case.grants, USERS, case.policy, NOW)
    expected = {
        uuid: TeamMember(uuid, roles, level, expires)
        for uuid, (roles, level, expires) in case.expected.items()
    }
    assert team == expected
    assert list(team) == sorted(team)


def test_naive_timestamps_are_utc() -> None:
    naive_past = PAST.replace(tzinfo=None)
    assert not effective(pg(ALICE, "PROJECT.ADMIN", expires=naive_past), NOW)
    assert effective(pg(ALICE, "PROJECT.ADMIN", expires=SOON), NOW.replace(tzinfo=None))


def test_role_power_level_fallback_only_for_project_clones() -> None:
    policy = MembershipPolicy()
    assert role_power_level("PROJECT.acme.ADMIN", policy) == 50
    assert role_power_level("PROJECT.acme.sub.ADMIN", policy) == 50
    assert role_power_level("CUSTOMER.acme.OWNER", policy) == 0
    assert role_power_level("PROJECT.MANAGER", policy) == 0


@pytest.mark.parametrize(
    ("mxid", "hit"),
    [
        ("@ops-1:example.org", True),
        ("@OPS-1:example.org", False),  # globs are case-sensitive, like Matrix IDs
        ("@ops-1:example.org.evil", False),  # a glob matches the whole ID
        ("@waldur_svc_x:example.org", True),
        ("@x_waldur_svc_x:example.org", False),  # a ^regex is anchored
        ("@alice:example.org", False),
    ],
)
def test_never_kick(mxid: str, hit: bool) -> None:
    policy = MembershipPolicy(never_kick=("@ops-*:example.org", "^@waldur_svc_.*:example\\.org$"))
    assert policy.matches_never_kick(mxid) is hit


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        MembershipPolicy(never_kick=("^@bad(:x",))
    with pytest.raises(ValueError):
        MembershipPolicy(max_removal_share=1.5)
    # Config lists are normalised; the default map cannot be mutated through an instance.
    policy = MembershipPolicy(never_kick=["@a:*"], organization_roles={"CUSTOMER.OWNER"})  # type: ignore[arg-type]
    assert policy.never_kick == ("@a:*",) and isinstance(policy.organization_roles, frozenset)
    with pytest.raises(TypeError):
        policy.power_levels["PROJECT.MEMBER"] = 100  # type: ignore[index]


def test_grant_holders_missing_from_the_users_listing_are_unknown_not_revoked() -> None:
    from waldur_bridge.sync.policy import Grant, WaldurUser, unknown_holders

    alice = WaldurUser("a" * 32, "alice", "Alice", True)
    grants = [
        Grant("a" * 32, "PROJECT.ADMIN", "project", "p" * 32),
        Grant("b" * 32, "PROJECT.MEMBER", "project", "p" * 32),  # not in the listing
        Grant("c" * 32, "PROJECT.MEMBER", "project", "p" * 32, expiration_time=PAST),
        Grant("d" * 32, "PROJECT.MEMBER", "project", "p" * 32, is_active=False),
        Grant("e" * 32, "PROJECT.MEMBER", "project", "p" * 32),  # confirmed gone (404)
        Grant("F" * 32, "PROJECT.MEMBER", "project", "p" * 32),  # known, other spelling
    ]
    users = {alice.uuid: alice, "f" * 32: WaldurUser("f" * 32, "fay", "Fay", True)}
    assert unknown_holders(grants, users, {"e" * 32}, NOW) == {"b" * 32}
    assert unknown_holders(grants[:1], users, (), NOW) == set()
