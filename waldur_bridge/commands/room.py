"""Room commands in portals: !help, !status, !orders, !members.

Data is shown only to a sender who maps to an active Waldur user holding an active, unexpired
qualifying role on the room's project (or its organization): the same rule that decides room
membership, read fresh from Waldur for every command.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from mautrix.bridge.commands import command_handler

from .. import identity, messages as fmt
from ..db import PortalMember, User as DBUser
from ..puppet import Puppet
from ..sync.directory import ProjectGone, ProjectView
from ..sync.policy import TeamMember, desired_team
from ..waldur import WaldurAuthError, WaldurError, WaldurProtocolError, WaldurRequestError
from .handler import SECTION_ROOM, WaldurCommandEvent

log = logging.getLogger("waldur.commands.room")

PENDING_ORDER_STATES = (
    "pending-consumer",
    "pending-provider",
    "pending-project",
    "pending-start-date",
)
IN_PROGRESS_STATES = ("Creating", "Updating", "Terminating")


async def waldur_user_of(evt: WaldurCommandEvent, mxid: str) -> str | None:
    """The Waldur user a Matrix account speaks for: a puppet, a link, or the template."""
    puppet = await Puppet.get_by_mxid(mxid)
    if puppet is not None:
        return puppet.waldur_user_uuid
    linked = await DBUser.get_by_mxid(mxid)
    if linked is not None and linked.waldur_user_uuid:
        return linked.waldur_user_uuid
    config = evt.bridge.config
    if config["bridge.user_mapping.mode"] != "template":
        return None
    directory = evt.bridge.sync.directory
    template = config["bridge.user_mapping.template"]
    for uuid, user in directory.users.items():
        if (
            identity.template_mxid(
                template,
                username=user.username,
                user_uuid=uuid,
                email=directory.emails.get(uuid, ""),
            )
            == mxid
        ):
            return uuid
    return None


def problem_of(error: WaldurError) -> str:
    """How a Waldur call failed, as error_reply's key: only outages are "could not reach"."""
    if isinstance(error, WaldurAuthError):
        return "refused"
    if isinstance(error, WaldurRequestError):
        return "rejected"
    if isinstance(error, WaldurProtocolError):
        return "garbled"
    return "unreachable"


class Access:
    """The outcome of the access check for one command."""

    def __init__(self, view: ProjectView, team: dict[str, TeamMember]) -> None:
        self.view = view
        self.team = team


async def check_access(evt: WaldurCommandEvent) -> Access | None:
    """Reply and return None unless the sender may see this project's data."""
    portal = evt.portal
    if portal is None or not portal.is_active:
        await evt.send(fmt.not_linked_reply())
        return None
    user_uuid = await waldur_user_of(evt, evt.sender.mxid)
    try:
        view = await evt.bridge.sync.directory.read_project(portal.project_uuid)
    except ProjectGone:
        await evt.send(fmt.not_linked_reply())
        return None
    except WaldurError as e:
        log.warning("Access check for %s failed: %s", evt.sender.mxid, e)
        await evt.send(fmt.error_reply(evt.command, problem_of(e)))
        return None
    team = desired_team(
        view.project, view.grants, view.users, evt.bridge.sync.policy, datetime.now(UTC)
    )
    if user_uuid is None or user_uuid not in team:
        if not view.complete and user_uuid is not None:
            # Part of Waldur's answer is missing: say so rather than deny a rightful member.
            await evt.send(fmt.error_reply(evt.command, "incomplete"))
        else:
            await evt.send(fmt.no_access_reply())
        return None
    return Access(view, team)


def rate_limited(evt: WaldurCommandEvent) -> bool:
    if evt.bridge.room_command_limiter.allow(evt.room_id):
        return False
    log.info("Ignoring %s in %s: the room's reply rate limit is reached", evt.command, evt.room_id)
    return True


@command_handler(
    name="status",
    needs_auth=False,
    help_section=SECTION_ROOM,
    help_text="Errored resources, orders waiting for approval and work in progress.",
)
async def status(evt: WaldurCommandEvent) -> None:
    if rate_limited(evt) or (access := await check_access(evt)) is None:
        return
    project = access.view.project
    client = evt.bridge.waldur
    try:
        errored, busy, pending = await asyncio.gather(
            client.list_resources(project.uuid, states=["Erred"]),
            client.list_resources(project.uuid, states=list(IN_PROGRESS_STATES)),
            client.list_orders(project.uuid, states=list(PENDING_ORDER_STATES)),
        )
    except WaldurError as e:
        log.warning("!status for %s failed: %s", project.uuid, e)
        await evt.send(fmt.error_reply(evt.command, problem_of(e)))
        return
    in_progress = {state: sum(1 for r in busy if r.state == state) for state in IN_PROGRESS_STATES}
    await evt.send(fmt.status_reply(project.name, errored, len(errored), pending, in_progress))


@command_handler(
    name="orders",
    needs_auth=False,
    help_section=SECTION_ROOM,
    help_text="The project's last five orders.",
)
async def orders(evt: WaldurCommandEvent) -> None:
    if rate_limited(evt) or (access := await check_access(evt)) is None:
        return
    project = access.view.project
    try:
        latest = await evt.bridge.waldur.list_orders(project.uuid, limit=5)
    except WaldurError as e:
        log.warning("!orders for %s failed: %s", project.uuid, e)
        await evt.send(fmt.error_reply(evt.command, problem_of(e)))
        return
    await evt.send(fmt.orders_reply(project.name, latest))


@command_handler(
    name="members",
    needs_auth=False,
    help_section=SECTION_ROOM,
    help_text="The project's team in Waldur, with roles and who is in the room.",
)
async def members(evt: WaldurCommandEvent) -> None:
    if rate_limited(evt) or (access := await check_access(evt)) is None:
        return
    assert evt.portal is not None
    memberships = {
        str(e.state_key): str(e.content.membership.value)
        for e in await evt.az.intent.get_members(evt.room_id)
    }
    reconciler = evt.bridge.sync.reconciler
    records = await PortalMember.for_project(evt.portal.project_uuid)
    missing = set(evt.bridge.sync.accounts.missing)
    lines = []
    for user_uuid, member in access.team.items():
        user = access.view.users[user_uuid]
        email = access.view.emails.get(user_uuid, "")
        mxid, _ = await reconciler.matrix_account(user_uuid, user.username, email)
        membership = memberships.get(mxid or "", "none")
        record = records.get(mxid or "")
        if membership in ("leave", "none") and record is not None and record.left_voluntarily:
            membership = "declined"
        elif membership == "none" and mxid in missing:
            membership = "no-account"
        lines.append(
            fmt.MemberLine(
                display_name=reconciler.displayname_for(user.username, user.full_name, email),
                roles=member.roles,
                membership=membership,
                expires=member.expires,
            )
        )
    await evt.send(fmt.members_reply(access.view.project.name, lines))


@command_handler(
    name="help",
    needs_auth=False,
    help_section=SECTION_ROOM,
    help_text="This list.",
)
async def help_(evt: WaldurCommandEvent) -> None:
    if evt.is_management and evt.sender.is_admin:
        from .admin import admin_help

        await evt.send(admin_help())
        return
    if rate_limited(evt):
        return
    await evt.send(fmt.help_reply(evt.bridge.config["bridge.command_prefix"]))


@command_handler(name="unknown-command", needs_auth=False)
async def unknown_command(evt: WaldurCommandEvent) -> None:
    if evt.portal is not None and rate_limited(evt):
        return
    # In the management room (and a direct chat with the bot) commands take no prefix.
    prefix = None if evt.is_management else evt.bridge.config["bridge.command_prefix"]
    await evt.send(fmt.unknown_command_reply(evt.command, prefix))
