"""Persisted cursors of incremental Waldur reads."""

from __future__ import annotations

import json

from attr import dataclass

from .base import Table, now_ms


@dataclass
class Cursor(Table):
    name: str
    # Unix time (seconds) from which the next read starts.
    position: float
    # IDs already handled at or after position - overlap, so re-read items are skipped.
    seen: list[str]
    updated_at: int = 0

    @classmethod
    async def get(cls, name: str) -> Cursor | None:
        q = "SELECT name, position, seen, updated_at FROM waldur_cursor WHERE name=$1"
        row = await cls.db.fetchrow(q, name)
        if row is None:
            return None
        return cls(row["name"], float(row["position"]), json.loads(row["seen"]), row["updated_at"])

    async def save(self) -> None:
        self.updated_at = now_ms()
        q = """
            INSERT INTO waldur_cursor (name, position, seen, updated_at) VALUES ($1, $2, $3, $4)
            ON CONFLICT (name) DO UPDATE SET
                position=excluded.position, seen=excluded.seen, updated_at=excluded.updated_at
        """
        await self.db.execute(q, self.name, self.position, json.dumps(self.seen), self.updated_at)
