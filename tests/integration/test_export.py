"""Room history export against the real Synapse: pagination, transcript and both deliveries."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import aiohttp

from waldur_bridge.export import deliver_export, export_room, format_export_notice

from .helpers import BridgeEnv
from .test_membership import team

MESSAGES = 30


async def test_export_portal_history(bridge_env: BridgeEnv, tmp_path: Path) -> None:
    sim = bridge_env.sim
    ids = team(sim)
    await bridge_env.start()
    await bridge_env.sweep()
    room = await bridge_env.portal_room(ids["project"])
    p = bridge_env.puppet
    intent = bridge_env.bridge.az.intent

    speakers = [p("alice"), p("bob"), p("carol")]
    sent: list[tuple[str, str, str]] = []  # (event ID, sender, body)
    for i in range(MESSAGES):
        sender = speakers[i % len(speakers)]
        body = f"message {i:02d} from {sender}"
        if i == 7:
            body = "multi\nline <b>not html</b> **not bold**"
        event_id = await intent.user(sender).send_text(room, body)
        sent.append((str(event_id), sender, body))
    notice_id = await intent.send_notice(room, "a notice from the bot")

    project = {"uuid": ids["project"], "name": "Apollo", "customer": "Acme Research"}
    export = await export_room(intent, room, project=project, limit_per_page=7)

    # Every event once, creation first, our messages in the order sent.
    event_ids = [e["event_id"] for e in export.events]
    assert len(event_ids) == len(set(event_ids))
    assert export.events[0]["type"] == "m.room.create"
    texts = [
        (e["event_id"], e["sender"], e["content"]["body"])
        for e in export.events
        if e["type"] == "m.room.message" and e["sender"] in speakers
    ]
    assert texts == sent
    assert event_ids.index(sent[-1][0]) < event_ids.index(str(notice_id))
    assert export.message_count == MESSAGES + 1
    assert export.encrypted_count == 0
    assert export.event_count > 7 * 5  # really paginated over many pages

    joins = {
        e["state_key"]
        for e in export.events
        if e["type"] == "m.room.member" and e["content"].get("membership") == "join"
    }
    assert joins == {bridge_env.bot, p("alice"), p("bob"), p("carol")}
    names = [e["content"]["name"] for e in export.events if e["type"] == "m.room.name"]
    assert names == ["Apollo"]

    # The same history with the default page size.
    whole = await export_room(intent, room, project=project)
    assert [e["event_id"] for e in whole.events] == event_ids

    transcript = export.to_transcript()
    lines = transcript.splitlines()
    assert any(line.endswith("* Alice Archer joined") for line in lines)
    assert any(line.endswith("* Bob Baker joined") for line in lines)
    assert any(
        line.endswith(f"Alice Archer ({p('alice')}): message 00 from {p('alice')}")
        for line in lines
    )
    assert any(line.endswith(f"Bob Baker ({p('bob')}): multi") for line in lines)
    assert "    line <b>not html</b> **not bold**" in lines
    assert any(line.endswith('changed the room name to "Apollo"') for line in lines)
    for _, _, body in sent:
        assert transcript.count(body.split("\n")[0]) == 1

    doc = json.loads(export.to_json())
    assert doc["room_id"] == room
    assert doc["counts"]["messages"] == MESSAGES + 1
    assert [e["event_id"] for e in doc["events"]] == event_ids

    # To the media repository: download back through the homeserver, with the AS token.
    result = await deliver_export(export, destination="media", intent=intent)
    assert {f.kind for f in result.files} == {"json", "transcript"}
    headers = {"Authorization": f"Bearer {bridge_env.hs.as_token}"}
    async with aiohttp.ClientSession() as session:
        for f, expected in (
            (result.json_file, export.to_json()),
            (result.transcript_file, transcript.encode()),
        ):
            assert f.mxc is not None and f.mxc.startswith("mxc://")
            assert f.url is not None and f.url.startswith(bridge_env.hs.url)
            assert ids["project"] in f.filename
            async with session.get(f.url, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.read() == expected
            async with session.get(f.url) as resp:
                assert resp.status == 401  # authenticated media
        assert await intent.download_media(result.json_file.mxc) == export.to_json()
    notice = format_export_notice(result, "Apollo")
    assert result.json_file.url in notice and result.transcript_file.mxc in notice

    # To a directory: <dir>/<project uuid>/<timestamp>.json|.txt, 0600, never overwritten.
    out = tmp_path / "exports"
    on_disk = await deliver_export(export, destination=str(out), intent=intent)
    again = await deliver_export(export, destination=str(out), intent=intent)
    for f in (*on_disk.files, *again.files):
        assert f.path is not None
        assert Path(f.path).parent == out / ids["project"]
        assert stat.S_IMODE(os.stat(f.path).st_mode) == 0o600
    assert on_disk.json_file.path != again.json_file.path
    with open(on_disk.json_file.path, "rb") as stream:  # noqa: ASYNC230
        assert stream.read() == export.to_json()
    with open(on_disk.transcript_file.path, encoding="utf-8") as stream:  # noqa: ASYNC230
        assert stream.read() == transcript
    assert f"`{on_disk.json_file.path}`" in format_export_notice(on_disk, "Apollo")
