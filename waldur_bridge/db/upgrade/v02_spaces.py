"""Organization spaces, room avatars and what the bridge last wrote of each room's linked state."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from . import upgrade_table
from .v00_latest_revision import create_decorations


@upgrade_table.register(index=1, description="Organization spaces and room decorations")
async def upgrade_v2(conn: Connection) -> None:
    # The space of one organization (the table existed unused since v1).
    for column in (
        "topic TEXT NOT NULL DEFAULT ''",
        "state TEXT NOT NULL DEFAULT 'active'",
        "avatar_url TEXT",
        "avatar_hash TEXT",
        "avatar_mxc TEXT",
        "bridge_info_hash TEXT",
        "updated_at BIGINT NOT NULL DEFAULT 0",
    ):
        await conn.execute(f"ALTER TABLE customer_space ADD COLUMN {column}")
    await create_decorations(conn)
