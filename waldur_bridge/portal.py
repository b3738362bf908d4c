"""Portals: the Matrix room of one Waldur project."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from mautrix.appservice import IntentAPI
from mautrix.bridge import BasePortal, async_getter_lock
from mautrix.types import (
    EventType,
    Format,
    MessageEventContent,
    MessageType,
    PowerLevelStateEventContent,
    RoomID,
    TextMessageEventContent,
)

from . import room_meta
from .db import Portal as DBPortal, portal as states
from .messages import Reply
from .room_creation import (
    PROJECT_LINK_TYPE,
    CreatedRoom,
    NewRoom,
    create_or_adopt,
    room_power_levels,
)

if TYPE_CHECKING:
    from .__main__ import WaldurBridge
    from .user import User

# The link state event (see room_creation) as a mautrix event type, for readers of the room.
PROJECT_STATE_EVENT = EventType.find(PROJECT_LINK_TYPE, t_class=EventType.Class.STATE)
__all__ = ["PROJECT_STATE_EVENT", "Portal", "room_power_levels"]


class Portal(DBPortal, BasePortal):
    by_project: ClassVar[dict[str, Portal]] = {}
    by_room: ClassVar[dict[str, Portal]] = {}
    bridge: ClassVar[WaldurBridge]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        BasePortal.__init__(self)
        self.log = self.log.getChild(self.project_uuid)

    @classmethod
    def init_cls(cls, bridge: WaldurBridge) -> None:
        cls.bridge = bridge
        cls.az = bridge.az
        cls.matrix = bridge.matrix
        cls.loop = bridge.loop
        cls.by_project = {}
        cls.by_room = {}

    # region mautrix glue

    @property
    def mxid(self) -> RoomID | None:  # type: ignore[override]
        return RoomID(self.room_id) if self.room_id else None

    @property
    def main_intent(self) -> IntentAPI:  # type: ignore[override]
        return self.az.intent

    @property
    def is_direct(self) -> bool:  # type: ignore[override]
        return False

    async def get_dm_puppet(self) -> None:
        return None

    async def handle_matrix_message(
        self, sender: User, message: MessageEventContent, event_id: Any
    ) -> None:
        # Ordinary conversation in a portal is not bridged anywhere: Waldur has no chat.
        return

    @property
    def bridge_info_state_key(self) -> str:
        return f"waldur://{self.project_uuid}"

    def bridge_info_content(
        self, name: str, customer_name: str, avatar_mxc: str | None = None
    ) -> dict[str, Any]:
        return room_meta.bridge_info(
            bot=self.az.bot_mxid,
            channel_id=self.project_uuid,
            channel_name=name,
            channel_avatar=avatar_mxc,
            network_id=self.customer_uuid,
            network_name=customer_name,
        )

    @property
    def bridge_info(self) -> dict[str, Any]:
        customer_name = self.bridge.sync.spaces.customer_name(self.customer_uuid)
        return self.bridge_info_content(self.name, customer_name)

    async def save(self) -> None:
        await DBPortal.save(self)
        self._add_to_cache()

    async def delete(self) -> None:
        self.by_project.pop(self.project_uuid, None)
        if self.room_id:
            self.by_room.pop(self.room_id, None)
        await DBPortal.delete(self)

    # endregion
    # region lookup

    def _add_to_cache(self) -> None:
        self.by_project[self.project_uuid] = self
        if self.room_id:
            self.by_room[self.room_id] = self

    @classmethod
    @async_getter_lock
    async def get_by_project(
        cls, project_uuid: str, customer_uuid: str | None = None
    ) -> Portal | None:
        """The portal of a project; with customer_uuid, a new (not yet saved) one if missing."""
        try:
            return cls.by_project[project_uuid]
        except KeyError:
            pass
        portal = await super().get_by_project(project_uuid)
        if portal is None and customer_uuid is not None:
            portal = cls(project_uuid=project_uuid, customer_uuid=customer_uuid)
        if portal is not None and portal.created_at:
            portal._add_to_cache()
        return portal

    @classmethod
    async def get_by_room(cls, room_id: str) -> Portal | None:
        try:
            return cls.by_room[room_id]
        except KeyError:
            pass
        portal = await super().get_by_room(room_id)
        if portal is not None:
            portal = cls.by_project.setdefault(portal.project_uuid, portal)
            portal._add_to_cache()
        return portal

    @classmethod
    async def all(cls, state: str | None = None) -> list[Portal]:
        result = []
        for row in await super().all(state):
            portal = cls.by_project.setdefault(row.project_uuid, row)
            portal._add_to_cache()
            result.append(portal)
        return result

    @property
    def is_active(self) -> bool:
        return self.state == states.ACTIVE and bool(self.room_id)

    # endregion
    # region room

    def alias_localpart(self) -> str:
        return self.bridge.config["bridge.alias_template"].format(groupname=self.project_uuid)

    async def new_room(
        self,
        name: str,
        topic: str,
        invitees: Sequence[str],
        levels: Mapping[str, int],
        customer_name: str,
        puppet_names: Mapping[str, str],
    ) -> NewRoom:
        """What this portal's room starts with (see room_creation.create_room_request).
        `puppet_names`: the display names of the bridge's puppets among the invitees."""
        config = self.bridge.config
        spaces = self.bridge.sync.spaces
        return NewRoom(
            project_uuid=self.project_uuid,
            customer_uuid=self.customer_uuid,
            name=name,
            topic=topic,
            bot_mxid=str(self.az.bot_mxid),
            room_version=await self.bridge.room_versions.for_new_room(),
            federate=bool(config["bridge.portals.federate"]),
            encrypted=bool(
                config["bridge.encryption.allow"] and config["bridge.encryption.default"]
            ),
            invitees=tuple(invitees),
            puppet_names=dict(puppet_names),
            levels=dict(levels),
            bridge_info_state_key=self.bridge_info_state_key,
            bridge_info=self.bridge_info_content(name, customer_name),
            extra_state=spaces.portal_parent_state(self),
        )

    async def create_room(
        self,
        name: str,
        topic: str,
        invitees: Sequence[str],
        levels: Mapping[str, int],
        customer_name: str,
        puppet_names: Mapping[str, str],
    ) -> CreatedRoom:
        """Create the room with its team invited at their levels, or adopt the room an earlier
        attempt left under the alias. The intent (state creating, planned alias) is saved
        first, so a crash at any point leaves one room, found again by its alias."""
        if not self.alias:
            self.alias = f"#{self.alias_localpart()}:{self.az.domain}"
        self.state = states.CREATING
        self.name = name
        self.topic = topic
        await DBPortal.save(self)
        localpart = self.alias[1:].split(":", 1)[0]
        created = await create_or_adopt(
            self.main_intent,
            await self.new_room(name, topic, invitees, levels, customer_name, puppet_names),
            localpart,
        )
        self.room_id = created.room_id
        self.encrypted = created.room.encrypted
        if created.adopted:
            # An earlier attempt's name and topic are unknown: the reconcile sets them again.
            self.name = self.topic = ""
        self.state = states.ACTIVE
        self.error = None
        await self.save()
        return created

    async def set_name(self, name: str) -> None:
        await self.main_intent.set_room_name(self.mxid, name)
        self.name = name
        await self.save()

    async def set_topic(self, topic: str) -> None:
        await self.main_intent.set_room_topic(self.mxid, topic)
        self.topic = topic
        await self.save()

    async def get_power_levels(self) -> PowerLevelStateEventContent:
        return await self.main_intent.get_power_levels(self.mxid, ignore_cache=True)

    async def send_reply(self, reply: Reply) -> None:
        """A notice with Waldur content, escaped by `messages`; encrypted if the room is."""
        content = TextMessageEventContent(
            msgtype=MessageType.NOTICE,
            body=reply.markdown,
            format=Format.HTML,
            formatted_body=reply.html,
        )
        content["m.mentions"] = {}
        await self.bridge.matrix.send_bot_message(self.mxid, content)

    # endregion
