"""`diagnose` runs at least 15 live checks, failures first, and each new check fails when its
fault is made (real Synapse, the simulator in both generations)."""

from __future__ import annotations

import email.utils
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from mautrix.types import EventType

from waldur_bridge import diagnostics
from waldur_bridge.db import BridgeInstance, CustomerSpace
from waldur_bridge.db.base import now_ms
from waldur_devenv.ha import BridgeProcess, fresh_postgres_database
from waldur_devenv.matrix_user import MatrixTestUser
from waldur_devenv.synapse import (
    AppserviceHomeserver,
    LocalSynapse,
    SynapseNotInstalled,
    free_port,
    write_registration,
)
from waldur_devenv.testing import make_registration
from waldur_simulator import WaldurSimulator

from .helpers import BridgeEnv, wait_for
from .test_commands import ask
from .test_high_availability import _postgres_url


@asynccontextmanager
async def skewed_proxy(upstream: str, offset: float) -> AsyncIterator[str]:
    """A reverse proxy in front of the homeserver whose Date header is `offset` seconds off."""

    async def forward(request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, upstream + request.path_qs, data=await request.read()
            ) as upstream_response,
        ):
            body = await upstream_response.read()
        response = web.Response(body=body, status=upstream_response.status)
        response.headers["Content-Type"] = upstream_response.headers.get(
            "Content-Type", "application/json"
        )
        response.headers["Date"] = email.utils.formatdate(time.time() + offset, usegmt=True)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def failed(report: str) -> list[str]:
    return re.findall(r"^- ❌ \*\*(.+?)\*\*", report, re.MULTILINE)


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_diagnose_checks_and_the_faults_that_fail_them(
    bridge_env: BridgeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = bridge_env.sim
    s = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"diagnoser{s}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    org = sim.add_customer("Diag Org")
    project = sim.add_project(org, "Checked")
    crowd = [sim.add_user(f"dcrowd{i}{s}", f"Crowd {i}") for i in range(4)]
    for user in crowd:
        sim.grant(user, project, "PROJECT.MEMBER")
    try:
        bridge = await bridge_env.start(
            **{
                "bridge.management_room": f"#waldur_diag-{s}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
            }
        )
        await bridge_env.register_webhook()
        await bridge_env.sweep()
        await bridge.sync.poller.poll_once()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        room = await bridge_env.portal_room(project)

        async def diagnose() -> str:
            return (await ask(admin, mgmt, "diagnose", timeout=30, containing="Diagnostics"))[
                "body"
            ]

        report = await diagnose()
        total = int(re.search(r"of (\d+) checks ok", report).group(1))  # type: ignore[union-attr]
        assert total >= 15
        assert f"{total} of {total} checks ok" in report, report
        generation = "current" if sim.generation == "current" else "7.x"
        assert f"Waldur {generation}" in report
        assert "standby: none" in report

        # Waldur's clock five minutes ahead.
        sim.date_offset = 300
        report = await diagnose()
        assert failed(report) == ["Clock against Waldur"], report
        assert re.search(r"(299|300|301) s ahead of this machine's", report), report
        # Failures come first.
        assert report.splitlines()[2].startswith("- ❌ **Clock against Waldur**")
        sim.date_offset = 0

        # The homeserver's clock ten minutes behind (its answers pass a proxy that says so).
        async with skewed_proxy(bridge_env.hs.url, -600) as proxy_url:
            bridge.config["homeserver.address"] = proxy_url
            try:
                report = await diagnose()
            finally:
                bridge.config["homeserver.address"] = bridge_env.hs.url
        assert failed(report) == ["Clock against the homeserver"], report
        assert re.search(r"(599|600|601) s behind this machine's", report), report

        # A token whose account is no longer staff sees only part of Waldur.
        me = sim.authenticate(sim.staff_token)
        assert not isinstance(me, str)
        me.is_staff = False
        try:
            report = await diagnose()
        finally:
            me.is_staff = True
        assert "Waldur generation and visibility" in failed(report), report
        assert "sees" in report and "staff (or support)" in report, report
        assert "unreachable" not in report  # a plain account's record is not an outage

        # A puppet template outside the registration's namespace.
        bridge.config["bridge.username_template"] = "elsewhere_{userid}"
        try:
            report = await diagnose()
        finally:
            bridge.config["bridge.username_template"] = "waldur_{userid}"
        assert failed(report) == ["Namespaces match the templates"], report
        bridge.config["bridge.alias_template"] = "elsewhere_{groupname}"
        try:
            report = await diagnose()
        finally:
            bridge.config["bridge.alias_template"] = "waldur_{groupname}"
        assert failed(report) == ["Namespaces match the templates"], report
        assert "refused the alias" in report

        # A sweep interval shorter than the sweep's read of Waldur.
        bridge.config["waldur.sweep_interval"] = 0.001
        try:
            report = await diagnose()
        finally:
            bridge.config["waldur.sweep_interval"] = 3600
        assert failed(report) == ["Sweeps"], report
        assert "over half the interval" in report

        # A standby that stopped sending heartbeats (killed without a clean stop).
        await BridgeInstance.beat(f"standby-{s}", "standby-host", 4242, "", "standby", now_ms())
        await BridgeInstance.db.execute(
            "UPDATE bridge_instance SET heartbeat_at=$1 WHERE instance_id=$2",
            now_ms() - 60_000,
            f"standby-{s}",
        )
        report = await diagnose()
        assert failed(report) == ["High availability"], report
        assert "standby gone: standby-host (PID 4242, last seen 1 min ago)" in report
        await BridgeInstance.remove(f"standby-{s}")

        # Waldur logs watched events, but no web hook arrives.
        monkeypatch.setattr(diagnostics, "WEBHOOK_GRACE", 0.0)
        sim.remove_hook(next(iter(sim.hooks)))
        late = sim.add_user(f"late{s}", "Late Comer")
        sim.grant(late, project, "PROJECT.MEMBER")
        report = await diagnose()
        assert "Web hooks arrive" in failed(report), report
        assert "watched event(s)" in report
        await bridge_env.register_webhook()
        await bridge_env.sweep()

        # Removals held for longer than an admin should take.
        for user in crowd[:3]:
            sim.revoke(user, project, "PROJECT.MEMBER")
        await bridge_env.sweep()
        monkeypatch.setattr(diagnostics, "HELD_TOO_LONG", 0.0)
        report = await diagnose()
        assert "Held removals" in failed(report), report
        assert "3 waiting in 1 room(s)" in report

        # A room taken out of its organization's space.
        space = await CustomerSpace.get(org)
        assert space is not None
        await bridge.az.intent.send_state_event(
            space.room_id, EventType.SPACE_CHILD, {}, state_key=room
        )
        report = await diagnose()
        assert "Spaces consistent" in failed(report), report
        assert "1 room(s) missing from their organization's space: Checked" in report
    finally:
        await admin.close()


async def test_high_availability_check_sees_the_lock_and_a_standby_that_stops(
    bridge_env: BridgeEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """PostgreSQL: this instance holds the advisory lock (as pg_locks says), a standby process
    on the same database is seen, and once it is killed the check fails naming it."""
    pg = _postgres_url()
    async with fresh_postgres_database(pg) as database:
        bridge = await bridge_env.start(**{"appservice.database": database})
        standby_config = bridge_env.write_config(
            **{"appservice.database": database, "appservice.port": free_port()}
        )
        standby_path = tmp_path / "standby.yaml"
        standby_config.rename(standby_path)
        standby = BridgeProcess(standby_path, free_port(), tmp_path / "standby.log")
        await standby.start()
        try:

            async def ha() -> diagnostics.Check:
                checks = await diagnostics.run_diagnostics(bridge)
                return next(c for c in checks if c.name == "High availability")

            async def standby_seen() -> diagnostics.Check | None:
                check = await ha()
                return check if f"(PID {standby.pid})" in check.detail else None

            check = await wait_for(standby_seen, 60, "the standby's heartbeat")
            assert check.ok, check
            assert re.match(r"this instance holds the lock \(PostgreSQL PID \d+\)", check.detail)

            # Killed: its heartbeats stop (a shorter window than 15 s keeps the test quick; the
            # standby beats every 5 s, so 7 s still sees a live one).
            monkeypatch.setattr(diagnostics, "HEARTBEAT_VISIBLE_MS", 7000)
            assert (await ha()).ok
            await standby.kill()

            async def gone() -> diagnostics.Check | None:
                check = await ha()
                return None if check.ok else check

            check = await wait_for(gone, 20, "the standby to count as gone")
            assert "standby gone: " in check.detail and f"PID {standby.pid}" in check.detail
            assert "Restart the standby" in check.fix
        finally:
            await standby.kill()
            await bridge_env.stop()


async def test_missing_own_accounts_in_why_and_diagnose(bridge_env: BridgeEnv) -> None:
    """Template mode: a person whose Matrix account does not exist yet is "waiting" in `why`;
    `diagnose` fails while most own accounts are missing, and passes once they exist."""
    sim = bridge_env.sim
    s = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"owndiag{s}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    org = sim.add_customer("Own Org")
    project = sim.add_project(org, "Owned")
    names = [f"ann{s}", f"bo{s}", f"cy{s}"]
    for name in names:
        sim.grant(sim.add_user(name, name.title()), project, "PROJECT.MEMBER")
    await bridge_env.hs.register_user(names[0], "pw")  # only Ann has logged in
    try:
        await bridge_env.start(
            **{
                "bridge.user_mapping.mode": "template",
                "bridge.user_mapping.template": "@{username}:localhost",
                "bridge.management_room": f"#waldur_own-{s}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
            }
        )
        await bridge_env.register_webhook()
        await bridge_env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        await bridge_env.portal_room(project)

        text = (await ask(admin, mgmt, f"why bo{s} Owned", containing="Waiting"))["body"]
        assert f"Waiting: @bo{s}:localhost does not exist on the homeserver yet" in text, text
        text = (await ask(admin, mgmt, f"why ann{s} Owned", containing="ann"))["body"]
        assert "Waiting" not in text and "Room: invited" in text, text

        report = (await ask(admin, mgmt, "diagnose", timeout=30, containing="Diagnostics"))["body"]
        assert failed(report) == ["Own Matrix accounts exist"], report
        assert f"2 of 3 own account(s) do not exist yet: @bo{s}:localhost, @cy{s}:localhost" in (
            report
        )

        for name in names[1:]:
            await bridge_env.hs.register_user(name, "pw")
        report = (await ask(admin, mgmt, "diagnose", timeout=30, containing="Diagnostics"))["body"]
        assert not failed(report), report
        assert "all 3 own account(s) the bridge asked about exist" in report
    finally:
        await admin.close()


class _RateLimitedSynapse(LocalSynapse):
    """A Synapse that limits profile reads to a burst of three (Synapse's own limiter)."""

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["rc_profile"] = {"per_second": 0.1, "burst_count": 3}
        return cfg


@pytest.fixture
def limiting_homeserver(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AppserviceHomeserver]:
    """A homeserver of its own whose registration leaves the bridge rate-limited."""
    workdir = tmp_path_factory.mktemp("limited-synapse")
    as_port = free_port()
    registration = make_registration(
        as_port, {"as_token": secrets.token_hex(16), "hs_token": secrets.token_hex(16)}
    )
    registration["rate_limited"] = True
    path = write_registration(workdir / "registration.yaml", registration)
    try:
        hs = _RateLimitedSynapse(workdir, registration_path=path)
    except SynapseNotInstalled as e:
        pytest.skip(str(e))
    hs.start_blocking()
    try:
        yield AppserviceHomeserver(hs, registration, path, as_port)
    finally:
        hs.stop_blocking()


async def test_rate_limited_registration_fails_its_check(
    limiting_homeserver: AppserviceHomeserver, simulator: WaldurSimulator, tmp_path: Path
) -> None:
    env = BridgeEnv(limiting_homeserver, simulator, tmp_path)
    try:
        bridge = await env.start()
        checks = await diagnostics.run_diagnostics(bridge)
        check = next(c for c in checks if c.name == "Homeserver does not rate-limit the bridge")
        assert not check.ok, check
        assert "refused with 429" in check.detail and "rate_limited: false" in check.fix
    finally:
        await env.close()
