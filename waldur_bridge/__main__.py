"""waldur-bridge: the Bridge subclass. Wiring only; the work happens in the modules it wires."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import stat
import sys
from importlib import resources
from typing import Any

from mautrix.bridge import Bridge
from mautrix.types import RoomID, UserID

from . import __version__, logs, startup
from .commands import (  # noqa: F401  (registers handlers)
    admin as _admin,
    personal as _personal,
    room as _room,
    spaces as _spaces,
)
from .commands.handler import RateLimiter, remove_builtins
from .config import Config, ConfigError, EmptyConfigError, yaml_spelling
from .db import init as init_db, upgrade_table
from .leadership import (
    EXIT_SQLITE_IN_USE,
    AnotherInstance,
    Leadership,
    install as install_leadership,
)
from .management import ManagementRoom
from .matrix import MatrixHandler
from .portal import Portal
from .puppet import Puppet
from .room_versions import RoomVersions
from .sync.service import SyncService
from .user import User
from .waldur import WaldurClient
from .waldur_access import WaldurAccess
from .web import WebhookReceiver, mount_web
from .web.signin import SigninService

# Longest clean stop before the process exits anyway (an operator's SIGTERM must work).
STOP_TIMEOUT = 30


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
    waldur_access: WaldurAccess
    sync: SyncService
    management: ManagementRoom
    webhook: WebhookReceiver | None = None
    signin: SigninService | None = None
    leadership: Leadership
    room_command_limiter: RateLimiter
    room_versions: RoomVersions
    # Set when the homeserver's ping of this instance already succeeded during start-up.
    reachable_ping_ms: int | None = None

    def prepare_arg_parser(self) -> None:
        super().prepare_arg_parser()
        self.parser.add_argument(
            "--version", action="version", version=f"{self.name} {self.version}"
        )
        self.parser.add_argument(
            "--render-registration",
            metavar="<vars.yaml>",
            help="print the registration for a deployment's variables (see "
            "deploy/registration-vars.yaml), and quit; needs no config file",
        )
        self.parser.add_argument(
            "--show-defaults",
            action="store_true",
            help="list the settings the config file leaves at their defaults, and quit",
        )

    def prepare_config(self) -> None:
        if self.args.render_registration:
            from . import registration_render

            sys.exit(registration_render.main(self.args.render_registration))
        try:
            super().prepare_config()
        except FileNotFoundError:
            print(
                f"Config file {self.args.config!r} not found. Start from the packaged example: "
                f"{self._copy_example_command()} and edit it.",
                file=sys.stderr,
            )
            sys.exit(startup.EXIT_CONFIG)
        except EmptyConfigError as e:
            print(
                f"Config file {self.args.config!r} {e}. Start from the packaged example: "
                f"{self._copy_example_command()} and edit it.",
                file=sys.stderr,
            )
            sys.exit(startup.EXIT_CONFIG)
        except Exception as e:  # ruamel's parse errors have no common base worth naming
            print(f"Could not read config file {self.args.config!r}: {e}", file=sys.stderr)
            sys.exit(startup.EXIT_CONFIG)
        if self.args.show_defaults:
            self._show_defaults()
            sys.exit(0)

    def _copy_example_command(self) -> str:
        example = resources.files(self.module) / "example-config.yaml"
        return f"cp {shlex.quote(str(example))} {shlex.quote(self.args.config)}"

    def _show_defaults(self) -> None:
        """The keys the file does not set, each with the packaged default it runs with."""
        base = self.config.load_base()
        keys = self.config.added_keys
        print(f"{len(keys)} keys are not in {self.args.config} and use their defaults:")
        for key in keys:
            print(f"  {key}: {yaml_spelling(base[key] if base is not None else None)}")

    def prepare_log(self) -> None:
        super().prepare_log()
        logs.configure(self.config)

    def generate_registration(self) -> None:
        super().generate_registration()
        config_path = self.config.path
        try:
            mode = stat.S_IMODE(os.stat(config_path).st_mode)
        except OSError:
            mode = 0
        if mode & 0o044:
            print(
                f"Warning: {config_path} holds the appservice tokens and waldur.token and is "
                f"readable by other users (mode {mode:04o}): chmod 600 {shlex.quote(config_path)}"
            )
        print(
            f"Next: install {self.config.registration_path} in the homeserver. Synapse: list it "
            "under app_service_config_files in homeserver.yaml and restart Synapse. Conduit or "
            "Tuwunel: send `!admin appservices register` followed by the file's contents to the "
            "admin room. Then start the bridge: "
            f"waldur-bridge -c {shlex.quote(config_path)}"
        )

    def check_config(self) -> None:
        try:
            self.config.validate()
        except ConfigError as e:
            for problem in e.problems:
                self.log.fatal("Configuration error: %s", problem)
            sys.exit(11)
        startup.save_config(self.config)

    def _log_db_error(self, e: Exception) -> None:
        startup.database_failed(self, e)

    def prepare_db(self) -> None:
        startup.check_database_scheme(self.config)
        super().prepare_db()
        init_db(self.db)

    def prepare_bridge(self) -> None:
        super().prepare_bridge()
        startup.install(self)
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
        notify = self.notify_admins if cfg["bridge.management_room"] else None
        self.waldur_access = WaldurAccess(cfg["waldur.url"], notify)
        self.waldur.on_outcome = self.waldur_access.observe
        User.init_cls(self)
        Puppet.init_cls(self)
        Portal.init_cls(self)
        self.room_command_limiter = RateLimiter(cfg["bridge.commands.rate_limit_per_minute"])
        self.room_versions = RoomVersions(self.az, cfg["bridge.portals.room_version"])
        self.sync = SyncService(self)
        self.management = ManagementRoom(self)
        mount_web(self)
        self.leadership = install_leadership(self)

    async def start_db(self) -> None:
        try:
            async with self.leadership.claim_database():
                await super().start_db()
        except AnotherInstance as e:
            self.log.critical("%s", e)
            sys.exit(EXIT_SQLITE_IN_USE)
        except Exception as e:
            # The leadership's own connection failed before mautrix's database start could
            # report it: the same one line (no traceback, no password).
            startup.database_failed(self, e)

    async def start(self) -> None:
        await super().start()
        await self.matrix.prune_transactions()
        if self.signin is not None:
            # The signing key exists from the first start on (made here once).
            await self.signin.start()
        try:
            await self.management.ensure()
        except Exception as e:
            self.log.warning("Could not set up the management room: %s", e)
        await self.sync.start()

    async def notify_admins(self, text: str) -> None:
        await self.management.notify(text)

    async def stop(self) -> None:
        # Handover: stop taking work at once; the lock is freed after the work in progress.
        self.leadership.stand_down()
        self.az.ready = False
        runner = self.az.runner
        if runner is not None:
            # Synapse keeps its transaction connection open; aiohttp would wait 60 s for it.
            runner._shutdown_timeout = 5.0
        # The work in progress finishes while the homeserver session is still open: mautrix's
        # stop closes it first, and a write on a closed session is retried for minutes.
        await self.sync.stop()
        await super().stop()
        await self.leadership.release()

    def start_prometheus(self) -> None:
        try:
            super().start_prometheus()
        except (OSError, OverflowError) as e:
            startup.metrics_failed(
                self.config["metrics.hostname"], self.config["metrics.listen_port"], e
            )

    def prepare_stop(self) -> None:
        self.add_shutdown_actions(self.waldur.close())

    # region process lifecycle

    def _run(self) -> None:
        """Run until SIGTERM/SIGINT, then stop cleanly.

        mautrix turns signals into KeyboardInterrupt raised wherever the main thread is; landing
        inside a database call, that leaves the pool half-closed and the shutdown hangs. Here a
        signal only resolves a future (or cancels a start still in progress), and the stop that
        follows is bounded in time.
        """
        loop = self.loop
        self._stop_task = loop.create_future()
        start_task = self._start_task = loop.create_task(self.start())

        def on_signal(signum: int) -> None:
            if self._stop_task.done():
                self.log.warning(
                    "Second %s: exiting without a clean stop", signal.Signals(signum).name
                )
                os._exit(1)
            self.log.info("%s received, stopping", signal.Signals(signum).name)
            if not start_task.done():
                start_task.cancel()
            self._stop_task.set_result(0)

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        exit_code = 0
        try:
            try:
                loop.run_until_complete(start_task)
                self.log.info("Startup complete, now running")
            except asyncio.CancelledError:
                self.log.info("Stopped during startup")
            exit_code = loop.run_until_complete(self._stop_task)
        except SystemExit:
            loop.run_until_complete(self.system_exit())
            raise
        except Exception:
            self.log.critical("Unexpected error in main event loop", exc_info=True)
            loop.run_until_complete(self.system_exit())
            sys.exit(2)
        self.prepare_stop()
        try:
            loop.run_until_complete(asyncio.wait_for(self.stop(), STOP_TIMEOUT))
        except TimeoutError:
            self.log.error("Stopping took over %d s; exiting anyway", STOP_TIMEOUT)
            os._exit(1)
        self.prepare_shutdown()
        loop.close()
        self.log.info("Everything stopped, shutting down")
        sys.exit(exit_code)

    # endregion

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
