"""Portal rows: one per Waldur project that has (or had) a room."""

from __future__ import annotations

from typing import Any

from attr import dataclass

from .base import Table, now_ms

ACTIVE = "active"
CREATING = "creating"
DISABLED = "disabled"
ERROR = "error"
STATES = (ACTIVE, CREATING, DISABLED, ERROR)

_COLUMNS = (
    "project_uuid, customer_uuid, room_id, state, name, topic, encrypted, error, alias, "
    "created_at, updated_at"
)


@dataclass
class Portal(Table):
    project_uuid: str
    customer_uuid: str
    room_id: str | None = None
    state: str = CREATING
    name: str = ""
    topic: str = ""
    encrypted: bool = False
    error: str | None = None
    # The room's alias; in state CREATING, the alias planned before createRoom was sent.
    alias: str | None = None
    created_at: int = 0
    updated_at: int = 0

    @classmethod
    def _from_row(cls, row: Any) -> Portal | None:
        if row is None:
            return None
        data = dict(row)
        data["encrypted"] = bool(data["encrypted"])
        return cls(**data)

    @classmethod
    async def get_by_project(cls, project_uuid: str) -> Portal | None:
        q = f"SELECT {_COLUMNS} FROM portal WHERE project_uuid=$1"
        return cls._from_row(await cls.db.fetchrow(q, project_uuid))

    @classmethod
    async def get_by_room(cls, room_id: str) -> Portal | None:
        q = f"SELECT {_COLUMNS} FROM portal WHERE room_id=$1"
        return cls._from_row(await cls.db.fetchrow(q, room_id))

    @classmethod
    async def all(cls, state: str | None = None) -> list[Portal]:
        if state:
            rows = await cls.db.fetch(f"SELECT {_COLUMNS} FROM portal WHERE state=$1", state)
        else:
            rows = await cls.db.fetch(f"SELECT {_COLUMNS} FROM portal")
        return [p for p in map(cls._from_row, rows) if p is not None]

    @classmethod
    async def count_by_state(cls) -> dict[str, int]:
        rows = await cls.db.fetch("SELECT state, COUNT(*) AS n FROM portal GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    async def save(self) -> None:
        self.updated_at = now_ms()
        if not self.created_at:
            self.created_at = self.updated_at
        q = f"""
            INSERT INTO portal ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT (project_uuid) DO UPDATE SET
                customer_uuid=excluded.customer_uuid, room_id=excluded.room_id,
                state=excluded.state, name=excluded.name, topic=excluded.topic,
                encrypted=excluded.encrypted, error=excluded.error, alias=excluded.alias,
                updated_at=excluded.updated_at
        """
        await self.db.execute(
            q,
            self.project_uuid,
            self.customer_uuid,
            self.room_id,
            self.state,
            self.name,
            self.topic,
            self.encrypted,
            self.error,
            self.alias,
            self.created_at,
            self.updated_at,
        )

    async def delete(self) -> None:
        await self.db.execute("DELETE FROM portal WHERE project_uuid=$1", self.project_uuid)
