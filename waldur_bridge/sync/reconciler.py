"""One reconcile of one portal: desired state from Waldur, current state from the homeserver,
a pure plan, its execution and its record."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mautrix.types import EventType, Membership, PowerLevelStateEventContent, RoomID, StateEvent

from .. import identity
from ..db import HeldRemoval, PortalMember, User as DBUser
from ..puppet import Puppet
from ..waldur import WaldurError
from .accounts import AccountCheck
from .directory import ProjectView
from .executor import Outcome, PlanExecutor
from .planner import (
    CurrentMember,
    CurrentRoom,
    DesiredMember,
    DesiredRoom,
    Invite,
    Kick,
    Plan,
    PlanContext,
    plan,
)
from .policy import MembershipPolicy, ProjectInfo, WaldurUser, desired_team, unknown_holders

if TYPE_CHECKING:
    from ..config import Config
    from ..portal import Portal
    from ..room_creation import CreatedRoom

log = logging.getLogger("waldur.sync.reconcile")

_MEMBERSHIPS = {
    m.value for m in (Membership.JOIN, Membership.INVITE, Membership.LEAVE, Membership.BAN)
}


def role_signature(roles: tuple[str, ...]) -> str:
    return "|".join(sorted(roles))


@dataclass
class Result:
    plan: Plan
    outcome: Outcome
    # (display name, role name, gained) for people whose roles changed, read from Waldur.
    role_changes: list[tuple[str, str, bool]] = field(default_factory=list)
    # The view the plan was made from, when a fresh read replaced the one passed in.
    view: ProjectView | None = None
    # What was wanted, per Matrix ID (the organization's space is built from these).
    team: Team | None = None
    # How many people the room should hold (the desired team).
    members: int = 0


@dataclass
class Team:
    desired: DesiredRoom
    puppets: dict[str, Puppet]
    displaynames: dict[str, str]
    signatures: dict[str, str]
    user_uuids: dict[str, str]


class Reconciler:
    def __init__(
        self,
        config: Config,
        policy: MembershipPolicy,
        executor: PlanExecutor,
        *,
        accounts: AccountCheck | None = None,
        known_users: Callable[[], tuple[dict[str, WaldurUser], dict[str, str]]] | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.executor = executor
        # Own accounts (template, links) are checked to exist before their first invite.
        self.accounts = accounts
        # Every Waldur user the bridge has seen (users, emails): their template IDs are managed.
        self.known_users = known_users
        self._template_index: dict[str, str] = {}
        self._template_index_key: tuple[int, int] | None = None
        self.mode = config["bridge.user_mapping.mode"]
        self.mxid_template = config["bridge.user_mapping.template"]
        self.displayname_template = config["bridge.displayname_template"]
        self.topic_template = config["bridge.portals.topic_template"]
        self.puppet_regex = identity.puppet_regex(
            config["bridge.username_template"], config["homeserver.domain"]
        )
        # Room creators never change; reading them once per room saves a request per sweep.
        self._creators: dict[str, frozenset[str]] = {}
        self._links: dict[str, str] | None = None
        # Projects with removals on hold, so the table is only written when something changes.
        self._held_projects: set[str] | None = None
        # Held and dry-run removals already audited, per project (cleared when they end).
        self._reported: dict[str, frozenset[str]] = {}

    # region desired

    def topic_for(self, project: ProjectInfo) -> str:
        topic = self.topic_template.format(
            project_name=project.name,
            project_description=project.description,
            customer_name=project.customer_name,
        )
        return topic.strip().rstrip(":").strip()

    def displayname_for(self, username: str, full_name: str, email: str) -> str:
        name = self.displayname_template.format(
            full_name=full_name or username, username=username, email=email
        )
        return name.strip() or username

    async def desired(
        self, view: ProjectView, active: bool = True, inactive_reason: str | None = None
    ) -> tuple[DesiredRoom, dict[str, Puppet], dict[str, str], dict[str, str], dict[str, str]]:
        """The desired room and the per-user details the executor needs."""
        now = datetime.now(UTC)
        team = desired_team(view.project, view.grants, view.users, self.policy, now)
        # Listings that disagree (a grant whose holder the users listing lacks) remove nobody,
        # whichever read produced the view.
        complete = view.complete and not unknown_holders(view.grants, view.users, view.gone, now)
        members: dict[str, DesiredMember] = {}
        puppets: dict[str, Puppet] = {}
        displaynames: dict[str, str] = {}
        signatures: dict[str, str] = {}
        user_uuids: dict[str, str] = {}
        for user_uuid, member in team.items():
            user = view.users[user_uuid]
            email = view.emails.get(user_uuid, "")
            mxid, puppet = await self.matrix_account(user_uuid, user.username, email)
            if mxid is None:
                log.warning(
                    "Waldur user %s (%s) has no valid Matrix ID under the configured template",
                    user.username,
                    user_uuid,
                )
                continue
            members[mxid] = DesiredMember(
                user_id=mxid,
                user_uuid=user_uuid,
                power_level=member.power_level,
                roles=member.roles,
                join_as_puppet=puppet is not None,
            )
            if puppet is not None:
                puppets[mxid] = puppet
            displaynames[mxid] = self.displayname_for(user.username, user.full_name, email)
            signatures[mxid] = role_signature(member.roles)
            user_uuids[mxid] = user_uuid
        room = DesiredRoom(
            complete=complete,
            active=active,
            members=members if active else {},
            name=view.project.name if active else None,
            topic=self.topic_for(view.project) if active else None,
            inactive_reason=inactive_reason,
        )
        return room, puppets, displaynames, signatures, user_uuids

    async def matrix_account(
        self, user_uuid: str, username: str, email: str
    ) -> tuple[str | None, Puppet | None]:
        """The Matrix account of a Waldur user: an admin's explicit link wins over the mode."""
        linked = (await self.links()).get(user_uuid)
        if linked is not None:
            return linked, None
        if self.mode == "template":
            mxid = identity.template_mxid(
                self.mxid_template, username=username, user_uuid=user_uuid, email=email
            )
            return mxid, None
        puppet = await Puppet.get_for_waldur_user(user_uuid, username, "")
        return puppet.mxid, puppet

    async def managed_ids(
        self, desired: DesiredRoom, present: frozenset[str] = frozenset()
    ) -> frozenset[str]:
        """The Matrix IDs the bridge maps from Waldur users: the desired members, puppets,
        every link, and (template mode) the template's ID of any Waldur user the bridge can
        see among `present` (the room's members). A person who lost every role stays managed,
        so they can be removed (the planner also counts whoever the bridge brought in)."""
        ids = set(desired.members) | set(Puppet.by_mxid)
        ids.update((await self.links()).values())
        if self.mode == "template" and present:
            index = self.template_index()
            ids.update(user_id for user_id in present if user_id in index)
        return frozenset(ids)

    def template_index(self) -> dict[str, str]:
        """Template Matrix ID -> Waldur user UUID for every user the bridge knows, rebuilt
        when the directory's users change (a sweep's snapshot, single reads)."""
        if self.known_users is None:
            return self._template_index
        users, emails = self.known_users()
        key = (id(users), len(users))
        if key != self._template_index_key:
            index: dict[str, str] = {}
            for user_uuid, user in users.items():
                mxid = identity.template_mxid(
                    self.mxid_template,
                    username=user.username,
                    user_uuid=user_uuid,
                    email=emails.get(user_uuid, ""),
                )
                if mxid is not None:
                    index[mxid] = user_uuid
            self._template_index = index
            self._template_index_key = key
        return self._template_index

    async def missing_accounts(
        self, desired: DesiredRoom, current: CurrentRoom | None
    ) -> frozenset[str]:
        """Own accounts (not puppets) the plan may invite that the homeserver does not have."""
        if self.accounts is None:
            return frozenset()
        candidates = []
        for user_id, member in desired.members.items():
            if member.join_as_puppet:
                continue
            cur = current.members.get(user_id) if current is not None else None
            if cur is not None and cur.membership in ("join", "invite", "ban"):
                continue
            candidates.append(user_id)
        return await self.accounts.missing_of(candidates)

    async def links(self) -> dict[str, str]:
        """Admins' explicit links (Waldur user -> Matrix ID), read once and kept in memory:
        every reconcile consults them for every member."""
        if self._links is None:
            self._links = {u.waldur_user_uuid: u.mxid for u in await DBUser.all_linked()}
        return self._links

    def forget_links(self) -> None:
        """Call after `link`/`unlink` so the next reconcile reads them again."""
        self._links = None

    def initial_team(
        self,
        desired: DesiredRoom,
        bot_mxid: str,
        domain: str,
        missing: frozenset[str] = frozenset(),
    ) -> tuple[list[str], dict[str, int]]:
        """Whom a new room's createRoom invites, and the levels it starts with.

        Only accounts on this homeserver are invited there: a remote server that fails the
        invite would fail the whole request. Remote members get their level all the same and
        are invited by the reconcile that follows. Local accounts that do not exist yet
        (`missing`) are not invited.
        """
        invitees = [
            user_id
            for user_id in sorted(desired.members)
            if user_id != bot_mxid and user_id.endswith(f":{domain}") and user_id not in missing
        ]
        levels = {
            user_id: member.power_level
            for user_id, member in sorted(desired.members.items())
            if user_id != bot_mxid and member.power_level != 0
        }
        return invitees, levels

    def created_room_state(self, created: CreatedRoom) -> CurrentRoom:
        """The room as createRoom just made it, so nothing the bridge wrote is read back."""
        room = created.room
        members = {room.bot_mxid: CurrentMember("join", added_by="bridge")}
        for user_id in room.invited:
            members[user_id] = CurrentMember("invite", added_by="bridge")
        self._creators[created.room_id] = room.creators
        return CurrentRoom(
            room_id=created.room_id,
            members=members,
            power_levels=room.users_map(),
            users_default=0,
            creators=room.creators,
            name=room.name,
            topic=room.topic,
        )

    # endregion
    # region current

    async def _room_state(
        self, portal: Portal, cached: bool
    ) -> tuple[list[tuple[str, str, str | None]], PowerLevelStateEventContent]:
        """(user ID, membership, sender of the member event) for everyone, and power levels.

        With `cached`, from the state store that the homeserver's pushes keep current, when it
        holds the room's full member list (sweeps: one fewer pair of requests per room);
        otherwise, and always for changes reported by Waldur, fresh from the homeserver.
        """
        intent = portal.main_intent
        room_id = RoomID(portal.room_id or "")
        store = portal.az.state_store
        if (
            cached
            and await store.has_full_member_list(room_id)
            and await store.has_power_levels_cached(room_id)
        ):
            # mautrix's get_member_profiles fails on SQLite rows, so read its table directly.
            rows = await store.db.fetch(
                "SELECT user_id, membership FROM mx_user_profile WHERE room_id=$1", room_id
            )
            levels = await store.get_power_levels(room_id)
            if levels is not None:
                return [(row["user_id"], row["membership"], None) for row in rows], levels
        member_events: list[StateEvent]
        member_events, levels = await asyncio.gather(
            intent.get_members(room_id), intent.get_power_levels(room_id, ignore_cache=True)
        )
        return [
            (str(e.state_key), str(e.content.membership.value), str(e.sender))
            for e in member_events
        ], levels

    async def current(
        self,
        portal: Portal,
        signatures: dict[str, str],
        records: dict[str, PortalMember],
        cached: bool = False,
    ) -> CurrentRoom:
        """The room as the homeserver has it, plus what the bridge remembers of its members.

        `signatures` are the desired members' current roles: a voluntary leaver comes back only
        after their roles changed since they left.
        """
        intent = portal.main_intent
        room_id = RoomID(portal.room_id or "")
        room_members, levels = await self._room_state(portal, cached)
        creators = self._creators.get(room_id)
        if creators is None:
            create = await intent.get_state_event(room_id, EventType.ROOM_CREATE)
            version = str(create.get("room_version", "1"))
            if version.isdigit() and int(version) >= 12:
                creators = frozenset(
                    {str(portal.az.bot_mxid), *map(str, create.get("additional_creators") or [])}
                )
            else:
                creators = frozenset()
            self._creators[room_id] = creators
        members: dict[str, CurrentMember] = {}
        for user_id, membership, sender in room_members:
            if membership not in _MEMBERSHIPS:
                continue
            record = records.get(user_id)
            if record is not None:
                added_by = record.added_by
            elif sender == portal.az.bot_mxid:
                added_by = "bridge"
            elif membership == "invite" and sender is not None:
                added_by = "moderator"
            else:
                added_by = "unknown"
            left = bool(record and record.left_voluntarily)
            members[user_id] = CurrentMember(
                membership=membership,
                added_by=added_by,
                left_voluntarily=left,
                role_changed_since_leave=bool(
                    left
                    and record
                    and signatures.get(user_id, record.role_signature) != record.role_signature
                ),
            )
        return CurrentRoom(
            room_id=room_id,
            members=members,
            power_levels={str(u): int(lv) for u, lv in levels.users.items()},
            users_default=int(levels.users_default or 0),
            creators=creators,
            name=portal.name,
            topic=portal.topic,
        )

    # endregion

    async def preview(self, portal: Portal, view: ProjectView, active: bool = True) -> Plan:
        desired, *_, signatures, _ = await self.desired(view, active)
        records = await PortalMember.for_project(portal.project_uuid)
        return await self._plan(portal, desired, signatures, self.policy, records)

    async def _plan(
        self,
        portal: Portal,
        desired: DesiredRoom,
        signatures: dict[str, str],
        policy: MembershipPolicy,
        records: dict[str, PortalMember],
        cached: bool = False,
        current: CurrentRoom | None = None,
        defer_removals: bool = False,
    ) -> Plan:
        if current is None:
            current = await self.current(portal, signatures, records, cached)
        ctx = PlanContext(
            bot_user_id=str(portal.az.bot_mxid),
            managed_user_ids=await self.managed_ids(desired, frozenset(current.members)),
            puppet_regex=self.puppet_regex,
            policy=policy,
            defer_removals=defer_removals,
            missing_accounts=await self.missing_accounts(desired, current)
            if desired.active
            else frozenset(),
        )
        return plan(desired, current, ctx)

    async def reconcile(
        self,
        portal: Portal,
        view: ProjectView,
        *,
        active: bool = True,
        inactive_reason: str | None = None,
        policy: MembershipPolicy | None = None,
        cached_state: bool = False,
        refresh: Callable[[], Awaitable[ProjectView]] | None = None,
        current: CurrentRoom | None = None,
        defer_removals: bool = False,
    ) -> Result:
        """Plan and carry out one portal's changes.

        `current` is the room's known state (a room just created), else it is read from the
        homeserver (or its pushes, with `cached_state`). With `refresh`, a plan that would
        remove anyone is made again from a fresh read (`view` may be a sweep's older
        snapshot): a removal needs a fresh "no". With `defer_removals` (a leading run), the
        plan leaves removals and demotions to a settled run (`Plan.deferred`).
        """
        desired, puppets, displaynames, signatures, user_uuids = await self.desired(
            view, active, inactive_reason
        )
        records = await PortalMember.for_project(portal.project_uuid)
        result = await self._plan(
            portal,
            desired,
            signatures,
            policy or self.policy,
            records,
            cached_state,
            current,
            defer_removals,
        )
        from_cache = cached_state and current is None
        replaced: ProjectView | None = None
        if refresh is not None and (
            result.held or result.dry_run or any(isinstance(a, Kick) for a in result.actions)
        ):
            try:
                view = await refresh()
            except WaldurError as e:
                # No fresh "no", no removal: additions from the snapshot go ahead, the caller
                # sees an incomplete view and retries.
                problem = f"fresh read before removals failed: {e}"
                view = dataclasses.replace(
                    view, complete=False, problems=[*view.problems, problem]
                )
            replaced = view
            desired, puppets, displaynames, signatures, user_uuids = await self.desired(
                view, active, inactive_reason
            )
            result = await self._plan(
                portal, desired, signatures, policy or self.policy, records, cached_state
            )
            from_cache = cached_state
        # Display names follow Waldur even when membership is unchanged.
        for user_id, puppet in puppets.items():
            name = displaynames.get(user_id, "")
            if puppet.is_registered and name and name != puppet.displayname:
                await puppet.ensure_ready(name)
        if self._held_projects is None:
            self._held_projects = {h.project_uuid for h in await HeldRemoval.all()}
        reported = self._reported.get(portal.project_uuid)
        if reported is None:
            held_before = (
                await HeldRemoval.all(portal.project_uuid)
                if portal.project_uuid in self._held_projects
                else []
            )
            reported = frozenset(h.mxid for h in held_before)
        outcome = await self.executor.execute(
            portal,
            result,
            puppets=puppets,
            displaynames=displaynames,
            role_signatures=signatures,
            user_uuids=user_uuids,
            reported=reported,
            verify_joins=from_cache,
        )
        self._reported[portal.project_uuid] = frozenset(
            k.user_id for k in (*result.held, *result.dry_run)
        )
        if result.held or portal.project_uuid in self._held_projects:
            await self._record_held(portal, result)
        changes = await self._track_roles(
            portal,
            result,
            records,
            signatures,
            displaynames,
            puppets,
            settled=desired.complete and desired.active and not defer_removals,
        )
        team = Team(desired, puppets, displaynames, signatures, user_uuids)
        return Result(result, outcome, changes, replaced, team, members=len(desired.members))

    async def _track_roles(
        self,
        portal: Portal,
        result: Plan,
        records: dict[str, PortalMember],
        signatures: dict[str, str],
        displaynames: dict[str, str],
        puppets: dict[str, Puppet],
        *,
        settled: bool = False,
    ) -> list[tuple[str, str, bool]]:
        """Remember each member's roles and say whose changed since the last reconcile.

        A room the bridge has no records of yet (a new portal, a fresh database) gets its
        records silently: nobody "gained" a role because the bridge just started looking.
        With `settled` (a complete read, not a leading run), a person who declined and has
        lost every role is remembered without roles, so a new grant counts as a change and
        brings a new invite (invariant 15).
        """
        known_room = bool(records)
        changes: list[tuple[str, str, bool]] = []
        invited = {a.user_id for a in result.actions if isinstance(a, Invite)}
        for user_id, signature in signatures.items():
            record = records.get(user_id)
            name = displaynames.get(user_id) or user_id
            new_roles = set(filter(None, signature.split("|")))
            if record is None:
                if known_room and user_id in invited:
                    changes += [(name, role, True) for role in sorted(new_roles)]
                continue
            if record.role_signature == signature:
                continue
            old_roles = set(filter(None, record.role_signature.split("|")))
            if record.role_signature:
                changes += [(name, role, True) for role in sorted(new_roles - old_roles)]
                changes += [(name, role, False) for role in sorted(old_roles - new_roles)]
            record.role_signature = signature
            await record.save()
        if settled:
            for user_id, record in records.items():
                if user_id not in signatures and record.left_voluntarily and record.role_signature:
                    record.role_signature = ""
                    await record.save()
        for kick in (a for a in result.actions if isinstance(a, Kick)):
            record = records.get(kick.user_id)
            if record is None or not record.role_signature:
                continue
            puppet = puppets.get(kick.user_id) or Puppet.by_mxid.get(kick.user_id)
            name = (puppet.displayname if puppet else "") or kick.user_id
            changes += [(name, role, False) for role in record.role_signature.split("|")]
        return changes

    async def _record_held(self, portal: Portal, result: Plan) -> None:
        assert self._held_projects is not None
        if result.held:
            self._held_projects.add(portal.project_uuid)
        else:
            self._held_projects.discard(portal.project_uuid)
        await HeldRemoval.replace_for_project(
            portal.project_uuid,
            [
                HeldRemoval(
                    project_uuid=portal.project_uuid,
                    mxid=k.user_id,
                    reason=k.reason,
                    cause=k.cause,
                )
                for k in result.held
            ],
        )

    def forget_held(self, project_uuid: str) -> None:
        if self._held_projects is not None:
            self._held_projects.discard(project_uuid)
        self._reported.pop(project_uuid, None)
