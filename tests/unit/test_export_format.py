"""Room history export: JSON document and text transcript from synthetic events."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from waldur_bridge.export import (
    ENCRYPTED_NOTE,
    ExportFile,
    ExportResult,
    RoomExport,
    _write_files,
    deliver_export,
    format_export_notice,
    media_download_url,
)

ROOM = "!room:localhost"
BOT = "@waldurbot:localhost"
ALICE = "@waldur_alice:localhost"
BOB = "@waldur_bob:localhost"
EVIL = "@waldur_evil:localhost"
EVIL_NAME = '<b>Eve</b> **bold** [x](http://y) & "q"'
T0 = 1_795_293_062_000  # 2026-11-21 20:31:02 UTC
PROJECT = {"uuid": "0f3c9a2e5b6d4c1e8f7a9b0c1d2e3f40", "name": "Apollo", "customer": "Acme"}
EXPORTED = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC)

_seq = iter(range(1, 10_000))


def restart_numbering() -> None:
    global _seq
    _seq = iter(range(1, 10_000))


def ev(etype: str, sender: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    n = next(_seq)
    return {
        "event_id": f"$e{n}",
        "type": etype,
        "sender": sender,
        "origin_server_ts": T0 + n * 1000,
        "room_id": ROOM,
        "content": content,
        **extra,
    }


def member(sender: str, target: str, membership: str, **content: Any) -> dict[str, Any]:
    return ev("m.room.member", sender, {"membership": membership, **content}, state_key=target)


def msg(sender: str, body: str, **content: Any) -> dict[str, Any]:
    return ev("m.room.message", sender, {"msgtype": "m.text", "body": body, **content})


def history() -> list[dict[str, Any]]:
    restart_numbering()
    first = msg(ALICE, "hello")
    deleted = msg(BOB, "oops, a secret")
    redaction = ev("m.room.redaction", ALICE, {"redacts": deleted["event_id"], "reason": "leak"})
    redaction["redacts"] = deleted["event_id"]
    deleted["content"] = {}
    deleted["unsigned"] = {"redacted_because": redaction}
    events = [
        ev("m.room.create", BOT, {"room_version": "12"}, state_key=""),
        member(BOT, BOT, "join", displayname="Waldur bot"),
        ev("m.room.power_levels", BOT, {"users": {}}, state_key=""),
        ev("m.room.name", BOT, {"name": "Apollo"}, state_key=""),
        ev("m.room.topic", BOT, {"topic": "Acme: Telescope"}, state_key=""),
        member(BOT, ALICE, "invite", displayname="Alice Archer"),
        member(ALICE, ALICE, "join", displayname="Alice Archer"),
        member(BOT, BOB, "invite", displayname="Bob Baker"),
        member(BOB, BOB, "join", displayname="Bob Baker"),
        ev("m.room.power_levels", BOT, {"users": {ALICE: 50}}, state_key=""),
        first,
        msg(ALICE, "line one\n[2026-01-01 00:00:00 UTC] Mallory (@m:x): forged"),
        msg(
            ALICE,
            " * hello there",
            **{
                "m.new_content": {"msgtype": "m.text", "body": "hello there"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": first["event_id"]},
            },
        ),
        deleted,
        redaction,
        ev("m.room.message", BOB, {"msgtype": "m.emote", "body": "waves"}),
        ev("m.room.message", BOT, {"msgtype": "m.notice", "body": "Order done"}),
        ev(
            "m.room.message",
            BOB,
            {"msgtype": "m.image", "body": "plot.png", "url": "mxc://localhost/abc"},
        ),
        ev(
            "m.room.encrypted",
            BOB,
            {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgA", "session_id": "s"},
        ),
        member(BOB, BOB, "join", displayname="Robert Baker"),
        msg(BOB, "renamed"),
        member(BOT, EVIL, "invite", displayname=EVIL_NAME),
        member(EVIL, EVIL, "join", displayname=EVIL_NAME),
        msg(EVIL, "<script>alert(1)</script> *hi*"),
        member(BOT, BOB, "leave", reason="Role removed in Waldur"),
        member(EVIL, EVIL, "leave"),
        ev("m.room.name", BOT, {"name": "Apollo II"}, state_key=""),
        ev(
            "m.reaction",
            ALICE,
            {"m.relates_to": {"rel_type": "m.annotation", "key": "👍", "event_id": "$e1"}},
        ),
    ]
    for i, event in enumerate(events, 1):  # one second apart, in list order
        event["origin_server_ts"] = T0 + i * 1000
    return events


@pytest.fixture
def export() -> RoomExport:
    return RoomExport(room_id=ROOM, project=dict(PROJECT), events=history(), exported_at=EXPORTED)


def lines_of(export: RoomExport) -> list[str]:
    return export.to_transcript().splitlines()


def test_counts(export: RoomExport) -> None:
    assert export.event_count == len(export.events) == 28
    # m.room.message events: hello, multi-line, edit, deleted, emote, notice, image, renamed, evil
    assert export.message_count == 9
    assert export.encrypted_count == 1
    assert export.redacted_count == 1
    assert export.basename == f"waldur-{PROJECT['uuid']}-20261122T080000Z"


def test_transcript_header_and_messages(export: RoomExport) -> None:
    text = export.to_transcript()
    lines = text.splitlines()
    assert lines[0] == "Room history export"
    assert f"Project: Apollo ({PROJECT['uuid']})" in lines
    assert "Organization: Acme" in lines
    assert "Exported: 2026-11-22 08:00:00 UTC" in lines
    assert "[2026-11-21 20:31:13 UTC] Alice Archer (@waldur_alice:localhost): hello" in lines
    assert "[2026-11-21 20:31:03 UTC] * Waldur bot created the room" not in lines  # before join
    assert "[2026-11-21 20:31:03 UTC] * @waldurbot:localhost created the room" in lines
    assert '[2026-11-21 20:31:06 UTC] * Waldur bot changed the room name to "Apollo"' in lines
    assert '[2026-11-21 20:31:07 UTC] * Waldur bot changed the topic to "Acme: Telescope"' in lines
    assert "[2026-11-21 20:31:08 UTC] * Waldur bot invited Alice Archer" in lines
    assert "[2026-11-21 20:31:09 UTC] * Alice Archer joined" in lines
    assert "[2026-11-21 20:31:11 UTC] * Bob Baker joined" in lines
    assert any(
        line.endswith("* Waldur bot changed the power levels (Alice Archer: 50)") for line in lines
    )
    # Continuation lines are indented: message text cannot forge a transcript line.
    i = lines.index("[2026-11-21 20:31:14 UTC] Alice Archer (@waldur_alice:localhost): line one")
    assert lines[i + 1] == "    [2026-01-01 00:00:00 UTC] Mallory (@m:x): forged"
    assert text.endswith("\n")


def test_transcript_edits_redactions_encrypted_media(export: RoomExport) -> None:
    lines = lines_of(export)
    body = "\n".join(lines)
    assert "Alice Archer (@waldur_alice:localhost): (edited $e" in body and ") hello there" in body
    assert "[2026-11-21 20:31:16 UTC] Bob Baker (@waldur_bob:localhost): [deleted: leak]" in lines
    assert "oops, a secret" not in body
    assert any("* Alice Archer deleted $e" in line and line.endswith(": leak") for line in lines)
    assert any(line.endswith("* Bob Baker (@waldur_bob:localhost) waves") for line in lines)
    assert any(
        line.endswith("Waldur bot (@waldurbot:localhost): (notice) Order done") for line in lines
    )
    assert any(line.endswith("[image: plot.png] mxc://localhost/abc") for line in lines)
    assert any(
        line.endswith("Bob Baker (@waldur_bob:localhost): [encrypted message, not decrypted]")
        for line in lines
    )
    assert any(line.endswith("* Alice Archer reacted 👍 to $e1") for line in lines)


def test_transcript_names_as_they_were(export: RoomExport) -> None:
    lines = lines_of(export)
    assert any(
        line.endswith("* Bob Baker changed their display name to Robert Baker") for line in lines
    )
    assert any(line.endswith("Robert Baker (@waldur_bob:localhost): renamed") for line in lines)
    # The removal uses the name at that time and the reason.
    assert any(
        line.endswith("* Robert Baker was removed by Waldur bot: Role removed in Waldur")
        for line in lines
    )
    assert any(
        line.endswith('* Waldur bot changed the room name to "Apollo II"') for line in lines
    )


def test_markup_in_names_kept_verbatim_and_json_valid(export: RoomExport) -> None:
    lines = lines_of(export)
    assert any(line.endswith(f"* {EVIL_NAME} joined") for line in lines)
    assert any(
        line.endswith(f"{EVIL_NAME} ({EVIL}): <script>alert(1)</script> *hi*") for line in lines
    )
    assert any(line.endswith(f"* {EVIL_NAME} left") for line in lines)
    doc = json.loads(export.to_json())
    names = [e["content"].get("displayname") for e in doc["events"]]
    assert EVIL_NAME in names


def test_name_with_newline_stays_on_one_line() -> None:
    events = [
        member(BOT, EVIL, "invite", displayname="Eve\n[2026-01-01 00:00:00 UTC] * forged"),
        member(EVIL, EVIL, "join", displayname="Eve\n[2026-01-01 00:00:00 UTC] * forged"),
    ]
    export = RoomExport(room_id=ROOM, project=PROJECT, events=events, exported_at=EXPORTED)
    body = export.to_transcript().split("\n\n", 1)[1]
    assert body.count("\n") == 2  # two lines, each ending in a newline
    assert "* Eve [2026-01-01 00:00:00 UTC] * forged joined" in body


def test_json_document(export: RoomExport) -> None:
    raw = export.to_json()
    doc = json.loads(raw.decode("utf-8"))
    assert doc["format"] == "org.waldur.matrix-bridge.room-export"
    assert doc["room_id"] == ROOM
    assert doc["project"] == PROJECT
    assert doc["exported_at"] == "2026-11-22T08:00:00.000Z"
    assert doc["counts"] == {
        "events": 28,
        "messages": 9,
        "encrypted": 1,
        "state": 16,
        "redacted": 1,
    }
    events = doc["events"]
    assert [e["event_id"] for e in events] == [e["event_id"] for e in export.events]
    hello = next(e for e in events if e["content"].get("body") == "hello")
    assert set(hello) == {"event_id", "type", "sender", "origin_server_ts", "time", "content"}
    assert hello["time"] == "2026-11-21T20:31:13.000Z"
    assert hello["sender"] == ALICE
    join = next(e for e in events if e["type"] == "m.room.member")
    assert join["state_key"] == BOT
    enc = next(e for e in events if e["type"] == "m.room.encrypted")
    assert enc["note"] == ENCRYPTED_NOTE and enc["content"]["ciphertext"] == "AwgA"
    deleted = next(e for e in events if e.get("redacted"))
    assert deleted["content"] == {} and deleted["redacted_because"]["redacts"]
    redaction = next(e for e in events if e["type"] == "m.room.redaction")
    assert redaction["redacts"] == deleted["event_id"]
    assert "👍" in raw.decode("utf-8")  # UTF-8, not \u escapes


def test_empty_export() -> None:
    export = RoomExport(room_id=ROOM, project={"uuid": "u"}, events=[], exported_at=EXPORTED)
    assert json.loads(export.to_json())["events"] == []
    assert "Events: 0 (messages: 0" in export.to_transcript()


async def test_deliver_to_directory_never_overwrites(tmp_path: Path, export: RoomExport) -> None:
    first = await deliver_export(export, destination=str(tmp_path), intent=None)  # type: ignore[arg-type]
    second = await deliver_export(export, destination=str(tmp_path), intent=None)  # type: ignore[arg-type]
    base = tmp_path / PROJECT["uuid"]
    assert first.json_file.path == str(base / "20261122T080000Z.json")
    assert first.transcript_file.path == str(base / "20261122T080000Z.txt")
    assert second.json_file.path == str(base / "20261122T080000Z-1.json")
    assert second.transcript_file.path == str(base / "20261122T080000Z-1.txt")
    for f in (*first.files, *second.files):
        assert f.path is not None
        assert stat.S_IMODE(os.stat(f.path).st_mode) == 0o600
    with open(first.json_file.path, "rb") as stream:  # noqa: ASYNC230
        assert stream.read() == export.to_json()
    with open(first.transcript_file.path, encoding="utf-8") as stream:  # noqa: ASYNC230
        assert stream.read() == export.to_transcript()
    assert first.counts["messages"] == 9


def test_write_files_keeps_stems_paired(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "t.txt").write_text("someone else's")
    paths = _write_files(str(tmp_path), "p", "t", [(".json", b"{}"), (".txt", b"x")])
    assert [p.name for p in paths] == ["t-1.json", "t-1.txt"]
    assert not (tmp_path / "p" / "t.json").exists()  # rolled back, not left half-written
    assert (tmp_path / "p" / "t.txt").read_text() == "someone else's"


def test_media_download_url() -> None:
    assert (
        media_download_url("https://matrix.example.org/", "mxc://example.org/AbC")
        == "https://matrix.example.org/_matrix/client/v1/media/download/example.org/AbC"
    )


def test_notice() -> None:
    result = ExportResult(
        destination="media",
        room_id=ROOM,
        project_uuid="u1",
        exported_at=EXPORTED,
        counts={"events": 40, "messages": 30, "encrypted": 2, "redacted": 0},
        files=(
            ExportFile(
                "json",
                "waldur-u1-t.json",
                "application/json",
                2048,
                "h",
                mxc="mxc://s/a",
                url="https://s/dl/a",
            ),
            ExportFile(
                "transcript",
                "waldur-u1-t.txt",
                "text/plain",
                100,
                "h",
                mxc="mxc://s/b",
                url="https://s/dl/b",
            ),
        ),
    )
    text = format_export_notice(result, "Apollo *beta*")
    assert "**History export** of **Apollo \\*beta\\*** (`u1`)" in text
    assert "- 40 events, 30 messages, 2 encrypted (not decrypted)" in text
    assert "- JSON: [waldur-u1-t.json](https://s/dl/a) · `mxc://s/a` (2.0 KiB)" in text
    assert "- Transcript: [waldur-u1-t.txt](https://s/dl/b) · `mxc://s/b` (100 B)" in text
    assert "access token" in text
    on_disk = ExportResult(
        destination="/srv/x",
        room_id=ROOM,
        project_uuid="u1",
        exported_at=EXPORTED,
        counts={"events": 1, "messages": 0},
        files=(
            ExportFile("json", "t.json", "application/json", 10, "h", path="/srv/x/u1/t.json"),
        ),
    )
    text = format_export_notice(on_disk, "Apollo")
    assert "- JSON: `/srv/x/u1/t.json` (10 B)" in text
    assert "access token" not in text and "encrypted" not in text
