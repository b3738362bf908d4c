"""Removals held by the mass-removal guard until an admin approves or rejects them."""

from __future__ import annotations

from typing import Any

from attr import dataclass

from .base import Table, now_ms

_COLUMNS = "id, project_uuid, mxid, reason, cause, created_at"


@dataclass
class HeldRemoval(Table):
    project_uuid: str
    mxid: str
    reason: str
    cause: str = ""
    created_at: int = 0
    id: int | None = None

    @classmethod
    def _from_row(cls, row: Any) -> HeldRemoval:
        return cls(**dict(row))

    @classmethod
    async def all(cls, project_uuid: str | None = None) -> list[HeldRemoval]:
        if project_uuid:
            q = f"SELECT {_COLUMNS} FROM held_removal WHERE project_uuid=$1 ORDER BY id"
            rows = await cls.db.fetch(q, project_uuid)
        else:
            rows = await cls.db.fetch(f"SELECT {_COLUMNS} FROM held_removal ORDER BY id")
        return [cls._from_row(row) for row in rows]

    @classmethod
    async def replace_for_project(cls, project_uuid: str, held: list[HeldRemoval]) -> None:
        """The latest reconcile's view replaces the earlier one: stale holds disappear."""
        async with cls.db.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM held_removal WHERE project_uuid=$1", project_uuid)
            for item in held:
                await conn.execute(
                    "INSERT INTO held_removal (project_uuid, mxid, reason, cause, created_at) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    project_uuid,
                    item.mxid,
                    item.reason,
                    item.cause,
                    item.created_at or now_ms(),
                )

    @classmethod
    async def clear_project(cls, project_uuid: str) -> None:
        await cls.db.execute("DELETE FROM held_removal WHERE project_uuid=$1", project_uuid)
