"""waldur-bridge: the Bridge subclass. Wiring only; the work happens in the modules it wires."""

from __future__ import annotations

import sys
from typing import Any

from mautrix.bridge import Bridge
from mautrix.types import RoomID, UserID

from . import __version__
from .commands import admin as _admin, room as _room  # noqa: F401  (registers handlers)
from .commands.handler import RateLimiter, remove_builtins
from .config import Config, ConfigError
from .db import init as init_db, upgrade_table
from .management import ManagementRoom
from .matrix import MatrixHandler
from .portal import Portal
from .puppet import Puppet
from .sync.service import SyncService
from .user import User
from .waldur import WaldurClient
from .web import WebhookReceiver, mount_web


class WaldurBridge(Bridge):
    module = "waldur_bridge"
    name = "waldur-matrix-bridge"
    command = "waldur-bridge"
    description = "A Matrix room per Waldur project, kept in step with the project's team."
    repo_url = "https://github.com/waldur/waldur-matrix-bridge"
    version = __version__
    markdown_version = __version__
    config_class = Config
    matrix_class = MatrixHandler
    upgrade_table = upgrade_table

    config: Config
    matrix: MatrixHandler
    waldur: WaldurClient
    sync: SyncService
    management: ManagementRoom
    webhook: WebhookReceiver | None = None
    room_command_limiter: RateLimiter

    def prepare_arg_parser(self) -> None:
        super().prepare_arg_parser()
        self.parser.add_argument(
            "--version", action="version", version=f"{self.name} {self.version}"
        )

    def prepare_config(self) -> None:
        try:
            super().prepare_config()
        except FileNotFoundError:
            print(
                f"Config file {self.args.config!r} not found. Copy example-config.yaml from the "
                "package (or the repository) there and edit it.",
                file=sys.stderr,
            )
            sys.exit(11)
        except Exception as e:  # ruamel's parse errors have no common base worth naming
            print(f"Could not read config file {self.args.config!r}: {e}", file=sys.stderr)
            sys.exit(11)

    def check_config(self) -> None:
        try:
            self.config.validate()
        except ConfigError as e:
            for problem in e.problems:
                self.log.fatal("Configuration error: %s", problem)
            sys.exit(11)

    def prepare_db(self) -> None:
        super().prepare_db()
        init_db(self.db)

    def prepare_bridge(self) -> None:
        super().prepare_bridge()
        cfg = self.config
        self.waldur = WaldurClient(
            cfg["waldur.url"],
            cfg["waldur.token"],
            timeout=cfg["waldur.timeout"],
            retry_attempts=cfg["waldur.retry.attempts"],
            backoff_initial=cfg["waldur.retry.backoff_initial"],
            backoff_max=cfg["waldur.retry.backoff_max"],
            page_size=cfg["waldur.page_size"],
            user_agent=f"{self.name}/{self.version}",
        )
        User.init_cls(self)
        Puppet.init_cls(self)
        Portal.init_cls(self)
        self.room_command_limiter = RateLimiter(cfg["bridge.commands.rate_limit_per_minute"])
        self.sync = SyncService(self)
        self.management = ManagementRoom(self)
        mount_web(self)

    async def start(self) -> None:
        await super().start()
        await self.matrix.prune_transactions()
        try:
            await self.management.ensure()
        except Exception as e:
            self.log.warning("Could not set up the management room: %s", e)
        await self.sync.start()

    async def notify_admins(self, text: str) -> None:
        await self.management.notify(text)

    def prepare_stop(self) -> None:
        self.add_shutdown_actions(self.sync.stop(), self.waldur.close())

    async def get_user(self, user_id: UserID, create: bool = True) -> User | None:
        if user_id == self.az.bot_mxid:
            return None
        return await User.get_by_mxid(user_id, create=create)

    async def get_portal(self, room_id: RoomID) -> Portal | None:
        return await Portal.get_by_room(room_id)

    async def get_puppet(self, user_id: UserID, create: bool = False) -> Puppet | None:
        return await Puppet.get_by_mxid(user_id)

    async def get_double_puppet(self, user_id: UserID) -> None:
        return None

    def is_bridge_ghost(self, user_id: UserID) -> bool:
        # Puppets are driven by people through the provisioning login, so their messages are
        # real commands; only the bot's own events are ignored (by mautrix, by sender).
        return False

    async def count_logged_in_users(self) -> int:
        return len(await User.all_linked())

    async def manhole_global_namespace(self, user_id: UserID) -> dict[str, Any]:
        return {
            **await super().manhole_global_namespace(user_id),
            "User": User,
            "Portal": Portal,
            "Puppet": Puppet,
        }


remove_builtins()


def main() -> None:
    WaldurBridge().run()


if __name__ == "__main__":
    main()
