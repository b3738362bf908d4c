"""Helpers for integration tests: run the real bridge against the session Synapse and the
Waldur simulator, and look at rooms through the homeserver's own API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from waldur_bridge.sync.changes import WEBHOOK_EVENTS
from waldur_devenv.synapse import OIDC_CLIENT_ID, AppserviceHomeserver, oidc_callback
from waldur_devenv.testing import BridgeRunner, write_config
from waldur_simulator import WaldurSimulator

FAST_FEEDS = {
    # The tests drive changes through web hooks and explicit sweeps; the timers stay out of
    # the way unless a test turns them on.
    "waldur.sweep_interval": 3600,
    "waldur.events.interval": 3600,
    "waldur.retry.attempts": 1,
    "waldur.retry.backoff_initial": 0.05,
    "waldur.retry.backoff_max": 0.1,
    "waldur.timeout": 5,
    "bridge.portals.create": "all",
    # Shorter than the default 1.5 s so the suite stays quick; still longer than the gap
    # between a revoke's and a grant's web hooks.
    "bridge.membership.settle_seconds": 0.5,
    "bridge.membership.settle_max_wait": 2.0,
}


# The session Synapse's client secret for the bridge's sign-in provider (conftest).
OIDC_CLIENT_SECRET = "waldur-test-oidc-client-secret"


def signin_overrides(hs: AppserviceHomeserver, **extra: Any) -> dict[str, Any]:
    """Bridge config that turns on the sign-in provider the session Synapse is set up for."""
    return {
        "bridge.signin.enabled": True,
        "bridge.signin.public_url": f"http://127.0.0.1:{hs.as_port}",
        "bridge.signin.site_name": "Acme Waldur",
        "bridge.signin.clients": [
            {
                "client_id": OIDC_CLIENT_ID,
                "client_secret": OIDC_CLIENT_SECRET,
                "redirect_uris": [oidc_callback(hs.url)],
            }
        ],
        **extra,
    }


class BridgeEnv:
    """One bridge (started and stopped on demand) with its own database in tmp_path."""

    def __init__(self, hs: AppserviceHomeserver, sim: WaldurSimulator, tmp_path: Path) -> None:
        self.hs = hs
        self.sim = sim
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "config.yaml"
        self.runner: BridgeRunner | None = None
        self.bridge: Any = None
        self._session = aiohttp.ClientSession()

    def write_config(self, **overrides: Any) -> Path:
        return write_config(
            self.config_path,
            homeserver_url=self.hs.url,
            domain=self.hs.server_name,
            as_port=self.hs.as_port,
            waldur_url=self.sim.url,
            waldur_token=self.sim.staff_token,
            database=f"sqlite:{self.tmp_path / 'bridge.db'}",
            as_token=self.hs.as_token,
            hs_token=self.hs.hs_token,
            overrides={**FAST_FEEDS, **overrides},
        )

    async def start(self, **overrides: Any) -> Any:
        if not self.config_path.exists() or overrides:
            self.write_config(**overrides)
        self.runner = BridgeRunner(self.config_path)
        self.bridge = await self.runner.start()
        return self.bridge

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        self.runner = None
        self.bridge = None

    async def close(self) -> None:
        await self.stop()
        await self._session.close()

    # region driving the bridge

    async def register_webhook(self) -> str:
        config = self.bridge.config
        url = f"http://127.0.0.1:{self.hs.as_port}{config.webhook_path}"
        self.sim.add_hook(url, event_types=sorted(WEBHOOK_EVENTS))
        return url

    async def sweep(self, timeout: float = 60) -> None:
        await self.bridge.sync.sweep()
        await self.settle(timeout)

    async def settle(self, timeout: float = 30) -> None:
        await self.sim.drain_hooks()
        await self.bridge.sync.wait_idle(timeout)

    async def portal_room(self, project_uuid: str, timeout: float = 20) -> str:
        from waldur_bridge.portal import Portal

        async def room() -> str | None:
            portal = await Portal.get_by_project(project_uuid)
            return portal.room_id if portal is not None and portal.room_id else None

        return await wait_for(room, timeout, f"portal of {project_uuid}")

    # endregion
    # region looking at the homeserver (as the bot, through the AS token)

    async def hs_get(self, path: str) -> Any:
        url = f"{self.hs.url}/_matrix/client/v3{path}"
        headers = {"Authorization": f"Bearer {self.hs.as_token}"}
        async with self._session.get(url, headers=headers) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def members(self, room_id: str) -> dict[str, str]:
        """user ID -> membership for everyone with a member event in the room."""
        data = await self.hs_get(f"/rooms/{room_id}/members")
        return {e["state_key"]: e["content"]["membership"] for e in data["chunk"]}

    async def in_room(self, room_id: str) -> set[str]:
        return {u for u, m in (await self.members(room_id)).items() if m in ("join", "invite")}

    async def power_levels(self, room_id: str) -> dict[str, Any]:
        return await self.hs_get(f"/rooms/{room_id}/state/m.room.power_levels")

    async def state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any]:
        return await self.hs_get(f"/rooms/{room_id}/state/{event_type}/{state_key}")

    def puppet(self, username: str) -> str:
        return f"@waldur_{username}:{self.hs.server_name}"

    @property
    def bot(self) -> str:
        return f"@waldurbot:{self.hs.server_name}"

    # endregion


async def ping(bridge: Any) -> int:
    """The homeserver pings the bridge (raises when it cannot); the round trip in ms."""
    from waldur_bridge.startup import ping_bridge

    return await ping_bridge(bridge.az.intent, bridge.az.id)


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 20, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
