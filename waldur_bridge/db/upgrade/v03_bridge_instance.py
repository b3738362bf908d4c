"""v3: the bridge_instance table (instances and their roles, for high availability)."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from . import upgrade_table
from .v00_latest_revision import create_bridge_instance


@upgrade_table.register(index=2, description="Bridge instances for high availability")
async def upgrade_v3(conn: Connection) -> None:
    await create_bridge_instance(conn)
