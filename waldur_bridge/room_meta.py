"""Pure builders of the state the bridge owns in its rooms: MSC2346 bridge info, space
child/parent links and their order, and the room-version rules for power levels.

No I/O: the same inputs always give the same content, so what the bridge wrote can be kept as a
hash and compared, and a steady sweep writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

PROTOCOL = {"id": "waldur", "displayname": "Waldur"}
SPACE_CHILD = "m.space.child"
SPACE_PARENT = "m.space.parent"
# The spec's limit for `order`: at most 50 characters in 0x20-0x7E.
ORDER_LIMIT = 50


def creators_have_power(room_version: str) -> bool:
    """Room version 12 and later: creators hold unlimited power and must not be listed in
    `users`; older versions give the creator power only through that map."""
    return room_version.isdigit() and int(room_version) >= 12


def bridge_info(
    *,
    bot: str,
    channel_id: str,
    channel_name: str,
    network_id: str,
    network_name: str,
    channel_avatar: str | None = None,
    network_avatar: str | None = None,
) -> dict[str, Any]:
    """`m.bridge` / `uk.half-shot.bridge` content (MSC2346): protocol Waldur, channel the
    project (or, for a space, the organization), network the organization."""
    channel: dict[str, Any] = {"id": channel_id, "displayname": channel_name}
    if channel_avatar:
        channel["avatar_url"] = channel_avatar
    network: dict[str, Any] = {"id": network_id, "displayname": network_name}
    if network_avatar:
        network["avatar_url"] = network_avatar
    return {"bridgebot": bot, "protocol": dict(PROTOCOL), "network": network, "channel": channel}


def content_hash(*contents: Mapping[str, Any] | str | None) -> str:
    """A stable digest of event contents, to remember what was written."""
    digest = hashlib.sha256()
    for content in contents:
        digest.update(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


def child_order(name: str, project_uuid: str) -> str:
    """An `order` that sorts children by project name, case-insensitively; the UUID breaks
    ties so two projects of the same name keep a fixed place.

    Names are folded to printable ASCII (accents dropped) as the spec allows only 0x20-0x7E.
    """
    folded = unicodedata.normalize("NFKD", name.casefold())
    ascii_name = "".join(c for c in folded if 0x20 <= ord(c) <= 0x7E).strip()
    suffix = project_uuid[:8]
    head = ascii_name[: ORDER_LIMIT - len(suffix) - 1]
    return f"{head}~{suffix}"


def child_content(server_name: str, order: str) -> dict[str, Any]:
    return {"via": [server_name], "order": order}


def parent_content(server_name: str) -> dict[str, Any]:
    return {"via": [server_name], "canonical": True}


def is_live_link(content: Mapping[str, Any] | None) -> bool:
    """A child or parent event counts only with a non-empty `via` list (the spec's rule)."""
    via = (content or {}).get("via")
    return isinstance(via, list) and bool(via)


def space_power_levels(
    bot: str, room_version: str, users: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Power levels of a new space: members read, the bot alone links rooms and names it.

    Messages are off for everyone but moderators (a space is a directory, not a chat).
    """
    content: dict[str, Any] = {
        "users_default": 0,
        "events_default": 50,
        "state_default": 100,
        "invite": 50,
        "kick": 50,
        "redact": 50,
        "ban": 100,
        "events": {
            "m.room.name": 100,
            "m.room.topic": 100,
            "m.room.avatar": 100,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            SPACE_CHILD: 100,
            "m.room.tombstone": 150 if creators_have_power(room_version) else 100,
        },
        "users": dict(users or {}),
    }
    if not creators_have_power(room_version):
        content["users"][bot] = 100
    return content


def missing_or_changed(
    wanted: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any] | None]
) -> list[str]:
    """Keys of `wanted` whose current content differs (missing counts as different)."""
    return sorted(k for k, v in wanted.items() if dict(current.get(k) or {}) != dict(v))


def dead_links(
    wanted: Iterable[str], current: Mapping[str, Mapping[str, Any] | None]
) -> list[str]:
    """Live children that are no longer wanted: their content must be emptied."""
    keep = set(wanted)
    return sorted(k for k, v in current.items() if k not in keep and is_live_link(v))
