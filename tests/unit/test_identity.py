from __future__ import annotations

import re

import pytest

from waldur_bridge import identity


@pytest.mark.parametrize(
    ("username", "localpart"),
    [
        ("alice", "alice"),
        ("alice.smith-2", "alice.smith-2"),
        ("Alice", "_alice"),
        ("a_b", "a__b"),
        ("a@b", "a=40b"),
        ("jürgen", "j=c3=bcrgen"),
        ("a b", "a=20b"),
    ],
)
def test_escape_localpart(username: str, localpart: str) -> None:
    assert identity.escape_localpart(username) == localpart


def test_escape_is_injective_on_tricky_names() -> None:
    names = ["a_b", "a@b", "A_b", "a__b", "aB", "a_b_", "ab", "Ab", "a=40b", "a=b"]
    escaped = {identity.escape_localpart(n) for n in names}
    assert len(escaped) == len(names)


def test_puppet_mxid_falls_back_to_uuid_when_too_long() -> None:
    uuid = "0" * 32
    mxid = identity.puppet_mxid("waldur_{userid}", "localhost", username="x" * 300, user_uuid=uuid)
    assert mxid == f"@waldur_{uuid}:localhost"
    assert (
        identity.puppet_mxid("waldur_{userid}", "localhost", username="bob", user_uuid=uuid)
        == "@waldur_bob:localhost"
    )
    assert (
        identity.puppet_mxid(
            "waldur_{userid}", "localhost", username="bob", user_uuid=uuid, source="uuid"
        )
        == f"@waldur_{uuid}:localhost"
    )


def test_template_mxid() -> None:
    assert (
        identity.template_mxid("@{username}:example.org", username="Bob", user_uuid="u")
        == "@bob:example.org"
    )
    assert (
        identity.template_mxid(
            "@{email_local}:example.org", username="bob", user_uuid="u", email=""
        )
        is None
    )
    assert (
        identity.template_mxid("@{username}:example.org", username="bad name", user_uuid="u")
        is None
    )


def test_puppet_regex_matches_only_puppets() -> None:
    pattern = re.compile(identity.puppet_regex("waldur_{userid}", "example.org"))
    assert pattern.match("@waldur_bob:example.org")
    assert not pattern.match("@waldur_bob:example.org.evil")
    assert not pattern.match("@waldurbot:example.org")
    assert not pattern.match("@bob:example.org")
