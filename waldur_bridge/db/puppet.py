"""Puppet rows: the bridge-controlled Matrix account of a Waldur user."""

from __future__ import annotations

from typing import Any

from attr import dataclass

from .base import Table

_COLUMNS = "waldur_user_uuid, mxid, username, displayname, is_registered"


@dataclass
class Puppet(Table):
    waldur_user_uuid: str
    mxid: str
    username: str = ""
    displayname: str = ""
    is_registered: bool = False

    @classmethod
    def _from_row(cls, row: Any) -> Puppet | None:
        if row is None:
            return None
        data = dict(row)
        data["is_registered"] = bool(data["is_registered"])
        return cls(**data)

    @classmethod
    async def get_by_waldur_user(cls, user_uuid: str) -> Puppet | None:
        q = f"SELECT {_COLUMNS} FROM puppet WHERE waldur_user_uuid=$1"
        return cls._from_row(await cls.db.fetchrow(q, user_uuid))

    @classmethod
    async def get_by_mxid(cls, mxid: str) -> Puppet | None:
        q = f"SELECT {_COLUMNS} FROM puppet WHERE mxid=$1"
        return cls._from_row(await cls.db.fetchrow(q, mxid))

    @classmethod
    async def all(cls) -> list[Puppet]:
        rows = await cls.db.fetch(f"SELECT {_COLUMNS} FROM puppet")
        return [p for p in map(cls._from_row, rows) if p is not None]

    async def save(self) -> None:
        q = f"""
            INSERT INTO puppet ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (waldur_user_uuid) DO UPDATE SET
                mxid=excluded.mxid, username=excluded.username,
                displayname=excluded.displayname, is_registered=excluded.is_registered
        """
        await self.db.execute(
            q,
            self.waldur_user_uuid,
            self.mxid,
            self.username,
            self.displayname,
            self.is_registered,
        )
