"""Running bridge instances and their roles, from heartbeats (for `diagnose`)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Table, now_ms


@dataclass(frozen=True)
class InstanceRow:
    instance_id: str
    host: str
    pid: int
    address: str
    role: str
    started_at: int
    heartbeat_at: int


class BridgeInstance(Table):
    @classmethod
    async def beat(
        cls, instance_id: str, host: str, pid: int, address: str, role: str, started_at: int
    ) -> None:
        q = """
            INSERT INTO bridge_instance
                (instance_id, host, pid, address, role, started_at, heartbeat_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (instance_id) DO UPDATE
                SET role=excluded.role, heartbeat_at=excluded.heartbeat_at
        """
        await cls.db.execute(q, instance_id, host, pid, address, role, started_at, now_ms())

    @classmethod
    async def remove(cls, instance_id: str) -> None:
        await cls.db.execute("DELETE FROM bridge_instance WHERE instance_id=$1", instance_id)

    @classmethod
    async def seen_within(cls, window_ms: int) -> list[InstanceRow]:
        q = """
            SELECT instance_id, host, pid, address, role, started_at, heartbeat_at
            FROM bridge_instance WHERE heartbeat_at >= $1 ORDER BY started_at
        """
        rows = await cls.db.fetch(q, now_ms() - window_ms)
        return [InstanceRow(**dict(row)) for row in rows]

    @classmethod
    async def forget_older_than(cls, age_ms: int) -> None:
        # Rows of instances killed without a clean stop; kept a while for the record.
        await cls.db.execute(
            "DELETE FROM bridge_instance WHERE heartbeat_at < $1", now_ms() - age_ms
        )
