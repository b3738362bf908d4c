"""The whole current schema, for fresh installs."""

from __future__ import annotations

from mautrix.util.async_db import Connection, Scheme

from . import upgrade_table

LATEST_REVISION = 2


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
    await conn.execute(
        """CREATE TABLE customer_space (
            customer_uuid TEXT PRIMARY KEY,
            room_id       TEXT UNIQUE NOT NULL,
            name          TEXT NOT NULL DEFAULT ''
        )"""
    )
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
