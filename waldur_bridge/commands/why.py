"""``why <person> <project>`` (admins) and ``!why <project>`` (anyone, about themselves, in a
direct chat with the bot): a membership explained from its Waldur grants. Nothing is changed."""

from __future__ import annotations

from datetime import UTC, datetime

from mautrix.bridge.commands import command_handler
from mautrix.errors import MatrixRequestError
from mautrix.types import RoomAlias

from ..db import portal as states
from ..explain import Facts, format_why, gather
from ..portal import Portal
from ..sync.policy import canonical_uuid
from ..waldur import WaldurError, WaldurNotFound
from .admin import _UUID, _md, resolve_project, run
from .handler import SECTION_PEOPLE, CommandError, WaldurCommandEvent, parse_args
from .room import rate_limited, waldur_user_of

ADMIN_USAGE = "why <person> <project> [--exact]"
SELF_USAGE = "!why <project> [--exact]"


async def resolve_person(evt: WaldurCommandEvent, query: str) -> tuple[str | None, str | None]:
    """(Waldur user UUID, Matrix ID) of a person named by Matrix ID, UUID, username or display
    name; (None, None) when nobody matches."""
    if query.startswith("@"):
        return await waldur_user_of(evt, query), query
    client = evt.bridge.waldur
    if _UUID.match(query):
        try:
            return (await client.get_user(canonical_uuid(query))).uuid, None
        except WaldurNotFound:
            return None, None
        except WaldurError as e:
            raise CommandError(f"Could not read the user from Waldur: {_md(e)}") from e
    # The users the last sweep read first (a listing of every user is large); Waldur's own
    # listing only when nobody there matches. The person's record is read fresh either way.
    cached = [
        (uuid, u.username, u.full_name) for uuid, u in evt.bridge.sync.directory.users.items()
    ]
    found = _match_person(query, cached)
    if found is None:
        try:
            users = await client.list_users()
        except WaldurError as e:
            raise CommandError(f"Could not read users from Waldur: {_md(e)}") from e
        found = _match_person(query, [(u.uuid, u.username, u.full_name) for u in users])
    return found, None


def _match_person(query: str, people: list[tuple[str, str, str]]) -> str | None:
    """The UUID of the one person whose username, else display name, is ``query``."""
    folded = query.casefold()
    for matches in (
        [p for p in people if p[1] == query],
        [p for p in people if p[2].casefold() == folded],
    ):
        if len(matches) == 1:
            return matches[0][0]
        if len(matches) > 1:
            listed = "\n".join(
                f"- {_md(name)}: `{_md(username)}`" for _, username, name in matches[:10]
            )
            raise CommandError(
                f"`{_md(query)}` matches {len(matches)} people; name one by username:\n\n{listed}"
            )
    return None


async def resolve_room(evt: WaldurCommandEvent, query: str) -> tuple[str, str, Portal | None]:
    """(project UUID, name, portal) of a project named by name, slug, UUID, room alias or ID."""
    if query.startswith(("#", "!")):
        room_id = query
        if query.startswith("#"):
            try:
                room_id = (await evt.az.intent.resolve_room_alias(RoomAlias(query))).room_id
            except MatrixRequestError:
                raise CommandError(f"No room has the alias `{_md(query)}`.") from None
        portal = await Portal.get_by_room(room_id)
        if portal is None:
            raise CommandError(f"`{_md(query)}` is not a project's room.")
        return portal.project_uuid, portal.name, portal
    try:
        project = await run(evt, resolve_project(evt, query))
    except CommandError:
        # A deleted project is no longer in Waldur; its closed room still answers to its name.
        for portal in await Portal.all():
            if query in (portal.project_uuid, portal.name) or (
                _UUID.match(query) and canonical_uuid(query) == portal.project_uuid
            ):
                return portal.project_uuid, portal.name, portal
        raise
    return project.uuid, project.name, await Portal.get_by_project(project.uuid)


def _knows_project(facts: Facts) -> bool:
    """Whether a person asking about themselves has anything to do with the project: a grant
    on it or its organization (in any state), or a place in its room."""
    return bool(facts.grants) or facts.room.membership is not None


@command_handler(
    name="why",
    needs_auth=False,
    help_section=SECTION_PEOPLE,
    help_text="Why a person is (not) in a project's room, at their level",
    help_args="<person> <project> [--exact]",
)
async def why(evt: WaldurCommandEvent) -> None:
    positional, options = parse_args(evt.args)
    exact = bool(options.get("exact"))
    admin = evt.is_management and evt.sender.is_admin
    if len(positional) == 2 and admin:
        await _why_admin(evt, positional[0], positional[1], exact)
        return
    if evt.portal is not None or not evt.is_management:
        if rate_limited(evt):
            return
        raise CommandError(f"Ask me in a direct chat: `{SELF_USAGE}` (about yourself).")
    if len(positional) != 1:
        usage = (
            f"`{ADMIN_USAGE}`, or `{SELF_USAGE}` about yourself" if admin else f"`{SELF_USAGE}`"
        )
        raise CommandError(f"Usage: {usage}")
    # Each answer reads Waldur three times: people get the rooms' reply rate limit.
    if not admin and rate_limited(evt):
        return
    await _why_self(evt, positional[0], exact)


async def _why_admin(evt: WaldurCommandEvent, who: str, where: str, exact: bool) -> None:
    user_uuid, mxid = await resolve_person(evt, who)
    project_uuid, name, portal = await resolve_room(evt, where)
    if user_uuid is None and mxid is None:
        raise CommandError(
            f"No Waldur user matches `{_md(who)}` (by username, UUID, display name or "
            "Matrix ID): nothing to explain."
        )
    facts = await run(
        evt,
        gather(
            evt.bridge,
            person=who,
            user_uuid=user_uuid,
            portal=portal,
            project_uuid=project_uuid,
            project_name=name,
            mxid=mxid,
        ),
    )
    await evt.reply(format_why(facts, datetime.now(UTC), exact))


async def _why_self(evt: WaldurCommandEvent, where: str, exact: bool) -> None:
    user_uuid = await waldur_user_of(evt, evt.sender.mxid)
    if user_uuid is None:
        raise CommandError(
            "Your Matrix account is not mapped to a Waldur user, so no project grants you "
            "anything. An admin can `link` it."
        )
    project_uuid, name, portal = await resolve_room(evt, where)
    facts = await run(
        evt,
        gather(
            evt.bridge,
            person=evt.sender.mxid,
            user_uuid=user_uuid,
            portal=portal,
            project_uuid=project_uuid,
            project_name=name,
            mxid=evt.sender.mxid,
        ),
    )
    if not _knows_project(facts) and not (
        portal and portal.state == states.ACTIVE and facts.in_team
    ):
        raise CommandError(f"You have no role on {_md(name)} or its organization.")
    await evt.reply(format_why(facts, datetime.now(UTC), exact))
