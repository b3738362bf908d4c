"""Appservice transactions already handled."""

from __future__ import annotations

from .base import Table, now_ms


class AppserviceTxn(Table):
    @classmethod
    async def seen(cls, txn_key: str) -> bool:
        q = "SELECT 1 FROM appservice_txn WHERE txn_key=$1"
        return await cls.db.fetchval(q, txn_key) is not None

    @classmethod
    async def record(cls, txn_key: str, txn_id: str) -> None:
        q = """
            INSERT INTO appservice_txn (txn_key, txn_id, received_at) VALUES ($1, $2, $3)
            ON CONFLICT (txn_key) DO NOTHING
        """
        await cls.db.execute(q, txn_key, txn_id, now_ms())

    @classmethod
    async def prune(cls, older_than_ms: int) -> None:
        q = "DELETE FROM appservice_txn WHERE received_at < $1"
        await cls.db.execute(q, now_ms() - older_than_ms)
