"""Puppets: the bridge-controlled Matrix account of each Waldur user."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any, ClassVar

from mautrix.bridge import BasePuppet, async_getter_lock
from mautrix.types import UserID

from . import identity
from .db import Puppet as DBPuppet

if TYPE_CHECKING:
    from .__main__ import WaldurBridge


class Puppet(DBPuppet, BasePuppet):
    by_mxid: ClassVar[dict[str, Puppet]] = {}
    by_waldur_user: ClassVar[dict[str, Puppet]] = {}
    bridge: ClassVar[WaldurBridge]
    username_template: ClassVar[str]
    hs_domain: ClassVar[str]
    localpart_source: ClassVar[str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default_mxid = UserID(self.mxid)
        self.default_mxid_intent = self.az.intent.user(self.default_mxid)
        self.intent = self.default_mxid_intent
        self.custom_mxid = None
        self.access_token = None
        self.base_url = None
        self._profile_lock = asyncio.Lock()
        self.log = self.log.getChild(self.mxid)

    @classmethod
    def init_cls(cls, bridge: WaldurBridge) -> None:
        cls.bridge = bridge
        cls.az = bridge.az
        cls.loop = bridge.loop
        cls.mx = bridge.matrix
        cls.config = bridge.config
        cls.username_template = bridge.config["bridge.username_template"]
        cls.hs_domain = bridge.config["homeserver.domain"]
        cls.localpart_source = bridge.config["bridge.user_mapping.localpart_source"]
        cls.by_mxid = {}
        cls.by_waldur_user = {}

    @property
    def mxid(self) -> UserID:  # the DB column; BasePuppet's property would hide it
        return self.__dict__["mxid"]

    @mxid.setter
    def mxid(self, value: str) -> None:
        self.__dict__["mxid"] = value

    def _add_to_cache(self) -> None:
        self.by_mxid[self.mxid] = self
        self.by_waldur_user[self.waldur_user_uuid] = self

    @classmethod
    def is_puppet_mxid(cls, mxid: str) -> bool:
        return bool(re.match(identity.puppet_regex(cls.username_template, cls.hs_domain), mxid))

    @classmethod
    @async_getter_lock
    async def get_by_mxid(cls, mxid: UserID, create: bool = False) -> Puppet | None:
        try:
            return cls.by_mxid[mxid]
        except KeyError:
            pass
        puppet = await super().get_by_mxid(mxid)
        if puppet is not None:
            puppet._add_to_cache()
        return puppet

    @classmethod
    async def get_by_custom_mxid(cls, mxid: UserID) -> Puppet | None:
        return None  # Waldur users are not double-puppeted.

    @classmethod
    @async_getter_lock
    async def get_for_waldur_user(cls, user_uuid: str, username: str, displayname: str) -> Puppet:
        """The puppet of a Waldur user, created (with a collision-free ID) on first use."""
        try:
            return cls.by_waldur_user[user_uuid]
        except KeyError:
            pass
        puppet = await super().get_by_waldur_user(user_uuid)
        if puppet is None:
            mxid = identity.puppet_mxid(
                cls.username_template,
                cls.hs_domain,
                username=username,
                user_uuid=user_uuid,
                source=cls.localpart_source,
            )
            if await super().get_by_mxid(mxid) is not None:
                # Another Waldur user holds this ID already (a renamed account, say): the UUID
                # is unique, so fall back to it rather than share an account.
                mxid = identity.puppet_mxid(
                    cls.username_template, cls.hs_domain, username="", user_uuid=user_uuid
                )
            puppet = cls(waldur_user_uuid=user_uuid, mxid=mxid, username=username, displayname="")
            await puppet.save()
        puppet._add_to_cache()
        return puppet

    async def ensure_ready(self, displayname: str) -> None:
        """Register the account once and keep its display name in step with Waldur."""
        async with self._profile_lock:
            if not self.is_registered:
                await self.intent.ensure_registered()
                self.is_registered = True
                await self.save()
            if displayname and displayname != self.displayname:
                await self.intent.set_displayname(displayname, check_current=False)
                self.displayname = displayname
                await self.save()

    # The bridge has no remote network: a puppet is never a double puppet.
    async def save(self) -> None:  # type: ignore[override]
        await DBPuppet.save(self)

    @property
    def is_real_user(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Puppet({self.mxid!r}, waldur_user={self.waldur_user_uuid})"
