"""Drift correction: what the bridge owns in its rooms is put back when someone changes it in
Matrix, as soon as the appservice transaction reports the change.

Owned: the power levels of managed users, join rules, name, topic, avatar (while Waldur has an
image), the link state event, the bridge info and the space child/parent events. What
moderators may legitimately do (levels of people the bridge does not manage, guests, messages)
is left alone. Restores are counted per piece of state: another appservice or the homeserver
that keeps changing one back is not fought in a loop; the bridge stops and tells the
management room once.
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from mautrix.errors import MatrixRequestError
from mautrix.types import RoomID, StateEvent

from .. import identity, room_meta
from ..db import AuditEntry, PortalMember
from ..portal import PROJECT_STATE_EVENT, Portal
from ..space import CUSTOMER_STATE_EVENT, Space
from .spaces import BRIDGE_INFO_TYPES, state_type

if TYPE_CHECKING:
    from ..__main__ import WaldurBridge
    from .service import SyncService

log = logging.getLogger("waldur.sync.drift")

DRIFT = "drift"
# At most this many restores of one piece of state within the window; then the bridge gives up.
RESTORE_LIMIT = 3
RESTORE_WINDOW = 600.0

POWER_LEVELS = "m.room.power_levels"
NAME = "m.room.name"
TOPIC = "m.room.topic"
AVATAR = "m.room.avatar"
JOIN_RULES = "m.room.join_rules"
WATCHED = frozenset(
    {
        POWER_LEVELS,
        NAME,
        TOPIC,
        AVATAR,
        JOIN_RULES,
        str(PROJECT_STATE_EVENT),
        CUSTOMER_STATE_EVENT,
        *BRIDGE_INFO_TYPES,
        room_meta.SPACE_CHILD,
        room_meta.SPACE_PARENT,
    }
)


def _content(evt: StateEvent) -> dict[str, Any]:
    content = evt.content
    if hasattr(content, "serialize"):
        return dict(content.serialize())
    return dict(content or {})


def _prev_content(evt: StateEvent) -> dict[str, Any] | None:
    unsigned = evt.unsigned
    prev = getattr(unsigned, "prev_content", None) if unsigned is not None else None
    if prev is None:
        return None
    return dict(prev.serialize()) if hasattr(prev, "serialize") else dict(prev)


def changed_levels(prev: dict[str, Any] | None, new: dict[str, Any]) -> set[str] | None:
    """Users whose entry in `users` differs between two power-level contents; None when the
    previous content is unknown."""
    if prev is None:
        return None
    before = prev.get("users") or {}
    after = new.get("users") or {}
    return {u for u in set(before) | set(after) if before.get(u) != after.get(u)}


class DriftGuard:
    def __init__(self, bridge: WaldurBridge, service: SyncService) -> None:
        self.bridge = bridge
        self.service = service
        config = bridge.config
        self.puppet_re = re.compile(
            identity.puppet_regex(config["bridge.username_template"], config["homeserver.domain"])
        )
        self._restores: dict[tuple[str, str, str], deque[float]] = {}
        self._gave_up: set[tuple[str, str, str]] = set()
        self.restored = 0

    async def on_state_event(self, evt: StateEvent) -> None:
        event_type = str(evt.type)
        if event_type not in WATCHED or evt.sender == self.bridge.az.bot_mxid:
            return
        room_id = str(evt.room_id)
        spaces = self.service.spaces
        portal = await Portal.get_by_room(room_id)
        space = spaces.space_of_room(room_id) if portal is None else None
        if portal is not None and not portal.is_active:
            return  # a closed room is no longer kept in shape
        if space is not None and (space.is_closed or not spaces.enabled):
            return
        if portal is None and space is None:
            return
        key = (room_id, event_type, str(evt.state_key or ""))
        if not self._may_restore(key):
            return
        try:
            what = await self._restore(evt, event_type, portal, space)
        except MatrixRequestError as e:
            await self._audit(portal, space, evt, "failed", str(e))
            await self._give_up(key, evt, f"restoring it failed: {e.message or e}")
            return
        if what is None:
            return
        self._restores.setdefault(key, deque()).append(time.monotonic())
        self.restored += 1
        log.info(
            "%s changed %s in %s by hand; %s",
            evt.sender,
            event_type + (f" ({evt.state_key})" if evt.state_key else ""),
            room_id,
            what,
        )
        await self._audit(portal, space, evt, "restored", what)

    # region what to restore

    async def _restore(
        self, evt: StateEvent, event_type: str, portal: Portal | None, space: Space | None
    ) -> str | None:
        """Put the state back; a description of what was done, or None if it was left alone."""
        target: Portal | Space = portal if portal is not None else space  # type: ignore[assignment]
        content = _content(evt)
        state_key = str(evt.state_key or "")
        room_id = str(evt.room_id)
        spaces = self.service.spaces
        if event_type == POWER_LEVELS:
            changed = changed_levels(_prev_content(evt), content)
            managed = await self._managed(changed, portal, space)
            if not managed:
                return None
            self._reconcile(portal, space)
            return f"levels of {', '.join(sorted(managed))} go back to what Waldur says"
        if event_type == NAME and state_key == "":
            return await self._put(room_id, event_type, content, {"name": target.name})
        if event_type == TOPIC and state_key == "":
            return await self._put(room_id, event_type, content, {"topic": target.topic})
        if event_type == JOIN_RULES and state_key == "":
            return await self._put(room_id, event_type, content, {"join_rule": "invite"})
        if event_type == AVATAR and state_key == "":
            if portal is not None:
                decoration = spaces.decorations.get(portal.project_uuid)
                mxc = decoration.avatar_mxc if decoration is not None else None
            else:
                mxc = space.row.avatar_mxc if space is not None else None
            if not mxc:
                return None  # Waldur has no image: a moderator's avatar is welcome
            return await self._put(room_id, event_type, content, {"url": mxc})
        if portal is not None and event_type == str(PROJECT_STATE_EVENT) and state_key == "":
            wanted = {"project_uuid": portal.project_uuid, "customer_uuid": portal.customer_uuid}
            return await self._put(room_id, event_type, content, wanted)
        if space is not None and event_type == CUSTOMER_STATE_EVENT and state_key == "":
            wanted = {"customer_uuid": space.customer_uuid}
            return await self._put(room_id, event_type, content, wanted)
        if event_type in BRIDGE_INFO_TYPES and state_key == target.bridge_info_state_key:
            if portal is not None:
                decoration = spaces.decorations.get(portal.project_uuid)
                if decoration is not None:
                    decoration.bridge_info_hash = None  # read and rewrite on the reconcile
            elif space is not None:
                space.row.bridge_info_hash = None
            self._reconcile(portal, space)
            return "the bridge info is written again"
        if portal is not None and event_type == room_meta.SPACE_PARENT:
            own = spaces.spaces.get(portal.customer_uuid)
            if own is None or state_key != own.room_id or not spaces.enabled:
                return None  # another space may list the room; not ours
            spaces.request(portal.customer_uuid, DRIFT)
            return "the link to the organization's space is repaired"
        if space is not None and event_type == room_meta.SPACE_CHILD:
            child = await Portal.get_by_room(state_key)
            if child is None or child.customer_uuid != space.customer_uuid:
                return None  # a room an admin added to the space by hand
            spaces.request(space.customer_uuid, DRIFT)
            return "the space's children are repaired"
        return None

    async def _put(
        self, room_id: str, event_type: str, content: dict[str, Any], wanted: dict[str, Any]
    ) -> str | None:
        if {k: content.get(k) for k in wanted} == wanted:
            return None
        await self.bridge.az.intent.send_state_event(
            RoomID(room_id), state_type(event_type), wanted
        )
        return "put back"

    def _reconcile(self, portal: Portal | None, space: Space | None) -> None:
        if portal is not None:
            self.service.request_project(portal.project_uuid, DRIFT)
        elif space is not None:
            self.service.spaces.request(space.customer_uuid, DRIFT)

    async def _managed(
        self, changed: set[str] | None, portal: Portal | None, space: Space | None
    ) -> set[str]:
        """The managed users (and the bot) among those whose level changed. With the old
        content unknown, every managed user counts: the reconcile then decides."""
        bot = str(self.bridge.az.bot_mxid)
        spaces = self.service.spaces
        known: set[str] = {bot}
        if portal is not None:
            team = spaces.teams.get(portal.project_uuid)
            known |= set(team.members) if team is not None else set()
            known |= set(await PortalMember.for_project(portal.project_uuid))
        elif space is not None:
            for team in spaces.teams.values():
                if team.customer_uuid == space.customer_uuid:
                    known |= set(team.members)
        if changed is None:
            return {bot}
        return {u for u in changed if u in known or self.puppet_re.fullmatch(u)}

    # endregion
    # region loop guard and reports

    def _may_restore(self, key: tuple[str, str, str]) -> bool:
        if key in self._gave_up:
            return False
        history = self._restores.get(key)
        if history is None:
            return True
        now = time.monotonic()
        while history and now - history[0] > RESTORE_WINDOW:
            history.popleft()
        if len(history) < RESTORE_LIMIT:
            return True
        self._gave_up.add(key)
        room_id, event_type, state_key = key
        message = (
            f"`{event_type}` in {room_id} was changed back {RESTORE_LIMIT} times within "
            f"{RESTORE_WINDOW / 60:.0f} minutes (another bot or a homeserver rule?). The bridge "
            "stops restoring it; fix the cause, then `sync` the room to restore it once more."
        )
        log.warning(message)
        self.bridge.loop.create_task(self.bridge.notify_admins(message))
        return False

    async def _give_up(self, key: tuple[str, str, str], evt: StateEvent, why: str) -> None:
        if key in self._gave_up:
            return
        self._gave_up.add(key)
        message = (
            f"{evt.sender} changed `{evt.type}` in {evt.room_id} and {why}. The bridge does not "
            "retry; give its bot the power to change it, then `sync` the room."
        )
        log.warning(message)
        await self.bridge.notify_admins(message)

    def forget(self, room_id: str) -> None:
        """An admin's sync: restores in this room may start again."""
        self._gave_up = {k for k in self._gave_up if k[0] != room_id}
        for key in [k for k in self._restores if k[0] == room_id]:
            del self._restores[key]

    async def _audit(
        self,
        portal: Portal | None,
        space: Space | None,
        evt: StateEvent,
        outcome: str,
        detail: str,
    ) -> None:
        await AuditEntry(
            action=DRIFT,
            outcome=outcome,
            project_uuid=portal.project_uuid
            if portal is not None
            else (space.project_uuid if space is not None else None),
            room_id=str(evt.room_id),
            target=str(evt.sender),
            cause=f"{evt.type} changed by {evt.sender}",
            detail=detail,
        ).insert()

    # endregion
