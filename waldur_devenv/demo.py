"""`make demo`: the bridge for real, on this machine, with nothing to set up by hand.

    python -m waldur_devenv.demo [--dir demo] [--check] [--keep]

Starts, in a work directory (``demo/`` by default, wiped first unless ``--keep``):

* the Waldur simulator (generation "current", seeded with ``seed_demo``: two organizations,
  four projects, six people), on port 8080 unless that is taken;
* a local Synapse (server name ``localhost``) on port 8008 unless that is taken, with the
  bridge's registration written by the real CLI (``waldur-bridge -g``) and two real accounts,
  ``admin``/``admin`` (bridge admin) and ``alice``/``alice``;
* the bridge itself as a subprocess (``waldur-bridge -c <dir>/config.yaml``, SQLite database),
  logging to ``<dir>/bridge.log``; it registers its own web hook in the simulator.

Then it prints what to look at and runs until Ctrl-C. ``--check`` instead waits until every
seeded project has its room with its team, tries one grant and one revoke through the
simulator's REST API, prints a JSON summary and exits (0 when everything was as expected).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from mautrix.util.config import yaml

from waldur_bridge.identity import puppet_mxid
from waldur_simulator import WaldurSimulator, seed_demo
from waldur_simulator.seed import demo_password

from . import signin_flow
from .synapse import (
    OIDC_CLIENT_ID,
    LocalSynapse,
    SynapseNotInstalled,
    SynapseStartError,
    find_synapse_python,
    free_port,
    oidc_callback,
    oidc_provider_config,
    require_oidc,
)
from .testing import write_config

SERVER_NAME = "localhost"
DEFAULT_WALDUR_PORT = 8080
DEFAULT_SYNAPSE_PORT = 8008
DEFAULT_BRIDGE_PORT = 29334
# In the bridge's exclusive alias namespace (#waldur_.*): Synapse lets an appservice create
# aliases only there.
MANAGEMENT_ROOM = f"#waldur_admins:{SERVER_NAME}"
ADMIN = ("admin", "admin")
ALICE = ("alice", "alice")
# Deterministic UUIDs and tokens: the same project and user UUIDs on every run, so commands
# copied from an earlier run (or the README) keep working, and --keep finds the same projects.
SIMULATOR_SEED = 7
# The organization roles that put people into project rooms (the bridge's default).
ORGANIZATION_ROLES = ("CUSTOMER.OWNER",)
MARKER = ".waldur-bridge-demo"
BRIDGE_STOP_TIMEOUT = 20.0


class DemoError(RuntimeError):
    """Something did not come up; the message says what and where to look."""


def emit(text: str, stream_name: str = "stdout") -> None:
    """Print without ever failing: once the reader is gone (`make demo | tee log`, then
    Ctrl-C kills tee), the stream goes to /dev/null, so stopping never trips over it."""
    stream = getattr(sys, stream_name)
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):  # BrokenPipeError, or a stream closed under us
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


def say(text: str = "") -> None:
    emit(text, "stderr")


# region ports and files


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The servers bind with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def choose_port(requested: int | None, default: int, what: str) -> int:
    """None: the default port, or a free one if it is taken. 0: a free port. N: exactly N."""
    if requested is None:
        if _port_is_free(default):
            return default
        port = free_port()
        say(f"  port {default} is taken; {what} uses {port}")
        return port
    if requested == 0:
        return free_port()
    if not _port_is_free(requested):
        raise DemoError(f"port {requested} for {what} is taken")
    return requested


def shown_path(path: Path) -> str:
    """The path relative to the current directory when it is inside it (shorter to read)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def prepare_workdir(workdir: Path, keep: bool) -> None:
    if workdir.exists() and not keep and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise DemoError(
                f"{workdir} exists and was not made by the demo ({MARKER} is missing); "
                "not wiping it. Choose another --dir."
            )
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by python -m waldur_devenv.demo\n")


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path}: missing)"
    return f"--- {path} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])


# endregion
# region the world the demo expects


@dataclass
class ProjectInfo:
    key: str
    uuid: str
    name: str
    customer: str
    alias: str
    roles: dict[str, list[str]]  # puppet -> the Waldur roles that put them there
    expected: dict[str, int] = field(default_factory=dict)  # puppet -> power level
    room_id: str | None = None
    members: dict[str, int] = field(default_factory=dict)  # joined puppet -> power level


def expected_projects(
    sim: WaldurSimulator, seeded: dict[str, dict[str, str]]
) -> list[ProjectInfo]:
    """Each seeded project with the puppets that should be in its room, from the simulator."""
    now = sim.now()
    out = []
    for key, uuid in seeded["projects"].items():
        project = sim.projects[uuid]
        grants = list(sim.active_grants(uuid))
        grants += [
            g
            for g in sim.active_grants(project.customer.uuid)
            if g.role.name in ORGANIZATION_ROLES
        ]
        expected: dict[str, list[str]] = {}
        for grant in grants:
            if not grant.user.is_active:
                continue
            if grant.expiration_time is not None and grant.expiration_time <= now:
                continue
            mxid = puppet_mxid(
                "waldur_{userid}", SERVER_NAME, username=grant.user.username, user_uuid=uuid
            )
            expected.setdefault(mxid, []).append(grant.role.name)
        out.append(
            ProjectInfo(
                key=key,
                uuid=uuid,
                name=project.name,
                customer=project.customer.name,
                alias=f"#waldur_{uuid}:{SERVER_NAME}",
                roles={m: sorted(r) for m, r in sorted(expected.items())},
            )
        )
    return out


# endregion
# region the homeserver, seen by the bot


class Homeserver:
    """The few client-server API calls the demo makes, as the bridge bot (AS token)."""

    def __init__(self, url: str, as_token: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.as_token = as_token
        self.session = session

    async def get(self, path: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.as_token}"}
        async with self.session.get(
            f"{self.url}/_matrix/client/v3{path}", headers=headers
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except (json.JSONDecodeError, aiohttp.ContentTypeError):
                body = None
            return resp.status, body

    async def resolve(self, alias: str) -> str | None:
        status, body = await self.get(f"/directory/room/{quote(alias, safe='')}")
        return body.get("room_id") if status == 200 and isinstance(body, dict) else None

    async def joined(self, room_id: str) -> set[str]:
        status, body = await self.get(f"/rooms/{quote(room_id, safe='')}/joined_members")
        if status != 200 or not isinstance(body, dict):
            return set()
        return set(body.get("joined", {}))

    async def members(self, room_id: str) -> dict[str, str]:
        status, body = await self.get(f"/rooms/{quote(room_id, safe='')}/members")
        if status != 200 or not isinstance(body, dict):
            return {}
        return {e["state_key"]: e["content"].get("membership", "") for e in body["chunk"]}

    async def power_levels(self, room_id: str) -> dict[str, int]:
        path = f"/rooms/{quote(room_id, safe='')}/state/m.room.power_levels"
        status, body = await self.get(path)
        if status != 200 or not isinstance(body, dict):
            return {}
        return {k: int(v) for k, v in (body.get("users") or {}).items()}

    async def joined_rooms(self) -> list[str]:
        status, body = await self.get("/joined_rooms")
        return list(body.get("joined_rooms", [])) if status == 200 else []


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, alive: Callable[[], None]
) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        alive()
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)


# endregion
# region the demo


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(args.dir)
        self.config_path = self.workdir / "config.yaml"
        self.registration_path = self.workdir / "registration.yaml"
        self.database_path = self.workdir / "waldur-bridge.db"
        self.bridge_log = self.workdir / "bridge.log"
        self.sim: WaldurSimulator | None = None
        self.seeded: dict[str, dict[str, str]] = {}
        self.synapse: LocalSynapse | None = None
        self.bridge: asyncio.subprocess.Process | None = None
        self._bridge_output: Any = None
        self.bridge_port = 0
        self.as_token = ""
        self.session: aiohttp.ClientSession | None = None
        self.hs: Homeserver | None = None
        self.projects: list[ProjectInfo] = []
        self.management_room_id: str | None = None
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()
        # The homeserver's client secret at the bridge's sign-in provider.
        self.oidc_secret = secrets.token_hex(24)
        self.signin_result: dict[str, Any] | None = None

    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    def _mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self._t0, 2)

    # --- start --------------------------------------------------------------------------

    async def start(self) -> None:
        args = self.args
        synapse_python = find_synapse_python()  # before anything starts: say what is missing
        require_oidc(synapse_python)
        prepare_workdir(self.workdir, args.keep)
        say(f"Demo work directory: {shown_path(self.workdir)}")

        self.sim = WaldurSimulator("current", seed=SIMULATOR_SEED)
        waldur_port = choose_port(args.waldur_port, DEFAULT_WALDUR_PORT, "the Waldur simulator")
        await self.sim.start("127.0.0.1", waldur_port)
        self.seeded = seed_demo(self.sim)
        self.projects = expected_projects(self.sim, self.seeded)
        say(f"  Waldur simulator at {self.sim.url} ({len(self.projects)} projects seeded)")
        self._mark("simulator")

        synapse_port = choose_port(args.synapse_port, DEFAULT_SYNAPSE_PORT, "Synapse")
        self.bridge_port = choose_port(args.bridge_port, DEFAULT_BRIDGE_PORT, "the bridge")
        self.write_bridge_config(synapse_port)
        await self.generate_registration()
        say(f"  registration written by `waldur-bridge -g`: {shown_path(self.registration_path)}")

        self.synapse = LocalSynapse(
            self.workdir / "synapse",
            server_name=SERVER_NAME,
            port=synapse_port,
            registration_path=self.registration_path,
            python=synapse_python,
            extra_config={
                # "Continue with Waldur": the bridge is this homeserver's OIDC provider.
                "oidc_providers": [
                    oidc_provider_config(
                        f"{self.bridge_url}/oidc", self.oidc_secret, site_name="Waldur (demo)"
                    )
                ],
            },
        )
        say(f"  starting Synapse ({self.synapse.python}) on {self.synapse.url} ...")
        await self.synapse.start()
        self._mark("synapse")
        for (name, password), admin in ((ADMIN, True), (ALICE, False)):
            await self.register(name, password, admin)

        self.session = aiohttp.ClientSession()
        self.hs = Homeserver(self.synapse.url, self.as_token, self.session)
        await self.start_bridge()
        say(
            f"  bridge running on http://127.0.0.1:{self.bridge_port} (log: "
            f"{shown_path(self.bridge_log)})"
        )
        self._mark("bridge")

    def write_bridge_config(self, synapse_port: int) -> None:
        assert self.sim is not None
        # The database path is written as shown (relative to the current directory, where the
        # bridge runs), so the config reads like one an operator would write.
        overrides: dict[str, Any] = {
            "bridge.portals.create": "all",
            "bridge.management_room": MANAGEMENT_ROOM,
            "bridge.permissions": {
                SERVER_NAME: "user",
                f"@{ADMIN[0]}:{SERVER_NAME}": "admin",
            },
            "waldur.webhook.register": True,
            "waldur.events.enabled": True,
            "waldur.events.interval": 10,
            "waldur.sweep_interval": 300,
            # The log goes to a file: no colour codes.
            "logging.handlers.console.formatter": "normal",
            "bridge.signin.enabled": True,
            "bridge.signin.public_url": self.bridge_url,
            "bridge.signin.site_name": "Waldur (demo)",
            "bridge.signin.clients": [
                {
                    "client_id": OIDC_CLIENT_ID,
                    "client_secret": self.oidc_secret,
                    "redirect_uris": [oidc_callback(f"http://127.0.0.1:{synapse_port}")],
                }
            ],
        }
        write_config(
            self.config_path,
            homeserver_url=f"http://127.0.0.1:{synapse_port}",
            domain=SERVER_NAME,
            as_port=self.bridge_port,
            waldur_url=self.sim.url,
            waldur_token=self.sim.staff_token,
            database=f"sqlite:{shown_path(self.database_path)}",
            overrides=overrides,
        )

    async def generate_registration(self) -> None:
        """`waldur-bridge -g -c config.yaml -r registration.yaml`, the real CLI."""
        cmd = [
            sys.executable,
            "-m",
            "waldur_bridge",
            "-g",
            "-c",
            shown_path(self.config_path),
            "-r",
            shown_path(self.registration_path),
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output = (await asyncio.wait_for(proc.communicate(), 60))[0].decode(errors="replace")
        if proc.returncode != 0 or not self.registration_path.exists():
            raise DemoError(
                f"`{' '.join(cmd[2:])}` exited with {proc.returncode}:\n{output[-3000:]}"
            )
        with self.config_path.open() as stream:
            config = yaml.load(stream)
        self.as_token = str(config["appservice"]["as_token"])
        # The power levels the bridge should give, from the config it runs with (the highest
        # of a person's roles wins).
        membership = config["bridge"]["membership"]
        levels = dict(membership["power_levels"] or {})
        default = int(membership["default_power_level"])
        for project in self.projects:
            project.expected = {
                mxid: max(int(levels.get(role, default)) for role in roles)
                for mxid, roles in project.roles.items()
            }

    async def register(self, localpart: str, password: str, admin: bool) -> None:
        assert self.synapse is not None
        try:
            await self.synapse.register_user(localpart, password, admin)
        except RuntimeError as e:
            if "M_USER_IN_USE" not in str(e):  # --keep: the account is already there
                raise

    async def start_bridge(self) -> None:
        """`waldur-bridge -c config.yaml` as a subprocess, in its own session so that Ctrl-C
        reaches only the demo, which then stops the bridge with SIGTERM."""
        self._bridge_output = self.bridge_log.open("ab")
        self.bridge = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "waldur_bridge",
            "-c",
            shown_path(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._bridge_output,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        assert self.session is not None
        url = f"http://127.0.0.1:{self.bridge_port}/_matrix/mau/ready"

        async def ready() -> bool:
            try:
                async with self.session.get(url) as resp:  # type: ignore[union-attr]
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        if not await wait_until(ready, self.args.timeout, self.check_bridge_alive):
            raise DemoError(f"the bridge did not become ready within {self.args.timeout:.0f} s")

    def check_bridge_alive(self) -> None:
        if self.bridge is not None and self.bridge.returncode is not None:
            raise DemoError(f"the bridge exited with code {self.bridge.returncode}")

    # --- looking at the result ----------------------------------------------------------

    async def refresh(self) -> bool:
        """Read every portal's room and members from the homeserver; True when all match."""
        assert self.hs is not None
        ok = True
        for project in self.projects:
            if project.room_id is None:
                project.room_id = await self.hs.resolve(project.alias)
            if project.room_id is None:
                ok = False
                continue
            joined = await self.hs.joined(project.room_id)
            levels = await self.hs.power_levels(project.room_id)
            project.members = {
                m: levels.get(m, 0) for m in sorted(joined) if m.startswith("@waldur_")
            }
            if project.members != project.expected:
                ok = False
        if self.management_room_id is None:
            self.management_room_id = await self.hs.resolve(MANAGEMENT_ROOM)
        if self.management_room_id is None:
            ok = False
        return ok

    async def wait_for_portals(self, timeout: float) -> bool:
        return await wait_until(self.refresh, timeout, self.check_bridge_alive)

    async def waldur_post(self, path: str, body: dict[str, Any]) -> int:
        assert self.sim is not None and self.session is not None
        headers = {"Authorization": f"Token {self.sim.staff_token}"}
        async with self.session.post(f"{self.sim.url}{path}", json=body, headers=headers) as r:
            return r.status

    async def live_change(self) -> dict[str, Any]:
        """Grant Frank a role in Genome Assembly through the REST API, then revoke it, and time
        how long the homeserver takes to show each (web hook -> reconcile -> join/leave)."""
        assert self.sim is not None and self.hs is not None
        genome = next(p for p in self.projects if p.key == "genome")
        frank = self.seeded["users"]["frank"]
        puppet = f"@waldur_frank:{SERVER_NAME}"
        result: dict[str, Any] = {"project": genome.name, "user": puppet}

        async def hook_registered() -> bool:
            return bool(self.sim is not None and self.sim.hooks)

        hook_ok = await wait_until(hook_registered, 15, self.check_bridge_alive)
        result["webhook_registered"] = hook_ok
        if genome.room_id is None:
            return {**result, "ok": False}
        room = genome.room_id
        body = {"user": frank, "role": "PROJECT.MEMBER"}

        started = time.monotonic()
        result["grant_status"] = await self.waldur_post(
            f"/api/projects/{genome.uuid}/add_user/", body
        )

        async def joined() -> bool:
            return puppet in await self.hs.joined(room)  # type: ignore[union-attr]

        result["joined"] = await wait_until(joined, 30, self.check_bridge_alive)
        result["join_seconds"] = round(time.monotonic() - started, 2)

        started = time.monotonic()
        result["revoke_status"] = await self.waldur_post(
            f"/api/projects/{genome.uuid}/delete_user/", body
        )

        async def left() -> bool:
            return puppet not in await self.hs.joined(room)  # type: ignore[union-attr]

        result["left"] = await wait_until(left, 30, self.check_bridge_alive)
        result["leave_seconds"] = round(time.monotonic() - started, 2)
        result["ok"] = bool(
            hook_ok
            and result["grant_status"] == 201
            and result["joined"]
            and result["revoke_status"] == 200
            and result["left"]
        )
        return result

    async def sign_in_check(self) -> dict[str, Any]:
        """Bob signs in through Synapse's "Continue with Waldur" with his Waldur password."""
        assert self.synapse is not None and self.session is not None
        started = time.monotonic()
        expected = f"@waldur_bob:{SERVER_NAME}"
        try:
            login = await signin_flow.sign_in(
                self.session, self.synapse.url, username="bob", password=demo_password("bob")
            )
        except (RuntimeError, aiohttp.ClientError, StopIteration) as e:
            return {"ok": False, "error": str(e)}
        return {
            "ok": login.get("user_id") == expected,
            "user_id": login.get("user_id"),
            "seconds": round(time.monotonic() - started, 2),
        }

    async def summary(self, ok: bool, live: dict[str, Any] | None) -> dict[str, Any]:
        assert self.sim is not None and self.synapse is not None and self.hs is not None
        management: dict[str, Any] = {"alias": MANAGEMENT_ROOM, "room_id": self.management_room_id}
        if self.management_room_id:
            management["members"] = await self.hs.members(self.management_room_id)
        bot_rooms = await self.hs.joined_rooms()
        return {
            "ok": ok,
            "homeserver": self.synapse.url,
            "server_name": SERVER_NAME,
            "waldur": self.sim.url,
            "bridge": f"http://127.0.0.1:{self.bridge_port}",
            "workdir": str(self.workdir.resolve()),
            "bot": f"@waldurbot:{SERVER_NAME}",
            "bot_joined_rooms": len(bot_rooms),
            "management_room": management,
            "projects": [
                {
                    "name": p.name,
                    "uuid": p.uuid,
                    "customer": p.customer,
                    "alias": p.alias,
                    "room_id": p.room_id,
                    "members": p.members,
                    "expected": p.expected,
                    "roles": {m: ", ".join(r) for m, r in p.roles.items()},
                    "ok": p.room_id is not None and p.members == p.expected,
                }
                for p in self.projects
            ],
            "live_change": live,
            "signin": self.signin_result,
            "seconds": self.timings,
        }

    # --- what to look at ----------------------------------------------------------------

    def print_guide(self) -> None:
        assert self.sim is not None and self.synapse is not None
        hs, sim = self.synapse.url, self.sim.url
        staff = self.sim.staff_token
        genome = next(p for p in self.projects if p.key == "genome")
        frank = self.seeded["users"]["frank"]
        alice_token = self.sim.token_for(self.seeded["users"]["alice"])
        room = quote(genome.room_id or "<room id>", safe="")
        telescope = next(p for p in self.projects if p.key == "telescope")
        alice_room = quote(telescope.room_id or "<room id>", safe="")
        config = shown_path(self.config_path)
        grant_body = json.dumps({"user": frank, "role": "PROJECT.MEMBER"})
        rule = "=" * 78
        lines = [
            "",
            rule,
            "  waldur-matrix-bridge demo is running.  Ctrl-C stops the bridge, Synapse and",
            "  the simulator.",
            rule,
            "",
            f"Matrix homeserver (Synapse)  {hs}   server name: {SERVER_NAME}",
            "  Point any Matrix client at it (Element desktop: 'Edit' the homeserver, enter",
            f"  {hs}) and log in as:",
            f"    @{ADMIN[0]}:{SERVER_NAME}  password '{ADMIN[1]}'  bridge admin, invited to the "
            "management room",
            f"    @{ALICE[0]}:{SERVER_NAME}  password '{ALICE[1]}'  an ordinary Matrix account "
            "(not a Waldur user)",
            f"  Management room: {MANAGEMENT_ROOM}   (accept the invite, send `help`)",
            "",
            "Portal rooms, one per Waldur project; each person with a role is a puppet",
            f"@waldur_<username>:{SERVER_NAME} (Waldur's Alice is @waldur_alice):",
        ]
        for p in self.projects:
            state = "" if p.room_id else "   (not created yet)"
            lines.append(f"  {p.name:<19} {p.alias}{state}")
            team = ", ".join(
                f"{m[8:].split(':')[0]} {'+'.join(roles)} (PL {p.members.get(m, '-')})"
                for m, roles in p.roles.items()
            )
            lines.append(f"    {team}")
        lines += [
            "",
            f"Waldur simulator  {sim}   staff token: {staff}",
            f"  curl -s -H 'Authorization: Token {staff}' {sim}/api/projects/",
            "",
            f"Try it: give Frank Fischer a role in {genome.name} ...",
            f"  curl -s -X POST -H 'Authorization: Token {staff}' \\",
            f"       -H 'Content-Type: application/json' -d '{grant_body}' \\",
            f"       {sim}/api/projects/{genome.uuid}/add_user/",
            "... and see @waldur_frank in the room seconds later (as the bridge bot, with the",
            f"appservice.as_token from {config}):",
            f"  curl -s -H 'Authorization: Bearer {self.as_token}' \\",
            f"       '{hs}/_matrix/client/v3/rooms/{room}/joined_members'",
            "Revoke it again (same body, delete_user) and he is removed:",
            f"  curl -s -X POST -H 'Authorization: Token {staff}' \\",
            f"       -H 'Content-Type: application/json' -d '{grant_body}' \\",
            f"       {sim}/api/projects/{genome.uuid}/delete_user/",
            "",
            "Try the room commands as a Waldur user: Waldur's Alice logs in as her puppet",
            "with her Waldur token (provisioning API), then asks the bot in her project's room:",
            f"  TOKEN=$(curl -s -X POST -H 'Authorization: Token {alice_token}' \\",
            f"       http://127.0.0.1:{self.bridge_port}/_matrix/provision/v1/login \\",
            "     | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            '  curl -s -X PUT -H "Authorization: Bearer $TOKEN" \\',
            '       -d \'{"msgtype": "m.text", "body": "!status"}\' \\',
            f"       '{hs}/_matrix/client/v3/rooms/{alice_room}/send/m.room.message/try-$RANDOM'",
            '  sleep 1; curl -s -H "Authorization: Bearer $TOKEN" \\',
            f"       '{hs}/_matrix/client/v3/rooms/{alice_room}/messages?dir=b&limit=2' \\",
            "       | python3 -m json.tool",
            "  (also !orders, !members, !help). Log the session out again with:",
            '  curl -s -X POST -H "Authorization: Bearer $TOKEN" \\',
            f"       http://127.0.0.1:{self.bridge_port}/_matrix/provision/v1/logout",
            "",
            '"Continue with Waldur": sign in to your puppet with your Waldur account. Open',
            f"  {signin_flow.sso_start_url(hs, hs + '/_matrix/client/versions')}",
            f"  in a browser and sign in as bob / {demo_password('bob')} (every seeded person",
            "  is <name> / <name>-password; or paste a Waldur API token). Synapse asks to",
            "  continue, then the address bar holds",
            "  ?loginToken=...; a Matrix client exchanges it for a session of @waldur_bob:",
            '  curl -s -X POST -d \'{"type": "m.login.token", "token": "<loginToken>"}\' \\',
            f"       {hs}/_matrix/client/v3/login",
            f"  In Element Desktop with homeserver {hs} the same is the button 'Continue with",
            "  Waldur (demo)' on the sign-in screen.",
            "",
            "Files:",
            f"  bridge config        {config}",
            f"  registration         {shown_path(self.registration_path)}",
            f"  bridge log           {shown_path(self.bridge_log)}   (tail -f it)",
            f"  bridge database      {shown_path(self.database_path)}",
            f"  Synapse log          {shown_path(self.synapse.log_path)}",
            rule,
        ]
        emit("\n".join(lines))

    # --- run and stop -------------------------------------------------------------------

    async def run_until_stopped(self) -> int:
        """Until Ctrl-C or SIGTERM (which cancel the demo's task), or until the bridge dies."""
        assert self.bridge is not None
        code = await self.bridge.wait()
        say(f"\nThe bridge exited with code {code}.")
        say(tail(self.bridge_log, 30))
        return 1

    async def stop(self) -> bool:
        """Stop whatever runs, bridge first; True if anything did."""
        stopped = any(x is not None for x in (self.bridge, self.synapse, self.sim))
        if self.bridge is not None:
            if self.bridge.returncode is None:
                say("Stopping the bridge (SIGTERM) ...")
                self.bridge.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(self.bridge.wait(), BRIDGE_STOP_TIMEOUT)
                except TimeoutError:
                    say("  the bridge did not stop in time; killing it")
                    self.bridge.kill()
                    await self.bridge.wait()
            self.bridge = None
        if self._bridge_output is not None:
            self._bridge_output.close()
            self._bridge_output = None
        if self.synapse is not None:
            say("Stopping Synapse ...")
            await self.synapse.stop()
            self.synapse = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.sim is not None:
            say("Stopping the Waldur simulator ...")
            await self.sim.stop()
            self.sim = None
        return stopped

    def kill_now(self) -> None:
        """atexit, or a second signal: never leave the bridge or Synapse behind."""
        if self.bridge is not None and self.bridge.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(self.bridge.pid, signal.SIGKILL)
        if self.synapse is not None:
            with contextlib.suppress(Exception):
                self.synapse.stop_blocking(timeout=5)


# Ctrl-C, `kill`, and a closed terminal (SIGHUP) all stop the demo the same way.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_signal(demo: Demo, task: asyncio.Task[int], stopping: list[bool]) -> None:
    if stopping:
        # Asked again while stopping: stop at once, leaving nothing running.
        say("Stopping now.")
        demo.kill_now()
        os._exit(130)
    stopping.append(True)
    say("\nStopping ...")
    task.cancel()


async def run(args: argparse.Namespace) -> int:
    demo = Demo(args)
    atexit.register(demo.kill_now)
    # Ctrl-C and SIGTERM cancel this task at whatever step it is in; the finally block then
    # stops what was started. Installed explicitly so that they work even where the shell
    # started the demo with SIGINT ignored (a background job).
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping: list[bool] = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _on_signal, demo, task, stopping)
    try:
        await demo.start()
        say("  waiting for the bridge to create the portals ...")
        ok = await demo.wait_for_portals(args.timeout)
        demo._mark("portals")
        if args.check:
            live = await demo.live_change() if ok else None
            demo._mark("live_change")
            ok = ok and bool(live and live["ok"])
            demo.signin_result = await demo.sign_in_check() if ok else None
            demo._mark("signin")
            ok = ok and bool(demo.signin_result and demo.signin_result["ok"])
            emit(json.dumps(await demo.summary(ok, live), indent=2))
            if not ok:
                say("error: the demo did not reach the expected state")
                say(tail(demo.bridge_log))
            return 0 if ok else 1
        if not ok:
            say(
                f"warning: not every portal is complete after {args.timeout:.0f} s; "
                f"see {shown_path(demo.bridge_log)}"
            )
        demo.print_guide()
        return await demo.run_until_stopped()
    except (DemoError, SynapseStartError) as e:
        say(f"error: {e}")
        if demo.bridge_log.exists():
            say(tail(demo.bridge_log))
        return 1
    except asyncio.CancelledError:
        if not stopping:
            raise
        # Interrupted on purpose: a clean stop is success, except for a check that never ran.
        return 130 if args.check else 0
    finally:
        if await demo.stop():
            say("Stopped.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m waldur_devenv.demo",
        description="Run waldur-matrix-bridge for real: a local Synapse, the Waldur simulator "
        "and the bridge (SQLite).",
    )
    parser.add_argument("--dir", default="demo", help="work directory (default: ./demo)")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="reuse the work directory (Synapse and bridge databases) instead of wiping it",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="wipe the work directory first (the default; overrides --keep)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="start, wait for every portal and its team, try a grant and a revoke, "
        "print a JSON summary and exit (0 = as expected)",
    )
    ports = "0 picks a free port; default %s, or a free port if that is taken"
    parser.add_argument("--waldur-port", type=int, default=None, help=ports % 8080)
    parser.add_argument("--synapse-port", type=int, default=None, help=ports % 8008)
    parser.add_argument("--bridge-port", type=int, default=None, help=ports % 29334)
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each step (default 60)"
    )
    args = parser.parse_args(argv)
    if args.fresh:
        args.keep = False
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        code = asyncio.run(run(args))
    except SynapseNotInstalled as e:
        say(f"error: {e}")
        code = 2
    except KeyboardInterrupt:  # before the signal handlers were installed
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
