"""waldur-matrix-bridge: a Matrix room per Waldur project, kept in step with the project's team."""

from __future__ import annotations

__version__ = "0.1.0"
