"""Events from the homeserver: commands, membership changes, transaction de-duplication."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from mautrix.bridge import BaseMatrixHandler
from mautrix.types import (
    Event,
    EventID,
    EventType,
    MessageEventContent,
    RoomID,
    StateEvent,
    UserID,
)

from . import portal as po, user as u
from .commands.handler import WaldurCommandEvent, WaldurCommandProcessor
from .db import AppserviceTxn
from .web.transactions import usable_events

if TYPE_CHECKING:
    from .__main__ import WaldurBridge

# Commands that work bare (`!status`), besides `<prefix> status`; `!why` is for direct chats.
BARE_COMMANDS = frozenset({"help", "status", "orders", "members", "why"})
# A person's own commands in a direct chat with the bot (commands/personal.py), by `!word`.
PERSONAL_COMMANDS = {"rooms": "my-rooms", "join": "join"}
# Handled transaction IDs are kept this long; the homeserver retries for far less.
TXN_RETENTION_MS = 7 * 24 * 3600 * 1000


def transaction_key(txn_id: str, events: list[dict[str, Any]]) -> str:
    """Key a transaction by its ID and its events.

    Transaction IDs restart at 1 when a homeserver's database is rebuilt; keying by the events
    too means such a fresh transaction is never mistaken for an old one.
    """
    digest = hashlib.sha256(txn_id.encode())
    for event in events:
        digest.update(str(event.get("event_id", "")).encode())
    return digest.hexdigest()


class MatrixHandler(BaseMatrixHandler):
    bridge: WaldurBridge

    def __init__(self, bridge: WaldurBridge) -> None:
        bot = f"@{bridge.config['appservice.bot_username']}:{bridge.config['homeserver.domain']}"
        # Only the bot's own devices are skipped by end-to-bridge encryption: people log in as
        # their puppets (provisioning API), so puppet devices must be tracked like anyone's.
        self.user_id_prefix = bot
        self.user_id_suffix = ""
        processor = WaldurCommandProcessor(bridge=bridge, event_class=WaldurCommandEvent)
        super().__init__(command_processor=processor, bridge=bridge)
        if self.e2ee:
            # Imported only here: mautrix.crypto needs python-olm (the optional e2be extra).
            from .crypto_store import CryptoStateStore

            state_store = CryptoStateStore(self.e2ee.crypto_db, bridge.get_portal)
            self.e2ee.state_store = self.e2ee.crypto.state_store = state_store
        self.prefix = bridge.config["bridge.command_prefix"]
        self._wrap_transaction_handler()

    # region encryption

    async def init_encryption(self) -> None:
        if self.e2ee:
            # Synapse lets the appservice's sender act with the AS token without an account,
            # but the device that m.login.application_service creates needs one: without it
            # the new access token is refused at once (M_UNKNOWN_TOKEN on /keys/upload).
            # (Config validation makes sure appservice mode is on: see Config.validate.)
            await self.az.intent.ensure_registered()
        await super().init_encryption()

    # endregion
    # region transactions

    def _wrap_transaction_handler(self) -> None:
        original = self.az.handle_transaction

        async def handle_transaction(txn_id: str, *, events: list[dict[str, Any]], **kwargs):
            # Malformed items are skipped; the good ones around them are still handled.
            events = usable_events(txn_id, events)
            key = transaction_key(txn_id, events)
            if await AppserviceTxn.seen(key):
                self.log.debug("Transaction %s was handled before a restart, skipping", txn_id)
                return {}
            result = await original(txn_id, events=events, **kwargs)
            # Recorded only after the events were dispatched, unlike Waldur's own webhook,
            # which recorded first and lost events when processing failed.
            await AppserviceTxn.record(key, txn_id)
            return result

        self.az.handle_transaction = handle_transaction  # type: ignore[method-assign]

    async def prune_transactions(self) -> None:
        await AppserviceTxn.prune(TXN_RETENTION_MS)

    # endregion
    # region commands

    def is_command(self, message: MessageEventContent) -> tuple[bool, str]:
        text = (message.body or "").strip()
        prefix = self.prefix
        if text == prefix:
            return True, "help"
        if text.startswith(prefix + " "):
            # mautrix strips len(prefix)+1 characters blindly; strip the space explicitly.
            return True, text[len(prefix) + 1 :].lstrip()
        if text.startswith("!"):
            word = text[1:].split(maxsplit=1)[0].lower() if len(text) > 1 else ""
            if word in BARE_COMMANDS:
                return True, text[1:]
            if word in PERSONAL_COMMANDS:
                # `!rooms` is a person's own list; bare `rooms` stays the admins' listing.
                return True, PERSONAL_COMMANDS[word] + text[1 + len(word) :]
        return False, text

    async def allow_command(self, user: u.User) -> bool:  # type: ignore[override]
        # Everyone may ask; each command decides from Waldur roles whether to answer with data,
        # so that people without access get a clear "no access" instead of silence.
        return True

    async def allow_message(self, user: u.User) -> bool:  # type: ignore[override]
        return True

    async def _is_direct_chat(self, room_id: RoomID) -> tuple[bool, bool]:
        # The configured management room is shared by several admins; treat it like a direct
        # chat with the bot so bare commands work there.
        if self.bridge.management.is_management_room(room_id):
            return True, True
        # A portal is never a management room, even with two members left: skip mautrix's
        # member-list request on every command there.
        if await po.Portal.get_by_room(room_id) is not None:
            return False, True
        if self.bridge.sync.spaces.space_of_room(room_id) is not None:
            return False, True
        return await super()._is_direct_chat(room_id)

    async def send_bot_message(self, room_id: RoomID, content: MessageEventContent) -> EventID:
        """Send as the bot, encrypted when the room is encrypted and encryption is on."""
        event_type = EventType.ROOM_MESSAGE
        if self.e2ee and await self.az.state_store.is_encrypted(room_id):
            event_type, content = await self.e2ee.encrypt(room_id, event_type, content)
        return await self.az.intent.send_message_event(room_id, event_type, content)

    # endregion
    # region membership

    async def handle_leave(self, room_id: RoomID, user_id: UserID, event_id: EventID) -> None:
        portal = await po.Portal.get_by_room(room_id)
        if portal is not None:
            await self.bridge.sync.on_member_left(
                portal, user_id, voluntarily=True, how="left the room"
            )
        elif (space := self.bridge.sync.spaces.space_of_room(room_id)) is not None:
            await self.bridge.sync.spaces.on_member_left(
                space, user_id, voluntarily=True, how="left the space"
            )

    async def handle_reject(
        self, room_id: RoomID, user_id: UserID, reason: str, event_id: EventID
    ) -> None:
        # Turning an invite down is a "no" like leaving: not invited again (invariant 15).
        portal = await po.Portal.get_by_room(room_id)
        if portal is not None:
            await self.bridge.sync.on_member_left(
                portal, user_id, voluntarily=True, how="rejected the invite to"
            )
        elif (space := self.bridge.sync.spaces.space_of_room(room_id)) is not None:
            await self.bridge.sync.spaces.on_member_left(
                space, user_id, voluntarily=True, how="rejected the invite to"
            )

    async def handle_disinvite(
        self,
        room_id: RoomID,
        user_id: UserID,
        disinvited_by: UserID,
        reason: str,
        event_id: EventID,
    ) -> None:
        # A moderator withdrew an invite: like a kick, whoever is entitled is invited again.
        await self.handle_kick(room_id, user_id, disinvited_by, reason, event_id)

    async def handle_kick(
        self, room_id: RoomID, user_id: UserID, kicked_by: UserID, reason: str, event_id: EventID
    ) -> None:
        portal = await po.Portal.get_by_room(room_id)
        if portal is not None and kicked_by != self.az.bot_mxid:
            await self.bridge.sync.on_member_left(portal, user_id, voluntarily=False)
        space = self.bridge.sync.spaces.space_of_room(room_id)
        if space is not None and kicked_by != self.az.bot_mxid:
            await self.bridge.sync.spaces.on_member_left(space, user_id, voluntarily=False)

    async def handle_invite(
        self, room_id: RoomID, user_id: UserID, inviter: u.User, event: Event
    ) -> None:
        portal = await po.Portal.get_by_room(room_id)
        if portal is not None:
            await self.bridge.sync.on_member_invited(portal, user_id, inviter.mxid)
        elif (space := self.bridge.sync.spaces.space_of_room(room_id)) is not None:
            await self.bridge.sync.spaces.on_member_invited(space, user_id, inviter.mxid)

    async def handle_puppet_invite(
        self, room_id: RoomID, puppet: Any, invited_by: u.User, evt: Event
    ) -> None:
        # A moderator invited a puppet: remember that the bridge did not bring them in.
        portal = await po.Portal.get_by_room(room_id)
        if portal is not None:
            await self.bridge.sync.on_member_invited(portal, puppet.mxid, invited_by.mxid)
        elif (space := self.bridge.sync.spaces.space_of_room(room_id)) is not None:
            await self.bridge.sync.spaces.on_member_invited(space, puppet.mxid, invited_by.mxid)

    async def handle_state_event(self, evt: StateEvent) -> None:
        # What the bridge owns in its rooms goes back when changed by hand (sync/drift.py).
        await self.bridge.sync.drift.on_state_event(evt)

    # endregion
