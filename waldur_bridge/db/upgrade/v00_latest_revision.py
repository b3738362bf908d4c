"""The whole current schema, for fresh installs."""

from __future__ import annotations

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table

LATEST_REVISION = 5


@upgrade_table.register(description="Latest revision", upgrades_to=LATEST_REVISION)
async def upgrade_latest(conn: Connection, scheme: Scheme) -> None:
    serial = "BIGSERIAL" if scheme != Scheme.SQLITE else "INTEGER"
    autoincrement = "" if scheme != Scheme.SQLITE else "AUTOINCREMENT"
    # A portal is the room of one Waldur project; its state survives a disable so that
    # reactivation finds the same room. `alias` is the alias planned (state 'creating') or
    # given to the room: recorded before createRoom, so a crash cannot leave a second room.
    await conn.execute(
        """CREATE TABLE portal (
            project_uuid  TEXT PRIMARY KEY,
            customer_uuid TEXT NOT NULL,
            room_id       TEXT UNIQUE,
            state         TEXT NOT NULL DEFAULT 'creating',
            name          TEXT NOT NULL DEFAULT '',
            topic         TEXT NOT NULL DEFAULT '',
            encrypted     BOOLEAN NOT NULL DEFAULT false,
            error         TEXT,
            alias         TEXT,
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL
        )"""
    )
    await conn.execute("CREATE INDEX portal_customer_idx ON portal (customer_uuid)")
    # The space of one Waldur organization, and what the bridge last wrote there.
    await conn.execute(
        """CREATE TABLE customer_space (
            customer_uuid    TEXT PRIMARY KEY,
            room_id          TEXT UNIQUE NOT NULL,
            name             TEXT NOT NULL DEFAULT '',
            topic            TEXT NOT NULL DEFAULT '',
            state            TEXT NOT NULL DEFAULT 'active',
            avatar_url       TEXT,
            avatar_hash      TEXT,
            avatar_mxc       TEXT,
            bridge_info_hash TEXT,
            updated_at       BIGINT NOT NULL DEFAULT 0
        )"""
    )
    await create_decorations(conn)
    # A puppet is the bridge-controlled Matrix account of one Waldur user.
    await conn.execute(
        """CREATE TABLE puppet (
            waldur_user_uuid TEXT PRIMARY KEY,
            mxid             TEXT UNIQUE NOT NULL,
            username         TEXT NOT NULL DEFAULT '',
            displayname      TEXT NOT NULL DEFAULT '',
            is_registered    BOOLEAN NOT NULL DEFAULT false
        )"""
    )
    # Matrix users who talk to the bot: their management room and an explicit link to a Waldur
    # user (for deployments where people use their own accounts).
    await conn.execute(
        """CREATE TABLE matrix_user (
            mxid             TEXT PRIMARY KEY,
            waldur_user_uuid TEXT UNIQUE,
            management_room  TEXT,
            linked_by        TEXT,
            linked_at        BIGINT
        )"""
    )
    # What the bridge knows of each managed member of a portal beyond the room state itself:
    # who brought them in and whether they left on their own.
    await conn.execute(
        """CREATE TABLE portal_member (
            project_uuid     TEXT NOT NULL REFERENCES portal(project_uuid) ON DELETE CASCADE,
            mxid             TEXT NOT NULL,
            waldur_user_uuid TEXT,
            added_by         TEXT NOT NULL DEFAULT 'unknown',
            left_voluntarily BOOLEAN NOT NULL DEFAULT false,
            role_signature   TEXT NOT NULL DEFAULT '',
            updated_at       BIGINT NOT NULL,
            PRIMARY KEY (project_uuid, mxid)
        )"""
    )
    await conn.execute("CREATE INDEX portal_member_user_idx ON portal_member (waldur_user_uuid)")
    # Appservice transactions already handled, so a retried transaction is not handled twice
    # across restarts. Keyed by the transaction ID and its events (see matrix.py).
    await conn.execute(
        """CREATE TABLE appservice_txn (
            txn_key     TEXT PRIMARY KEY,
            txn_id      TEXT NOT NULL,
            received_at BIGINT NOT NULL
        )"""
    )
    # Cursors of incremental Waldur reads (the events poll): position plus recently seen IDs.
    await conn.execute(
        """CREATE TABLE waldur_cursor (
            name       TEXT PRIMARY KEY,
            position   DOUBLE PRECISION NOT NULL,
            seen       TEXT NOT NULL DEFAULT '[]',
            updated_at BIGINT NOT NULL
        )"""
    )
    # Small facts the bridge keeps about itself (the management room it created, say).
    await conn.execute(
        """CREATE TABLE bridge_state (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )"""
    )
    # Every invite, join, kick and power-level change, with its cause and outcome.
    await conn.execute(
        f"""CREATE TABLE audit_log (
            id           {serial} PRIMARY KEY {autoincrement},
            ts           BIGINT NOT NULL,
            project_uuid TEXT,
            room_id      TEXT,
            action       TEXT NOT NULL,
            target       TEXT,
            cause        TEXT NOT NULL DEFAULT '',
            outcome      TEXT NOT NULL,
            detail       TEXT NOT NULL DEFAULT ''
        )"""
    )
    await conn.execute("CREATE INDEX audit_log_project_idx ON audit_log (project_uuid, ts)")
    # Removals held back by the mass-removal guard, waiting for an admin.
    await conn.execute(
        f"""CREATE TABLE held_removal (
            id           {serial} PRIMARY KEY {autoincrement},
            project_uuid TEXT NOT NULL,
            mxid         TEXT NOT NULL,
            reason       TEXT NOT NULL,
            cause        TEXT NOT NULL DEFAULT '',
            created_at   BIGINT NOT NULL,
            UNIQUE (project_uuid, mxid)
        )"""
    )

    await create_bridge_instance(conn)
    await create_signin_key(conn)


async def create_decorations(conn: Connection) -> None:
    """Tables new in v2 (shared with its upgrade step)."""
    # Per portal: which space it was last linked to (and with what order), and the avatar and
    # bridge info last written, so a steady sweep writes nothing and a change writes once.
    await conn.execute(
        """CREATE TABLE portal_decoration (
            project_uuid     TEXT PRIMARY KEY REFERENCES portal(project_uuid) ON DELETE CASCADE,
            space_room_id    TEXT,
            child_order      TEXT,
            avatar_url       TEXT,
            avatar_hash      TEXT,
            avatar_mxc       TEXT,
            bridge_info_hash TEXT
        )"""
    )
    # What the bridge knows of the managed members of each space (like portal_member).
    await conn.execute(
        """CREATE TABLE space_member (
            project_uuid     TEXT NOT NULL,
            mxid             TEXT NOT NULL,
            waldur_user_uuid TEXT,
            added_by         TEXT NOT NULL DEFAULT 'unknown',
            left_voluntarily BOOLEAN NOT NULL DEFAULT false,
            role_signature   TEXT NOT NULL DEFAULT '',
            updated_at       BIGINT NOT NULL,
            PRIMARY KEY (project_uuid, mxid)
        )"""
    )


async def create_bridge_instance(conn: Connection) -> None:
    """The table new in v3 (shared with its upgrade step)."""
    # One row per running instance, refreshed by heartbeats: which is active, which wait.
    await conn.execute(
        """CREATE TABLE bridge_instance (
            instance_id  TEXT PRIMARY KEY,
            host         TEXT NOT NULL,
            pid          INTEGER NOT NULL,
            address      TEXT NOT NULL DEFAULT '',
            role         TEXT NOT NULL,
            started_at   BIGINT NOT NULL,
            heartbeat_at BIGINT NOT NULL
        )"""
    )


async def create_signin_key(conn: Connection) -> None:
    """The table new in v5 (shared with its upgrade step)."""
    # Keys that sign the sign-in provider's ID tokens, by key ID: the newest signs, all are
    # published (so a second key can be added before the first is retired).
    await conn.execute(
        """CREATE TABLE signin_key (
            kid         TEXT PRIMARY KEY,
            algorithm   TEXT NOT NULL,
            private_jwk TEXT NOT NULL,
            created_at  BIGINT NOT NULL
        )"""
    )
