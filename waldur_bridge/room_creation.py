"""Creating a portal's room, crash-safe.

The whole initial room goes out in one createRoom request (built by `create_room_request`):
name, topic, the project link and bridge info state, the team's invites and their power
levels, so members have their level the moment they join and no power-level event follows.
The invites of the bridge's own puppets are member events in the initial state: the homeserver
stores them with the room's other first events in one batch, where the `invite` list costs
Synapse a separate event persistence each (measured: 14 ms of its CPU per invite against 51).

Crash safety: the portal row records the planned alias (state "creating") before the request
is sent, and Synapse maps the alias before it fills the room. A crash anywhere therefore leaves
a room the next attempt finds under that alias; it is adopted when the bridge's bot created it
and it carries this project's link state. Anything else under the alias is reported, never
duplicated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mautrix.api import Method, Path
from mautrix.appservice import IntentAPI
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import (
    EventType,
    Membership,
    MemberStateEventContent,
    RoomAlias,
    RoomCreatePreset,
    RoomID,
    StrippedStateEvent,
)

from .room_meta import creators_have_power

log = logging.getLogger("waldur.portal.create")

# A state event that ties the room to its Waldur project, readable by clients and tools.
PROJECT_LINK_TYPE = "org.waldur.project"
BRIDGE_INFO_TYPES = ("m.bridge", "uk.half-shot.bridge")
# A Waldur UUID in its hex form: a link naming anything else is not a project's.
_PROJECT_UUID = re.compile(r"[0-9a-f]{32}")

# Test-only fault point: called with the room ID after createRoom returned and before the
# portal row is saved, to reproduce a crash exactly there. Always None in production.
after_create_room: Callable[[str], Awaitable[None]] | None = None


class AliasConflict(Exception):
    """The project's alias leads to a room this project cannot adopt; an admin must look."""

    def __init__(self, alias: str, room_id: str | None, reason: str) -> None:
        super().__init__(f"alias {alias} {f'points to {room_id}: ' if room_id else ''}{reason}")
        self.alias = alias
        self.room_id = room_id
        self.reason = reason


def room_power_levels(bot_mxid: str, room_version: str) -> dict[str, Any]:
    """Power levels of a new portal, without its members.

    Moderators (50 by default, from PROJECT.ADMIN and CUSTOMER.OWNER) may invite, kick and
    redact, which is what Matrix clients show a moderator can do; room settings stay with the
    bot so Waldur remains the source of the name, topic and membership rules.
    """
    content: dict[str, Any] = {
        "users_default": 0,
        "events_default": 0,
        "state_default": 100,
        "invite": 50,
        "kick": 50,
        "redact": 50,
        "ban": 100,
        "events": {
            "m.room.name": 100,
            "m.room.topic": 100,
            "m.room.avatar": 50,
            "m.room.power_levels": 100,
            "m.room.encryption": 100,
            "m.room.history_visibility": 100,
            "m.room.tombstone": 150 if creators_have_power(room_version) else 100,
        },
        "users": {},
    }
    if not creators_have_power(room_version):
        # Before v12 the creator's power is an ordinary entry (a users map without it would
        # demote the bot); from v12 it is implicit and listing the creator is refused.
        content["users"][bot_mxid] = 100
    return content


@dataclass(frozen=True, slots=True)
class NewRoom:
    """Everything a new portal starts with; `create_room_request` turns it into createRoom."""

    project_uuid: str
    customer_uuid: str
    name: str
    topic: str
    bot_mxid: str
    room_version: str
    federate: bool = True
    encrypted: bool = False
    # Invited by createRoom itself (local accounts: a remote server could fail the request).
    invitees: Sequence[str] = ()
    # Display names of the bridge's puppets among the invitees: their invites go into the
    # initial state with the name the homeserver would copy from the profile. Anyone else
    # (a local Matrix account) is invited through the `invite` list.
    puppet_names: Mapping[str, str] = field(default_factory=dict)
    # Power levels of the team (user ID -> level), set by createRoom before anyone is invited.
    levels: Mapping[str, int] = field(default_factory=dict)
    bridge_info_state_key: str = ""
    bridge_info: Mapping[str, Any] = field(default_factory=dict)
    # More state from other features (e.g. the organization space's parent link).
    extra_state: Sequence[Mapping[str, Any]] = ()

    @property
    def invited(self) -> tuple[str, ...]:
        return tuple(user_id for user_id in self.invitees if user_id != self.bot_mxid)

    def users_map(self) -> dict[str, int]:
        """The `users` map of the room's first power-level event."""
        users = dict(room_power_levels(self.bot_mxid, self.room_version)["users"])
        for user_id, level in self.levels.items():
            if user_id == self.bot_mxid:
                continue  # the bot's own power is set above (v11) or implicit (v12)
            users[user_id] = level
        return users

    @property
    def creators(self) -> frozenset[str]:
        return (
            frozenset({self.bot_mxid}) if creators_have_power(self.room_version) else frozenset()
        )


def state_invite(user_id: str, displayname: str) -> StrippedStateEvent:
    """A puppet's invite as an initial state event of createRoom, with the name the homeserver
    would copy from the profile. Typed rather than a plain dict: mautrix records the initial
    state in its state store and reads a member event's content as an object."""
    return StrippedStateEvent(
        type=EventType.ROOM_MEMBER,
        state_key=user_id,
        content=MemberStateEventContent(
            membership=Membership.INVITE, displayname=displayname or None
        ),
    )


def with_state_invites(request: dict[str, Any], invites: Mapping[str, str]) -> dict[str, Any]:
    """The createRoom request with these puppets (user ID -> display name) invited by member
    events in its initial state rather than by its `invite` list."""
    return {
        **request,
        "initial_state": [
            *request.get("initial_state", ()),
            *(state_invite(user_id, name) for user_id, name in sorted(invites.items())),
        ],
        "invitees": [u for u in request.get("invitees", ()) if u not in invites],
    }


def create_room_request(room: NewRoom) -> dict[str, Any]:
    """Keyword arguments for `IntentAPI.create_room` (the alias is added by the caller), the
    whole team in the `invite` list (see `send_create` for the puppets' invites)."""
    initial_state: list[dict[str, Any] | StrippedStateEvent] = [
        {
            "type": PROJECT_LINK_TYPE,
            "state_key": "",
            "content": {"project_uuid": room.project_uuid, "customer_uuid": room.customer_uuid},
        },
        {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
        {
            "type": "m.room.history_visibility",
            "state_key": "",
            "content": {"history_visibility": "shared"},
        },
        *(
            {
                "type": event_type,
                "state_key": room.bridge_info_state_key,
                "content": dict(room.bridge_info),
            }
            for event_type in BRIDGE_INFO_TYPES
        ),
    ]
    initial_state.extend(dict(event) for event in room.extra_state)
    if room.encrypted:
        initial_state.append(
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        )
    power_levels = room_power_levels(room.bot_mxid, room.room_version)
    power_levels["users"] = room.users_map()
    return {
        "preset": RoomCreatePreset.PRIVATE,
        "name": room.name,
        "topic": room.topic,
        "room_version": room.room_version,
        "initial_state": initial_state,
        "power_level_override": power_levels,
        "invitees": list(room.invited),
        "creation_content": {} if room.federate else {"m.federate": False},
    }


@dataclass(frozen=True, slots=True)
class CreatedRoom:
    room_id: RoomID
    # True when an earlier attempt's room was found under the alias and taken over: its
    # members and levels are unknown here and must be read from the homeserver.
    adopted: bool
    room: NewRoom


async def create_or_adopt(intent: IntentAPI, room: NewRoom, alias_localpart: str) -> CreatedRoom:
    """Create the room under its alias, or adopt the room an earlier attempt left there.

    Raises AliasConflict when the alias holds a room that is not this project's, and
    MatrixRequestError for homeserver failures (the caller retries later).
    """
    alias = RoomAlias(f"#{alias_localpart}:{intent.domain}")
    request = create_room_request(room)
    puppets = {u: room.puppet_names[u] for u in room.invited if u in room.puppet_names}
    for _attempt in range(2):
        try:
            room_id, _ = await send_create(intent, request, puppets, alias_localpart)
        except MatrixRequestError as e:
            if e.errcode in ("M_EXCLUSIVE", "M_INVALID_PARAM"):
                raise AliasConflict(
                    alias,
                    None,
                    f"was refused by the homeserver ({e.errcode}): the registration's alias "
                    "namespace must cover bridge.alias_template",
                ) from e
            if e.errcode != "M_ROOM_IN_USE":
                raise
        else:
            if after_create_room is not None:
                await after_create_room(room_id)
            return CreatedRoom(room_id, adopted=False, room=room)
        try:
            existing = (await intent.resolve_room_alias(alias)).room_id
        except MNotFound:
            continue  # removed in the meantime: create it after all
        reason = await adoption_problem(intent, existing, room.project_uuid)
        if reason is not None:
            raise AliasConflict(alias, existing, reason)
        log.info(
            "Adopted %s for project %s: an earlier attempt created it under %s",
            existing,
            room.project_uuid,
            alias,
        )
        return CreatedRoom(existing, adopted=True, room=room)
    raise AliasConflict(alias, None, "kept changing while the room was being created")


# Answers a homeserver might give to member events in createRoom's initial state if it did not
# take them (Synapse, Tuwunel, Conduit and Dendrite take them; others are not known).
_STATE_INVITE_REFUSALS = ("M_BAD_JSON", "M_INVALID_PARAM", "M_FORBIDDEN", "M_UNKNOWN")


@dataclass
class _Learnt:
    """What createRoom has learnt about the homeserver in this process."""

    state_invites_refused: str = ""  # the homeserver's answer when it refused them


LEARNT = _Learnt()


async def send_create(
    intent: IntentAPI,
    request: dict[str, Any],
    puppets: Mapping[str, str],
    alias_localpart: str | None = None,
) -> tuple[RoomID, bool]:
    """createRoom with these puppets (user ID -> display name) invited in the initial state:
    the homeserver stores those invites with the room's first events in one batch. A refusal
    of them is retried once with `request` as given (remembered when that succeeds: later
    rooms go that way at once). Returns the room and whether the puppets' invites went in."""
    alias = {"alias_localpart": alias_localpart} if alias_localpart else {}
    if puppets and not LEARNT.state_invites_refused:
        try:
            return await intent.create_room(**alias, **with_state_invites(request, puppets)), True
        except MatrixRequestError as e:
            if e.errcode not in _STATE_INVITE_REFUSALS:
                raise
            refusal = f"{e.http_status} {e.errcode}: {e.message}"
        room_id = await intent.create_room(**alias, **request)
        LEARNT.state_invites_refused = refusal
        log.info(
            "The homeserver refused invites in createRoom's initial state (%s); new rooms "
            "invite through createRoom's invite list or one by one instead (slower on "
            "Synapse, else the same)",
            refusal,
        )
        return room_id, False
    return await intent.create_room(**alias, **request), False


async def room_state(intent: IntentAPI, room_id: str) -> list[dict[str, Any]]:
    """The room's full state as raw events (custom types stay plain dicts)."""
    data = await intent.api.request(Method.GET, Path.v3.rooms[RoomID(room_id)].state)
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


async def state_content(
    intent: IntentAPI, room_id: str, event_type: str, state_key: str = ""
) -> dict[str, Any] | None:
    """One state event's content, None when the room has none. A plain request: the intent's
    own read would first "ensure" the bot joined (a join per room its state store does not
    know, e.g. after a fresh start)."""
    try:
        content = await intent.api.request(
            Method.GET, Path.v3.rooms[RoomID(room_id)].state[event_type][state_key]
        )
    except MNotFound:
        return None
    return content if isinstance(content, dict) else None


def linked_project(state: list[dict[str, Any]], bot_mxid: str) -> str | None:
    """The project a room belongs to, if the bot created it and it carries the link state."""
    create = next((e for e in state if e.get("type") == "m.room.create"), None)
    if create is None or create.get("sender") != bot_mxid:
        return None
    link = next(
        (e for e in state if e.get("type") == PROJECT_LINK_TYPE and e.get("state_key") == ""),
        None,
    )
    content = link.get("content") if link else None
    if not isinstance(content, dict):
        return None
    project = content.get("project_uuid")
    if not isinstance(project, str):
        return None
    project = project.replace("-", "").strip().lower()
    return project if _PROJECT_UUID.fullmatch(project) else None


async def adoption_problem(intent: IntentAPI, room_id: str, project_uuid: str) -> str | None:
    """Why the room under the project's alias cannot be adopted, or None if it can."""
    try:
        state = await room_state(intent, room_id)
    except MatrixRequestError as e:
        return f"the bridge cannot read that room ({e.errcode}); it is not in it"
    create = next((e for e in state if e.get("type") == "m.room.create"), None)
    sender = create.get("sender") if create else None
    if sender != intent.mxid:
        return f"that room was created by {sender or 'someone else'}, not by the bridge"
    linked = linked_project(state, intent.mxid)
    if linked is None:
        return "that room carries no Waldur project link"
    if linked != project_uuid.replace("-", "").lower():
        return f"that room belongs to project {linked}"
    return None
