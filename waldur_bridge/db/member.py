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
    async def record_left(cls, project_uuid: str, mxid: str, voluntarily: bool) -> str | None:
        """A member the bridge knows left the room. Returns "look" when a reconcile should
        look (a moderator removed them: whoever is entitled comes back), "declined" when this
        is a new "no" (they left or rejected the invite), else None."""
        member = await cls.get(project_uuid, mxid)
        if member is None:
            return None
        if not voluntarily:
            return "look"
        if member.left_voluntarily:
            return None
        member.left_voluntarily = True
        await member.save()
        return "declined"

    @classmethod
    async def clear_decline(cls, project_uuid: str, mxid: str) -> bool:
        """The person (or an admin) asked to come back: True when a decline was recorded."""
        member = await cls.get(project_uuid, mxid)
        if member is None or not member.left_voluntarily:
            return False
        member.left_voluntarily = False
        await member.save()
        return True

    @classmethod
    async def declined_in(cls, mxid: str) -> set[str]:
        """The projects whose rooms this person declined."""
        q = f"SELECT project_uuid FROM {cls._table} WHERE mxid=$1 AND left_voluntarily"
        return {row["project_uuid"] for row in await cls.db.fetch(q, mxid)}

    @classmethod
    async def brought_in(cls, mxid: str) -> set[str]:
        """The keys of the rooms the bridge brought `mxid` into and that they did not leave."""
        q = (
            f"SELECT project_uuid FROM {cls._table} "
            "WHERE mxid=$1 AND added_by='bridge' AND NOT left_voluntarily"
        )
        return {row["project_uuid"] for row in await cls.db.fetch(q, mxid)}

    @classmethod
    async def declined_counts(cls) -> dict[str, int]:
        """Project -> how many people declined its room."""
        q = (
            f"SELECT project_uuid, COUNT(*) AS n FROM {cls._table} WHERE left_voluntarily"
            " GROUP BY project_uuid"
        )
        return {row["project_uuid"]: int(row["n"]) for row in await cls.db.fetch(q)}

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
