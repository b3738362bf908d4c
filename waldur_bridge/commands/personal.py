"""A person's own commands, in a direct chat with the bot: `!rooms` lists the project rooms
their Waldur roles give them, `!join <project>` asks to be invited again after declining.
Admins do the same for someone else with `invite <person> <project>` (commands/admin.py).

Each answer reads the person's projects fresh from Waldur: a decline is forgotten only for a
person who still holds a role, and nobody learns about projects they hold no role on.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from mautrix.bridge.commands import command_handler
from mautrix.errors import MatrixRequestError
from mautrix.types import EventType, RoomID

from .. import messages as fmt
from ..db import PortalMember
from ..portal import Portal
from ..sync.directory import ProjectGone, ProjectView
from ..sync.policy import TeamMember, canonical_uuid, desired_team
from ..waldur import WaldurError
from .handler import SECTION_ROOM, CommandError, WaldurCommandEvent
from .room import waldur_user_of

log = logging.getLogger("waldur.commands.personal")

# Projects read fresh for one answer; a person with more sees the first ones and a count.
MAX_PROJECTS = 25
_READS_AT_ONCE = 4

STATE_LABELS = {
    "join": "joined",
    "invite": "invited (accept it in your client)",
    "declined": "declined",
    "missing": "waiting for your Matrix account",
}
NOT_THERE = "not in the room yet"


@dataclass
class RoomOfPerson:
    portal: Portal
    view: ProjectView
    member: TeamMember
    state: str  # join | invite | declined | missing | none


def _md(text: object) -> str:
    return fmt.escape_markdown(str(text))


async def candidate_projects(evt: WaldurCommandEvent, user_uuid: str, mxid: str) -> list[str]:
    """Projects where the person may hold a role: the last sweep's index of grants, their
    organizations' projects, and the rooms the bridge has records of them in."""
    directory = evt.bridge.sync.directory
    found = set(directory.projects_of_user.get(user_uuid, set()))
    for customer_uuid in directory.customers_of_user.get(user_uuid, set()):
        found.update(directory.projects_of_customer(customer_uuid))
    rows = await PortalMember.db.fetch(
        "SELECT project_uuid FROM portal_member WHERE mxid=$1", mxid
    )
    found.update(row["project_uuid"] for row in rows)
    return sorted(found)


async def membership_of(evt: WaldurCommandEvent, room_id: str, mxid: str) -> str | None:
    try:
        member = await evt.az.intent.get_state_event(RoomID(room_id), EventType.ROOM_MEMBER, mxid)
    except MatrixRequestError:
        return None
    membership = getattr(member, "membership", None)
    return str(membership.value) if membership is not None else None


async def rooms_of_person(
    evt: WaldurCommandEvent, user_uuid: str, mxid: str, projects: list[str]
) -> list[RoomOfPerson]:
    """The active rooms the person's roles give them, each read fresh, with their state."""
    directory = evt.bridge.sync.directory
    policy = evt.bridge.sync.policy
    accounts = evt.bridge.sync.accounts
    declined = await PortalMember.declined_in(mxid)
    slots = asyncio.Semaphore(_READS_AT_ONCE)

    async def one(project_uuid: str) -> RoomOfPerson | None:
        portal = await Portal.get_by_project(project_uuid)
        if portal is None or not portal.room_id or not portal.is_active:
            return None
        async with slots:
            try:
                view = await directory.read_project(project_uuid)
            except ProjectGone:
                return None
            membership = await membership_of(evt, portal.room_id, mxid)
        team = desired_team(view.project, view.grants, view.users, policy, datetime.now(UTC))
        member = team.get(user_uuid)
        if member is None:
            return None
        if membership in ("join", "invite"):
            state = membership
        elif project_uuid in declined:
            state = "declined"
        elif mxid in accounts.missing:
            state = "missing"
        else:
            state = "none"
        return RoomOfPerson(portal, view, member, state)

    found = await asyncio.gather(*(one(p) for p in projects[:MAX_PROJECTS]))
    return sorted(
        (r for r in found if r is not None), key=lambda r: r.view.project.name.casefold()
    )


async def _who(evt: WaldurCommandEvent) -> tuple[str, str]:
    """The sender's Waldur user and Matrix ID, or a clear refusal."""
    mxid = str(evt.sender.mxid)
    user_uuid = await waldur_user_of(evt, mxid)
    if user_uuid is None:
        raise CommandError(
            "Your Matrix account is not mapped to a Waldur user, so the bridge has no rooms"
            " for you. Ask an admin if you think it should be."
        )
    return user_uuid, mxid


def _direct_chat_only(evt: WaldurCommandEvent) -> None:
    if evt.portal is not None:
        raise CommandError("Send this in a direct chat with the bot.")


async def _own_rooms(evt: WaldurCommandEvent) -> tuple[str, list[str], list[RoomOfPerson]]:
    """The sender's Matrix ID, candidate projects and the rooms their roles give them."""
    user_uuid, mxid = await _who(evt)
    projects = await candidate_projects(evt, user_uuid, mxid)
    try:
        rooms = await rooms_of_person(evt, user_uuid, mxid, projects)
    except WaldurError as e:
        raise CommandError(f"Could not read your projects from Waldur: {_md(e)}") from e
    return mxid, projects, rooms


@command_handler(
    name="my-rooms",
    needs_auth=False,
    help_section=SECTION_ROOM,
    help_text="(`!rooms` in a direct chat) the project rooms your Waldur roles give you.",
)
async def my_rooms(evt: WaldurCommandEvent) -> None:
    _direct_chat_only(evt)
    mxid, projects, rooms = await _own_rooms(evt)
    if not rooms:
        await evt.reply(
            "Your Waldur roles give you no project rooms yet. A role on a project"
            " (or as an organization owner) brings you in within seconds."
        )
        return
    lines = [f"**Your project rooms** ({len(rooms)}):", ""]
    for room in rooms:
        state = STATE_LABELS.get(room.state, NOT_THERE)
        roles = ", ".join(fmt.role_title(r) for r in room.member.roles)
        lines.append(f"- **{_md(room.view.project.name)}** — {_md(roles)} · {state}")
    if any(r.state == "declined" for r in rooms):
        lines += ["", "Send `!join <project name>` to be invited again to a room you declined."]
    if len(projects) > MAX_PROJECTS:
        lines += ["", f"Only the first {MAX_PROJECTS} of {len(projects)} projects were read."]
    await evt.reply("\n".join(lines))


def match_room(rooms: list[RoomOfPerson], query: str) -> RoomOfPerson:
    """A room by its alias, project UUID or (part of) its project's name."""
    folded = query.casefold()
    for matches in (
        [r for r in rooms if r.portal.alias and r.portal.alias == query],
        [r for r in rooms if r.portal.project_uuid == canonical_uuid(query)],
        [r for r in rooms if r.view.project.name.casefold() == folded],
        [r for r in rooms if folded in r.view.project.name.casefold()],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(_md(r.view.project.name) for r in matches[:10])
            raise CommandError(f"`{_md(query)}` matches several of your rooms: {names}.")
    raise CommandError(
        f"None of the rooms your Waldur roles give you matches `{_md(query)}`; `!rooms`"
        " lists them. A room you hold no role on cannot be joined through the bridge."
    )


@command_handler(
    name="join",
    needs_auth=False,
    help_section=SECTION_ROOM,
    help_text="(in a direct chat) be invited again to a project room you declined.",
    help_args="<project name or room alias>",
)
async def join(evt: WaldurCommandEvent) -> None:
    _direct_chat_only(evt)
    query = " ".join(evt.args).strip()
    if not query:
        raise CommandError("Usage: `!join <project name or room alias>`; `!rooms` lists them.")

    mxid, _, rooms = await _own_rooms(evt)
    room = match_room(rooms, query)
    name = _md(room.view.project.name)
    if room.state == "join":
        await evt.reply(f"You are in **{name}** already.")
        return
    if room.state == "invite":
        await evt.reply(f"You are invited to **{name}**: accept the invite in your client.")
        return
    # Whoever writes to the bot has an account, whatever the bridge last found.
    evt.bridge.sync.accounts.seen(mxid)
    await evt.bridge.sync.ask_back(room.portal, mxid, mxid)
    await evt.reply(f"Invited you to **{name}** again: accept the invite in your client.")
