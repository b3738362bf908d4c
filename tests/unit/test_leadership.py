"""Leadership: the SQLite lock file, the standby gate, the advisory lock on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from waldur_bridge.leadership import (
    LEADER_KEY,
    MIGRATION_KEY,
    AnotherInstance,
    Instance,
    Leadership,
    SqliteInstanceLock,
    _lock_key,
    sqlite_path,
    standby_gate,
)
from waldur_devenv.ha import fresh_postgres_database

POSTGRES_ENV = "WALDUR_BRIDGE_TEST_POSTGRES"


def test_sqlite_path_follows_the_database_url() -> None:
    assert sqlite_path("sqlite:waldur-bridge.db") == "waldur-bridge.db"
    assert sqlite_path("sqlite:///var/lib/waldur/bridge.db") == "/var/lib/waldur/bridge.db"
    assert sqlite_path("sqlite::memory:") is None
    assert sqlite_path("postgres://u:p@db/waldur") is None


def test_lock_keys_are_fixed_and_distinct() -> None:
    # Instances of different versions must agree on the key; a change would let two act.
    assert LEADER_KEY == -7047039276319774825
    assert _lock_key("waldur-matrix-bridge leadership") == LEADER_KEY
    assert LEADER_KEY != MIGRATION_KEY
    assert -(2**63) <= LEADER_KEY < 2**63


def test_second_sqlite_instance_is_refused_naming_the_first(tmp_path: Path) -> None:
    db = str(tmp_path / "bridge.db")
    first = SqliteInstanceLock(db)
    first.acquire(Instance("host-a", 4242, "http://a"))
    second = SqliteInstanceLock(db)
    with pytest.raises(AnotherInstance) as e:
        second.acquire(Instance("host-b", 99, "http://b"))
    message = str(e.value)
    assert "host host-a, PID 4242" in message
    assert "PostgreSQL" in message and db in message
    assert "\n" not in message
    first.release()
    second.acquire(Instance("host-b", 99, "http://b"))
    second.release()


def test_sqlite_lock_of_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    db = str(tmp_path / "bridge.db")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from waldur_bridge.leadership import Instance, SqliteInstanceLock\n"
            f"SqliteInstanceLock({db!r}).acquire(Instance('other', 7, ''))\n"
            "print('locked', flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"locked"
        with pytest.raises(AnotherInstance, match="host other, PID 7"):
            SqliteInstanceLock(db).acquire(Instance("me", os.getpid(), ""))
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        lock = SqliteInstanceLock(db)
        lock.acquire(Instance("me", os.getpid(), ""))  # no stale lock after kill -9
        lock.release()
    finally:
        holder.kill()
        holder.wait(30)


async def test_standby_gate_is_live_not_ready_and_refuses_the_rest(tmp_path: Path) -> None:
    leadership = Leadership(f"sqlite:{tmp_path / 'x.db'}", Instance("h", 1, ""))
    handled: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        handled.append(request.path)
        return web.json_response({})

    app = web.Application(middlewares=[standby_gate(leadership)])
    app.router.add_route("*", "/{tail:.*}", handler)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/_matrix/mau/live")).status == 200
        assert (await client.get("/_matrix/mau/ready")).status == 503
        resp = await client.put("/_matrix/app/v1/transactions/1", json={"events": []})
        assert resp.status == 503
        assert resp.headers["Retry-After"]
        for path in ("/waldur/webhook/x", "/_matrix/provision/v1/login", "/_matrix/app/v1/ping"):
            assert (await client.post(path, json={})).status == 503
        assert handled == ["/_matrix/mau/live"]
        leadership.active = True
        assert (await client.put("/_matrix/app/v1/transactions/2", json={})).status == 200
        assert handled[-1] == "/_matrix/app/v1/transactions/2"


# region PostgreSQL


@pytest.fixture
async def postgres() -> AsyncIterator[str]:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} must be set in CI", pytrace=False)
        pytest.skip(f"set {POSTGRES_ENV}=postgres://... to run on PostgreSQL")
    async with fresh_postgres_database(url) as database:
        yield database


def _leadership(url: str, name: str, **kwargs: object) -> Leadership:
    return Leadership(
        url, Instance(name, os.getpid(), ""), lock_wait=0.5, check_interval=1.0, **kwargs
    )


async def _never_within(awaitable: asyncio.Task, seconds: float) -> bool:
    done, _ = await asyncio.wait({awaitable}, timeout=seconds)
    return not done


async def test_one_active_and_the_standby_takes_over_on_release(postgres: str) -> None:
    first, second = _leadership(postgres, "a"), _leadership(postgres, "b")
    await asyncio.wait_for(first.wait_until_active(), 30)
    waiting = asyncio.create_task(second.wait_until_active())
    try:
        assert await _never_within(waiting, 1.2)  # two of its lock waits end and restart
        assert first.active and not second.active
        await first.release()
        await asyncio.wait_for(waiting, 30)
        assert second.active and not first.active
    finally:
        waiting.cancel()
        await second.release()
        await first.release()


async def test_active_steps_down_when_its_lock_connection_is_lost(postgres: str) -> None:
    lost = asyncio.Event()
    first = _leadership(postgres, "a", on_lost=lost.set)
    second = _leadership(postgres, "b")
    await asyncio.wait_for(first.wait_until_active(), 30)
    waiting = asyncio.create_task(second.wait_until_active())
    try:
        admin = await asyncpg.connect(postgres)
        try:
            # What a database restart or a cut connection does to the session.
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'waldur-bridge leadership' AND pid = $1",
                first._conn.get_server_pid(),
            )
        finally:
            await admin.close()
        await asyncio.wait_for(lost.wait(), 30)
        assert not first.active
        await asyncio.wait_for(waiting, 30)
        assert second.active
    finally:
        waiting.cancel()
        await second.release()
        await first.release()


async def test_migration_lock_lets_one_instance_upgrade_at_a_time(postgres: str) -> None:
    order: list[str] = []
    entered = asyncio.Event()
    first, second = _leadership(postgres, "a"), _leadership(postgres, "b")

    async def upgrade(leadership: Leadership, name: str, hold: asyncio.Event | None) -> None:
        async with leadership.claim_database():
            order.append(f"{name} in")
            entered.set()
            if hold is not None:
                await hold.wait()
            order.append(f"{name} out")

    hold = asyncio.Event()
    a = asyncio.create_task(upgrade(first, "a", hold))
    await asyncio.wait_for(entered.wait(), 30)
    b = asyncio.create_task(upgrade(second, "b", None))
    assert await _never_within(b, 0.5)
    hold.set()
    await asyncio.wait_for(asyncio.gather(a, b), 30)
    assert order == ["a in", "a out", "b in", "b out"]


# endregion
