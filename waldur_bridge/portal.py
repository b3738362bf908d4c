"""Portals: the Matrix room of one Waldur project."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from mautrix.appservice import IntentAPI
from mautrix.bridge import BasePortal, async_getter_lock
from mautrix.errors import MatrixRequestError
from mautrix.types import (
    EventType,
    Format,
    MessageEventContent,
    MessageType,
    PowerLevelStateEventContent,
    RoomCreatePreset,
    RoomID,
    TextMessageEventContent,
)

from . import room_meta
from .db import Portal as DBPortal, portal as states
from .messages import Reply

if TYPE_CHECKING:
    from .__main__ import WaldurBridge
    from .user import User

# A state event that ties the room to its Waldur project, readable by clients and tools.
PROJECT_STATE_EVENT = EventType.find("org.waldur.project", t_class=EventType.Class.STATE)
BRIDGE_INFO_EVENTS = (
    EventType.find("m.bridge", t_class=EventType.Class.STATE),
    EventType.find("uk.half-shot.bridge", t_class=EventType.Class.STATE),
)


def room_power_levels(bot_mxid: str, room_version: str) -> dict[str, Any]:
    """Power levels of a new portal.

    Moderators (50 by default, from PROJECT.ADMIN and CUSTOMER.OWNER) may invite, kick and
    redact, which is what Matrix clients show a moderator can do; room settings stay with the
    bot so Waldur remains the source of the name, topic and membership rules.
    """
    content: dict[str, Any] = {
        "users_default": 0,
        "events_default": 0,
        "state_default": 100,
        "invite": 50,
        "kick": 50,
        "redact": 50,
        "ban": 100,
        "events": {
            "m.room.name": 100,
            "m.room.topic": 100,
            "m.room.avatar": 50,
            "m.room.power_levels": 100,
            "m.room.encryption": 100,
            "m.room.history_visibility": 100,
            "m.room.tombstone": 150 if room_meta.creators_have_power(room_version) else 100,
        },
        "users": {},
    }
    if not room_meta.creators_have_power(room_version):
        # Before v12 the creator's power is an ordinary entry; from v12 it is implicit and
        # listing the creator is refused by the homeserver.
        content["users"][bot_mxid] = 100
    return content


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

    async def create_room(self, name: str, topic: str) -> RoomID:
        """Create the room (invite-only, with the project link state); no members yet."""
        config = self.bridge.config
        room_version = await self.bridge.room_versions.for_new_room()
        encrypted = bool(config["bridge.encryption.allow"] and config["bridge.encryption.default"])
        initial_state: list[dict[str, Any]] = [
            {
                "type": str(PROJECT_STATE_EVENT),
                "state_key": "",
                "content": {
                    "project_uuid": self.project_uuid,
                    "customer_uuid": self.customer_uuid,
                },
            },
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "shared"},
            },
            *self.bridge.sync.spaces.portal_initial_state(self, name),
        ]
        if encrypted:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        creation: dict[str, Any] = {
            "preset": RoomCreatePreset.PRIVATE,
            "name": name,
            "topic": topic,
            "room_version": room_version,
            "initial_state": initial_state,
            "power_level_override": room_power_levels(self.az.bot_mxid, room_version),
            "creation_content": {} if config["bridge.portals.federate"] else {"m.federate": False},
        }
        try:
            room_id = await self.main_intent.create_room(
                alias_localpart=self.alias_localpart(), **creation
            )
        except MatrixRequestError as e:
            if e.errcode not in ("M_ROOM_IN_USE", "M_EXCLUSIVE", "M_INVALID_PARAM"):
                raise
            # The alias is taken (an earlier, lost room) or outside our namespace: a room
            # without an alias still works; the admin sees the reason in the log.
            self.log.warning(
                "Alias %s unavailable (%s), creating without", self.alias_localpart(), e
            )
            room_id = await self.main_intent.create_room(**creation)
        self.room_id = room_id
        self.name = name
        self.topic = topic
        self.encrypted = encrypted
        self.state = states.ACTIVE
        self.error = None
        await self.save()
        return room_id

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
