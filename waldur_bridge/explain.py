"""``why <person> <project>``: one person's membership and power level in one project's room,
explained from the Waldur grants that cause it, the policy and the bridge's own records.

Two halves: ``gather`` reads (Waldur fresh, the homeserver, the database) and changes nothing;
``format_why`` is pure and turns the facts into a few short Markdown lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mautrix.errors import MatrixRequestError
from mautrix.types import RoomID, UserID

from .db import AuditEntry, HeldRemoval, PortalMember, portal as states
from .messages import escape_markdown, relative_time
from .puppet import Puppet
from .sync.directory import ProjectGone, ProjectView
from .sync.policy import (
    CUSTOMER_SCOPE,
    PROJECT_SCOPE,
    Grant,
    MembershipPolicy,
    aware,
    canonical_uuid,
    desired_team,
    role_power_level,
)
from .waldur import RoleGrant, WaldurError, WaldurNotFound

if TYPE_CHECKING:
    from .__main__ import WaldurBridge
    from .portal import Portal

# The role whose grant would bring a person in, named in "what would change it".
SUGGESTED_ROLE = "PROJECT.MEMBER"


@dataclass(frozen=True)
class GrantFact:
    """One Waldur grant of the person on the project or its organization."""

    role: str
    on_project: bool  # False: on the organization
    scope_name: str
    created: datetime | None = None
    created_by: str = ""
    expires: datetime | None = None
    # "in force", "expired", "revoked", "ended" (either, Waldur 7.0 does not say) or
    # "not counted" (an organization role the configuration does not count)
    state: str = "in force"
    revoked_by: str = ""
    level: int = 0


@dataclass(frozen=True)
class RoomFacts:
    """The person's member event in the room, and the bridge's record of them."""

    membership: str | None = None  # join, invite, leave, ban, or None (never there)
    left_by_self: bool = False
    power_level: int | None = None
    declined: bool = False  # portal_member.left_voluntarily of an own account
    added_by: str = ""
    read_error: str = ""


@dataclass(frozen=True)
class Facts:
    """Everything ``why`` says, read once; ``format_why`` turns it into text."""

    person: str  # the display name, or what was asked for
    username: str = ""
    user_uuid: str | None = None
    mxid: str | None = None
    puppet: bool = True
    project_name: str = ""
    project_uuid: str = ""
    organization_name: str = ""
    room_id: str | None = None
    portal_state: str | None = None
    project_gone: bool = False
    user_active: bool | None = True
    user_gone: bool = False
    grants: Sequence[GrantFact] = ()
    in_team: bool = False
    level: int | None = None  # what the policy makes of the roles in force
    room: RoomFacts = field(default_factory=RoomFacts)
    last_removal: AuditEntry | None = None
    last_addition: AuditEntry | None = None
    held_since: datetime | None = None
    held_cause: str = ""
    never_kick: bool = False
    # An own account (not a puppet) on this homeserver that does not exist yet.
    account_missing: bool = False
    complete: bool = True
    problems: Sequence[str] = ()
    history_problem: str = ""
    organization_roles: frozenset[str] = frozenset()
    power_levels: Mapping[str, int] = field(default_factory=dict)
    default_level: int = 0


# region formatting


def _md(value: object) -> str:
    return escape_markdown(str(value))


def _when(when: datetime | None, now: datetime, exact: bool) -> str:
    if when is None:
        return "at an unknown time"
    if exact:
        return aware(when).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return relative_time(when, now)


def _level_name(level: int) -> str:
    if level >= 100:
        return f"{level} (admin)"
    if level >= 50:
        return f"{level} (moderator)"
    return str(level)


def _grant_line(grant: GrantFact, facts: Facts, now: datetime, exact: bool) -> str:
    where = "on" if grant.on_project else "on the organization"
    text = f"{_md(grant.role)} {where} {_md(grant.scope_name)}"
    granted = ""
    if grant.created is not None or grant.created_by:
        granted = "granted"
        if grant.created is not None:
            granted += " " + _when(grant.created, now, exact)
        if grant.created_by:
            granted += f" by {_md(grant.created_by)}"
    if grant.state == "revoked":
        by = f" by {_md(grant.revoked_by)}" if grant.revoked_by else ""
        parts = [f"revoked {_when(grant.expires, now, exact)}{by}", granted]
    elif grant.state == "expired":
        parts = [f"expired {_when(grant.expires, now, exact)}", granted]
    elif grant.state == "ended":
        parts = [
            f"ended {_when(grant.expires, now, exact)} (revoked or expired: this Waldur "
            "does not say which)",
            granted,
        ]
    elif grant.state == "not counted":
        roles = ", ".join(sorted(facts.organization_roles)) or "none"
        parts = [
            granted,
            f"does not count: organization roles that count are {_md(roles)} "
            "(bridge.membership.organization_roles)",
        ]
    else:
        expiry = f"expires {_when(grant.expires, now, exact)}" if grant.expires else "no expiry"
        parts = [granted, expiry, f"level {grant.level}"]
    return text + ": " + ", ".join(p for p in parts if p)


def _room_line(facts: Facts, now: datetime, exact: bool) -> str:
    room = facts.room
    if facts.room_id is None:
        return "Room: the project has no room yet (`create` makes it)"
    if room.read_error:
        return f"Room: could not read it ({_md(room.read_error)})"
    if room.membership == "join":
        state = "joined"
    elif room.membership == "invite":
        state = "invited, not joined yet"
    elif room.declined or (room.membership == "leave" and room.left_by_self and not facts.puppet):
        state = "declined (rejected the invite or left on their own)"
    elif room.membership == "leave" and room.left_by_self:
        state = "left on their own"
    elif room.membership == "leave":
        state = "not there (removed)"
    elif room.membership == "ban":
        state = "banned"
    else:
        state = "not there"
    if facts.portal_state and facts.portal_state != states.ACTIVE:
        state += f"; the room is {facts.portal_state}"
    line = f"Room: {state}"
    if room.membership in ("join", "invite") and room.power_level is not None:
        line += f", power level {_level_name(room.power_level)}"
    if room.added_by == "moderator":
        line += "; a room moderator invited them"
    return line


def _policy_line(facts: Facts, counted: Sequence[GrantFact]) -> str:
    levels = {g.role: g.level for g in counted}
    mapped = ", ".join(f"{_md(role)} → {level}" for role, level in sorted(levels.items()))
    return (
        f"Policy: role map {mapped}; the highest wins: level {facts.level} "
        f"(others {facts.default_level})"
    )


def _change_in(facts: Facts, counted: Sequence[GrantFact]) -> str:
    """What would take the person out, or change their level, when they are in."""
    if len(counted) == 1:
        grant = counted[0]
        where = "" if grant.on_project else " on the organization"
        out = f"revoking {_md(grant.role)}{where} (or letting it expire) would remove them"
    else:
        out = f"they stay while any of their {len(counted)} qualifying grants is in force"
    higher = [
        (level, role) for role, level in facts.power_levels.items() if level > (facts.level or 0)
    ]
    if higher:
        level, role = min(higher)
        out += f"; a {_md(role)} grant would raise them to {level}"
    return out


def _bring_in(facts: Facts) -> str:
    owners = sorted(facts.organization_roles)
    text = f"a {SUGGESTED_ROLE} grant on {_md(facts.project_name)} would bring them in"
    if owners:
        text += f" (or {_md(owners[0])} on {_md(facts.organization_name or 'its organization')})"
    return text


def format_why(facts: Facts, now: datetime, exact: bool = False) -> str:
    """A few short lines of Markdown: names before IDs, times relative unless ``exact``."""
    who = f"**{_md(facts.person)}**"
    ids = [f"`{_md(x)}`" for x in (facts.username, facts.mxid) if x]
    head = f"{who} ({', '.join(ids)})" if ids else who
    head += f" in **{_md(facts.project_name or facts.project_uuid)}**"
    if facts.organization_name:
        head += f" ({_md(facts.organization_name)})"
    lines = [head]
    if facts.user_uuid is None:
        lines.append(f"- Not a Waldur user the bridge knows: {who} has no grants to explain")
        if facts.room_id is not None and facts.room.membership:
            lines.append(f"- {_room_line(facts, now, exact)}")
        return "\n".join(lines)
    lines.append(f"- {_room_line(facts, now, exact)}")
    counted = [g for g in facts.grants if g.state == "in force"]
    others = [g for g in facts.grants if g.state != "in force"]
    closed = facts.portal_state == states.DISABLED and not facts.project_gone
    if facts.project_gone:
        lines.append("- Out: the project was deleted in Waldur; its room is closed")
    elif closed:
        lines.append("- Out: an admin closed the room (disabled); nobody is in it")
        lines += [f"- {_grant_line(g, facts, now, exact)}" for g in counted]
    elif facts.user_gone:
        lines.append("- Out: Waldur no longer has this user (deleted)")
    elif facts.user_active is False:
        lines.append(
            "- Out: deactivated in Waldur; inactive users hold no access, whatever their grants"
        )
    elif facts.in_team:
        lines += [f"- In by {_grant_line(g, facts, now, exact)}" for g in counted]
    else:
        since = max((g.expires for g in others if g.expires), default=None)
        reason = f"- Out: no qualifying role on {_md(facts.project_name)}"
        if since is not None:
            reason += f" since {_when(since, now, exact)}"
        lines.append(reason)
    lines += [f"- {_grant_line(g, facts, now, exact)}" for g in others]
    if facts.last_removal is not None and not facts.in_team:
        entry = facts.last_removal
        when = datetime.fromtimestamp(entry.ts / 1000, UTC)
        lines.append(
            f"- Removed from the room {_when(when, now, exact)}: {_md(entry.cause or 'no cause')}"
        )
    if facts.held_since is not None:
        lines.append(
            f"- Removal held {_when(facts.held_since, now, exact)} by the mass-removal guard "
            f"({_md(facts.held_cause)}): `approve {_md(facts.project_name)}` removes them, "
            "`reject` keeps them"
        )
    if facts.account_missing:
        lines.append(
            f"- Waiting: {_md(facts.mxid)} does not exist on the homeserver yet; the bridge "
            "invites it within a sweep of its first login"
        )
    if facts.never_kick:
        lines.append(
            "- On bridge.membership.never_kick: the bridge never removes them or changes "
            "their level"
        )
    if closed:
        lines.append(f"- Would change it: `reactivate {_md(facts.project_name)}`")
    elif facts.in_team and not facts.project_gone and facts.user_active is not False:
        lines.append(f"- {_policy_line(facts, counted)}")
        if facts.last_addition is not None:
            entry = facts.last_addition
            when = datetime.fromtimestamp(entry.ts / 1000, UTC)
            lines.append(
                f"- Invited by the bridge {_when(when, now, exact)}: {_md(entry.cause or '-')}"
            )
        room = facts.room
        if room.membership == "join" and room.power_level not in (None, facts.level):
            lines.append(f"- The next sync sets their level to {facts.level}")
        if room.declined or (
            room.membership == "leave" and room.left_by_self and not facts.puppet
        ):
            lines.append(
                "- Not invited again until their roles change: `!join "
                f"{_md(facts.project_name)}` in a direct chat with the bot (or an admin's "
                "`invite`) brings a new invite"
            )
        lines.append(f"- Would change it: {_change_in(facts, counted)}")
    elif facts.project_gone or facts.user_gone:
        pass
    elif facts.user_active is False:
        lines.append("- Would change it: reactivating the user in Waldur")
    else:
        lines.append(f"- Would change it: {_bring_in(facts)}")
    if not facts.complete:
        problems = "; ".join(facts.problems) or "unknown"
        lines.append(
            f"- ⚠ Waldur's answer was incomplete ({_md(problems)}): this may be out of date, "
            "and nobody is removed until a read is complete"
        )
    if facts.history_problem:
        lines.append(
            f"- Grant history not read ({_md(facts.history_problem)}): who granted and "
            "revoked is left out"
        )
    return "\n".join(lines)


# endregion
# region reading


def grant_facts(
    history: Sequence[RoleGrant],
    view_grants: Sequence[Grant],
    user_uuid: str,
    project_uuid: str,
    customer_uuid: str,
    project_name: str,
    organization_name: str,
    policy: MembershipPolicy,
    now: datetime,
) -> list[GrantFact]:
    """The person's grants on the project and its organization, in force first, then newest.

    The person's grant history (who granted and revoked, revoked grants too) is the source;
    grants in force that the project read saw and the history lacks (its read failed, or the
    listings disagree) are added from the project read.
    """
    user_uuid = canonical_uuid(user_uuid)
    project_uuid = canonical_uuid(project_uuid)
    customer_uuid = canonical_uuid(customer_uuid)
    seen: set[tuple[str, str, str]] = set()
    facts: list[GrantFact] = []

    def add(
        role: str,
        scope_type: str,
        scope_uuid: str,
        expires: datetime | None,
        is_active: bool | None,
        created: datetime | None = None,
        created_by: str = "",
        revoked_by: str = "",
    ) -> None:
        scope_uuid = canonical_uuid(scope_uuid)
        on_project = scope_type == PROJECT_SCOPE and scope_uuid == project_uuid
        on_org = scope_type == CUSTOMER_SCOPE and scope_uuid == customer_uuid
        if not (on_project or on_org):
            return
        ended = expires is not None and aware(expires) <= now
        if is_active is False:
            state = "revoked"
        elif ended and is_active is None:
            # 7.0 reports no is_active: a revoke overwrites the expiry with "now", so a past
            # expiry there is either.
            state = "ended"
        elif ended:
            state = "revoked" if revoked_by else "expired"
        elif on_org and role not in policy.organization_roles:
            state = "not counted"
        else:
            state = "in force"
        key = (role, scope_uuid, state)
        if key in seen and (state == "in force" or created is None):
            return  # the same grant from the project read, or a second grant in force
        seen.add(key)
        facts.append(
            GrantFact(
                role=role,
                on_project=on_project,
                scope_name=project_name if on_project else organization_name,
                created=created,
                created_by=created_by,
                expires=expires,
                state=state,
                revoked_by=revoked_by,
                level=role_power_level(role, policy),
            )
        )

    for grant in history:
        if canonical_uuid(grant.user_uuid) != user_uuid:
            continue
        add(
            grant.role_name,
            grant.scope_type,
            grant.scope_uuid,
            grant.expiration_time,
            grant.is_active,
            grant.created,
            grant.created_by,
            grant.revoked_by,
        )
    for g in view_grants:
        if canonical_uuid(g.user_uuid) == user_uuid:
            add(g.role_name, g.scope_type, g.scope_uuid, g.expiration_time, g.is_active)

    def order(g: GrantFact) -> tuple[int, float]:
        stamp = g.expires or g.created
        return (0 if g.state == "in force" else 1, -(aware(stamp).timestamp() if stamp else 0))

    return sorted(facts, key=order)


async def room_facts(
    bridge: WaldurBridge, portal: Portal | None, mxid: str | None, puppet: bool
) -> RoomFacts:
    """The person's member event (membership and who set it) and level, fresh from the
    homeserver, and the bridge's record of them."""
    if portal is None or not portal.room_id or not mxid:
        return RoomFacts()
    intent = bridge.az.intent
    room_id = RoomID(portal.room_id)
    record = await PortalMember.get(portal.project_uuid, mxid)
    declined = bool(record and record.left_voluntarily and not puppet)
    added_by = record.added_by if record else ""
    try:
        members, levels = await asyncio.gather(
            intent.get_members(room_id), intent.get_power_levels(room_id, ignore_cache=True)
        )
    except MatrixRequestError as e:
        return RoomFacts(declined=declined, added_by=added_by, read_error=str(e))
    event = next((e for e in members if str(e.state_key) == mxid), None)
    return RoomFacts(
        membership=str(event.content.membership.value) if event else None,
        left_by_self=event is not None and str(event.sender) == mxid,
        power_level=levels.get_user_level(UserID(mxid)),
        declined=declined,
        added_by=added_by,
    )


async def gather(
    bridge: WaldurBridge,
    *,
    person: str,
    user_uuid: str | None,
    portal: Portal | None,
    project_uuid: str,
    project_name: str,
    mxid: str | None = None,
) -> Facts:
    """Read everything ``why`` needs: Waldur fresh, the room, the bridge's records."""
    service = bridge.sync
    policy = service.policy
    now = datetime.now(UTC)
    base = Facts(
        person=person,
        project_name=project_name,
        project_uuid=project_uuid,
        room_id=portal.room_id if portal else None,
        portal_state=portal.state if portal else None,
        organization_roles=policy.organization_roles,
        power_levels=dict(policy.power_levels),
        default_level=policy.default_power_level,
    )
    if user_uuid is None:
        room = await room_facts(bridge, portal, mxid, puppet=False)
        return dataclasses.replace(base, mxid=mxid, room=room)
    # The three reads go out at once; only the history may fail without failing the answer.
    project_read, user_read, history_read = await asyncio.gather(
        service.directory.read_project(project_uuid),
        bridge.waldur.get_user(user_uuid),
        bridge.waldur.list_user_grant_history(user_uuid),
        return_exceptions=True,
    )
    for outcome in (project_read, user_read):
        if isinstance(outcome, BaseException) and not isinstance(
            outcome, ProjectGone | WaldurNotFound
        ):
            raise outcome
    view = project_read if isinstance(project_read, ProjectView) else None
    project_gone = isinstance(project_read, ProjectGone)
    user_gone = isinstance(user_read, WaldurNotFound)
    user_active: bool | None = None
    username = full_name = email = ""
    if not isinstance(user_read, BaseException):
        user_active, username, full_name = (
            user_read.is_active,
            user_read.username,
            user_read.full_name,
        )
        email = user_read.email or ""
    history: list[RoleGrant] = []
    history_problem = ""
    if isinstance(history_read, WaldurError):
        history_problem = str(history_read)
    elif isinstance(history_read, BaseException):
        raise history_read
    else:
        history = history_read
    project = view.project if view is not None else None
    customer_uuid = project.customer_uuid if project else (portal.customer_uuid if portal else "")
    org_name = project.customer_name if project else ""
    name = project.name if project else project_name
    grants = grant_facts(
        history,
        view.grants if view is not None else (),
        user_uuid,
        project_uuid,
        customer_uuid,
        name,
        org_name,
        policy,
        now,
    )
    team = (
        desired_team(view.project, view.grants, view.users, policy, now)
        if view is not None
        else {}
    )
    member = team.get(canonical_uuid(user_uuid))
    mapped, puppet = (
        await service.reconciler.matrix_account(user_uuid, username, email)
        if username
        else (mxid, None)
    )
    mxid = mapped or mxid
    is_puppet = puppet is not None or (
        mxid is not None and await Puppet.get_by_mxid(mxid) is not None
    )
    # Own accounts are asked for (puppets are the bridge's own): one profile read at most.
    missing = (
        await service.accounts.missing_of([mxid])
        if mxid and not is_puppet and member is not None
        else frozenset()
    )
    held_in_room = await HeldRemoval.all(project_uuid)
    held_count = len(held_in_room)
    held = [h for h in held_in_room if h.mxid == mxid] if mxid else []
    removal = addition = None
    if mxid:
        entries, _ = await AuditEntry.search(project_uuid=project_uuid, target=mxid, limit=50)
        removal = next((e for e in entries if e.action == "kick" and e.outcome == "done"), None)
        addition = next((e for e in entries if e.action == "invite" and e.outcome == "done"), None)
    return dataclasses.replace(
        base,
        person=full_name or username or person,
        username=username,
        user_uuid=user_uuid,
        mxid=mxid,
        puppet=is_puppet,
        project_name=name,
        organization_name=org_name,
        project_gone=project_gone or bool(portal and portal.state == states.DISABLED and not view),
        user_active=user_active,
        user_gone=user_gone,
        grants=grants,
        in_team=member is not None,
        level=member.power_level if member else None,
        room=await room_facts(bridge, portal, mxid, is_puppet),
        last_removal=removal,
        last_addition=addition,
        held_since=(datetime.fromtimestamp(held[0].created_at / 1000, UTC) if held else None),
        held_cause=f"{held_count} removal(s) held in this room" if held else "",
        never_kick=bool(mxid and policy.matches_never_kick(mxid)),
        account_missing=bool(mxid and mxid in missing),
        complete=view.complete if view is not None else True,
        problems=tuple(view.problems) if view is not None else (),
        history_problem=history_problem,
    )


# endregion
