"""Device hygiene of puppets: every provisioning login makes a device, so old ones are pruned.

Puppets are the bridge's accounts and only the provisioning login gives them devices (the
bridge acts as them through the appservice token, which needs none), so every device of a
puppet is a provisioning device. After each login the puppet keeps at most ``max_devices``
(the most recently used; the new one always stays), and devices unused for ``max_idle_days``
go. Deleting a puppet's devices needs no password: the appservice acts as the puppet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mautrix.api import Method, Path
from mautrix.appservice import IntentAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError
from mautrix.types import UserID

log = logging.getLogger("waldur.web.devices")

DAY_MS = 24 * 3600 * 1000


def devices_to_prune(
    devices: Sequence[Mapping[str, Any]],
    *,
    keep: str,
    max_devices: int,
    max_idle_ms: int,
    now_ms: int,
) -> list[str]:
    """Device IDs to delete: unused for longer than ``max_idle_ms`` (0: no idle limit), then the
    least recently used beyond ``max_devices`` (0: no count limit). ``keep`` always stays."""

    def last_used(device: Mapping[str, Any]) -> int:
        seen = device.get("last_seen_ts")
        # Homeservers record use in batches, so a device made moments ago may show none yet:
        # count it as new rather than as never used.
        return seen if isinstance(seen, int) and not isinstance(seen, bool) else now_ms

    others = [d for d in devices if isinstance(d.get("device_id"), str) and d["device_id"] != keep]
    others.sort(key=last_used, reverse=True)
    prune: list[str] = []
    kept = 1 if any(d.get("device_id") == keep for d in devices) else 0
    for device in others:
        idle = max_idle_ms and now_ms - last_used(device) > max_idle_ms
        over = max_devices and kept >= max_devices
        if idle or over:
            prune.append(device["device_id"])
        else:
            kept += 1
    return prune


class DeviceHygiene:
    def __init__(
        self,
        intent_of: Callable[[UserID], IntentAPI],
        *,
        max_devices: int,
        max_idle_days: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.intent_of = intent_of
        self.max_devices = max(0, int(max_devices))
        self.max_idle_ms = max(0, int(max_idle_days * DAY_MS))
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self.max_devices or self.max_idle_ms)

    async def prune(self, mxid: str, keep: str) -> list[str]:
        """Delete the puppet's surplus and idle devices; failures are logged, never raised (a
        login that worked must not fail because tidying up did not)."""
        if not self.enabled:
            return []
        api = self.intent_of(UserID(mxid)).api
        try:
            data = await api.request(Method.GET, Path.v3.devices)
            devices = data.get("devices", []) if isinstance(data, dict) else []
            doomed = devices_to_prune(
                [d for d in devices if isinstance(d, dict)],
                keep=keep,
                max_devices=self.max_devices,
                max_idle_ms=self.max_idle_ms,
                now_ms=int(self.clock() * 1000),
            )
            if doomed:
                await api.request(Method.POST, Path.v3.delete_devices, {"devices": doomed})
        except (MatrixRequestError, MatrixConnectionError) as e:
            log.warning("Could not prune the old devices of %s: %s", mxid, e)
            return []
        if doomed:
            log.info("Removed %d old provisioning device(s) of %s", len(doomed), mxid)
        return doomed


__all__ = ["DeviceHygiene", "devices_to_prune"]
