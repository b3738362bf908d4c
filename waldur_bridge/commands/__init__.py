"""Bot commands: room commands in portals and admin commands in the management room."""

from __future__ import annotations

from . import admin, room  # noqa: F401  (registering the handlers is the import's effect)
from .handler import RateLimiter, WaldurCommandEvent, remove_builtins

remove_builtins()

__all__ = ["RateLimiter", "WaldurCommandEvent"]
