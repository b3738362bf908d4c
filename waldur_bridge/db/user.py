"""Matrix users who talk to the bot, and their explicit links to Waldur users."""

from __future__ import annotations

from typing import Any

from attr import dataclass

from .base import Table, now_ms

_COLUMNS = "mxid, waldur_user_uuid, management_room, linked_by, linked_at"


@dataclass
class User(Table):
    mxid: str
    waldur_user_uuid: str | None = None
    management_room: str | None = None
    linked_by: str | None = None
    linked_at: int | None = None

    @classmethod
    def _from_row(cls, row: Any) -> User | None:
        return None if row is None else cls(**dict(row))

    @classmethod
    async def get_by_mxid(cls, mxid: str) -> User | None:
        q = f"SELECT {_COLUMNS} FROM matrix_user WHERE mxid=$1"
        return cls._from_row(await cls.db.fetchrow(q, mxid))

    @classmethod
    async def get_by_waldur_user(cls, user_uuid: str) -> User | None:
        q = f"SELECT {_COLUMNS} FROM matrix_user WHERE waldur_user_uuid=$1"
        return cls._from_row(await cls.db.fetchrow(q, user_uuid))

    @classmethod
    async def all_linked(cls) -> list[User]:
        q = f"SELECT {_COLUMNS} FROM matrix_user WHERE waldur_user_uuid IS NOT NULL"
        return [u for u in map(cls._from_row, await cls.db.fetch(q)) if u is not None]

    async def link(self, waldur_user_uuid: str | None, by: str | None) -> None:
        self.waldur_user_uuid = waldur_user_uuid
        self.linked_by = by
        self.linked_at = now_ms() if waldur_user_uuid else None
        await self.save()

    async def save(self) -> None:
        q = f"""
            INSERT INTO matrix_user ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (mxid) DO UPDATE SET
                waldur_user_uuid=excluded.waldur_user_uuid,
                management_room=excluded.management_room,
                linked_by=excluded.linked_by, linked_at=excluded.linked_at
        """
        await self.db.execute(
            q,
            self.mxid,
            self.waldur_user_uuid,
            self.management_room,
            self.linked_by,
            self.linked_at,
        )
