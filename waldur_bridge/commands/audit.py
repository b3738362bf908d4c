"""The admin command ``audit <project|person> [--since <duration or date>]``: read the audit log
(every invite, join, removal and power-level change with its cause) from the management room."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from mautrix.types import UserID

from .. import messages as fmt
from ..db import AuditEntry
from ..portal import Portal
from ..puppet import Puppet
from .admin import admin_command, portal_for, resolve_user, run
from .handler import SECTION_SAFETY, CommandError, WaldurCommandEvent, parse_args

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
USAGE = "audit <project|person> [--since 7d|12h|2026-11-01] [--exact]"
LIMIT = 30


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` back from now, or an ISO date or date-time (UTC if no
    zone is given). Raises ValueError with a message for people."""
    now = now or datetime.now(UTC)
    text = text.strip()
    match = _DURATION.match(text.lower())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since takes a duration (30m, 12h, 7d, 2w) or a date (2026-11-01), not {text!r}."
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when


async def _named(target: str) -> str:
    """A puppet's Matrix ID with its display name first ("Ann Lee (@waldur_ann:x)"); other
    targets (own accounts, power-level lists) as they are."""
    if not target.startswith("@") or "=" in target:
        return target
    puppet = await Puppet.get_by_mxid(UserID(target))
    if puppet is None or not puppet.displayname:
        return target
    return f"{puppet.displayname} ({target})"


@admin_command(
    name="audit",
    help_section=SECTION_SAFETY,
    help_text="Membership changes with their causes",
    help_args="<project|person> [--since 7d] [--exact]",
)
async def audit(evt: WaldurCommandEvent) -> None:
    positional, options = parse_args(evt.args)
    if len(positional) != 1:
        raise CommandError(f"Usage: `{USAGE}`")
    query = positional[0]
    since_opt = options.get("since")
    since: datetime | None = None
    if since_opt is not None:
        if not isinstance(since_opt, str):
            raise CommandError(f"Usage: `{USAGE}`")
        try:
            since = parse_since(since_opt)
        except ValueError as e:
            raise CommandError(str(e)) from None
    since_ms = int(since.timestamp() * 1000) if since else None

    project_uuid: str | None = None
    target: str | None = None
    if query.startswith("@"):
        target = subject = query
    else:
        try:
            project, portal = await portal_for(evt, query)
        except CommandError:
            # Not a project: a Waldur user (username or UUID), shown by their Matrix account.
            user = await run(evt, resolve_user(evt, query))
            mxid, _ = await evt.bridge.sync.reconciler.matrix_account(
                user.uuid, user.username, user.email
            )
            if not mxid:
                raise CommandError(f"{query} has no Matrix account the bridge manages.") from None
            target = mxid
            subject = f"{user.full_name or user.username} ({mxid})"
        else:
            project_uuid = portal.project_uuid
            subject = project.name if project else portal.name
    entries, total = await AuditEntry.search(
        project_uuid=project_uuid, target=target, since_ms=since_ms, limit=LIMIT
    )
    names: dict[str, str] = {}
    for entry in entries:
        key = entry.project_uuid or ""
        if key not in names:
            found = await Portal.get_by_project(key) if key else None
            names[key] = found.name if found and found.name else (key or "(no room)")
    people: dict[str, str] = {}
    for entry in entries:
        if entry.target and entry.target not in people:
            people[entry.target] = await _named(entry.target)
    lines = [
        fmt.AuditLine(
            when=datetime.fromtimestamp(entry.ts / 1000, UTC),
            action=entry.action,
            target=people.get(entry.target or "", entry.target),
            room=names[entry.project_uuid or ""],
            cause=entry.cause,
            outcome=entry.outcome,
            detail=entry.detail,
        )
        for entry in entries
    ]
    since_label = since.strftime("%Y-%m-%d %H:%M UTC") if since else None
    # Relative times ("3 h ago") read best in a chat; --exact gives UTC times to the minute.
    now = None if options.get("exact") else datetime.now(UTC)
    await evt.send(fmt.audit_reply(subject, since_label, lines, total, now))
