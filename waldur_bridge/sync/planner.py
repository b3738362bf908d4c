"""The pure membership planner: (desired room, current room, context) -> plan of actions.

No I/O, no asyncio, no mautrix: Matrix IDs are plain strings. The same inputs always give the
same plan, in the same order, so plans can be table-tested with JSON fixtures (matrix-corporal
style) and recorded verbatim in the audit log. The design's safety invariants live here:
incomplete data never removes or demotes anyone, only managed users are ever removed or
re-levelled, mass removals are held for a human, and re-planning after `apply` is a no-op.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waldur_bridge.sync.policy import MembershipPolicy

__all__ = [
    "Action",
    "CurrentMember",
    "CurrentRoom",
    "DesiredMember",
    "DesiredRoom",
    "Invite",
    "Join",
    "Kick",
    "Plan",
    "PlanContext",
    "SetName",
    "SetPowerLevels",
    "SetTopic",
    "action_from_json",
    "apply",
    "plan",
]

MEMBERSHIPS = frozenset({"join", "invite", "leave", "ban", "knock"})
ADDED_BY = frozenset({"bridge", "moderator", "self", "unknown"})
# Memberships that occupy a seat in the room: these are what kicks and the removal guard count.
PRESENT = frozenset({"join", "invite"})

KICK_REASON_REVOKED = "Role removed in Waldur"
KICK_REASON_CLOSED = "Project room closed in Waldur"
DEFAULT_INACTIVE_CAUSE = "project deleted or room disabled"


# --- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DesiredMember:
    user_id: str
    user_uuid: str
    power_level: int
    roles: tuple[str, ...]
    # True: the bridge controls the account and joins it itself; False: invite only.
    join_as_puppet: bool


@dataclass(frozen=True, slots=True)
class DesiredRoom:
    # False when any Waldur read for the project failed or was partial: additions only.
    complete: bool
    # False when the project is confirmed gone or the room disabled: every managed member leaves.
    active: bool
    members: Mapping[str, DesiredMember]  # keyed by Matrix user ID
    name: str | None = None
    topic: str | None = None
    # Audit cause for removals of an inactive room, e.g. "project deleted".
    inactive_reason: str | None = None
    # False: puppets are invited and not joined by the bridge (spaces: a puppet joins when its
    # person signs in, which spares the homeserver a join per person nobody looks at).
    join_puppets: bool = True

    def __post_init__(self) -> None:
        for key, member in self.members.items():
            if key != member.user_id:
                raise ValueError(f"desired member keyed {key!r} has user_id {member.user_id!r}")


@dataclass(frozen=True, slots=True)
class CurrentMember:
    membership: str  # join | invite | leave | ban | knock
    added_by: str = "unknown"  # bridge | moderator | self | unknown
    left_voluntarily: bool = False
    role_changed_since_leave: bool = False

    def __post_init__(self) -> None:
        if self.membership not in MEMBERSHIPS:
            raise ValueError(f"unknown membership {self.membership!r}")
        if self.added_by not in ADDED_BY:
            raise ValueError(f"unknown added_by {self.added_by!r}")


@dataclass(frozen=True, slots=True)
class CurrentRoom:
    room_id: str
    members: Mapping[str, CurrentMember]
    power_levels: Mapping[str, int]  # the `users` map of m.room.power_levels
    users_default: int = 0
    # Room v12 creators have implicit top power and must never appear in the users map.
    creators: frozenset[str] = frozenset()
    name: str | None = None
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class PlanContext:
    """Who is the bridge's to add and remove. A Matrix ID is managed when it is listed in
    `managed_user_ids` (the mapping of every Waldur user the bridge can see: puppets, the
    template's IDs, links), matches the puppet namespace, or is a current member the bridge
    brought in (`added_by == "bridge"`). Losing every role never makes anyone unmanaged."""

    bot_user_id: str
    # Matrix IDs the bridge maps from Waldur users: puppets, template-mapped and linked accounts.
    managed_user_ids: frozenset[str]
    # The bridge's puppet namespace (full match): such IDs are ours even when no longer mapped.
    puppet_regex: str | None
    policy: MembershipPolicy = field(default_factory=MembershipPolicy)
    # A leading run (the first change notice about a quiet project): additions and promotions
    # now; removals and demotions wait for the settled run, which sees a whole role change.
    defer_removals: bool = False
    # Local accounts the homeserver says do not exist: not invited (an invite to a missing
    # local account succeeds and then shows as pending forever).
    missing_accounts: frozenset[str] = frozenset()


# --- actions --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetName:
    name: str
    cause: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "set_name", "name": self.name, "cause": self.cause}


@dataclass(frozen=True, slots=True)
class SetTopic:
    topic: str
    cause: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "set_topic", "topic": self.topic, "cause": self.cause}


@dataclass(frozen=True, slots=True)
class Invite:
    user_id: str
    cause: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "invite", "user_id": self.user_id, "cause": self.cause}


@dataclass(frozen=True, slots=True)
class Join:
    """The bridge joins its own puppet after (or instead of waiting on) the invite."""

    user_id: str
    cause: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "join", "user_id": self.user_id, "cause": self.cause}


@dataclass(frozen=True, slots=True)
class SetPowerLevels:
    """One m.room.power_levels write; a None level removes the entry so users_default applies."""

    changes: tuple[tuple[str, int | None], ...]  # sorted by user ID
    cause: str  # one clause per change, in the same order

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "set_power_levels",
            "changes": [[user_id, level] for user_id, level in self.changes],
            "cause": self.cause,
        }


@dataclass(frozen=True, slots=True)
class Kick:
    user_id: str
    reason: str  # shown to the user in Matrix
    cause: str  # for the audit log

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "kick",
            "user_id": self.user_id,
            "reason": self.reason,
            "cause": self.cause,
        }


Action = SetName | SetTopic | Invite | Join | SetPowerLevels | Kick


def action_from_json(data: Mapping[str, Any]) -> Action:
    kind = data["type"]
    if kind == "set_name":
        return SetName(data["name"], data["cause"])
    if kind == "set_topic":
        return SetTopic(data["topic"], data["cause"])
    if kind == "invite":
        return Invite(data["user_id"], data["cause"])
    if kind == "join":
        return Join(data["user_id"], data["cause"])
    if kind == "set_power_levels":
        changes = tuple((str(u), None if lv is None else int(lv)) for u, lv in data["changes"])
        return SetPowerLevels(changes, data["cause"])
    if kind == "kick":
        return Kick(data["user_id"], data["reason"], data["cause"])
    raise ValueError(f"unknown action type {kind!r}")


def _kick_from_json(data: Mapping[str, Any]) -> Kick:
    action = action_from_json(data)
    if not isinstance(action, Kick):
        raise ValueError(f"expected a kick, got {data['type']!r}")
    return action


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...] = ()
    # Kicks stopped by the mass-removal guard: reported to the management room, not executed.
    held: tuple[Kick, ...] = ()
    # Kicks suppressed by policy.dry_run_removals: reported, not executed.
    dry_run: tuple[Kick, ...] = ()
    notes: tuple[str, ...] = ()
    # Users whose removal or demotion a leading run left to the settled run.
    deferred: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    def to_json(self) -> dict[str, Any]:
        return {
            "actions": [a.to_json() for a in self.actions],
            "held": [k.to_json() for k in self.held],
            "dry_run": [k.to_json() for k in self.dry_run],
            "notes": list(self.notes),
            "deferred": list(self.deferred),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            actions=tuple(action_from_json(a) for a in data.get("actions", ())),
            held=tuple(_kick_from_json(k) for k in data.get("held", ())),
            dry_run=tuple(_kick_from_json(k) for k in data.get("dry_run", ())),
            notes=tuple(data.get("notes", ())),
            deferred=tuple(data.get("deferred", ())),
        )


# --- planning -------------------------------------------------------------------------------


def roles_text(roles: tuple[str, ...]) -> str:
    if not roles:
        return "desired by policy"
    return f"role {roles[0]}" if len(roles) == 1 else f"roles {', '.join(roles)}"


def _level_text(level: int | None, users_default: int) -> str:
    return f"default ({users_default})" if level is None else str(level)


def plan(desired: DesiredRoom, current: CurrentRoom, ctx: PlanContext) -> Plan:
    policy = ctx.policy
    bot = ctx.bot_user_id
    puppet_re = re.compile(ctx.puppet_regex) if ctx.puppet_regex else None
    notes: list[str] = []

    def is_managed(user_id: str) -> bool:
        if user_id == bot:
            return False
        if user_id in ctx.managed_user_ids:
            return True
        cur = current.members.get(user_id)
        if cur is not None and cur.added_by == "bridge":
            # Brought in for a Waldur reason: still ours once the reason is gone (invariant 14).
            return True
        return puppet_re is not None and puppet_re.fullmatch(user_id) is not None

    def untouchable(user_id: str) -> bool:
        # Nobody outside our mapping, and never the bot, a creator or a never_kick entry.
        return (
            user_id == bot
            or user_id in current.creators
            or not is_managed(user_id)
            or policy.matches_never_kick(user_id)
        )

    def level_now(user_id: str) -> int:
        return current.power_levels.get(user_id, current.users_default)

    # An inactive room wants nobody; desired members are only honoured while it is active.
    wanted: dict[str, DesiredMember] = {}
    if desired.active:
        for user_id in sorted(desired.members):
            if user_id == bot:
                notes.append(f"{user_id}: is the bridge bot; never planned as a member")
                continue
            wanted[user_id] = desired.members[user_id]

    # --- additions (rule b) ---
    additions: list[Invite | Join] = []
    seated: set[str] = set()  # desired members who are or will be in the room
    for user_id, member in wanted.items():
        cur = current.members.get(user_id)
        roles = roles_text(member.roles)
        if not is_managed(user_id):
            # A caller bug (desired IDs come from the mapping); invite, but leave levels alone.
            notes.append(f"{user_id}: desired but not a managed ID; power level left alone")
        membership = cur.membership if cur is not None else None
        if membership == "join":
            seated.add(user_id)
        elif membership == "invite":
            seated.add(user_id)
            if member.join_as_puppet and desired.join_puppets:
                additions.append(Join(user_id, f"puppet accepts pending invite ({roles})"))
        elif membership == "ban":
            notes.append(f"{user_id}: banned by a room moderator; not re-invited")
        elif user_id in ctx.missing_accounts:
            notes.append(f"{user_id}: no such account on the homeserver yet; not invited")
        else:
            cause = roles
            if membership == "leave" and cur is not None and cur.left_voluntarily:
                if cur.role_changed_since_leave:
                    cause = f"{roles}; re-invite after leaving (role changed since)"
                elif policy.reinvite_after_leave:
                    cause = f"{roles}; re-invite after leaving (reinvite_after_leave)"
                else:
                    notes.append(
                        f"{user_id}: declined (left or rejected the invite); not re-invited"
                        " until their roles change or they ask"
                    )
                    continue
            seated.add(user_id)
            additions.append(Invite(user_id, cause))
            if member.join_as_puppet and desired.join_puppets:
                additions.append(Join(user_id, f"puppet joins after invite ({roles})"))

    # --- removals (rules c, d, e) ---
    removal_cause = (
        "no qualifying role"
        if desired.active
        else (desired.inactive_reason or DEFAULT_INACTIVE_CAUSE)
    )
    kick_reason = KICK_REASON_REVOKED if desired.active else KICK_REASON_CLOSED
    kicks: list[Kick] = []
    skipped_incomplete: list[str] = []
    deferred: list[str] = []
    for user_id in sorted(current.members):
        cur = current.members[user_id]
        if cur.membership not in PRESENT or user_id in wanted or not is_managed(user_id):
            continue
        if user_id in current.creators:
            notes.append(f"{user_id}: room creator; cannot be removed")
            continue
        if policy.matches_never_kick(user_id):
            notes.append(f"{user_id}: matches never_kick; not removed")
            continue
        # Closing a room removes everyone managed; a live room respects moderators' guests.
        if desired.active and cur.added_by == "moderator" and not policy.remove_moderator_added:
            notes.append(f"{user_id}: invited by a room moderator; left alone")
            continue
        if not desired.complete:
            skipped_incomplete.append(user_id)
            continue
        if ctx.defer_removals:
            deferred.append(user_id)
            continue
        kicks.append(Kick(user_id, kick_reason, removal_cause))

    held: list[Kick] = []
    dry_run: list[Kick] = []
    if kicks:
        managed_present = sum(
            1 for u, m in current.members.items() if m.membership in PRESENT and is_managed(u)
        )
        guard = (
            desired.active
            and len(kicks) >= policy.max_removal_min
            and len(kicks) > policy.max_removal_share * managed_present
        )
        if policy.dry_run_removals:
            # Dry run wins over the guard: nothing held here could be approved into a real kick.
            dry_run, kicks = kicks, []
            notes.append(f"dry run: {len(dry_run)} removal(s) reported, not executed")
            if guard:
                notes.append("dry run: the mass-removal guard would also have held them")
        elif guard:
            held, kicks = kicks, []
            notes.append(
                f"mass-removal guard: holding {len(held)} of {managed_present} managed member(s)"
                f" (limit {policy.max_removal_share:.0%}, min {policy.max_removal_min});"
                " approve from the management room"
            )
    kicked = {k.user_id for k in kicks}

    # --- power levels (rule f) ---
    changes: list[tuple[str, int | None]] = []
    clauses: list[str] = []
    skipped_decreases: list[str] = []

    def change(user_id: str, new: int | None, why: str) -> None:
        old = level_now(user_id)
        new_effective = current.users_default if new is None else new
        if new_effective < old and not desired.complete:
            skipped_decreases.append(user_id)
            return
        if new_effective < old and ctx.defer_removals:
            deferred.append(user_id)
            return
        changes.append((user_id, new))
        clauses.append(f"{user_id}: {old} -> {_level_text(new, current.users_default)} ({why})")

    for user_id in sorted(set(wanted) | set(current.power_levels)):
        if untouchable(user_id):
            continue
        member = wanted.get(user_id)
        if member is not None:
            if user_id not in seated or member.power_level == level_now(user_id):
                continue
            # An entry equal to users_default is redundant: drop it rather than write it.
            new = None if member.power_level == current.users_default else member.power_level
            change(user_id, new, f"power level from {roles_text(member.roles)}")
            continue
        # Managed, not wanted, holding an explicit level: clear it once they are out of the room.
        cur = current.members.get(user_id)
        still_present = cur is not None and cur.membership in PRESENT and user_id not in kicked
        if still_present or level_now(user_id) == current.users_default:
            continue
        change(user_id, None, removal_cause)

    if skipped_incomplete:
        notes.append(f"waldur data incomplete: not removed: {', '.join(skipped_incomplete)}")
    if skipped_decreases:
        notes.append(f"waldur data incomplete: not demoted: {', '.join(skipped_decreases)}")
    deferred = sorted(set(deferred))
    if deferred:
        notes.append(f"left to the settled run: {', '.join(deferred)}")

    # --- assemble in the fixed order (rule i) ---
    actions: list[Action] = []
    if desired.name is not None and desired.name != current.name:
        actions.append(SetName(desired.name, "project name in Waldur"))
    if desired.topic is not None and desired.topic != current.topic:
        actions.append(SetTopic(desired.topic, "project description in Waldur"))
    actions.extend(additions)  # already sorted by user, Invite before Join
    if changes:
        actions.append(SetPowerLevels(tuple(changes), "; ".join(clauses)))
    actions.extend(kicks)
    return Plan(tuple(actions), tuple(held), tuple(dry_run), tuple(notes), tuple(deferred))


def apply(plan: Plan, current: CurrentRoom) -> CurrentRoom:
    """Simulate the plan's effect on the room (executed actions only, not held or dry-run)."""
    members = dict(current.members)
    levels = dict(current.power_levels)
    name, topic = current.name, current.topic
    for action in plan.actions:
        match action:
            case SetName():
                name = action.name
            case SetTopic():
                topic = action.topic
            case Invite():
                members[action.user_id] = CurrentMember("invite", added_by="bridge")
            case Join():
                prev = members.get(action.user_id)
                added_by = prev.added_by if prev is not None else "bridge"
                members[action.user_id] = CurrentMember("join", added_by=added_by)
            case SetPowerLevels():
                for user_id, level in action.changes:
                    if level is None:
                        levels.pop(user_id, None)
                    else:
                        levels[user_id] = level
            case Kick():
                members[action.user_id] = CurrentMember("leave", added_by="unknown")
    return CurrentRoom(
        room_id=current.room_id,
        members=members,
        power_levels=levels,
        users_default=current.users_default,
        creators=current.creators,
        name=name,
        topic=topic,
    )
