"""The `audit` command's pure parts: --since parsing and the reply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from waldur_bridge.commands.audit import parse_since
from waldur_bridge.messages import AuditLine, audit_reply

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:30", datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
        ("2026-11-01T08:30+01:00", datetime(2026, 11, 1, 7, 30, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "7", "-3d", "3y", ""])
def test_parse_since_refuses_other_text(text: str) -> None:
    with pytest.raises(ValueError, match="--since takes a duration"):
        parse_since(text, NOW)


def _line(action: str, outcome: str = "done", **kw: str) -> AuditLine:
    return AuditLine(
        when=NOW,
        action=action,
        target=kw.get("target", "@waldur_ann:x"),
        room=kw.get("room", "Apollo"),
        cause=kw.get("cause", "role PROJECT.ADMIN"),
        outcome=outcome,
        detail=kw.get("detail", ""),
    )


def test_audit_reply_lists_actions_with_causes_and_outcomes() -> None:
    reply = audit_reply(
        "Apollo",
        None,
        [
            _line("kick", "held", detail="mass removal", cause="no role"),
            _line("invite"),
            _line("power-levels", target="@waldur_ann:x=50"),
            _line("join", "failed", detail="M_FORBIDDEN"),
        ],
        4,
    )
    lines = reply.markdown.splitlines()
    assert lines[0] == "**Audit log of Apollo** (UTC, newest first): 4 entries"
    assert lines[1] == "- 2026-11-30 12:00 · **removed** @waldur_ann:x · Apollo · no role · " + (
        "held for an admin: mass removal"
    )
    assert "**invited**" in lines[2] and "role PROJECT.ADMIN" in lines[2]
    assert "**power levels** @waldur_ann:x=50" in lines[3]
    assert lines[4].endswith("FAILED: M_FORBIDDEN")
    assert "<strong>removed</strong>" in reply.html and "<ul>" in reply.html


def test_audit_reply_escapes_names_and_says_when_empty_or_cut() -> None:
    empty = audit_reply("<b>x</b>", "2026-11-01 00:00 UTC", [], 0)
    assert empty.markdown == "No audit entries for \\<b\\>x\\</b\\> since 2026-11-01 00:00 UTC."
    assert "<b>" not in empty.html
    many = audit_reply("Apollo", None, [_line("invite")] * 40, 120)
    assert many.markdown.count("\n- ") == 30
    assert "Showing the newest 30" in many.markdown and "120 entries" in many.markdown
