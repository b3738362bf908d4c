"""Several real bridge processes on one PostgreSQL behind a readiness-routing proxy, for the
high-availability test and benchmark.

The proxy plays the part of a Kubernetes Service or haproxy: the homeserver's registration URL
points at it, and it forwards each request to the instance whose `/_matrix/mau/ready` answers
200 (503 when none does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

READY = "/_matrix/mau/ready"
LIVE = "/_matrix/mau/live"
# Headers a proxy must not pass on as they are.
HOP_HEADERS = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}
)


async def http_status(
    session: aiohttp.ClientSession, url: str, timeout: float = 1.0
) -> int | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


class ReadyProxy:
    """Forwards every request to the first backend that reports ready.

    Without check_interval readiness is asked per request. With it, it is checked in the
    background like haproxy or Kubernetes do: a backend counts as ready after `rise` successive
    successful checks and stops at the first failure, so a new active instance is reached only
    some time after it reports ready.
    """

    def __init__(
        self, port: int, backends: list[int], *, check_interval: float | None = None, rise: int = 1
    ) -> None:
        self.port = port
        self.backends = backends
        self.check_interval = check_interval
        self.rise = rise
        self.refused: list[str] = []  # paths answered 503 because no instance was ready
        self._streak = dict.fromkeys(backends, 0)
        self._checker: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        if self.check_interval is not None:
            self._checker = asyncio.create_task(self._check_loop())

    async def _check_loop(self) -> None:
        assert self._session is not None and self.check_interval is not None
        while True:
            for port in self.backends:
                url = f"http://127.0.0.1:{port}{READY}"
                ok = await http_status(self._session, url, 0.5) == 200
                self._streak[port] = self._streak[port] + 1 if ok else 0
            await asyncio.sleep(self.check_interval)

    async def stop(self) -> None:
        if self._checker is not None:
            self._checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checker
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _ready_backend(self) -> int | None:
        assert self._session is not None
        if self.check_interval is not None:
            return next((p for p in self.backends if self._streak[p] >= self.rise), None)
        for port in self.backends:
            if await http_status(self._session, f"http://127.0.0.1:{port}{READY}", 0.5) == 200:
                return port
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        port = await self._ready_backend()
        if port is None:
            self.refused.append(request.path)
            return web.json_response({"error": "no ready instance"}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        url = f"http://127.0.0.1:{port}{request.path_qs}"
        try:
            async with self._session.request(
                request.method, url, headers=headers, data=body
            ) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
                return web.Response(status=resp.status, body=payload, headers=out)
        except aiohttp.ClientError:
            self.refused.append(request.path)
            return web.json_response({"error": "instance went away"}, status=502)


class BridgeProcess:
    """`python -m waldur_bridge -c <config>` as a subprocess, its output in a log file."""

    def __init__(self, config_path: Path, port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        # A file rather than a pipe: nothing has to drain it while the test waits.
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "waldur_bridge",
            "-c",
            str(self.config_path),
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.config_path.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 40) -> int:
        assert self.proc is not None
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.signal(signal.SIGKILL)
        if self.proc is not None:
            await self.wait()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


async def wait_status(
    session: aiohttp.ClientSession,
    url: str,
    status: int,
    timeout: float,
    interval: float = 0.05,
) -> float:
    """Poll url until it answers `status`; the monotonic time it did."""
    deadline = time.monotonic() + timeout
    while True:
        if await http_status(session, url) == status:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer {status} within {timeout} s")
        await asyncio.sleep(interval)


@asynccontextmanager
async def fresh_postgres_database(admin_url: str) -> AsyncIterator[str]:
    """A new, empty database on the server of admin_url (dropped afterwards): its URL.

    A database rather than a schema: advisory locks are per database, so bridges of concurrent
    test runs on the same server never see each other's lock.
    """
    import asyncpg

    name = f"waldur_ha_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield str(URL(admin_url).with_path(f"/{name}"))
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


class Haproxy:
    """haproxy with the repository's deploy/haproxy/haproxy.cfg, ports moved to free ones."""

    def __init__(self, config: Path, workdir: Path, port: int, backends: list[int]) -> None:
        text = config.read_text().replace("bind :29334", f"bind 127.0.0.1:{port}")
        for default, backend in zip((29335, 29336), backends, strict=True):
            text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{backend}")
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(text)
        self.log_path = workdir / "haproxy.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._log: Any = None

    async def start(self, binary: str = "haproxy") -> None:
        self._log = self.log_path.open("ab")
        # -db: stay in the foreground; logs go to stdout (the config's "log stdout").
        self.proc = await asyncio.create_subprocess_exec(
            binary, "-db", "-f", str(self.config_path), stdout=self._log, stderr=self._log
        )

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
