"""The crypto state store for end-to-bridge encryption (needs the e2be extra: python-olm)."""

from __future__ import annotations

from mautrix.bridge.crypto_state_store import PgCryptoStateStore
from mautrix.types import RoomID, UserID


class CryptoStateStore(PgCryptoStateStore):
    """mautrix's crypto state store, with the query that needs the portal table fixed."""

    async def find_shared_rooms(self, user_id: UserID) -> list[RoomID]:
        # mautrix assumes a portal.mxid column; ours is portal.room_id, which also makes the
        # unqualified room_id ambiguous. It runs whenever someone's devices change (also while
        # decrypting), so the broken query stopped commands in encrypted rooms.
        rows = await self.db.fetch(
            "SELECT mx_user_profile.room_id FROM mx_user_profile "
            "JOIN portal ON portal.room_id=mx_user_profile.room_id "
            "WHERE mx_user_profile.user_id=$1 AND portal.encrypted=true",
            user_id,
        )
        return [RoomID(row["room_id"]) for row in rows]
