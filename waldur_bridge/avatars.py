"""Room avatars from Waldur's `image` URLs: uploaded once, replaced only when the picture
changes (a hash of its bytes), removed when Waldur's image is removed."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from typing import Protocol

from mautrix.appservice import AppService
from mautrix.types import EventType, RoomID

from .waldur import WaldurClient, WaldurError

log = logging.getLogger("waldur.avatars")

MAX_IMAGE_BYTES = 5 * 1024 * 1024


class AvatarRecord(Protocol):
    """What the bridge remembers of a room's avatar (a portal's or a space's row)."""

    avatar_url: str | None
    avatar_hash: str | None
    avatar_mxc: str | None


class Avatars:
    def __init__(
        self, waldur: WaldurClient, az: AppService, allowed_hosts: Collection[str] = ()
    ) -> None:
        self.waldur = waldur
        self.az = az
        self.allowed_hosts = tuple(allowed_hosts)
        self.uploads = 0
        # Image URLs that failed, so each problem is logged once, not every sweep.
        self._reported: set[str] = set()

    async def sync(self, room_id: str, image_url: str | None, record: AvatarRecord) -> bool:
        """Make the room's avatar follow `image_url`. Returns True when `record` changed.

        A URL already handled costs nothing: no download, no homeserver request. A new URL is
        downloaded; the same bytes under a new URL are not uploaded again.
        """
        room = RoomID(room_id)
        if not image_url:
            if record.avatar_mxc is None and record.avatar_url is None:
                return False
            await self.az.intent.send_state_event(room, EventType.ROOM_AVATAR, {})
            log.info("Removed the avatar of %s (the image was removed in Waldur)", room_id)
            record.avatar_url = record.avatar_hash = record.avatar_mxc = None
            return True
        if image_url == record.avatar_url and record.avatar_mxc:
            return False
        try:
            data, content_type = await self.waldur.get_image(
                image_url, MAX_IMAGE_BYTES, allowed_hosts=self.allowed_hosts
            )
        except WaldurError as e:
            if image_url not in self._reported:
                self._reported.add(image_url)
                log.warning(
                    "Could not fetch the image for %s from Waldur (%s); the room keeps its "
                    "avatar and the bridge tries again on the next sweep",
                    room_id,
                    e,
                )
            return False
        self._reported.discard(image_url)
        digest = hashlib.sha256(data).hexdigest()
        if digest == record.avatar_hash and record.avatar_mxc:
            record.avatar_url = image_url
            return True
        extension = content_type.rsplit("/", 1)[-1]
        mxc = await self.az.intent.upload_media(
            data, mime_type=content_type, filename=f"avatar.{extension}"
        )
        self.uploads += 1
        await self.az.intent.send_state_event(room, EventType.ROOM_AVATAR, {"url": mxc})
        log.info("Set the avatar of %s from Waldur's image", room_id)
        record.avatar_url, record.avatar_hash, record.avatar_mxc = image_url, digest, str(mxc)
        return True
