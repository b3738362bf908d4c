"""Membership policy: which Waldur grants put whom into a project's portal, at what power level.

Pure functions over plain records: no I/O, no mautrix. The Waldur client converts its records
into `Grant`, `WaldurUser` and `ProjectInfo`; the reconciler turns `desired_team` into the
planner's input.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

__all__ = [
    "DEFAULT_ORGANIZATION_ROLES",
    "DEFAULT_POWER_LEVELS",
    "Grant",
    "MembershipPolicy",
    "ProjectInfo",
    "TeamMember",
    "WaldurUser",
    "aware",
    "canonical_uuid",
    "desired_team",
    "effective",
    "role_power_level",
    "unknown_holders",
]

DEFAULT_ORGANIZATION_ROLES: frozenset[str] = frozenset({"CUSTOMER.OWNER"})
# Read-only so the shared default cannot be mutated through one policy instance.
DEFAULT_POWER_LEVELS: Mapping[str, int] = MappingProxyType(
    {"PROJECT.ADMIN": 50, "CUSTOMER.OWNER": 50}
)

PROJECT_SCOPE = "project"
CUSTOMER_SCOPE = "customer"


@dataclass(frozen=True, slots=True)
class MembershipPolicy:
    # Customer-scope roles that put a person into every project room of that organization.
    organization_roles: frozenset[str] = DEFAULT_ORGANIZATION_ROLES
    # Role name -> power level; custom PROJECT.<slug>.<NAME> roles fall back to PROJECT.<NAME>.
    power_levels: Mapping[str, int] = field(default_factory=lambda: DEFAULT_POWER_LEVELS)
    default_power_level: int = 0
    # Matrix IDs never removed or re-levelled: "^..." is a regex, anything else an fnmatch glob.
    never_kick: tuple[str, ...] = ()
    # Removal guard: hold kicks when count >= max_removal_min AND count > share x managed members.
    max_removal_share: float = 0.5
    max_removal_min: int = 3
    dry_run_removals: bool = False
    # A managed user who left on their own stays out until their role changes, unless True.
    reinvite_after_leave: bool = False
    # A roleless managed user invited by a room moderator is left alone, unless True.
    remove_moderator_added: bool = False
    _never_kick_patterns: tuple[re.Pattern[str], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        # Config may hand over lists, sets and dicts: normalise them so the policy stays immutable.
        object.__setattr__(self, "organization_roles", frozenset(self.organization_roles))
        object.__setattr__(self, "power_levels", MappingProxyType(dict(self.power_levels)))
        object.__setattr__(self, "never_kick", tuple(self.never_kick))
        if not 0.0 <= self.max_removal_share <= 1.0:
            raise ValueError(
                f"max_removal_share must be within [0, 1], got {self.max_removal_share}"
            )
        if self.max_removal_min < 0:
            raise ValueError(f"max_removal_min must be >= 0, got {self.max_removal_min}")
        patterns = []
        for pattern in self.never_kick:
            try:
                # Globs use fnmatchcase semantics: Matrix IDs are case-sensitive on every OS.
                source = pattern if pattern.startswith("^") else fnmatch.translate(pattern)
                patterns.append(re.compile(source))
            except re.error as e:
                # Fail at config load: a broken safety list must not silently protect nobody.
                raise ValueError(f"invalid never_kick pattern {pattern!r}: {e}") from e
        object.__setattr__(self, "_never_kick_patterns", tuple(patterns))

    def matches_never_kick(self, mxid: str) -> bool:
        return any(p.search(mxid) for p in self._never_kick_patterns)


@dataclass(frozen=True, slots=True)
class Grant:
    """One Waldur role grant (a `/api/user-permissions/` item or an equivalent list_users row)."""

    user_uuid: str
    role_name: str
    scope_type: str  # "project" | "customer" | others (ignored)
    scope_uuid: str
    expiration_time: datetime | None = None
    # None when the Waldur version does not report it (7.0 lists revoked grants without the field).
    is_active: bool | None = None


@dataclass(frozen=True, slots=True)
class WaldurUser:
    uuid: str
    username: str
    full_name: str
    is_active: bool


@dataclass(frozen=True, slots=True)
class ProjectInfo:
    uuid: str
    customer_uuid: str
    name: str
    description: str
    customer_name: str
    removed: bool = False
    # URL of the project's image in Waldur (the room's avatar), or None.
    image: str | None = None


@dataclass(frozen=True, slots=True)
class TeamMember:
    user_uuid: str  # canonical form, see canonical_uuid()
    roles: tuple[str, ...]  # sorted, unique
    power_level: int
    # Earliest expiry among the qualifying grants: reconcile again then (team or level may change).
    expires: datetime | None


def canonical_uuid(value: str) -> str:
    """Waldur's hex form: lower case without dashes, so dashed and bare UUIDs compare equal."""
    return value.replace("-", "").strip().lower()


def aware(value: datetime) -> datetime:
    """Waldur timestamps carry an offset; a naive one is taken as UTC rather than fail."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


_aware = aware


def effective(grant: Grant, now: datetime) -> bool:
    """Is the grant in force? Expired grants count as revoked before Waldur's daily clean-up."""
    if grant.is_active is False:
        return False
    return grant.expiration_time is None or _aware(grant.expiration_time) > _aware(now)


def role_power_level(role_name: str, policy: MembershipPolicy) -> int:
    """Exact name first; a cloned PROJECT.<slug>.<NAME> role inherits PROJECT.<NAME>'s level."""
    if role_name in policy.power_levels:
        return policy.power_levels[role_name]
    parts = role_name.split(".")
    if len(parts) >= 3 and parts[0] == "PROJECT":
        base = f"PROJECT.{parts[-1]}"
        if base in policy.power_levels:
            return policy.power_levels[base]
    return policy.default_power_level


def _qualifies(grant: Grant, project: ProjectInfo, policy: MembershipPolicy) -> bool:
    # By scope, not by spelling: any role on the project counts (custom clones included), while
    # organization-wide roles count only if the operator listed them.
    scope_type = grant.scope_type.lower()
    scope_uuid = canonical_uuid(grant.scope_uuid)
    if scope_type == PROJECT_SCOPE:
        return scope_uuid == canonical_uuid(project.uuid)
    if scope_type == CUSTOMER_SCOPE:
        return (
            scope_uuid == canonical_uuid(project.customer_uuid)
            and grant.role_name in policy.organization_roles
        )
    return False


def desired_team(
    project: ProjectInfo,
    grants: Iterable[Grant],
    users: Mapping[str, WaldurUser],
    policy: MembershipPolicy,
    now: datetime,
) -> dict[str, TeamMember]:
    """The people who belong in the project's portal, keyed by canonical user UUID (sorted).

    `grants` may be the bulk list: grants of other projects and customers are filtered out here,
    because older Waldur versions ignore the filters that should have done it.
    """
    if project.removed:
        return {}

    rekeyed: dict[str, WaldurUser] | None = None

    def active(user_uuid: str) -> bool:
        # Look up only the people holding grants instead of re-keying every user on every
        # reconcile; keys in another form are re-keyed once, and only after a miss.
        nonlocal rekeyed
        user = users.get(user_uuid)
        if user is None:
            if rekeyed is None:
                rekeyed = {canonical_uuid(k): u for k, u in users.items()}
            user = rekeyed.get(user_uuid)
        return user is not None and user.is_active is True

    roles: dict[str, set[str]] = {}
    expiries: dict[str, list[datetime]] = {}
    for grant in grants:
        if not _qualifies(grant, project, policy) or not effective(grant, now):
            continue
        user_uuid = canonical_uuid(grant.user_uuid)
        # Unknown or inactive users hold no access, whatever their grants say.
        if user_uuid not in roles and not active(user_uuid):
            continue
        roles.setdefault(user_uuid, set()).add(grant.role_name)
        expiries.setdefault(user_uuid, [])
        if grant.expiration_time is not None:
            expiries[user_uuid].append(_aware(grant.expiration_time))
    team: dict[str, TeamMember] = {}
    for user_uuid in sorted(roles):
        user_roles = tuple(sorted(roles[user_uuid]))
        team[user_uuid] = TeamMember(
            user_uuid=user_uuid,
            roles=user_roles,
            power_level=max(role_power_level(r, policy) for r in user_roles),
            expires=min(expiries[user_uuid], default=None),
        )
    return team


def unknown_holders(
    grants: Iterable[Grant],
    users: Mapping[str, WaldurUser],
    gone: Iterable[str],
    now: datetime,
) -> set[str]:
    """Holders of grants in force whom `users` does not know and who are not confirmed gone.

    A grant without its user is a disagreement between Waldur's listings (for example a users
    listing that shrank because the service account lost staff), not a revocation: a read with
    such holders is incomplete and removes nobody.
    """
    confirmed = {canonical_uuid(u) for u in gone}
    known: set[str] | None = None
    missing: set[str] = set()
    for grant in grants:
        user_uuid = canonical_uuid(grant.user_uuid)
        if user_uuid in users or user_uuid in confirmed or not effective(grant, now):
            continue
        if known is None:  # keys in another spelling: re-keyed once, only after a miss
            known = {canonical_uuid(k) for k in users}
        if user_uuid not in known:
            missing.add(user_uuid)
    return missing
