"""Small facts the bridge keeps about itself."""

from __future__ import annotations

from .base import Table


class BridgeState(Table):
    @classmethod
    async def get(cls, key: str) -> str | None:
        return await cls.db.fetchval("SELECT value FROM bridge_state WHERE key=$1", key)

    @classmethod
    async def set(cls, key: str, value: str) -> None:
        q = """
            INSERT INTO bridge_state (key, value) VALUES ($1, $2)
            ON CONFLICT (key) DO UPDATE SET value=excluded.value
        """
        await cls.db.execute(q, key, value)
