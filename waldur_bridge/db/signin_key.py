"""Signing keys of the sign-in provider (ID tokens), kept so that a restart keeps them valid."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Table, now_ms


@dataclass(frozen=True)
class SigninKeyRow:
    kid: str
    algorithm: str
    # The private key as a JWK (JSON). It never leaves the database except as its public half.
    private_jwk: str
    created_at: int


class SigninKey(Table):
    @classmethod
    async def all(cls) -> list[SigninKeyRow]:
        """Every key, oldest first (the newest signs; all verify)."""
        q = "SELECT kid, algorithm, private_jwk, created_at FROM signin_key ORDER BY created_at"
        rows = await cls.db.fetch(q)
        return [SigninKeyRow(**dict(row)) for row in rows]

    @classmethod
    async def add(cls, kid: str, algorithm: str, private_jwk: str) -> None:
        q = """
            INSERT INTO signin_key (kid, algorithm, private_jwk, created_at)
            VALUES ($1, $2, $3, $4) ON CONFLICT (kid) DO NOTHING
        """
        await cls.db.execute(q, kid, algorithm, private_jwk, now_ms())
