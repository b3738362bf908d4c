"""Bot commands: room commands in portals and admin commands in the management room."""

from __future__ import annotations
