"""The admins' management room: found by ID or alias, created when missing, used for reports."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import RoomAlias, RoomCreatePreset, RoomID, UserID
from mautrix.util import markdown

from .db import BridgeState

if TYPE_CHECKING:
    from .__main__ import WaldurBridge

log = logging.getLogger("waldur.management")


class ManagementRoom:
    def __init__(self, bridge: WaldurBridge) -> None:
        self.bridge = bridge
        self.setting: str | None = bridge.config["bridge.management_room"]
        self.room_id: RoomID | None = None

    def admins(self) -> list[UserID]:
        permissions = self.bridge.config["bridge.permissions"] or {}
        return [UserID(k) for k, v in permissions.items() if v == "admin" and k.startswith("@")]

    async def ensure(self) -> RoomID | None:
        """Resolve the configured room; create it (alias) and invite the admins if missing."""
        if not self.setting:
            return None
        if self.room_id:
            return self.room_id
        intent = self.bridge.az.intent
        if self.setting.startswith("!"):
            self.room_id = RoomID(self.setting)
            await intent.ensure_joined(self.room_id)
            return self.room_id
        alias = RoomAlias(self.setting)
        try:
            self.room_id = (await intent.resolve_room_alias(alias)).room_id
            await intent.ensure_joined(self.room_id)
            return self.room_id
        except MNotFound:
            pass
        # An alias-less room created earlier (see below) is found again by its stored ID.
        stored = await BridgeState.get(self._state_key)
        if stored:
            self.room_id = RoomID(stored)
            await intent.ensure_joined(self.room_id)
            return self.room_id
        creation = {
            "preset": RoomCreatePreset.PRIVATE,
            "name": "Waldur bridge management",
            "topic": "Admin commands for the Waldur bridge. Send `help`.",
            "invitees": self.admins(),
        }
        localpart = alias[1:].split(":", 1)[0]
        given: RoomAlias | None = alias
        try:
            self.room_id = await intent.create_room(alias_localpart=localpart, **creation)
        except MatrixRequestError as e:
            if e.errcode not in ("M_EXCLUSIVE", "M_ROOM_IN_USE", "M_FORBIDDEN"):
                raise
            # Homeservers refuse appservice aliases outside its namespace: the room still
            # works without one; admins find it by the invite.
            log.warning(
                "Could not give the management room the alias %s (%s); pick one inside the "
                "alias namespace (bridge.alias_template) to have it. Creating it without.",
                alias,
                e.message,
            )
            self.room_id = await intent.create_room(**creation)
            given = None
        await BridgeState.set(self._state_key, self.room_id)
        if given is not None:
            log.info("Created the management room %s with the alias %s", self.room_id, given)
        else:
            log.info(
                "Created the management room %s without an alias (admins find it by the invite)",
                self.room_id,
            )
        return self.room_id

    @property
    def _state_key(self) -> str:
        return f"management_room:{self.setting}"

    def is_management_room(self, room_id: RoomID) -> bool:
        return self.room_id is not None and room_id == self.room_id

    async def notify(self, text: str) -> None:
        """Post a report; without a management room it only goes to the log."""
        try:
            room_id = await self.ensure()
        except MatrixRequestError as e:
            log.warning("Management room unavailable (%s); report: %s", e, text)
            return
        if room_id is None:
            log.info("Report (no management room configured): %s", text)
            return
        await self.bridge.az.intent.send_notice(room_id, text, html=markdown.render(text))
