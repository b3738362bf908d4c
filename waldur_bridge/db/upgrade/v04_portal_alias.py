"""v4: portals record their planned alias before the room is created (crash-safe creation)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from . import upgrade_table


@upgrade_table.register(index=3, description="Portal alias, recorded before createRoom")
async def upgrade_v4(conn: Connection) -> None:
    await conn.execute("ALTER TABLE portal ADD COLUMN alias TEXT")
