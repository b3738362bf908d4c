"""Duplicate portals left by older versions: found, reported and tidied.

Before creation was crash-safe, a crash between createRoom and saving the room ID made the
next attempt create a second room without the alias: the project's alias then leads to a room
with only the bot in it, while the bridge keeps the team in the other. Such a leftover is a
room the bot created that carries a project's link state but is not that project's portal.
Tidying closes it (notice, managed members removed, link state cleared, the bot leaves) and
points the alias at the portal the bridge keeps.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import (
    EventType,
    Format,
    MessageType,
    RoomAlias,
    RoomID,
    TextMessageEventContent,
    UserID,
)

from . import identity
from .db import AuditEntry, Portal as DBPortal, User as DBUser, portal as states
from .messages import duplicate_closed_notice
from .room_creation import PROJECT_LINK_TYPE, linked_project, room_state, state_content

if TYPE_CHECKING:
    from .__main__ import WaldurBridge

log = logging.getLogger("waldur.duplicates")

CANONICAL_ALIAS = EventType.find("m.room.canonical_alias", t_class=EventType.Class.STATE)
PROJECT_LINK = EventType.find(PROJECT_LINK_TYPE, t_class=EventType.Class.STATE)


@dataclass(frozen=True, slots=True)
class Leftover:
    """A room the bot created with a project's link state that is not the project's portal."""

    room_id: str
    project_uuid: str
    project_name: str
    # The portal the bridge keeps for the project; None when the project has no room yet
    # (creation adopts a leftover that holds the alias; others are only reported).
    kept_room_id: str | None
    alias: str
    # Whether the project's alias leads to this leftover instead of the kept portal.
    holds_alias: bool

    @property
    def tidiable(self) -> bool:
        return self.kept_room_id is not None


@dataclass(frozen=True, slots=True)
class Tidied:
    leftover: Leftover
    removed: tuple[str, ...]
    alias_moved: bool


class DuplicateFinder:
    def __init__(self, bridge: WaldurBridge) -> None:
        self.bridge = bridge
        self.intent = bridge.az.intent
        self.bot = str(bridge.az.bot_mxid)
        config = bridge.config
        self.domain = config["homeserver.domain"]
        self.alias_template = config["bridge.alias_template"]
        self.puppet_re = re.compile(
            identity.puppet_regex(config["bridge.username_template"], self.domain)
        )

    def alias_of(self, portal: DBPortal | None, project_uuid: str) -> str:
        if portal is not None and portal.alias:
            return portal.alias
        return f"#{self.alias_template.format(groupname=project_uuid)}:{self.domain}"

    async def find(self) -> list[Leftover]:
        """Every leftover among the rooms the bot is in (one state read per unknown room)."""
        portals = {p.project_uuid: p for p in await DBPortal.all()}
        known = {p.room_id for p in portals.values() if p.room_id}
        management = self.bridge.management.room_id
        if management:
            known.add(management)
        leftovers: list[Leftover] = []
        for room_id in await self.intent.get_joined_rooms():
            if room_id in known:
                continue
            try:
                # Most other rooms (management, direct chats, spaces) have no link: one
                # cheap read rules them out before the room's whole state is read.
                if await state_content(self.intent, room_id, PROJECT_LINK_TYPE) is None:
                    continue
                state = await room_state(self.intent, room_id)
            except MNotFound:
                continue
            except MatrixRequestError as e:
                log.debug("Could not read the state of %s: %s", room_id, e)
                continue
            project_uuid = linked_project(state, self.bot)
            if project_uuid is None:
                continue
            portal = portals.get(project_uuid)
            if portal is not None and portal.state == states.CREATING:
                continue  # its creation is in progress or will adopt the room: not a leftover
            alias = self.alias_of(portal, project_uuid)
            kept = portal.room_id if portal is not None and portal.room_id else None
            leftovers.append(
                Leftover(
                    room_id=room_id,
                    project_uuid=project_uuid,
                    project_name=(portal.name if portal else "") or _room_name(state),
                    kept_room_id=kept,
                    alias=alias,
                    holds_alias=await self._alias_target(alias) == room_id,
                )
            )
        return leftovers

    async def _alias_target(self, alias: str) -> str | None:
        try:
            return str((await self.intent.resolve_room_alias(RoomAlias(alias))).room_id)
        except MNotFound:
            return None

    async def tidy(self, leftover: Leftover, by: str) -> Tidied:
        """Close one leftover whose project has a portal, and give the portal the alias."""
        if leftover.kept_room_id is None:
            raise ValueError("the project has no room to keep; create it first")
        room_id = RoomID(leftover.room_id)
        kept = RoomID(leftover.kept_room_id)
        alias_moved = False
        if await self._alias_target(leftover.alias) == leftover.room_id:
            await self.intent.remove_room_alias(leftover.alias[1:].split(":", 1)[0])
            await self.intent.add_room_alias(kept, leftover.alias[1:].split(":", 1)[0])
            await self.intent.send_state_event(kept, CANONICAL_ALIAS, {"alias": leftover.alias})
            alias_moved = True
            portal = await DBPortal.get_by_project(leftover.project_uuid)
            if portal is not None and portal.alias != leftover.alias:
                portal.alias = leftover.alias
                await portal.save()
        notice = duplicate_closed_notice(leftover.kept_room_id, leftover.alias)
        content = TextMessageEventContent(
            msgtype=MessageType.NOTICE,
            body=notice.markdown,
            format=Format.HTML,
            formatted_body=notice.html,
        )
        content["m.mentions"] = {}
        await self.bridge.matrix.send_bot_message(room_id, content)
        removed = []
        for user_id in await self._managed_members(room_id):
            await self.intent.kick_user(room_id, UserID(user_id), "Duplicate project room closed")
            removed.append(user_id)
        # The room no longer stands for the project, for the finder and for other tools.
        await self.intent.send_state_event(
            room_id, PROJECT_LINK, {"superseded_by": leftover.kept_room_id}
        )
        await AuditEntry(
            action="close-duplicate",
            outcome="done",
            project_uuid=leftover.project_uuid,
            room_id=leftover.room_id,
            target=None,
            cause=f"{by}: duplicate of {leftover.kept_room_id}",
            detail=f"removed {len(removed)}; alias moved: {alias_moved}",
        ).insert()
        await self.intent.leave_room(room_id)
        log.info(
            "Closed duplicate room %s of project %s (kept %s, removed %d, alias moved: %s)",
            leftover.room_id,
            leftover.project_uuid,
            leftover.kept_room_id,
            len(removed),
            alias_moved,
        )
        return Tidied(leftover, tuple(removed), alias_moved)

    async def _managed_members(self, room_id: RoomID) -> list[str]:
        """Who the bridge may remove from the leftover: its puppets and linked accounts, and
        anyone the bot itself invited; never the bot or a `never_kick` entry."""
        linked = {u.mxid for u in await DBUser.all_linked()}
        policy = self.bridge.sync.policy
        data = await self.intent.api.request(
            Method.GET, Path.v3.rooms[room_id].members, query_params={"not_membership": "leave"}
        )
        out = []
        for event in data.get("chunk", []):
            user_id = event.get("state_key", "")
            membership = event.get("content", {}).get("membership")
            if user_id == self.bot or membership not in ("join", "invite"):
                continue
            managed = (
                self.puppet_re.fullmatch(user_id) is not None
                or user_id in linked
                or (membership == "invite" and event.get("sender") == self.bot)
            )
            if managed and not policy.matches_never_kick(user_id):
                out.append(user_id)
        return sorted(out)


def _room_name(state: list[dict]) -> str:
    for event in state:
        if event.get("type") == "m.room.name":
            name = event.get("content", {}).get("name")
            if isinstance(name, str):
                return name
    return ""
