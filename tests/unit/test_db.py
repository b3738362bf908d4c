"""The database layer on SQLite and on a real PostgreSQL (WALDUR_BRIDGE_TEST_POSTGRES)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mautrix.util.async_db import Database

from waldur_bridge import db
from waldur_bridge.db import (
    AppserviceTxn,
    AuditEntry,
    Cursor,
    HeldRemoval,
    Portal,
    PortalMember,
    Puppet,
    User,
    upgrade_table,
)
from waldur_bridge.db.upgrade.v00_latest_revision import LATEST_REVISION

POSTGRES_ENV = "WALDUR_BRIDGE_TEST_POSTGRES"


def _postgres_param() -> object:
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return pytest.param(url, id="postgres", marks=pytest.mark.postgres)
    if os.environ.get("CI"):
        pytest.fail(f"{POSTGRES_ENV} must be set in CI", pytrace=False)
    return pytest.param(
        None,
        id="postgres",
        marks=pytest.mark.skip(reason=f"set {POSTGRES_ENV}=postgres://... to run on PostgreSQL"),
    )


@pytest.fixture(params=["sqlite", _postgres_param()])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:{tmp_path / 'bridge.db'}"
        database = Database.create(url, upgrade_table=upgrade_table, owner_name="test")
        await database.start()
    else:
        # A schema of its own per test keeps runs independent on the shared database.
        schema = f"wb_{uuid.uuid4().hex[:12]}"
        admin = Database.create(request.param, db_args={"min_size": 1, "max_size": 1})
        await admin.start()
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.stop()
        database = Database.create(
            request.param,
            upgrade_table=upgrade_table,
            owner_name="test",
            db_args={"min_size": 1, "max_size": 2, "server_settings": {"search_path": schema}},
        )
        await database.start()
    db.init(database)
    try:
        yield database
    finally:
        if request.param != "sqlite":
            await database.execute(f"DROP SCHEMA {schema} CASCADE")
        await database.stop()


async def test_fresh_schema_is_latest(database: Database) -> None:
    version = await database.fetchval("SELECT version FROM version")
    assert version == LATEST_REVISION


async def test_portal_roundtrip(database: Database) -> None:
    portal = Portal(project_uuid="p" * 32, customer_uuid="c" * 32, name="Apollo")
    await portal.save()
    portal.room_id = "!room:localhost"
    portal.state = "active"
    portal.encrypted = True
    await portal.save()
    loaded = await Portal.get_by_room("!room:localhost")
    assert loaded is not None
    assert (loaded.name, loaded.state, loaded.encrypted) == ("Apollo", "active", True)
    assert loaded.created_at <= loaded.updated_at
    assert await Portal.count_by_state() == {"active": 1}


async def test_puppet_user_and_member(database: Database) -> None:
    await Puppet(waldur_user_uuid="u1", mxid="@waldur_a:localhost", username="a").save()
    with pytest.raises(Exception):  # noqa: B017 - the driver's own unique-violation type
        await Puppet(waldur_user_uuid="u2", mxid="@waldur_a:localhost").save()
    user = User(mxid="@a:localhost")
    await user.link("u1", by="@admin:localhost")
    assert (await User.get_by_waldur_user("u1")).mxid == "@a:localhost"
    assert [u.mxid for u in await User.all_linked()] == ["@a:localhost"]
    await Portal(project_uuid="p1", customer_uuid="c1").save()
    member = PortalMember(project_uuid="p1", mxid="@waldur_a:localhost", added_by="bridge")
    await member.save()
    member.left_voluntarily = True
    await member.save()
    stored = await PortalMember.for_project("p1")
    assert stored["@waldur_a:localhost"].left_voluntarily is True


async def test_txn_cursor_audit_held(database: Database) -> None:
    assert not await AppserviceTxn.seen("k1")
    await AppserviceTxn.record("k1", "1")
    await AppserviceTxn.record("k1", "1")
    assert await AppserviceTxn.seen("k1")

    assert await Cursor.get("events") is None
    await Cursor("events", 1700000000.5, ["a", "b"]).save()
    cursor = await Cursor.get("events")
    assert cursor is not None and cursor.position == 1700000000.5 and cursor.seen == ["a", "b"]

    for target in ("@a:x", "@b:x"):
        await AuditEntry(action="kick", outcome="done", project_uuid="p", target=target).insert()
    assert [e.target for e in await AuditEntry.recent("p")] == ["@b:x", "@a:x"]
    assert await AuditEntry.count("kick") == 2

    await HeldRemoval.replace_for_project("p", [HeldRemoval("p", "@a:x", "Role removed")])
    await HeldRemoval.replace_for_project("p", [HeldRemoval("p", "@b:x", "Role removed")])
    assert [h.mxid for h in await HeldRemoval.all("p")] == ["@b:x"]


async def test_space_rows_roundtrip(database: Database) -> None:
    from waldur_bridge.db import CustomerSpace, PortalDecoration, SpaceMember

    space = CustomerSpace(customer_uuid="c" * 32, room_id="!space:localhost", name="Acme")
    await space.save()
    space.state = "closed"
    space.avatar_mxc = "mxc://localhost/a"
    await space.save()
    loaded = await CustomerSpace.get("c" * 32)
    assert loaded is not None and loaded.state == "closed"
    assert loaded.avatar_mxc == "mxc://localhost/a" and loaded.updated_at > 0
    assert [s.room_id for s in await CustomerSpace.all()] == ["!space:localhost"]

    await Portal(project_uuid="p" * 32, customer_uuid="c" * 32, room_id="!p:localhost").save()
    decoration = PortalDecoration(project_uuid="p" * 32, space_room_id="!space:localhost")
    await decoration.save()
    decoration.child_order = "apollo~pppppppp"
    await decoration.save()
    again = await PortalDecoration.get("p" * 32)
    assert again is not None and again.child_order == "apollo~pppppppp"
    assert set(await PortalDecoration.all()) == {"p" * 32}

    # Space members live apart from portal members (no portal row needed).
    member = SpaceMember(project_uuid="space:" + "c" * 32, mxid="@a:localhost", added_by="bridge")
    await member.save()
    assert set(await SpaceMember.for_project("space:" + "c" * 32)) == {"@a:localhost"}
    assert await PortalMember.for_project("space:" + "c" * 32) == {}
    await member.delete()
    assert await SpaceMember.get("space:" + "c" * 32, "@a:localhost") is None


async def _back_to_revision_1(database: Database) -> None:
    """Undo every step after revision 1, leaving the schema of the first release."""
    for table in (
        "portal_decoration",
        "space_member",
        "customer_space",
        "bridge_instance",
        "signin_key",
    ):
        await database.execute(f"DROP TABLE {table}")
    await database.execute(
        "CREATE TABLE customer_space (customer_uuid TEXT PRIMARY KEY, "
        "room_id TEXT UNIQUE NOT NULL, name TEXT NOT NULL DEFAULT '')"
    )
    await database.execute("ALTER TABLE portal DROP COLUMN alias")
    await database.execute("UPDATE version SET version=1")


async def test_upgrade_from_v1_keeps_spaces_and_adds_columns(database: Database) -> None:
    from waldur_bridge.db import CustomerSpace

    await _back_to_revision_1(database)
    await database.execute(
        "INSERT INTO customer_space (customer_uuid, room_id, name) VALUES ($1, $2, $3)",
        "c" * 32,
        "!old:localhost",
        "Old Org",
    )
    await upgrade_table.upgrade(database)
    assert await database.fetchval("SELECT version FROM version") == LATEST_REVISION
    kept = await CustomerSpace.get("c" * 32)
    assert kept is not None and kept.name == "Old Org" and kept.state == "active"
    assert await database.fetchval("SELECT COUNT(*) FROM portal_decoration") == 0


async def test_upgrade_from_revision_1_adds_the_portal_alias(database: Database) -> None:
    """A database of the first schema (no alias column) keeps its portals and gains it."""
    await _back_to_revision_1(database)
    await database.execute(
        "INSERT INTO portal (project_uuid, customer_uuid, room_id, state, created_at, "
        "updated_at) VALUES ('p1', 'c1', '!old:localhost', 'active', 1, 1)"
    )
    await database.upgrade_table.upgrade(database)
    assert await database.fetchval("SELECT version FROM version") == LATEST_REVISION
    old = await Portal.get_by_project("p1")
    assert old is not None and old.room_id == "!old:localhost" and old.alias is None
    old.alias = "#waldur_p1:localhost"
    await old.save()
    assert (await Portal.get_by_project("p1")).alias == "#waldur_p1:localhost"


async def test_signin_keys_are_made_once_and_kept(database: Database) -> None:
    """The first start makes the key; later starts (and a second instance) load the same one."""
    from waldur_bridge.db import SigninKey
    from waldur_bridge.web.signin.keys import KeyStore

    first = await KeyStore().ring()
    again = await KeyStore().ring()
    assert [k.kid for k in again.keys] == [first.signing.kid]
    assert again.signing.as_dict(private=True) == first.signing.as_dict(private=True)
    rows = await SigninKey.all()
    assert [(r.kid, r.algorithm) for r in rows] == [(first.signing.kid, "RS256")]
    public = again.jwks()["keys"][0]
    assert public["kid"] == first.signing.kid and "d" not in public


async def test_upgrade_from_revision_4_adds_signin_keys(database: Database) -> None:
    from waldur_bridge.db import SigninKey

    await database.execute("DROP TABLE signin_key")
    await database.execute("UPDATE version SET version=4")
    await database.upgrade_table.upgrade(database)
    assert await database.fetchval("SELECT version FROM version") == LATEST_REVISION == 5
    await SigninKey.add("k1", "RS256", "{}")
    assert [r.kid for r in await SigninKey.all()] == ["k1"]
