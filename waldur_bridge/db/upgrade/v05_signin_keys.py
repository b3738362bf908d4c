"""v5: signing keys of the sign-in provider ("Continue with Waldur")."""

from __future__ import annotations

from mautrix.util.async_db import Connection

from . import upgrade_table
from .v00_latest_revision import create_signin_key


@upgrade_table.register(index=4, description="Signing keys of the sign-in provider")
async def upgrade_v5(conn: Connection) -> None:
    await create_signin_key(conn)
