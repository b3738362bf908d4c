"""The provider's signing keys: an RSA key made at first start and kept in the database.

ID tokens are signed with the newest key and carry its ``kid``; the JWKS document lists every
key, so a second key can be added (and published) before the first is retired.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from joserfc.jwk import RSAKey

from ...db import SigninKey

log = logging.getLogger("waldur.web.signin")

ALGORITHM = "RS256"
KEY_BITS = 2048


def generate_key() -> RSAKey:
    key = RSAKey.generate_key(KEY_BITS, parameters={"use": "sig", "alg": ALGORITHM})
    # The RFC 7638 thumbprint: a kid that names the key itself.
    key.ensure_kid()
    return key


@dataclass
class KeyRing:
    keys: list[RSAKey]

    @property
    def signing(self) -> RSAKey:
        return self.keys[-1]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.as_dict(private=False) for key in self.keys]}


class KeyStore:
    """Loads the keys once (creating the first); ``ring()`` is cheap after that."""

    def __init__(self) -> None:
        self._ring: KeyRing | None = None
        self._lock = asyncio.Lock()

    async def ring(self) -> KeyRing:
        if self._ring is None:
            async with self._lock:
                if self._ring is None:
                    self._ring = await self._load()
        return self._ring

    @staticmethod
    async def _load() -> KeyRing:
        rows = await SigninKey.all()
        if not rows:
            key = generate_key()
            await SigninKey.add(key.kid or "", ALGORITHM, json.dumps(key.as_dict(private=True)))
            log.info("Created the sign-in provider's signing key (kid %s)", key.kid)
            # Another instance may have made one at the same moment: both are published.
            rows = await SigninKey.all()
        keys = [RSAKey.import_key(json.loads(row.private_jwk)) for row in rows]
        for key, row in zip(keys, rows, strict=True):
            if key.kid != row.kid:
                raise ValueError(f"signin_key {row.kid}: the stored key has kid {key.kid}")
        return KeyRing(keys)
