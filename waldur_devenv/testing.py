"""Running the real bridge for tests, benchmarks and the demo: config files, the registration
from the bridge's own generator, and an in-process runner on the caller's event loop."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mautrix.util.config import yaml

from waldur_bridge.config import Config

BASE_CONFIG = "pkg://waldur_bridge/example-config.yaml"


def _set(data: Any, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[last] = value


def write_config(
    path: Path,
    *,
    homeserver_url: str,
    domain: str,
    as_port: int,
    waldur_url: str,
    waldur_token: str,
    database: str,
    as_token: str = "This value is generated when generating the registration",
    hs_token: str = "This value is generated when generating the registration",
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bridge config: the packaged example with the given values filled in."""
    config = Config(str(path), "", BASE_CONFIG)
    base = config.load_base()
    assert base is not None
    data = base._data
    values: dict[str, Any] = {
        "homeserver.address": homeserver_url,
        "homeserver.domain": domain,
        "appservice.address": f"http://127.0.0.1:{as_port}",
        "appservice.hostname": "127.0.0.1",
        "appservice.port": as_port,
        "appservice.database": database,
        "appservice.as_token": as_token,
        "appservice.hs_token": hs_token,
        "waldur.url": waldur_url,
        "waldur.token": waldur_token,
        "bridge.permissions": {"*": "user", f"@admin:{domain}": "admin"},
    }
    values.update(overrides or {})
    for key, value in values.items():
        _set(data, key, value)
    with open(path, "w") as stream:
        yaml.dump(data, stream)
    return path


def generate_registration(config_path: Path, registration_path: Path) -> dict[str, Any]:
    """What `waldur-bridge -g` does: new tokens saved into the config, registration written."""
    config = Config(str(config_path), str(registration_path), BASE_CONFIG)
    config._check_tokens = False
    config.load()
    config.update(save=False)
    config.generate_registration()
    config.save()
    assert config._registration is not None
    return dict(config._registration)


def make_registration(as_port: int, tokens: Mapping[str, str]) -> dict[str, Any]:
    """The integration fixture's hook: the bridge's own registration for a test homeserver."""
    with tempfile.TemporaryDirectory() as tmp:
        config_path = write_config(
            Path(tmp, "config.yaml"),
            homeserver_url="http://127.0.0.1:1",
            domain="localhost",
            as_port=as_port,
            waldur_url="http://127.0.0.1:1",
            waldur_token="unused",
            database="sqlite:unused.db",
        )
        registration = generate_registration(config_path, Path(tmp, "registration.yaml"))
    # Fixed tokens let every test's bridge config match the session's homeserver.
    registration["as_token"] = tokens["as_token"]
    registration["hs_token"] = tokens["hs_token"]
    return registration


class BridgeRunner:
    """The real bridge, started in-process on the running event loop.

    The same lifecycle as `waldur-bridge -c config.yaml` (config load and update, validation,
    database, appservice, homeserver checks, startup actions), minus the process-level parts
    (argument parsing from sys.argv, logging setup, signal handling).
    """

    def __init__(self, config_path: Path, *, no_update: bool = False) -> None:
        self.config_path = config_path
        self.no_update = no_update
        self.bridge: Any = None

    async def start(self) -> Any:
        from waldur_bridge.__main__ import WaldurBridge

        bridge = WaldurBridge()
        bridge.prepare_arg_parser()
        args = ["-c", str(self.config_path)]
        if self.no_update:
            args.append("-n")
        bridge.args = bridge.parser.parse_args(args)
        bridge.prepare_config()
        bridge.log = logging.getLogger("mau.init")
        bridge.check_config()
        bridge.loop = asyncio.get_running_loop()
        _fresh_getter_locks()
        bridge.prepare()
        bridge._stop_task = bridge.loop.create_future()
        await bridge.start()
        self.bridge = bridge
        return bridge

    async def stop(self) -> None:
        if self.bridge is None:
            return
        self.bridge.prepare_stop()
        await self.bridge.stop()
        self.bridge = None

    async def __aenter__(self) -> Any:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _fresh_getter_locks() -> None:
    """mautrix keeps the per-key locks of Portal/Puppet/User getters on the class. A lock that
    once had a waiter is bound to that event loop; each test has its own loop, so a bridge
    started in a later test gets fresh locks (a real process starts one bridge, one loop)."""
    from collections import defaultdict

    from waldur_bridge.portal import Portal
    from waldur_bridge.puppet import Puppet
    from waldur_bridge.user import User

    for cls in (Portal, Puppet, User):
        cls._async_get_locks = defaultdict(asyncio.Lock)
