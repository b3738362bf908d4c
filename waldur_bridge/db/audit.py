"""The audit log: every membership action with its cause and outcome."""

from __future__ import annotations

from typing import Any

from attr import dataclass

from .base import Table, now_ms


@dataclass
class AuditEntry(Table):
    action: str
    outcome: str
    project_uuid: str | None = None
    room_id: str | None = None
    target: str | None = None
    cause: str = ""
    detail: str = ""
    ts: int = 0
    id: int | None = None

    async def insert(self) -> None:
        self.ts = self.ts or now_ms()
        q = """
            INSERT INTO audit_log
                (ts, project_uuid, room_id, action, target, cause, outcome, detail)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """
        await self.db.execute(
            q,
            self.ts,
            self.project_uuid,
            self.room_id,
            self.action,
            self.target,
            self.cause,
            self.outcome,
            self.detail,
        )

    @classmethod
    def _from_row(cls, row: Any) -> AuditEntry:
        return cls(**dict(row))

    @classmethod
    async def recent(cls, project_uuid: str | None = None, limit: int = 50) -> list[AuditEntry]:
        cols = "id, ts, project_uuid, room_id, action, target, cause, outcome, detail"
        if project_uuid:
            q = f"SELECT {cols} FROM audit_log WHERE project_uuid=$1 ORDER BY id DESC LIMIT $2"
            rows = await cls.db.fetch(q, project_uuid, limit)
        else:
            rows = await cls.db.fetch(
                f"SELECT {cols} FROM audit_log ORDER BY id DESC LIMIT $1", limit
            )
        return [cls._from_row(row) for row in rows]

    @classmethod
    async def search(
        cls,
        *,
        project_uuid: str | None = None,
        target: str | None = None,
        since_ms: int | None = None,
        limit: int = 50,
    ) -> tuple[list[AuditEntry], int]:
        """Newest first: up to ``limit`` entries about a project or a person, and how many match.

        A person matches as the target of an action, also inside a power-level change
        (``@a:b=50, @c:d=default``).
        """
        where: list[str] = []
        args: list[Any] = []
        if project_uuid:
            args.append(project_uuid)
            where.append(f"project_uuid=${len(args)}")
        if target:
            args.append(target)
            exact = f"${len(args)}"
            escaped = target.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{escaped}=%")
            where.append(f"(target={exact} OR target LIKE ${len(args)} ESCAPE '\\')")
        if since_ms is not None:
            args.append(since_ms)
            where.append(f"ts>=${len(args)}")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = await cls.db.fetchval(f"SELECT COUNT(*) FROM audit_log{clause}", *args)
        cols = "id, ts, project_uuid, room_id, action, target, cause, outcome, detail"
        rows = await cls.db.fetch(
            f"SELECT {cols} FROM audit_log{clause} ORDER BY id DESC LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        return [cls._from_row(row) for row in rows], int(total or 0)

    @classmethod
    async def count(cls, action: str | None = None) -> int:
        if action:
            return await cls.db.fetchval("SELECT COUNT(*) FROM audit_log WHERE action=$1", action)
        return await cls.db.fetchval("SELECT COUNT(*) FROM audit_log")
