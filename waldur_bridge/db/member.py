"""What the bridge remembers about managed members of each portal."""

from __future__ import annotations

from typing import Any, ClassVar

from attr import dataclass

from .base import Table, now_ms

_COLUMNS = (
    "project_uuid, mxid, waldur_user_uuid, added_by, left_voluntarily, role_signature, updated_at"
)


@dataclass
class PortalMember(Table):
    # SpaceMember keeps the same facts for spaces in its own table.
    _table: ClassVar[str] = "portal_member"

    project_uuid: str
    mxid: str
    waldur_user_uuid: str | None = None
    # "bridge", "moderator", "self" or "unknown": who brought them into the room.
    added_by: str = "unknown"
    left_voluntarily: bool = False
    # The roles the person held when last seen, so a change of role can be noticed.
    role_signature: str = ""
    updated_at: int = 0

    @classmethod
    def _from_row(cls, row: Any) -> PortalMember:
        data = dict(row)
        data["left_voluntarily"] = bool(data["left_voluntarily"])
        return cls(**data)

    @classmethod
    async def for_project(cls, project_uuid: str) -> dict[str, PortalMember]:
        q = f"SELECT {_COLUMNS} FROM {cls._table} WHERE project_uuid=$1"
        rows = await cls.db.fetch(q, project_uuid)
        return {row["mxid"]: cls._from_row(row) for row in rows}

    @classmethod
    async def get(cls, project_uuid: str, mxid: str) -> PortalMember | None:
        q = f"SELECT {_COLUMNS} FROM {cls._table} WHERE project_uuid=$1 AND mxid=$2"
        row = await cls.db.fetchrow(q, project_uuid, mxid)
        return None if row is None else cls._from_row(row)

    async def save(self) -> None:
        self.updated_at = now_ms()
        q = f"""
            INSERT INTO {self._table} ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (project_uuid, mxid) DO UPDATE SET
                waldur_user_uuid=excluded.waldur_user_uuid, added_by=excluded.added_by,
                left_voluntarily=excluded.left_voluntarily,
                role_signature=excluded.role_signature, updated_at=excluded.updated_at
        """
        await self.db.execute(
            q,
            self.project_uuid,
            self.mxid,
            self.waldur_user_uuid,
            self.added_by,
            self.left_voluntarily,
            self.role_signature,
            self.updated_at,
        )

    async def delete(self) -> None:
        q = f"DELETE FROM {self._table} WHERE project_uuid=$1 AND mxid=$2"
        await self.db.execute(q, self.project_uuid, self.mxid)

    @classmethod
    async def record_left(cls, project_uuid: str, mxid: str, voluntarily: bool) -> bool:
        """A managed member left the room; True when a reconcile should look (a moderator
        kicked them, and whoever is entitled is invited again)."""
        member = await cls.get(project_uuid, mxid)
        if member is None:
            return False
        if not voluntarily:
            return True
        member.left_voluntarily = True
        await member.save()
        return False

    @classmethod
    async def record_moderator_invite(cls, project_uuid: str, mxid: str) -> None:
        """Someone other than the bot invited `mxid`: a moderator's guest, unless the bridge
        brought them in and they never left."""
        member = await cls.get(project_uuid, mxid)
        if member is None:
            member = cls(project_uuid=project_uuid, mxid=mxid)
        elif member.added_by == "bridge" and not member.left_voluntarily:
            return
        member.added_by = "moderator"
        member.left_voluntarily = False
        await member.save()
