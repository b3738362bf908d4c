"""Shared bits of the table classes."""

from __future__ import annotations

import time
from typing import ClassVar

from mautrix.util.async_db import Database


def now_ms() -> int:
    return int(time.time() * 1000)


class Table:
    """A table class: `db` is set once by `waldur_bridge.db.init`."""

    db: ClassVar[Database]
