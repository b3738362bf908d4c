"""Matrix users who talk to the bot."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from mautrix.bridge import BaseUser, async_getter_lock
from mautrix.types import RoomID, UserID

from .db import User as DBUser

if TYPE_CHECKING:
    from .__main__ import WaldurBridge
    from .portal import Portal
    from .puppet import Puppet


class User(DBUser, BaseUser):
    by_mxid: ClassVar[dict[str, User]] = {}
    bridge: ClassVar[WaldurBridge]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        BaseUser.__init__(self)
        self.is_whitelisted, self.is_admin, self.permission_level = (
            self.bridge.config.get_permissions(UserID(self.mxid))
        )

    @classmethod
    def init_cls(cls, bridge: WaldurBridge) -> None:
        cls.bridge = bridge
        cls.az = bridge.az
        cls.loop = bridge.loop
        cls.by_mxid = {}

    @classmethod
    @async_getter_lock
    async def get_by_mxid(cls, mxid: UserID, create: bool = True) -> User | None:
        try:
            return cls.by_mxid[mxid]
        except KeyError:
            pass
        user = await super().get_by_mxid(mxid)
        if user is None and create:
            user = cls(mxid=mxid)
            await user.save()
        if user is not None:
            cls.by_mxid[mxid] = user
        return user

    async def is_logged_in(self) -> bool:
        # "Logged in" for this bridge means: the bridge knows which Waldur user this is.
        return self.waldur_user_uuid is not None

    async def get_puppet(self) -> Puppet | None:
        from .puppet import Puppet

        if self.waldur_user_uuid is None:
            return None
        return Puppet.by_waldur_user.get(self.waldur_user_uuid)

    async def get_portal_with(self, puppet: Any, create: bool = True) -> Portal | None:
        return None  # There are no direct chats with puppets.

    async def set_management_room(self, room_id: RoomID) -> None:
        if self.management_room != room_id:
            self.management_room = room_id
            await self.save()
