"""Which room version new rooms get: the configured one, or with `auto` the homeserver's default
from /capabilities (what Synapse and Tuwunel users expect; Tuwunel refuses versions it marks
unstable, so pinning one can fail there)."""

from __future__ import annotations

import logging

from mautrix.api import Method, Path
from mautrix.appservice import AppService

log = logging.getLogger("waldur.room_versions")

AUTO = "auto"


class RoomVersions:
    def __init__(self, az: AppService, setting: str) -> None:
        self.az = az
        self.setting = str(setting)
        self._default: str | None = None

    async def for_new_room(self) -> str:
        """The version to create a room with. Raises when `auto` cannot ask the homeserver
        (the creation is retried later, like any failed homeserver call)."""
        if self.setting != AUTO:
            return self.setting
        if self._default is None:
            caps = await self.az.intent.api.request(Method.GET, Path.v3.capabilities)
            versions = (caps.get("capabilities") or {}).get("m.room_versions") or {}
            default = versions.get("default")
            available = versions.get("available") or {}
            if not isinstance(default, str) or not default:
                # The spec makes the capability optional; "1" is what it says to assume then,
                # which no bridge wants: let the operator pin one instead.
                raise RuntimeError(
                    "the homeserver's /capabilities names no default room version; set "
                    'bridge.portals.room_version to one it supports (for example "11")'
                )
            if available.get(default) not in (None, "stable"):
                log.warning(
                    "The homeserver's default room version %s is marked %s",
                    default,
                    available.get(default),
                )
            self._default = default
            log.info("Room version auto: the homeserver's default is %s", default)
        return self._default
