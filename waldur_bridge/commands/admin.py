"""Admin commands, in the management room or a direct chat with the bot."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

import mautrix
from mautrix.bridge.commands import command_handler
from mautrix.errors import MatrixRequestError

from .. import __version__, export, identity, messages as fmt
from ..db import AuditEntry, HeldRemoval, PortalMember, User as DBUser, portal as states
from ..diagnostics import format_report, run_diagnostics, spec_versions
from ..duplicates import DuplicateFinder, Leftover
from ..portal import Portal
from ..puppet import Puppet
from ..sync.planner import Invite, Join, Kick, Plan, SetName, SetPowerLevels, SetTopic
from ..sync.policy import canonical_uuid, desired_team
from ..waldur import Project, User, WaldurError, WaldurNotFound
from .handler import (
    SECTION_BRIDGE,
    SECTION_PEOPLE,
    SECTION_ROOMS,
    SECTION_SAFETY,
    CommandError,
    WaldurCommandEvent,
    parse_args,
)

log = logging.getLogger("waldur.commands.admin")

_UUID = re.compile(r"^[0-9a-fA-F]{8}(-?[0-9a-fA-F]{4}){3}-?[0-9a-fA-F]{12}$")
MAX_LISTED = 50


def admin_command(**kwargs: Any):
    return command_handler(management_only=True, needs_admin=True, needs_auth=False, **kwargs)


def _md(text: object) -> str:
    return fmt.escape_markdown(str(text))


def admin_help() -> fmt.Reply:
    lines = [
        "**Admin commands** (here, without a prefix):",
        "",
        "- `rooms [--state active|disabled|error] [--customer <org>] [text]`: list portals",
        "- `create <project>`: create the project's room now",
        "- `create-all [--customer <org>] [--dry-run]`: rooms for every project without one",
        "- `sync <project|organization|all> [--dry-run]`: reconcile now (an organization:"
        " its rooms and its space), or show what would change",
        "- `spaces [text]`: organization spaces, with their rooms and members",
        "- `disable <project> [--export] [--reason <text>]`: close a room, remove its members",
        "- `reactivate <project>`: open a disabled room again and sync it",
        "- `retry <project>`: retry a room in the error state",
        "- `duplicates [--tidy]`: find duplicate project rooms (and close them)",
        "- `export <project>`: export the room's history",
        "- `link <waldur user> <matrix id>`, `unlink <matrix id|waldur user>`",
        "- `whois <matrix id|waldur user>`: how a person maps between Waldur and Matrix",
        "- `invite <person> <project>`: invite again a person who declined (they need a role)",
        "- `held`, `approve <project|all>`, `reject <project|all>`: mass removals on hold",
        "- `audit <project|person> [--since 7d|2026-11-01] [--exact]`: who was added or removed,"
        " and why",
        "- `why <person> <project> [--exact]`: why a person is in a room (or not), at their level",
        "- `approve-space <organization>`: carry out removals held in a space",
        "- `diagnose`: live checks of the homeserver, Waldur and the bridge",
        "- `version`, `help`",
        "",
        "Projects are named by UUID, slug or name (quote names with spaces).",
    ]
    text = "\n".join(lines)
    from mautrix.util import markdown

    return fmt.Reply(text, markdown.render(text))


# region lookups


async def resolve_project(evt: WaldurCommandEvent, query: str) -> Project:
    """A project by UUID, slug or name; a clear answer when none or several match."""
    client = evt.bridge.waldur
    if _UUID.match(query):
        try:
            return await client.get_project(canonical_uuid(query))
        except WaldurNotFound:
            raise CommandError(f"No project with UUID `{_md(query)}` in Waldur.") from None
    try:
        projects = await client.list_projects()
    except WaldurError as e:
        raise CommandError(f"Could not read projects from Waldur: {_md(e)}") from e
    folded = query.casefold()
    for match in (
        [p for p in projects if p.slug == query],
        [p for p in projects if p.name.casefold() == folded],
        [p for p in projects if folded in p.name.casefold()],
    ):
        if len(match) == 1:
            return match[0]
        if len(match) > 1:
            listed = "\n".join(
                f"- {_md(p.name)} ({_md(p.customer_name)}): `{p.uuid}`" for p in match[:10]
            )
            raise CommandError(
                f"`{_md(query)}` matches {len(match)} projects; name one by UUID:\n\n{listed}"
            )
    raise CommandError(f"No project matches `{_md(query)}`.")


async def resolve_user(evt: WaldurCommandEvent, query: str) -> User:
    client = evt.bridge.waldur
    try:
        if _UUID.match(query):
            return await client.get_user(canonical_uuid(query))
        matches = [u for u in await client.list_users() if u.username == query]
    except WaldurNotFound:
        raise CommandError(f"No Waldur user with UUID `{_md(query)}`.") from None
    except WaldurError as e:
        raise CommandError(f"Could not read users from Waldur: {_md(e)}") from e
    if not matches:
        raise CommandError(f"No Waldur user with username `{_md(query)}`.")
    return matches[0]


async def resolve_person(evt: WaldurCommandEvent, query: str) -> User:
    """A Waldur user by Matrix ID (puppet, link or template), username or UUID."""
    if not query.startswith("@"):
        return await run(evt, resolve_user(evt, query))
    from .room import waldur_user_of

    user_uuid = await waldur_user_of(evt, query)
    if user_uuid is None:
        raise CommandError(f"{_md(query)} is not mapped to any Waldur user.")
    return await run(evt, evt.bridge.waldur.get_user(user_uuid))


async def portal_for(evt: WaldurCommandEvent, query: str) -> tuple[Project | None, Portal]:
    """A portal by project; also finds portals of deleted projects by UUID or stored name."""
    try:
        project = await resolve_project(evt, query)
    except CommandError:
        for portal in await Portal.all():
            if query in (portal.project_uuid, portal.name) or (
                _UUID.match(query) and canonical_uuid(query) == portal.project_uuid
            ):
                return None, portal
        raise
    portal = await Portal.get_by_project(project.uuid)
    if portal is None or not portal.room_id:
        raise CommandError(f"{_md(project.name)} has no room. Use `create {project.uuid}`.")
    return project, portal


def one_arg(evt: WaldurCommandEvent, usage: str) -> tuple[str, dict[str, str | bool]]:
    positional, options = parse_args(evt.args)
    if len(positional) != 1:
        raise CommandError(f"Usage: `{usage}`")
    return positional[0], options


async def run(evt: WaldurCommandEvent, coro: Any) -> Any:
    try:
        return await coro
    except CommandError:
        raise
    except WaldurError as e:
        raise CommandError(f"Waldur did not answer as needed: {_md(e)}") from e
    except TimeoutError as e:
        raise CommandError("That took too long; the bridge goes on in the background.") from e


def describe_plan(plan: Plan) -> str:
    lines = []
    for action in plan.actions:
        if isinstance(action, Invite):
            lines.append(f"- invite {action.user_id} ({_md(action.cause)})")
        elif isinstance(action, Join):
            lines.append(f"- join {action.user_id}")
        elif isinstance(action, Kick):
            lines.append(f"- remove {action.user_id} ({_md(action.cause)})")
        elif isinstance(action, SetPowerLevels):
            lines.append(f"- power levels: {_md(action.cause)}")
        elif isinstance(action, SetName):
            lines.append(f"- rename to {_md(action.name)}")
        elif isinstance(action, SetTopic):
            lines.append(f"- set topic to {_md(action.topic)}")
    lines += [f"- would hold removal of {k.user_id}" for k in plan.held]
    lines += [f"- dry run: would remove {k.user_id}" for k in plan.dry_run]
    return "\n".join(lines) or "- nothing to change"


# endregion
# region commands


@admin_command(
    name="rooms", help_section=SECTION_ROOMS, help_text="List portals", help_args="[--state s]"
)
async def rooms(evt: WaldurCommandEvent) -> None:
    positional, options = parse_args(evt.args)
    state = options.get("state")
    customer = options.get("customer")
    portals = await Portal.all(state if isinstance(state, str) else None)
    text = " ".join(positional).casefold()
    if isinstance(customer, str):
        portals = [p for p in portals if customer in (p.customer_uuid, canonical_uuid(customer))]
    if text:
        portals = [p for p in portals if text in p.name.casefold()]
    if not portals:
        await evt.reply("No portals match.")
        return
    portals.sort(key=lambda p: (p.state, p.name.casefold()))
    declined = await PortalMember.declined_counts()
    lines = [f"**{len(portals)} portal(s)**", ""]
    for p in portals[:MAX_LISTED]:
        error = f" — {_md(p.error[:120])}" if p.error else ""
        name = _md(p.name) or "(unnamed)"
        said_no = f" · {declined[p.project_uuid]} declined" if declined.get(p.project_uuid) else ""
        lines.append(f"- {name} `{p.project_uuid}` {p.state} {p.room_id or ''}{said_no}{error}")
    if len(portals) > MAX_LISTED:
        lines.append(f"- … and {len(portals) - MAX_LISTED} more (narrow with --state or text)")
    await evt.reply("\n".join(lines))


@admin_command(name="create", help_section=SECTION_ROOMS, help_text="Create a project's room")
async def create(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "create <project>")
    project = await run(evt, resolve_project(evt, query))
    portal = await Portal.get_by_project(project.uuid)
    if portal is not None and portal.room_id and portal.state != states.ERROR:
        await evt.reply(
            f"{_md(project.name)} already has a room: {portal.room_id} ({portal.state})."
        )
        return
    await run(evt, evt.bridge.sync.create_portal(project.uuid, wait=True))
    portal = await Portal.get_by_project(project.uuid)
    if portal is None or not portal.room_id:
        error = _md(portal.error) if portal and portal.error else "unknown reason"
        raise CommandError(f"No room for **{_md(project.name)}**: {error}")
    await evt.reply(f"Created the room of **{_md(project.name)}**: {portal.room_id}")


@admin_command(name="create-all", help_section=SECTION_ROOMS, help_text="Rooms for every project")
async def create_all(evt: WaldurCommandEvent) -> None:
    _, options = parse_args(evt.args)
    customer = options.get("customer")
    try:
        projects = await evt.bridge.waldur.list_projects(
            canonical_uuid(customer) if isinstance(customer, str) else None
        )
    except (WaldurError, ValueError) as e:
        raise CommandError(f"Could not list projects: {_md(e)}") from e
    existing = {p.project_uuid for p in await Portal.all() if p.room_id}
    missing = [p for p in projects if p.uuid not in existing]
    if options.get("dry-run"):
        listed = "\n".join(f"- {_md(p.name)} `{p.uuid}`" for p in missing[:MAX_LISTED])
        more = f"\n- … and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        await evt.reply(f"Would create {len(missing)} room(s):\n\n{listed}{more}")
        return
    for project in missing:
        await evt.bridge.sync.create_portal(project.uuid)
    await evt.reply(f"Creating {len(missing)} room(s) in the background; `rooms` shows progress.")


async def preview_all(evt: WaldurCommandEvent) -> str:
    """What a sweep would change in every room, from one bulk read of Waldur; nothing is done."""
    service = evt.bridge.sync
    snapshot = await service.directory.snapshot()
    changes: list[str] = []
    unchanged = 0
    unlisted: list[str] = []
    portals = [p for p in await Portal.all() if p.room_id and p.state != states.DISABLED]
    for portal in sorted(portals, key=lambda p: p.name.casefold()):
        if portal.project_uuid not in snapshot.projects:
            # Absent from a listing is not proof of deletion: a real sync reads it directly.
            unlisted.append(f"- {_md(portal.name)} `{portal.project_uuid}`")
            continue
        plan = await service.reconciler.preview(portal, snapshot.view(portal.project_uuid))
        if plan.actions or plan.held or plan.dry_run:
            changes.append(f"**{_md(portal.name)}**\n{describe_plan(plan)}")
        else:
            unchanged += 1
    with_room = {p.project_uuid for p in await Portal.all() if p.room_id}
    to_create = [
        p
        for p in snapshot.projects.values()
        if service.wants_portal(p) and p.uuid not in with_room
    ]
    lines = [
        f"**Dry run of a full sync**: {len(changes)} room(s) would change, {unchanged} are "
        f"in step, {len(to_create)} room(s) would be created."
    ]
    lines += ["", *changes[:MAX_LISTED]] if changes else []
    if len(changes) > MAX_LISTED:
        lines.append(f"… and {len(changes) - MAX_LISTED} more rooms with changes")
    if unlisted:
        lines += ["", "Not in Waldur's project listing (a sync checks each directly):", *unlisted]
    return "\n".join(lines)


@admin_command(name="sync", help_section=SECTION_ROOMS, help_text="Reconcile now")
async def sync(evt: WaldurCommandEvent) -> None:
    query, options = one_arg(evt, "sync <project|all> [--dry-run]")
    service = evt.bridge.sync
    if query == "all":
        if options.get("dry-run"):
            await evt.reply(await run(evt, preview_all(evt)))
            return
        queued = await run(evt, service.sweep())
        await evt.reply(f"Sweep done: {queued} portal(s) queued for reconcile.")
        return
    try:
        project, portal = await portal_for(evt, query)
    except CommandError:
        # Not a project: an organization's rooms and its space.
        from .spaces import resolve_customer, sync_organization

        customer = await resolve_customer(evt, query)
        if customer is None or options.get("dry-run"):
            raise
        await sync_organization(evt, customer)
        return
    evt.bridge.sync.drift.forget(portal.room_id or "")
    name = _md(project.name if project else portal.name)
    if options.get("dry-run"):
        try:
            plan = await run(evt, service.preview(portal.project_uuid))
        except ValueError as e:
            raise CommandError(str(e)) from e
        await evt.reply(f"**{name}**, dry run:\n\n{describe_plan(plan)}")
        return
    await run(evt, service.sync_now(portal.project_uuid))
    await evt.reply(f"**{name}** is in sync with Waldur.")


@admin_command(name="disable", help_section=SECTION_ROOMS, help_text="Close a room")
async def disable(evt: WaldurCommandEvent) -> None:
    query, options = one_arg(evt, "disable <project> [--export] [--reason <text>]")
    project, portal = await portal_for(evt, query)
    if portal.state == states.DISABLED:
        raise CommandError(f"{_md(portal.name)} is already disabled.")
    if options.get("export"):
        await export_portal(evt, portal)
    reason = options.get("reason")
    text = f"an admin closed it ({reason})" if isinstance(reason, str) else "an admin closed it"
    result = await evt.bridge.sync.disable(portal, text)
    await AuditEntry(
        action="disable",
        outcome="done",
        project_uuid=portal.project_uuid,
        room_id=portal.room_id,
        target=None,
        cause=f"admin {evt.sender.mxid}: {text}",
    ).insert()
    await evt.reply(
        f"Disabled **{_md(portal.name)}**: {result.outcome.done} action(s) done, "
        f"{result.outcome.failed} failed."
    )


@admin_command(name="reactivate", help_section=SECTION_ROOMS, help_text="Reopen a room")
async def reactivate(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "reactivate <project>")
    project, portal = await portal_for(evt, query)
    if project is None:
        raise CommandError("That project no longer exists in Waldur; its room stays closed.")
    if portal.state != states.DISABLED:
        raise CommandError(f"{_md(portal.name)} is {portal.state}, not disabled.")
    await run(evt, evt.bridge.sync.reactivate(portal))
    await portal.send_reply(fmt.room_reopened_notice())
    await evt.reply(f"Reactivated **{_md(project.name)}** and synced its members.")


@admin_command(name="retry", help_section=SECTION_ROOMS, help_text="Retry a failed room")
async def retry(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "retry <project>")
    project = await run(evt, resolve_project(evt, query))
    portal = await Portal.get_by_project(project.uuid)
    if portal is None or portal.state not in (states.ERROR, states.CREATING):
        state = portal.state if portal else "no room"
        raise CommandError(f"{_md(project.name)} is not in the error state ({state}).")
    await run(evt, evt.bridge.sync.create_portal(project.uuid, wait=True))
    portal = await Portal.get_by_project(project.uuid)
    assert portal is not None
    await evt.reply(f"**{_md(project.name)}**: {portal.state}, room {portal.room_id}.")


async def export_portal(evt: WaldurCommandEvent, portal: Portal) -> None:
    bridge = evt.bridge
    room_export = await export.export_room(
        bridge.az.intent,
        portal.room_id,
        project={
            "uuid": portal.project_uuid,
            "name": portal.name,
            "customer": portal.customer_uuid,
        },
    )
    result = await export.deliver_export(
        room_export,
        destination=bridge.config["bridge.history_export"],
        intent=bridge.az.intent,
    )
    await AuditEntry(
        action="export",
        outcome="done",
        project_uuid=portal.project_uuid,
        room_id=portal.room_id,
        cause=f"admin {evt.sender.mxid}",
    ).insert()
    # The export is linked here only: the management room is admin-only.
    await evt.reply(export.format_export_notice(result, portal.name))


@admin_command(name="export", help_section=SECTION_ROOMS, help_text="Export a room's history")
async def export_(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "export <project>")
    _, portal = await portal_for(evt, query)
    await export_portal(evt, portal)


@admin_command(
    name="link", help_section=SECTION_PEOPLE, help_text="Map a Waldur user to a Matrix account"
)
async def link(evt: WaldurCommandEvent) -> None:
    positional, _ = parse_args(evt.args)
    if len(positional) != 2:
        raise CommandError("Usage: `link <waldur user> <matrix id>`")
    user = await run(evt, resolve_user(evt, positional[0]))
    mxid = positional[1]
    if not identity.is_valid_mxid(mxid) and not mxid.startswith("@"):
        raise CommandError(f"`{_md(mxid)}` is not a Matrix ID.")
    if mxid == evt.az.bot_mxid or await Puppet.get_by_mxid(mxid) is not None:
        raise CommandError("That is the bot or a puppet; link a person's own account.")
    other = await DBUser.get_by_waldur_user(user.uuid)
    if other is not None and other.mxid != mxid:
        raise CommandError(f"{_md(user.username)} is linked to {other.mxid}; `unlink` it first.")
    target = await DBUser.get_by_mxid(mxid)
    if target is not None and target.waldur_user_uuid not in (None, user.uuid):
        raise CommandError(f"{mxid} is linked to another Waldur user; `unlink` it first.")
    target = target or DBUser(mxid=mxid)
    await target.link(user.uuid, evt.sender.mxid)
    evt.bridge.sync.reconciler.forget_links()
    evt.bridge.sync.directory.mark_user_dirty(user.uuid)
    await evt.bridge.sync.handle_hint_for_user(user.uuid, "link")
    await evt.reply(
        f"Linked {_md(user.full_name or user.username)} (`{user.username}`) to {mxid}."
    )


@admin_command(name="unlink", help_section=SECTION_PEOPLE, help_text="Remove a link")
async def unlink(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "unlink <matrix id|waldur user>")
    if query.startswith("@"):
        target = await DBUser.get_by_mxid(query)
    else:
        user = await run(evt, resolve_user(evt, query))
        target = await DBUser.get_by_waldur_user(user.uuid)
    if target is None or target.waldur_user_uuid is None:
        raise CommandError(f"`{_md(query)}` is not linked.")
    user_uuid = target.waldur_user_uuid
    await target.link(None, None)
    evt.bridge.sync.reconciler.forget_links()
    await evt.bridge.sync.handle_hint_for_user(user_uuid, "unlink")
    await evt.reply(f"Unlinked {target.mxid}.")


@admin_command(name="whois", help_section=SECTION_PEOPLE, help_text="How a person maps")
async def whois(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "whois <matrix id|waldur user>")
    user = await resolve_person(evt, query)
    reconciler = evt.bridge.sync.reconciler
    mxid, puppet = await reconciler.matrix_account(user.uuid, user.username, user.email)
    how = (
        "puppet"
        if puppet
        else "linked account"
        if await DBUser.get_by_waldur_user(user.uuid)
        else "template"
    )
    rows = await PortalMember.db.fetch(
        "SELECT project_uuid, left_voluntarily FROM portal_member WHERE mxid=$1", mxid or ""
    )
    rooms_ = []
    for row in rows:
        portal = await Portal.get_by_project(row["project_uuid"])
        if portal is not None:
            rooms_.append(f"{_md(portal.name)}{' (declined)' if row['left_voluntarily'] else ''}")
    account = ""
    if mxid and mxid in evt.bridge.sync.accounts.missing:
        account = "; no such account on the homeserver yet"
    lines = [
        f"**{_md(user.full_name or user.username)}** (`{user.username}`, `{user.uuid}`)",
        f"- active in Waldur: {'yes' if user.is_active else 'no'}",
        f"- Matrix: {mxid or 'no valid ID'} ({how}{account})",
        f"- rooms: {', '.join(rooms_) or 'none'}",
    ]
    await evt.reply("\n".join(lines))


@admin_command(
    name="invite",
    help_section=SECTION_PEOPLE,
    help_text="Invite a person who declined again",
    help_args="<person> <project>",
)
async def invite(evt: WaldurCommandEvent) -> None:
    positional, _ = parse_args(evt.args)
    if len(positional) != 2:
        raise CommandError("Usage: `invite <waldur user|matrix id> <project>`")
    user = await resolve_person(evt, positional[0])
    project, portal = await portal_for(evt, positional[1])
    if project is None or not portal.is_active:
        raise CommandError(f"The room of {_md(portal.name)} is not active.")
    mxid, _ = await evt.bridge.sync.reconciler.matrix_account(user.uuid, user.username, user.email)
    if mxid is None:
        raise CommandError(f"{_md(user.username)} has no valid Matrix ID under the template.")
    view = await run(evt, evt.bridge.sync.directory.read_project(project.uuid))
    team = desired_team(
        view.project, view.grants, view.users, evt.bridge.sync.policy, datetime.now(UTC)
    )
    name = _md(user.full_name or user.username)
    if user.uuid not in team:
        raise CommandError(
            f"{name} holds no role on {_md(project.name)} in Waldur, so the bridge does not"
            " invite them. Grant a role in Waldur, or invite them by hand as a guest."
        )
    cleared = await evt.bridge.sync.ask_back(portal, mxid, str(evt.sender.mxid))
    note = "their decline is forgotten; " if cleared else ""
    await evt.reply(
        f"{name} ({mxid}): {note}the room {_md(project.name)} is being brought up to date."
    )


@admin_command(name="held", help_section=SECTION_SAFETY, help_text="Mass removals on hold")
async def held(evt: WaldurCommandEvent) -> None:
    items = await HeldRemoval.all()
    if not items:
        await evt.reply("No removals are on hold.")
        return
    by_project: dict[str, list[HeldRemoval]] = {}
    for item in items:
        by_project.setdefault(item.project_uuid, []).append(item)
    lines = ["**Removals on hold**", ""]
    for project_uuid, group in by_project.items():
        portal = await Portal.get_by_project(project_uuid)
        name = _md(portal.name if portal else project_uuid)
        people = ", ".join(h.mxid for h in group)
        lines.append(f"- **{name}** `{project_uuid}`: {len(group)} — {people}")
    lines += [
        "",
        "`approve <project|all>` removes them (after a fresh check); `reject` keeps them.",
    ]
    await evt.reply("\n".join(lines))


async def _held_projects(evt: WaldurCommandEvent, query: str) -> list[str]:
    if query == "all":
        return sorted({h.project_uuid for h in await HeldRemoval.all()})
    _, portal = await portal_for(evt, query)
    return [portal.project_uuid]


@admin_command(name="approve", help_section=SECTION_SAFETY, help_text="Carry out held removals")
async def approve(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "approve <project|all>")
    done = []
    for project_uuid in await _held_projects(evt, query):
        result = await run(evt, evt.bridge.sync.approve_held(project_uuid))
        kicks = [a for a in result.plan.actions if isinstance(a, Kick)]
        done.append(f"- {project_uuid}: removed {len(kicks)}")
    await evt.reply("\n".join(["**Approved**", "", *done]) if done else "Nothing on hold.")


@admin_command(name="reject", help_section=SECTION_SAFETY, help_text="Keep the people held")
async def reject(evt: WaldurCommandEvent) -> None:
    query, _ = one_arg(evt, "reject <project|all>")
    kept: list[str] = []
    for project_uuid in await _held_projects(evt, query):
        kept += await evt.bridge.sync.reject_held(project_uuid)
    if not kept:
        await evt.reply("Nothing on hold.")
        return
    await evt.reply(
        f"Kept {len(kept)} member(s): {', '.join(kept)}. They stay until an admin removes "
        "them; the bridge treats them like people a moderator added."
    )


@admin_command(
    name="duplicates",
    help_section=SECTION_ROOMS,
    help_text="Find (and with --tidy close) duplicate project rooms",
    help_args="[--tidy]",
)
async def duplicates(evt: WaldurCommandEvent) -> None:
    _, options = parse_args(evt.args)
    finder = DuplicateFinder(evt.bridge)
    try:
        leftovers = await finder.find()
    except MatrixRequestError as e:
        raise CommandError(f"Could not list the bot's rooms: {_md(e)}") from e
    if not options.get("tidy"):
        await evt.send(fmt.duplicates_report([_listed(x) for x in leftovers], tidy_hint=True))
        return
    closed = []
    for leftover in (x for x in leftovers if x.tidiable):
        try:
            done = await finder.tidy(leftover, f"admin {evt.sender.mxid}")
        except MatrixRequestError as e:
            raise CommandError(f"Could not close {leftover.room_id}: {_md(e)}") from e
        closed.append(
            (leftover.room_id, leftover.project_name, len(done.removed), done.alias_moved)
        )
    skipped = sum(1 for x in leftovers if not x.tidiable)
    await evt.send(fmt.duplicates_tidied_reply(closed, skipped))


def _listed(x: Leftover) -> tuple[str, str, str, str | None, bool]:
    return (x.room_id, x.project_name, x.project_uuid, x.kept_room_id, x.holds_alias)


@admin_command(name="diagnose", help_section=SECTION_BRIDGE, help_text="Live checks")
async def diagnose(evt: WaldurCommandEvent) -> None:
    await evt.reply(format_report(await run_diagnostics(evt.bridge)))


@admin_command(name="version", help_section=SECTION_BRIDGE, help_text="Versions")
async def version(evt: WaldurCommandEvent) -> None:
    try:
        versions = await evt.az.intent.versions()
        server = spec_versions(versions.versions)
    except Exception as e:
        server = f"unknown ({e})"
    await evt.reply(
        f"waldur-matrix-bridge {__version__} (mautrix-python {mautrix.__version__}); "
        f"homeserver speaks {server}"
    )


# endregion

# The audit command lives in its own module; importing it registers it.
from . import audit as _audit, why as _why  # noqa: E402, F401
