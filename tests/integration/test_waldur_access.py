"""A rejected Waldur token: one log line and one management-room notice when access is lost,
the same when it is back, `diagnose` says so, and the polling loops stay quiet meanwhile."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import pytest

from waldur_devenv.matrix_user import MatrixTestUser

from .helpers import BridgeEnv, wait_for
from .test_commands import ask


def notice_with(text: str):
    def match(event: dict[str, Any]) -> bool:
        return (
            event.get("sender", "").startswith("@waldurbot:")
            and event.get("content", {}).get("msgtype") == "m.notice"
            and text in event["content"].get("body", "")
        )

    return match


def lines_with(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "waldur.access" and text in r.getMessage()]


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_rejected_token_is_reported_once_per_change(
    bridge_env: BridgeEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    suffix = secrets.token_hex(3)
    admin_id, token = await bridge_env.hs.register_user(f"access{suffix}", "pw")
    admin = MatrixTestUser(bridge_env.hs.url, admin_id, token)
    try:
        bridge = await bridge_env.start(
            **{
                "bridge.management_room": f"#access-{suffix}:localhost",
                "bridge.permissions": {"*": "user", admin_id: "admin"},
                "waldur.events.interval": 0.2,
            }
        )
        await bridge_env.sweep()
        mgmt = await admin.wait_for_invite(timeout=20)
        await admin.join(mgmt)
        await admin.mark()

        # What Waldur answers a wrong or revoked token, on every path.
        rule = bridge_env.sim.faults.fail("/api/", status=401, body='{"detail":"Invalid token."}')
        lost = await admin.wait_for_event(mgmt, notice_with("Waldur access lost"), timeout=30)
        assert "waldur.token" in lost["content"]["body"]
        poller = bridge.sync.poller
        failures = poller.errors
        await wait_for(lambda: _true(poller.errors >= failures + 3), 60, "three failed polls")
        lost_lines = lines_with(caplog, "Waldur access lost")
        assert len(lost_lines) == 1, [r.getMessage() for r in lost_lines]
        assert lost_lines[0].levelno == logging.ERROR
        assert "waldur.token" in lost_lines[0].getMessage()
        # The loops' own lines for each failed try stay at DEBUG. (The start-up report of
        # rooms left by earlier tests on the shared homeserver is not about access.)
        noisy = [
            r.getMessage()
            for r in caplog.records
            if r.levelno >= logging.WARNING
            and r.name.startswith("waldur.sync")
            and "duplicate project room" not in r.getMessage()
        ]
        assert noisy == [], noisy

        report = (await ask(admin, mgmt, "diagnose", timeout=30))["body"]
        assert "Waldur refused the token" in report, report
        assert "the sync loops lost access (token rejected)" in report, report
        assert bridge_env.sim.staff_token not in report

        bridge_env.sim.faults.remove(rule)
        await admin.wait_for_event(mgmt, notice_with("Waldur access is back"), timeout=30)
        assert len(lines_with(caplog, "Waldur access is back")) == 1
        assert len(lines_with(caplog, "Waldur access lost")) == 1
    finally:
        await admin.close()


async def _true(value: bool) -> bool:
    return value
