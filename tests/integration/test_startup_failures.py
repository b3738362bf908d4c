"""Start-up mistakes against the real Synapse, each run as an operator would (the CLI): one line
naming the setting and the fix, no traceback, and only a handful of homeserver requests."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from waldur_devenv.synapse import free_port

from .helpers import BridgeEnv, wait_for

# Far above what any of these starts needs; what matters is that the process ends at all.
EXIT_TIMEOUT = 60


class CountingProxy:
    """A reverse proxy in front of Synapse that counts the bridge's requests to it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.counts: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.counts[f"{request.method} {request.path}"] += 1
        headers = {
            k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")
        }
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
        ) as upstream:
            body = await upstream.read()
            drop = ("content-length", "transfer-encoding", "content-encoding", "connection")
            return web.Response(
                status=upstream.status,
                body=body,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in drop},
            )


@pytest.fixture
async def proxy(bridge_env: BridgeEnv) -> AsyncIterator[CountingProxy]:
    p = CountingProxy(bridge_env.hs.url)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


class Cli:
    """`python -m waldur_bridge -c config.yaml` as a subprocess, its output collected."""

    def __init__(self, config: Path, cwd: Path) -> None:
        self.config = config
        self.cwd = cwd
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "waldur_bridge",
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    async def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
            raise AssertionError(f"the bridge did not exit:\n{self.output[-3000:]}") from None
        assert self._reader is not None
        await self._reader
        return code

    async def wait_for_line(self, text: str, timeout: float = EXIT_TIMEOUT) -> str:
        async def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        try:
            return await wait_for(found, timeout, f"a log line with {text!r}")
        except AssertionError:
            self.kill()
            raise AssertionError(f"no line with {text!r}:\n{self.output[-3000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
async def cli(bridge_env: BridgeEnv) -> AsyncIterator[Cli]:
    c = Cli(bridge_env.config_path, bridge_env.tmp_path)
    try:
        yield c
    finally:
        # Never leave a bridge running (it would hold ports for the tests after this one).
        c.kill()
        if c.proc is not None:
            await c.proc.wait()


def assert_one_clean_line(cli: Cli, text: str) -> None:
    assert len(cli.lines_with(text)) == 1, cli.output[-3000:]
    assert "Traceback" not in cli.output, cli.output[-3000:]


async def test_wrong_homeserver_domain_stops_at_once(
    bridge_env: BridgeEnv, proxy: CountingProxy, cli: Cli
) -> None:
    bridge_env.write_config(
        **{"homeserver.address": proxy.url, "homeserver.domain": "wrong.example"}
    )
    await cli.start()
    code = await cli.wait()
    assert code == 16, cli.output[-3000:]
    server_name = bridge_env.hs.server_name
    line = (
        f"homeserver.domain is 'wrong.example', but the homeserver's server name is "
        f"'{server_name}'"
    )
    assert_one_clean_line(cli, line)
    assert "regenerate the registration with -g" in cli.lines_with(line)[0]
    # mautrix's own loop made tens of thousands of requests here.
    assert proxy.total <= 10, proxy.counts


async def test_registration_not_installed_waits_with_growing_pauses(
    bridge_env: BridgeEnv, proxy: CountingProxy, cli: Cli
) -> None:
    bridge_env.write_config(
        **{
            "homeserver.address": proxy.url,
            "appservice.as_token": "not-installed-as-token",
            "appservice.hs_token": "not-installed-hs-token",
        }
    )
    await cli.start()
    line = await cli.wait_for_line("M_UNKNOWN_TOKEN")
    assert "app_service_config_files" in line and "!admin appservices register" in line
    assert "Retrying in 2 s" in line
    # It keeps waiting (the operator may be installing the registration): the second failure
    # comes after the first wait and says only that it goes on, with a longer wait.
    await cli.wait_for_line("next try in 4 s")
    assert cli.proc is not None and cli.proc.returncode is None
    cli.proc.send_signal(signal.SIGTERM)
    code = await cli.wait()
    assert code == 0, cli.output[-3000:]
    assert_one_clean_line(cli, "M_UNKNOWN_TOKEN")
    assert proxy.total <= 10, proxy.counts


async def test_homeserver_cannot_reach_the_bridge(
    bridge_env: BridgeEnv, proxy: CountingProxy, cli: Cli
) -> None:
    # The installed registration sends transactions to hs.as_port; this bridge listens
    # elsewhere, as when appservice.address names a host the homeserver cannot reach.
    port = free_port()
    bridge_env.write_config(
        **{
            "homeserver.address": proxy.url,
            "appservice.port": port,
            "appservice.address": f"http://127.0.0.1:{port}",
        }
    )
    await cli.start()
    code = await cli.wait()
    assert code == 16, cli.output[-3000:]
    line = "The homeserver cannot reach this bridge (appservice.address"
    assert_one_clean_line(cli, line)
    found = cli.lines_with(line)[0]
    assert f"http://127.0.0.1:{port}" in found and "it answered HTTP 502" in found, found
    assert proxy.total <= 10, proxy.counts


async def test_port_in_use_names_the_setting(bridge_env: BridgeEnv, cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge_env.write_config(
            **{"appservice.port": port, "appservice.address": f"http://127.0.0.1:{port}"}
        )
        await cli.start()
        code = await cli.wait()
    assert code == 17, cli.output[-3000:]
    assert_one_clean_line(cli, f"Cannot listen on 127.0.0.1:{port} (appservice.hostname")
    assert "appservice.port" in cli.lines_with("Cannot listen")[0]


async def test_encryption_without_the_extra_names_it(bridge_env: BridgeEnv, cli: Cli) -> None:
    from waldur_bridge.config import encryption_installed

    if encryption_installed():
        pytest.skip("the e2be extra is installed here; the unit test covers the message")
    bridge_env.write_config(
        **{"bridge.encryption.allow": True, "bridge.encryption.appservice": True}
    )
    await cli.start()
    assert await cli.wait() == 11
    assert_one_clean_line(cli, "pip install 'waldur-matrix-bridge[e2be]'")


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_wrong_waldur_token_is_one_line_not_one_per_poll(
    bridge_env: BridgeEnv, cli: Cli
) -> None:
    bridge_env.write_config(
        **{
            "waldur.token": "0123456789abcdef0123456789abcdef01234567",
            "waldur.events.interval": 0.2,
            # DEBUG shows each failed poll, to count them; they must stay below WARNING.
            "logging.loggers.waldur.level": "DEBUG",
        }
    )
    await cli.start()
    await cli.wait_for_line("Startup complete")
    line = await cli.wait_for_line("Waldur access lost")
    assert "rejects waldur.token (HTTP 401" in line and "ERROR" in line

    async def polls_failed() -> bool:
        return len(cli.lines_with("Events poll failed")) >= 3

    await wait_for(polls_failed, 60, "three failed polls")
    assert cli.proc is not None
    cli.proc.send_signal(signal.SIGTERM)
    assert await cli.wait() == 0, cli.output[-3000:]
    assert_one_clean_line(cli, "Waldur access lost")
    assert all("DEBUG" in x for x in cli.lines_with("Events poll failed")), cli.output[-3000:]
    assert not [x for x in cli.lines if "WARNING" in x and "Waldur" in x], cli.output[-3000:]
    assert bridge_env.sim.staff_token not in cli.output


async def test_unreachable_database_is_one_line_without_its_password(
    bridge_env: BridgeEnv, cli: Cli
) -> None:
    port = free_port()  # nothing listens there
    bridge_env.write_config(
        **{"appservice.database": f"postgres://bridge:hunter2@127.0.0.1:{port}/bridge"}
    )
    await cli.start()
    assert await cli.wait() == 25, cli.output[-3000:]
    assert_one_clean_line(cli, "Cannot open the database (appservice.database")
    assert f"postgres://bridge:***@127.0.0.1:{port}/bridge" in cli.output
    assert "hunter2" not in cli.output
