"""Organization spaces and the per-portal record of linked state the bridge last wrote."""

from __future__ import annotations

from typing import Any, ClassVar

from attr import dataclass

from .base import Table, now_ms
from .member import PortalMember

ACTIVE = "active"
# No portals left: children and managed members removed, the room kept for its history.
CLOSED = "closed"

_SPACE_COLUMNS = (
    "customer_uuid, room_id, name, topic, state, avatar_url, avatar_hash, avatar_mxc, "
    "bridge_info_hash, updated_at"
)
_DECORATION_COLUMNS = (
    "project_uuid, space_room_id, child_order, avatar_url, avatar_hash, avatar_mxc, "
    "bridge_info_hash"
)


@dataclass
class CustomerSpace(Table):
    customer_uuid: str
    room_id: str
    name: str = ""
    topic: str = ""
    state: str = ACTIVE
    avatar_url: str | None = None
    avatar_hash: str | None = None
    avatar_mxc: str | None = None
    bridge_info_hash: str | None = None
    updated_at: int = 0

    @classmethod
    def _from_row(cls, row: Any) -> CustomerSpace | None:
        return None if row is None else cls(**dict(row))

    @classmethod
    async def get(cls, customer_uuid: str) -> CustomerSpace | None:
        q = f"SELECT {_SPACE_COLUMNS} FROM customer_space WHERE customer_uuid=$1"
        return cls._from_row(await cls.db.fetchrow(q, customer_uuid))

    @classmethod
    async def all(cls) -> list[CustomerSpace]:
        rows = await cls.db.fetch(f"SELECT {_SPACE_COLUMNS} FROM customer_space")
        return [s for s in map(cls._from_row, rows) if s is not None]

    async def save(self) -> None:
        self.updated_at = now_ms()
        q = f"""
            INSERT INTO customer_space ({_SPACE_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            ON CONFLICT (customer_uuid) DO UPDATE SET
                room_id=excluded.room_id, name=excluded.name, topic=excluded.topic,
                state=excluded.state, avatar_url=excluded.avatar_url,
                avatar_hash=excluded.avatar_hash, avatar_mxc=excluded.avatar_mxc,
                bridge_info_hash=excluded.bridge_info_hash, updated_at=excluded.updated_at
        """
        await self.db.execute(
            q,
            self.customer_uuid,
            self.room_id,
            self.name,
            self.topic,
            self.state,
            self.avatar_url,
            self.avatar_hash,
            self.avatar_mxc,
            self.bridge_info_hash,
            self.updated_at,
        )


@dataclass
class PortalDecoration(Table):
    """What the bridge last wrote of a portal's space link, avatar and bridge info.

    A row that matches what Waldur wants means nothing to write; a missing row (a portal from
    before spaces, or a fresh database) means: read the room once, then write what differs.
    """

    project_uuid: str
    space_room_id: str | None = None
    child_order: str | None = None
    avatar_url: str | None = None
    avatar_hash: str | None = None
    avatar_mxc: str | None = None
    bridge_info_hash: str | None = None

    @classmethod
    async def get(cls, project_uuid: str) -> PortalDecoration | None:
        q = f"SELECT {_DECORATION_COLUMNS} FROM portal_decoration WHERE project_uuid=$1"
        row = await cls.db.fetchrow(q, project_uuid)
        return None if row is None else cls(**dict(row))

    @classmethod
    async def all(cls) -> dict[str, PortalDecoration]:
        rows = await cls.db.fetch(f"SELECT {_DECORATION_COLUMNS} FROM portal_decoration")
        return {row["project_uuid"]: cls(**dict(row)) for row in rows}

    async def save(self) -> None:
        q = f"""
            INSERT INTO portal_decoration ({_DECORATION_COLUMNS})
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (project_uuid) DO UPDATE SET
                space_room_id=excluded.space_room_id, child_order=excluded.child_order,
                avatar_url=excluded.avatar_url, avatar_hash=excluded.avatar_hash,
                avatar_mxc=excluded.avatar_mxc, bridge_info_hash=excluded.bridge_info_hash
        """
        await self.db.execute(
            q,
            self.project_uuid,
            self.space_room_id,
            self.child_order,
            self.avatar_url,
            self.avatar_hash,
            self.avatar_mxc,
            self.bridge_info_hash,
        )


@dataclass
class SpaceMember(PortalMember):
    """A managed member of a space; `project_uuid` holds the space's key (customer:<uuid>)."""

    _table: ClassVar[str] = "space_member"
