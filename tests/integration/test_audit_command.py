"""Admin commands an operator uses to see what happened: `audit`, `sync all --dry-run`, and
`version` agreeing with `diagnose` (real Synapse, the simulator in both generations)."""

from __future__ import annotations

import re
import secrets

import pytest

from waldur_devenv.matrix_user import MatrixTestUser

from .helpers import BridgeEnv
from .test_commands import ask


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_audit_sync_dry_run_and_versions(bridge_env: BridgeEnv) -> None:
    sim = bridge_env.sim
    suffix = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"auditor{suffix}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    org = sim.add_customer("Audit Org")
    project = sim.add_project(org, "Tracked")
    other = sim.add_project(org, "Elsewhere")
    gina = sim.add_user(f"gina{suffix}", "Gina Green")
    hal = sim.add_user(f"hal{suffix}", "Hal Hill")
    sim.grant(gina, project, "PROJECT.ADMIN")
    sim.grant(hal, project, "PROJECT.MEMBER")
    sim.grant(hal, other, "PROJECT.MEMBER")
    try:
        await bridge_env.start(
            **{
                "bridge.management_room": f"#audit-{suffix}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
            }
        )
        await bridge_env.sweep()
        mgmt = await admin.wait_for_invite(timeout=10)
        await admin.join(mgmt)
        hal_mxid = bridge_env.puppet(f"hal{suffix}")

        # A project: its invites, joins and power levels, each with the cause.
        report = (await ask(admin, mgmt, "audit Tracked", containing="Audit log"))["body"]
        assert "Tracked" in report
        assert "invited" in report and "joined" in report and "power levels" in report
        assert "PROJECT.ADMIN" in report and "PROJECT.MEMBER" in report
        assert "Elsewhere" not in report

        # A removal shows up with its cause; a person is found by Matrix ID or Waldur username.
        sim.revoke(hal, project, "PROJECT.MEMBER")
        await bridge_env.sweep()
        by_mxid = (await ask(admin, mgmt, f"audit {hal_mxid}", containing="Audit log"))["body"]
        assert "removed" in by_mxid
        assert "Tracked" in by_mxid and "Elsewhere" in by_mxid  # every room of the person
        # Names before IDs, times relative; --exact gives UTC times.
        assert f"just now · **removed** Hal Hill ({hal_mxid})" in by_mxid, by_mxid
        exact = (await ask(admin, mgmt, f"audit {hal_mxid} --exact", containing="Audit log"))[
            "body"
        ]
        assert "(UTC, newest first)" in exact and "just now" not in exact
        assert f"gina{suffix}" not in by_mxid
        by_name = (
            await ask(admin, mgmt, f"audit hal{suffix} --since 1h", containing="Audit log")
        )["body"]
        assert "removed" in by_name and "since" in by_name

        # Nothing before a date in the future; a bad --since is a clear error.
        future = (await ask(admin, mgmt, "audit Tracked --since 2999-01-01"))["body"]
        assert future.startswith("No audit entries for Tracked since 2999-01-01")
        bad = (await ask(admin, mgmt, "audit Tracked --since yesterday"))["body"]
        assert "--since takes a duration" in bad

        # sync all --dry-run works (help lists it) and changes nothing.
        sim.grant(hal, project, "PROJECT.MEMBER")
        room = await bridge_env.portal_room(project)
        before = await bridge_env.in_room(room)
        dry = (await ask(admin, mgmt, "sync all --dry-run", containing="Dry run"))["body"]
        assert "1 room(s) would change" in dry and "invite " + hal_mxid in dry
        assert "Tracked" in dry
        assert await bridge_env.in_room(room) == before

        # version and diagnose name the same spec versions.
        version = (await ask(admin, mgmt, "version"))["body"]
        diagnose = (await ask(admin, mgmt, "diagnose", timeout=30))["body"]
        spoken = re.search(r"speaks (.+?\(\d+ spec versions in all\))", version)
        assert spoken is not None, version
        assert spoken.group(1) in diagnose
    finally:
        await admin.close()
