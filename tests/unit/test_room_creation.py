"""The createRoom request of a new portal, and how a room's link is read back."""

from __future__ import annotations

import pytest
from mautrix.errors import MatrixRequestError, make_request_error

from waldur_bridge import room_creation
from waldur_bridge.room_creation import NewRoom, create_room_request, linked_project

BOT = "@waldurbot:example.org"
ALICE = "@waldur_alice:example.org"
BOB = "@waldur_bob:example.org"


def new_room(version: str, **kwargs: object) -> NewRoom:
    values: dict[str, object] = {
        "project_uuid": "p" * 32,
        "customer_uuid": "c" * 32,
        "name": "Apollo",
        "topic": "Acme: telescope",
        "bot_mxid": BOT,
        "room_version": version,
        "invitees": (ALICE, BOB, BOT),
        "levels": {ALICE: 50, BOT: 50},
        "bridge_info_state_key": "waldur://" + "p" * 32,
        "bridge_info": {"bridgebot": BOT},
    }
    values.update(kwargs)
    return NewRoom(**values)  # type: ignore[arg-type]


def test_v12_team_levels_without_the_creator() -> None:
    request = create_room_request(new_room("12"))
    levels = request["power_level_override"]
    # v12: the creator's power is implicit and listing it is refused.
    assert levels["users"] == {ALICE: 50}
    assert levels["events"]["m.room.tombstone"] == 150
    assert request["invitees"] == [ALICE, BOB]
    assert request["room_version"] == "12"


@pytest.mark.parametrize("version", ["10", "11"])
def test_before_v12_the_bot_keeps_100(version: str) -> None:
    # A users map without the bot would demote the creator to users_default.
    levels = create_room_request(new_room(version))["power_level_override"]["users"]
    assert levels == {BOT: 100, ALICE: 50}
    empty = create_room_request(new_room(version, levels={}, invitees=()))
    assert empty["power_level_override"]["users"] == {BOT: 100}
    assert empty["invitees"] == []


def test_initial_state_links_the_project_and_encryption_is_optional() -> None:
    request = create_room_request(new_room("12"))
    types = [e["type"] for e in request["initial_state"]]
    assert types[0] == "org.waldur.project"
    assert request["initial_state"][0]["content"] == {
        "project_uuid": "p" * 32,
        "customer_uuid": "c" * 32,
    }
    assert "m.room.encryption" not in types
    assert {"m.bridge", "uk.half-shot.bridge"} <= set(types)
    assert request["creation_content"] == {}
    closed = create_room_request(new_room("12", encrypted=True, federate=False))
    assert "m.room.encryption" in [e["type"] for e in closed["initial_state"]]
    assert closed["creation_content"] == {"m.federate": False}


def test_linked_project_needs_the_bot_as_creator_and_a_uuid() -> None:
    dashed = "0A1B2C3D-0000-4000-8000-00000000ABCD"
    link = {"type": "org.waldur.project", "state_key": "", "content": {"project_uuid": dashed}}
    create = {"type": "m.room.create", "state_key": "", "sender": BOT, "content": {}}
    assert linked_project([create, link], BOT) == "0a1b2c3d00004000800000000000abcd"
    # A link naming no Waldur UUID (another tool's test room, a hand-made event) is no project's.
    for odd in ("x", "", 7, "0a1b2c3d"):
        assert linked_project([create, {**link, "content": {"project_uuid": odd}}], BOT) is None
    assert linked_project([{**create, "sender": "@mallory:example.org"}, link], BOT) is None
    assert linked_project([create], BOT) is None
    assert linked_project([create, {**link, "content": {"superseded_by": "!x"}}], BOT) is None


def test_puppets_are_invited_in_the_initial_state_others_by_the_invite_list() -> None:
    carol = "@carol:example.org"  # a local Matrix account, not a puppet: its profile is unknown
    room = new_room("12", invitees=(ALICE, BOB, carol, BOT))
    plain = create_room_request(room)
    assert plain["invitees"] == [ALICE, BOB, carol]
    request = room_creation.with_state_invites(plain, {ALICE: "Alice", BOB: ""})
    members = [
        e.serialize() for e in request["initial_state"] if str(e["type"]) == "m.room.member"
    ]
    assert [(m["state_key"], m["content"]["membership"]) for m in members] == [
        (ALICE, "invite"),
        (BOB, "invite"),
    ]
    assert members[0]["content"]["displayname"] == "Alice"
    assert "displayname" not in members[1]["content"]  # no name known: none made up
    assert request["invitees"] == [carol]
    # Member events come after the project link and the rest of the room's own state.
    assert request["initial_state"][: len(plain["initial_state"])] == plain["initial_state"]
    assert all(str(e["type"]) != "m.room.member" for e in plain["initial_state"])


class _RefusingIntent:
    """createRoom that refuses member events in the initial state, as an unknown homeserver
    might; records each request."""

    domain = "example.org"

    def __init__(self, errcode: str = "M_BAD_JSON") -> None:
        self.errcode = errcode
        self.requests: list[dict[str, object]] = []

    async def create_room(self, **request: object) -> str:
        self.requests.append(request)
        states = request["initial_state"]
        assert isinstance(states, list)
        if any(str(e["type"]) == "m.room.member" for e in states):
            raise make_request_error(400, "", self.errcode, "member events not allowed here")
        return "!room:example.org"


async def test_a_refusal_of_state_invites_falls_back_to_the_invite_list(monkeypatch) -> None:
    monkeypatch.setattr(room_creation, "LEARNT", room_creation._Learnt())
    intent = _RefusingIntent()
    room = new_room("12", puppet_names={ALICE: "Alice", BOB: "Bob"})
    created = await room_creation.create_or_adopt(intent, room, "waldur_p")  # type: ignore[arg-type]
    assert created.room_id == "!room:example.org" and not created.adopted
    assert [r["invitees"] for r in intent.requests] == [[], [ALICE, BOB]]
    # Learnt: the next room goes with the invite list at once.
    again = await room_creation.create_or_adopt(intent, room, "waldur_q")  # type: ignore[arg-type]
    assert len(intent.requests) == 3 and intent.requests[2]["invitees"] == [ALICE, BOB]
    assert again.room.invited == (ALICE, BOB)


async def test_other_refusals_are_not_retried(monkeypatch) -> None:
    monkeypatch.setattr(room_creation, "LEARNT", room_creation._Learnt())
    intent = _RefusingIntent("M_LIMIT_EXCEEDED")
    with pytest.raises(MatrixRequestError):
        await room_creation.create_or_adopt(
            intent,  # type: ignore[arg-type]
            new_room("12", puppet_names={ALICE: "Alice"}),
            "waldur_p",
        )
    assert len(intent.requests) == 1
    assert not room_creation.LEARNT.state_invites_refused
