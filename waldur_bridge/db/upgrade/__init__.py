"""Schema upgrades: v00 creates the latest schema on fresh installs, vNN upgrade old ones."""

from __future__ import annotations

from mautrix.util.async_db import UpgradeTable

upgrade_table = UpgradeTable()

# Each step registers itself on import, at its explicit index (the revision it upgrades from).
from . import (  # noqa: E402,F401
    v00_latest_revision,
    v02_spaces,
    v03_bridge_instance,
    v04_portal_alias,
    v05_signin_keys,
)
