"""v2: portals record their planned alias before the room is created (crash-safe creation)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from . import upgrade_table


@upgrade_table.register(description="Portal alias, recorded before createRoom")
async def upgrade_v2(conn: Connection) -> None:
    await conn.execute("ALTER TABLE portal ADD COLUMN alias TEXT")
