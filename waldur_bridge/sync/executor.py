"""Carries out a plan on the homeserver, with bounded concurrency, and audits every action."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mautrix.appservice import IntentAPI
from mautrix.errors import MatrixRequestError, MForbidden
from mautrix.types import EventType, Membership, PowerLevelStateEventContent, RoomID, UserID

from ..db import AuditEntry, PortalMember
from ..metrics import MEMBERSHIP_ACTIONS
from .planner import Invite, Join, Kick, Plan, SetName, SetPowerLevels, SetTopic
from .slots import WriteSlots

if TYPE_CHECKING:
    from ..portal import Portal
    from ..puppet import Puppet

log = logging.getLogger("waldur.sync.executor")

# People brought into one room at once. Measured with benchmarks/stream.py (300 grants at 10/s
# into one room, Synapse saturated; two runs): everyone was in 10-25 % sooner with 2 than with 1
# in the same run, for no more Synapse CPU per join (140-172 ms against 152-176); 4 gained
# nothing more and spread a 3/s stream's p95 (0.87 s against 0.2-0.3 s).
JOINS_PER_ROOM = 2

_MEMBERSHIP_VERBS = {
    "invite": "Invited",
    "join": "Joined",
    "kick": "Removed",
    "power-levels": "Set power levels",
}


def _log_change(action: str, target: str | None, cause: str, portal: Portal) -> None:
    """One INFO line per person and change, for operators who want to know who came and went."""
    room = _room_label(portal)
    if action == "power-levels":
        # One event changes several people: a line each, with its own clause of the cause.
        changes = (target or "").split(", ")
        clauses = cause.split("; ")
        if len(clauses) != len(changes):
            clauses = [cause] * len(changes)
        for change, clause in zip(changes, clauses, strict=True):
            user, _, level = change.rpartition("=")
            log.info("Set power level of %s to %s in %s: %s", user, level, room, clause)
        return
    preposition = "from" if action == "kick" else "to"
    log.info("%s %s %s %s: %s", _MEMBERSHIP_VERBS[action], target, preposition, room, cause)


async def _joined_already(intent: IntentAPI, room_id: RoomID, user_id: str) -> bool:
    """Whether the homeserver (not the cache) has ``user_id`` joined; fixes the cache if so."""
    try:
        member = await intent.get_state_event(room_id, EventType.ROOM_MEMBER, user_id)
    except MatrixRequestError:
        return False
    if getattr(member, "membership", None) != Membership.JOIN:
        return False
    await intent.state_store.set_membership(room_id, UserID(user_id), Membership.JOIN)
    return True


def _room_label(portal: Portal) -> str:
    """How log lines name a room: the project's name and the room ID."""
    name = portal.name or portal.project_uuid
    return f'"{name}" ({portal.room_id})'


@dataclass
class Outcome:
    done: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _already(e: MatrixRequestError, *phrases: str) -> bool:
    message = (e.message or "").lower()
    return any(p in message for p in phrases)


class PlanExecutor:
    """Applies plans. One instance per bridge: `limit` bounds homeserver writes bridge-wide."""

    def __init__(self, limit: int, per_room: int = JOINS_PER_ROOM) -> None:
        # Room writes first: a space's writes wait while a room's write waits (slots.py).
        self.slots = WriteSlots(limit)
        # People brought into one room at a time (invite, then join), within `limit`.
        self.per_room = max(1, per_room)
        self.writes = 0
        # Removals held by the latest reconcile of each project (for the metrics).
        self.held: dict[str, int] = {}
        # Since when (Unix time) each project has had removals held, for the oldest one's age.
        self.held_since: dict[str, float] = {}

    async def execute(
        self,
        portal: Portal,
        plan: Plan,
        *,
        puppets: Mapping[str, Puppet],
        displaynames: Mapping[str, str],
        role_signatures: Mapping[str, str],
        user_uuids: Mapping[str, str],
        reported: frozenset[str] = frozenset(),
        verify_joins: bool = False,
        later: bool = False,
    ) -> Outcome:
        """Carry out the plan. `reported`: held or dry-run removals already in the audit log
        (a hold lasts across sweeps; it is recorded once, not on every run). `verify_joins`:
        the plan came from the state store, whose "invite" may be stale; a join the plan asks
        for is checked on the homeserver first (a fresh read or a room just created needs no
        check, and the check costs a read per join). `later`: a space's plan, whose writes
        wait while a room's write waits."""
        outcome = Outcome()
        room_id = RoomID(portal.room_id or "")
        # Spaces keep their member records in a table of their own.
        records: type[PortalMember] = getattr(portal, "member_class", PortalMember)
        intent = portal.main_intent

        async def audited(
            action: str, target: str | None, cause: str, run: Callable[[], Awaitable[None]]
        ) -> bool:
            error = await self._audited(portal, action, target, cause, run, later=later)
            if error is not None:
                outcome.failed += 1
                outcome.errors.append(f"{action} {target or ''}: {error}")
                return False
            outcome.done += 1
            return True

        joins = {a.user_id for a in plan.actions if isinstance(a, Join)}

        async def bring_in(user_id: str, invite: Invite | None, join: Join | None) -> None:
            puppet = puppets.get(user_id)
            if puppet is not None:
                # Registered and named before the invite, so the room never shows a bare ID.
                await puppet.ensure_ready(displaynames.get(user_id, ""))
            if invite is not None:

                async def do_invite() -> None:
                    try:
                        await intent.invite_user(room_id, UserID(user_id), check_cache=False)
                    except MatrixRequestError as e:
                        if not _already(e, "already in the room", "already joined"):
                            raise

                if not await audited("invite", user_id, invite.cause, do_invite):
                    return
            if (
                verify_joins
                and join is not None
                and invite is None
                and await _joined_already(intent, room_id, user_id)
            ):
                # The cached "invite" was stale: a homeserver push of the invite can land in the
                # state store after the join was recorded, and a join that changes nothing sends
                # no event to correct it, so every sweep would join again.
                join = None
            if (
                join is not None
                and puppet is not None
                and not await audited(
                    "join", user_id, join.cause, lambda: puppet.intent.join_room_by_id(room_id)
                )
            ):
                return
            await records(
                project_uuid=portal.project_uuid,
                mxid=user_id,
                waldur_user_uuid=user_uuids.get(user_id),
                added_by="bridge",
                left_voluntarily=False,
                role_signature=role_signatures.get(user_id, ""),
            ).save()

        for action in plan.actions:
            if isinstance(action, SetName):
                await audited(
                    "set-name", None, action.cause, lambda a=action: portal.set_name(a.name)
                )
            elif isinstance(action, SetTopic):
                await audited(
                    "set-topic", None, action.cause, lambda a=action: portal.set_topic(a.topic)
                )

        # Levels before invites: a member has their level the moment they join (a level for
        # someone not in the room yet is valid). One event per room, as before.
        for action in plan.actions:
            if isinstance(action, SetPowerLevels):
                await audited(
                    "power-levels",
                    ", ".join(
                        f"{u}={'default' if lv is None else lv}" for u, lv in action.changes
                    ),
                    action.cause,
                    lambda a=action: self._set_power_levels(portal, dict(a.changes)),
                )

        invites = {a.user_id: a for a in plan.actions if isinstance(a, Invite)}
        join_actions = {a.user_id: a for a in plan.actions if isinstance(a, Join)}
        seats = asyncio.Semaphore(self.per_room)  # people coming into this room at once

        async def one(user_id: str) -> None:
            async with seats:
                await bring_in(user_id, invites.get(user_id), join_actions.get(user_id))

        people = sorted(set(invites) | joins)
        results = await asyncio.gather(*(one(u) for u in people), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

        async def kick(action: Kick) -> None:
            async def do_kick() -> None:
                try:
                    await intent.kick_user(room_id, UserID(action.user_id), action.reason)
                except MForbidden as e:
                    if not _already(e, "not in the room"):
                        raise

            if await audited("kick", action.user_id, action.cause, do_kick):
                member = await records.get(portal.project_uuid, action.user_id)
                if member is not None:
                    await member.delete()

        for action in plan.actions:
            if isinstance(action, Kick):
                await kick(action)

        if plan.held:
            self.held[portal.project_uuid] = len(plan.held)
            self.held_since.setdefault(portal.project_uuid, time.time())
        else:
            self.held.pop(portal.project_uuid, None)
            self.held_since.pop(portal.project_uuid, None)
        for held in plan.held:
            if held.user_id not in reported:
                await self._audit(portal, "kick", held.user_id, held.cause, "held", held.reason)
        for dry in plan.dry_run:
            if dry.user_id not in reported:
                await self._audit(portal, "kick", dry.user_id, dry.cause, "dry-run", dry.reason)
        return outcome

    async def prepare_puppets(
        self, puppets: Mapping[str, Puppet], displaynames: Mapping[str, str]
    ) -> None:
        """Register puppets and set their names before a room is created for them: a name set
        while the account is in no room costs the homeserver no membership updates, and the
        invites carry it. A failure (the homeserver is down) fails the creation, which the
        queue retries: no room is made for accounts that do not exist yet."""

        async def ready(user_id: str, puppet: Puppet) -> None:
            async with self.slots:
                await puppet.ensure_ready(displaynames.get(user_id, ""))

        todo = [
            ready(user_id, puppet)
            for user_id, puppet in puppets.items()
            if not puppet.is_registered or puppet.displayname != displaynames.get(user_id, "")
        ]
        await asyncio.gather(*todo)

    async def record_creation(
        self,
        portal: Portal,
        invited: Mapping[str, str],
        levels: Mapping[str, int],
        *,
        role_signatures: Mapping[str, str],
        user_uuids: Mapping[str, str],
    ) -> None:
        """Audit and remember what createRoom did: its invites (user ID -> cause) and the
        levels it set, as if they had been separate actions. Portals and spaces alike."""
        records: type[PortalMember] = getattr(portal, "member_class", PortalMember)
        if levels:
            target = ", ".join(f"{u}={lv}" for u, lv in sorted(levels.items()))
            cause = "initial power levels of a new room"
            MEMBERSHIP_ACTIONS.labels(action="power-levels", outcome="done").inc()
            _log_change("power-levels", target, cause, portal)
            await self._audit(portal, "power-levels", target, cause, "done")
        for user_id, cause in invited.items():
            MEMBERSHIP_ACTIONS.labels(action="invite", outcome="done").inc()
            _log_change("invite", user_id, cause, portal)
            await self._audit(portal, "invite", user_id, cause, "done")
            await records(
                project_uuid=portal.project_uuid,
                mxid=user_id,
                waldur_user_uuid=user_uuids.get(user_id),
                added_by="bridge",
                left_voluntarily=False,
                role_signature=role_signatures.get(user_id, ""),
            ).save()

    async def join_now(self, portal: Portal, puppet: Puppet, cause: str) -> bool:
        """Join a puppet that is invited to `portal` (a space it was left invited to), as a
        membership change of its own: audited, counted and told at INFO."""
        room_id = RoomID(portal.room_id or "")
        join = functools.partial(puppet.intent.join_room_by_id, room_id)
        return await self._audited(portal, "join", puppet.mxid, cause, join) is None

    async def _audited(
        self,
        portal: Portal,
        action: str,
        target: str | None,
        cause: str,
        run: Callable[[], Awaitable[object]],
        *,
        later: bool = False,
    ) -> str | None:
        """One homeserver write within the write limit (`later`: a space's lane), counted,
        audited and, for memberships, told at INFO; the error's text when it failed."""
        async with self.slots.later() if later else self.slots:
            try:
                await run()
            except Exception as e:
                log.warning("%s %s in %s failed: %s", action, target, _room_label(portal), e)
                MEMBERSHIP_ACTIONS.labels(action=action, outcome="failed").inc()
                await self._audit(portal, action, target, cause, "failed", str(e))
                return str(e)
            finally:
                self.writes += 1
        MEMBERSHIP_ACTIONS.labels(action=action, outcome="done").inc()
        if action in _MEMBERSHIP_VERBS:
            _log_change(action, target, cause, portal)
        await self._audit(portal, action, target, cause, "done")
        return None

    @classmethod
    async def record_decline(cls, portal: Portal, user_id: str, how: str) -> None:
        """A person said no to a room (left it, or rejected the invite): audited and told at
        INFO, since from now on the bridge leaves them out (invariant 15)."""
        log.info(
            "%s %s %s; not invited again until their roles change or they ask (!join)",
            user_id,
            how,
            _room_label(portal),
        )
        await cls._audit(portal, "decline", user_id, how.removesuffix(" to"), "done")

    @classmethod
    async def record_undecline(cls, portal: Portal, user_id: str, asked_by: str) -> None:
        log.info("%s is invited to %s again: asked by %s", user_id, _room_label(portal), asked_by)
        await cls._audit(portal, "undecline", user_id, f"asked by {asked_by}", "done")

    async def _set_power_levels(self, portal: Portal, changes: dict[str, int | None]) -> None:
        intent = portal.main_intent
        room_id = RoomID(portal.room_id or "")
        # Read fresh: a moderator may have changed other entries since the plan was made.
        levels: PowerLevelStateEventContent = await intent.get_power_levels(
            room_id, ignore_cache=True
        )
        for user_id, level in changes.items():
            if level is None:
                levels.users.pop(UserID(user_id), None)
            else:
                levels.users[UserID(user_id)] = level
        await intent.send_state_event(room_id, EventType.ROOM_POWER_LEVELS, levels)

    @staticmethod
    async def _audit(
        portal: Portal, action: str, target: str | None, cause: str, outcome: str, detail: str = ""
    ) -> None:
        await AuditEntry(
            action=action,
            outcome=outcome,
            project_uuid=portal.project_uuid,
            room_id=portal.room_id,
            target=target,
            cause=cause,
            detail=detail,
        ).insert()
