"""Room history export: every event of a portal as a JSON document and a readable transcript.

The counterpart of Waldur's own ``MatrixHistoryExport`` (a JSON file per room, written when a
room is disabled or on demand). The bridge reads the room through the client-server API as the
bot, from the first event on, so the export holds what the homeserver holds: messages, state
changes (joins, leaves, removals, names, topics, power levels) and redactions. Encrypted events
are exported as they are (ciphertext) and counted; the exporter does not decrypt.

Delivery is either the homeserver's media repository (``destination="media"``: two uploads, with
their ``mxc://`` URIs and authenticated download URLs) or a directory on the bridge host
(``<dir>/<project uuid>/<UTC timestamp>.json`` and ``.txt``, mode 0600, never overwritten).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mautrix.api import Method, Path as APIPath
from mautrix.appservice import IntentAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import ContentURI, RoomID

from .messages import escape_markdown

EXPORT_FORMAT = "org.waldur.matrix-bridge.room-export"
EXPORT_VERSION = 1
MEDIA = "media"
JSON_MIME = "application/json"
TEXT_MIME = "text/plain; charset=utf-8"
MESSAGE_TYPES = frozenset({"m.room.message", "m.sticker"})
ENCRYPTED_TYPE = "m.room.encrypted"
ENCRYPTED_NOTE = "encrypted; exported as ciphertext, not decrypted by the exporter"
# Continuation lines of a multi-line message are indented, so no message text can pass for a
# line of its own in the transcript.
_CONTINUATION = "    "
# Line breaks and the bidi controls that could reorder a line, in names (which stay one line).
_NAME_SPACE = frozenset("\n\r\t\v\f\x85\u2028\u2029\u200e\u200f\u061c") | frozenset(
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
)


# region reading the room


async def export_room(
    intent: IntentAPI,
    room_id: RoomID,
    *,
    project: Mapping[str, Any],
    limit_per_page: int = 500,
    exported_at: datetime | None = None,
) -> RoomExport:
    """Read every event of ``room_id`` from its creation on, as the given intent sees them.

    Pages forward with ``/messages?dir=f`` and no ``from`` (Matrix v1.3+); a homeserver that
    wants a ``from`` token gets a backward walk from the live end instead, reversed.
    """
    if limit_per_page < 1:
        raise ValueError("limit_per_page must be positive")
    exported_at = exported_at or datetime.now(UTC)
    try:
        events = await _paginate(intent, room_id, "f", limit_per_page)
    except MatrixRequestError as e:
        if e.http_status != 400 or e.errcode not in ("M_MISSING_PARAM", "M_INVALID_PARAM"):
            raise
        events = list(reversed(await _paginate(intent, room_id, "b", limit_per_page)))
    return RoomExport(
        room_id=room_id, project=dict(project), events=events, exported_at=exported_at
    )


async def _paginate(intent: IntentAPI, room_id: RoomID, direction: str, limit: int) -> list[dict]:
    events: list[dict[str, Any]] = []
    seen: set[str] = set()
    token: str | None = None
    while True:
        query = {"dir": direction, "limit": str(limit)}
        if token is not None:
            query["from"] = token
        # Raw JSON (not mautrix's Event classes): the export keeps every field as sent.
        page = await intent.api.request(
            Method.GET,
            APIPath.v3.rooms[room_id].messages,
            query_params=query,
            metrics_method="getMessages",
        )
        new = 0
        for event in page.get("chunk") or []:
            event_id = event.get("event_id")
            if event_id in seen:
                continue
            seen.add(event_id)
            events.append(event)
            new += 1
        end = page.get("end")
        # The end of the room: no `end` token (spec), the same token again or an empty page
        # (what Synapse returns at the live edge when paging forward).
        if not end or end == token or new == 0:
            return events
        token = end


# endregion
# region the export


@dataclass
class RoomExport:
    room_id: str
    project: dict[str, Any]
    events: list[dict[str, Any]]
    exported_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def project_uuid(self) -> str:
        return str(self.project.get("uuid") or "unknown-project")

    @property
    def project_name(self) -> str:
        return str(self.project.get("name") or self.project_uuid)

    @property
    def event_count(self) -> int:
        return len(self.events)

    @property
    def message_count(self) -> int:
        """Messages and stickers, edits and deleted ones included (not decrypted ones)."""
        return sum(1 for e in self.events if e.get("type") in MESSAGE_TYPES)

    @property
    def encrypted_count(self) -> int:
        return sum(1 for e in self.events if e.get("type") == ENCRYPTED_TYPE)

    @property
    def state_count(self) -> int:
        return sum(1 for e in self.events if "state_key" in e)

    @property
    def redacted_count(self) -> int:
        return sum(1 for e in self.events if _is_redacted(e))

    @property
    def timestamp(self) -> str:
        """The export time for file names: ``20261121T203102Z``."""
        return self.exported_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

    @property
    def basename(self) -> str:
        return f"waldur-{self.project_uuid}-{self.timestamp}"

    def counts(self) -> dict[str, int]:
        return {
            "events": self.event_count,
            "messages": self.message_count,
            "encrypted": self.encrypted_count,
            "state": self.state_count,
            "redacted": self.redacted_count,
        }

    def to_json(self) -> bytes:
        doc = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "room_id": self.room_id,
            "project": self.project,
            "exported_at": _iso(self.exported_at),
            "counts": self.counts(),
            "events": [_json_event(e) for e in self.events],
        }
        return json.dumps(doc, ensure_ascii=False, indent=2, default=str).encode("utf-8") + b"\n"

    def to_transcript(self) -> str:
        return _Transcript(self).render()


def _json_event(event: Mapping[str, Any]) -> dict[str, Any]:
    ts = event.get("origin_server_ts")
    out: dict[str, Any] = {
        "event_id": event.get("event_id"),
        "type": event.get("type"),
        "sender": event.get("sender"),
        "origin_server_ts": ts,
        "time": _iso(_from_ms(ts)) if isinstance(ts, int) else None,
    }
    if "state_key" in event:
        out["state_key"] = event["state_key"]
    out["content"] = event.get("content") or {}
    if "redacts" in event:
        out["redacts"] = event["redacts"]
    unsigned = event.get("unsigned") or {}
    if "prev_content" in unsigned:
        out["prev_content"] = unsigned["prev_content"]
    if "redacted_because" in unsigned:
        out["redacted"] = True
        out["redacted_because"] = unsigned["redacted_because"]
    if event.get("type") == ENCRYPTED_TYPE:
        out["note"] = ENCRYPTED_NOTE
    return out


# endregion
# region the transcript


class _Transcript:
    """Renders events in order, keeping room state (names, memberships) as it was at each one."""

    def __init__(self, export: RoomExport) -> None:
        self.export = export
        self.names: dict[str, str] = {}
        self.membership: dict[str, str] = {}
        self.avatars: dict[str, Any] = {}
        self.users_levels: dict[str, int] | None = None
        self.lines: list[str] = []

    def render(self) -> str:
        x = self.export
        project = x.project
        customer = project.get("customer")
        if isinstance(customer, Mapping):
            customer = customer.get("name") or customer.get("uuid")
        header = [
            "Room history export",
            f"Project: {_one_line(x.project_name)} ({x.project_uuid})",
        ]
        if customer:
            header.append(f"Organization: {_one_line(str(customer))}")
        header += [
            f"Room: {x.room_id}",
            f"Exported: {_human(x.exported_at)}",
            f"Events: {x.event_count} (messages: {x.message_count}, "
            f"encrypted, not decrypted: {x.encrypted_count}, deleted: {x.redacted_count})",
            "",
        ]
        for event in x.events:
            line = self.event(event)
            if line is not None:
                self.lines.append(line)
        return "\n".join(header + self.lines) + "\n"

    # region names

    def name(self, user_id: str | None) -> str:
        if not user_id:
            return "(unknown)"
        return self.names.get(user_id) or user_id

    def who(self, user_id: str | None) -> str:
        """``Name (@mxid)`` for message senders, just the ID when there is no other name."""
        name = self.name(user_id)
        return name if name == user_id else f"{name} ({user_id})"

    # endregion

    def event(self, event: Mapping[str, Any]) -> str | None:
        etype = event.get("type") or ""
        content = event.get("content") or {}
        ts = event.get("origin_server_ts")
        stamp = f"[{_human(_from_ms(ts))}]" if isinstance(ts, int) else "[unknown time]"
        sender = event.get("sender")
        if "state_key" in event:
            text = self.state(event, etype, content, sender)
            return None if text is None else f"{stamp} * {text}"
        if _is_redacted(event):
            reason = _redaction_reason(event)
            return f"{stamp} {self.who(sender)}: [deleted{reason}]"
        if etype in MESSAGE_TYPES:
            return f"{stamp} {self.message(etype, content, sender)}"
        if etype == ENCRYPTED_TYPE:
            return f"{stamp} {self.who(sender)}: [encrypted message, not decrypted]"
        if etype == "m.room.redaction":
            target = event.get("redacts") or content.get("redacts") or "an event"
            reason = content.get("reason")
            tail = f": {_one_line(str(reason))}" if reason else ""
            return f"{stamp} * {self.name(sender)} deleted {target}{tail}"
        if etype == "m.reaction":
            rel = content.get("m.relates_to") or {}
            key = _one_line(str(rel.get("key", "")))
            target = rel.get("event_id") or "an event"
            return f"{stamp} * {self.name(sender)} reacted {key} to {target}"
        return f"{stamp} * {self.name(sender)} sent a {_one_line(etype)} event"

    def message(self, etype: str, content: Mapping[str, Any], sender: str | None) -> str:
        relates = content.get("m.relates_to") or {}
        prefix = ""
        if isinstance(relates, Mapping) and relates.get("rel_type") == "m.replace":
            new = content.get("m.new_content")
            if isinstance(new, Mapping):
                content = new
            prefix = f"(edited {relates.get('event_id')}) "
        msgtype = content.get("msgtype")
        body = str(content.get("body", ""))
        if etype == "m.sticker":
            body = f"[sticker: {body}]"
        elif msgtype in ("m.image", "m.file", "m.audio", "m.video"):
            kind = str(msgtype)[2:]
            url = content.get("url") or (content.get("file") or {}).get("url") or ""
            name = content.get("filename") or body
            body = f"[{kind}: {name}] {url}".rstrip()
        elif msgtype == "m.location":
            body = f"[location: {body}] {content.get('geo_uri', '')}".rstrip()
        elif msgtype == "m.notice":
            prefix += "(notice) "
        text = _indent(prefix + body)
        if msgtype == "m.emote":
            return f"* {self.who(sender)} {text}"
        return f"{self.who(sender)}: {text}"

    def state(
        self, event: Mapping[str, Any], etype: str, content: Mapping[str, Any], sender: str | None
    ) -> str | None:
        actor = self.name(sender)
        if etype == "m.room.member":
            return self.member(event, content, sender)
        if etype == "m.room.create":
            return f"{actor} created the room"
        if etype == "m.room.name":
            name = content.get("name")
            if not name:
                return f"{actor} removed the room name"
            return f'{actor} changed the room name to "{_one_line(str(name))}"'
        if etype == "m.room.topic":
            topic = content.get("topic")
            if not topic:
                return f"{actor} removed the topic"
            return f'{actor} changed the topic to "{_one_line(str(topic))}"'
        if etype == "m.room.power_levels":
            return self.power_levels(actor, content)
        if etype == "m.room.join_rules":
            return f"{actor} set the join rule to {_one_line(str(content.get('join_rule')))}"
        if etype == "m.room.history_visibility":
            vis = _one_line(str(content.get("history_visibility")))
            return f"{actor} set the history visibility to {vis}"
        if etype == "m.room.encryption":
            return f"{actor} enabled end-to-end encryption ({content.get('algorithm')})"
        if etype == "m.room.tombstone":
            return f"{actor} replaced the room with {content.get('replacement_room')}"
        if etype == "m.room.canonical_alias":
            return f"{actor} set the room address to {content.get('alias') or '(none)'}"
        if etype == "m.room.avatar":
            return f"{actor} changed the room avatar"
        key = event.get("state_key")
        where = f" ({_one_line(str(key))})" if key else ""
        return f"{actor} set {_one_line(etype)}{where}"

    def power_levels(self, actor: str, content: Mapping[str, Any]) -> str:
        users = content.get("users") or {}
        levels = {str(k): v for k, v in users.items()} if isinstance(users, Mapping) else {}
        before = self.users_levels
        self.users_levels = levels
        if before is None:
            return f"{actor} set the power levels"
        changes = []
        for user in sorted(set(before) | set(levels)):
            if before.get(user) != levels.get(user):
                level = levels.get(user)
                changes.append(f"{self.name(user)}: {'default' if level is None else level}")
        if not changes:
            return f"{actor} changed the power levels"
        return f"{actor} changed the power levels ({', '.join(changes)})"

    def member(
        self, event: Mapping[str, Any], content: Mapping[str, Any], sender: str | None
    ) -> str | None:
        target = str(event.get("state_key") or "")
        unsigned = event.get("unsigned") or {}
        prev_content = unsigned.get("prev_content") or {}
        if target not in self.membership and prev_content:
            # An export that starts mid-room (tests, a partial history): seed from prev_content.
            self.membership[target] = str(prev_content.get("membership", "leave"))
            if prev_content.get("displayname"):
                self.names[target] = _one_line(str(prev_content["displayname"]))
            self.avatars[target] = prev_content.get("avatar_url")
        prev = self.membership.get(target, "leave")
        new = str(content.get("membership", "leave"))
        old_name = self.name(target)
        display = content.get("displayname")
        new_name = _one_line(str(display)) if display else target
        actor = self.name(sender)
        reason = content.get("reason")
        tail = f": {_one_line(str(reason))}" if reason else ""

        old_avatar = self.avatars.get(target)
        self.membership[target] = new
        if new in ("join", "invite"):
            self.names[target] = new_name
            self.avatars[target] = content.get("avatar_url")
        # On leave and ban the name stays what it was, for later lines about the same user.

        if new == "join":
            if prev == "join":
                if new_name != old_name:
                    return f"{old_name} changed their display name to {new_name}"
                if content.get("avatar_url") != old_avatar:
                    return f"{new_name} changed their avatar"
                return f"{new_name} updated their profile"
            return f"{new_name} joined{tail}"
        if new == "invite":
            return f"{actor} invited {new_name}{tail}"
        if new == "ban":
            return f"{old_name} was banned by {actor}{tail}"
        if new == "knock":
            return f"{new_name} asked to join{tail}"
        # leave
        if sender == target:
            if prev == "invite":
                return f"{old_name} rejected the invitation{tail}"
            if prev == "knock":
                return f"{old_name} withdrew their request to join{tail}"
            return f"{old_name} left{tail}"
        if prev == "ban":
            return f"{old_name} was unbanned by {actor}{tail}"
        if prev == "invite":
            return f"{actor} withdrew the invitation of {old_name}{tail}"
        return f"{old_name} was removed by {actor}{tail}"


def _is_redacted(event: Mapping[str, Any]) -> bool:
    return "redacted_because" in (event.get("unsigned") or {})


def _redaction_reason(event: Mapping[str, Any]) -> str:
    because = (event.get("unsigned") or {}).get("redacted_because") or {}
    reason = (because.get("content") or {}).get("reason")
    return f": {_one_line(str(reason))}" if reason else ""


def _one_line(text: str) -> str:
    """A name or short value on one line; Markdown and HTML characters stay as they are."""
    text = "".join(
        " " if ch in _NAME_SPACE or unicodedata.category(ch) == "Cc" else ch for ch in text
    )
    return text.strip()


def _indent(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return ("\n" + _CONTINUATION).join(lines)


def _from_ms(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _human(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# endregion
# region delivery


@dataclass(frozen=True)
class ExportFile:
    kind: str  # "json" or "transcript"
    filename: str
    mime_type: str
    size: int
    sha256: str
    path: str | None = None
    mxc: str | None = None
    # Authenticated media (Matrix v1.11): a GET with an access token in the Authorization header.
    url: str | None = None


@dataclass(frozen=True)
class ExportResult:
    destination: str  # "media" or the directory
    room_id: str
    project_uuid: str
    exported_at: datetime
    counts: dict[str, int]
    files: tuple[ExportFile, ...]

    @property
    def json_file(self) -> ExportFile:
        return next(f for f in self.files if f.kind == "json")

    @property
    def transcript_file(self) -> ExportFile:
        return next(f for f in self.files if f.kind == "transcript")


async def deliver_export(
    export: RoomExport,
    *,
    destination: str,
    intent: IntentAPI,
    public_url: str | None = None,
) -> ExportResult:
    """Upload the export to the media repository (``"media"``) or write it under a directory.

    ``public_url`` is the homeserver address users reach (for the download URLs); it defaults
    to the address the intent talks to.
    """
    payloads = [
        ("json", ".json", JSON_MIME, export.to_json()),
        ("transcript", ".txt", TEXT_MIME, export.to_transcript().encode("utf-8")),
    ]
    files: list[ExportFile] = []
    if destination == MEDIA:
        base = (public_url or str(intent.api.base_url)).rstrip("/")
        for kind, ext, mime, data in payloads:
            filename = export.basename + ext
            mxc = await intent.upload_media(data, mime_type=mime, filename=filename)
            files.append(
                ExportFile(
                    kind=kind,
                    filename=filename,
                    mime_type=mime,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    mxc=str(mxc),
                    url=media_download_url(base, mxc),
                )
            )
    else:
        paths = await asyncio.to_thread(
            _write_files,
            destination,
            _safe_segment(export.project_uuid),
            export.timestamp,
            [(ext, data) for _, ext, _, data in payloads],
        )
        for (kind, _ext, mime, data), path in zip(payloads, paths, strict=True):
            files.append(
                ExportFile(
                    kind=kind,
                    filename=path.name,
                    mime_type=mime,
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    path=str(path),
                )
            )
    return ExportResult(
        destination=destination,
        room_id=export.room_id,
        project_uuid=export.project_uuid,
        exported_at=export.exported_at,
        counts=export.counts(),
        files=tuple(files),
    )


def media_download_url(homeserver: str, mxc: ContentURI | str) -> str:
    server, _, media_id = str(mxc).removeprefix("mxc://").partition("/")
    return f"{homeserver.rstrip('/')}/_matrix/client/v1/media/download/{server}/{media_id}"


def _safe_segment(value: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in value).strip(".")
    return cleaned or "unknown-project"


def _write_files(
    destination: str, subdir: str, stem: str, payloads: Iterable[tuple[str, bytes]]
) -> list[Path]:
    """Write ``<destination>/<subdir>/<stem><ext>`` for each payload, all with one free stem;
    never overwrites."""
    payloads = list(payloads)
    directory = Path(destination).expanduser() / subdir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for attempt in range(1000):
        candidate = stem if attempt == 0 else f"{stem}-{attempt}"
        written: list[Path] = []
        try:
            for ext, data in payloads:
                path = directory / (candidate + ext)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                written.append(path)
                with os.fdopen(fd, "wb") as stream:
                    stream.write(data)
        except FileExistsError:
            for path in written:
                path.unlink(missing_ok=True)
            continue
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        return written
    raise FileExistsError(f"no free file name for {stem} in {directory}")


# endregion
# region the management-room notice


def format_export_notice(result: ExportResult, project_name: str) -> str:
    """Markdown for the management room: where the files are and what they hold."""
    c = result.counts
    name = escape_markdown(_one_line(project_name))
    lines = [
        f"**History export** of **{name}** (`{result.project_uuid}`), "
        f"{_human(result.exported_at)}:",
        "",
        f"- {c.get('events', 0)} events, {c.get('messages', 0)} messages"
        + (f", {c['encrypted']} encrypted (not decrypted)" if c.get("encrypted") else "")
        + (f", {c['redacted']} deleted" if c.get("redacted") else ""),
    ]
    for f in result.files:
        label = "JSON" if f.kind == "json" else "Transcript"
        if f.mxc:
            link = f"[{escape_markdown(f.filename)}]({f.url})"
            lines.append(f"- {label}: {link} · `{f.mxc}` ({_size(f.size)})")
        else:
            lines.append(f"- {label}: `{f.path}` ({_size(f.size)})")
    if any(f.mxc for f in result.files):
        lines += ["", "The download links need a Matrix access token (authenticated media)."]
    return "\n".join(lines)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


# endregion
