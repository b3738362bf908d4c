"""The space of one Waldur organization: a Matrix room with `type: m.space` whose children are
the organization's portals. Shaped like a portal where the reconciler and executor need it."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from mautrix.appservice import AppService, IntentAPI

from .db import CustomerSpace, SpaceMember
from .db.space import ACTIVE, CLOSED

if TYPE_CHECKING:
    from .__main__ import WaldurBridge

# The state event that ties a space to its organization, like org.waldur.project in portals.
CUSTOMER_STATE_EVENT = "org.waldur.customer"


def space_key(customer_uuid: str) -> str:
    """The key of a space in the audit log and its member records."""
    return f"space:{customer_uuid}"


class Space:
    # The executor keeps member records of spaces in their own table.
    member_class: ClassVar[type[SpaceMember]] = SpaceMember

    def __init__(self, row: CustomerSpace, bridge: WaldurBridge) -> None:
        self.row = row
        self.bridge = bridge

    @property
    def customer_uuid(self) -> str:
        return self.row.customer_uuid

    @property
    def project_uuid(self) -> str:
        return space_key(self.row.customer_uuid)

    @property
    def room_id(self) -> str:
        return self.row.room_id

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def topic(self) -> str:
        return self.row.topic

    @property
    def is_active(self) -> bool:
        return self.row.state == ACTIVE

    @property
    def is_closed(self) -> bool:
        return self.row.state == CLOSED

    @property
    def az(self) -> AppService:
        return self.bridge.az

    @property
    def main_intent(self) -> IntentAPI:
        return self.bridge.az.intent

    @property
    def bridge_info_state_key(self) -> str:
        return f"waldur://customer/{self.row.customer_uuid}"

    async def set_name(self, name: str) -> None:
        await self.main_intent.set_room_name(self.room_id, name)
        self.row.name = name
        await self.row.save()

    async def set_topic(self, topic: str) -> None:
        await self.main_intent.set_room_topic(self.room_id, topic)
        self.row.topic = topic
        await self.row.save()
