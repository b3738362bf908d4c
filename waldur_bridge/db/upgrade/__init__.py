"""Schema upgrades: v00 creates the latest schema on fresh installs, vNN upgrade old ones."""

from __future__ import annotations

from mautrix.util.async_db import UpgradeTable

upgrade_table = UpgradeTable()

from . import (  # noqa: E402,F401  (register themselves on import)
    v00_latest_revision,
    v02_portal_alias,
)
