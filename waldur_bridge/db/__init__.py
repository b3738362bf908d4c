"""The bridge's own tables (portals, puppets, users, members, cursors, audit log)."""

from __future__ import annotations

from mautrix.util.async_db import Database

from .audit import AuditEntry
from .base import Table
from .cursor import Cursor
from .held import HeldRemoval
from .instance import BridgeInstance
from .member import PortalMember
from .portal import Portal
from .puppet import Puppet
from .signin_key import SigninKey, SigninKeyRow
from .space import CustomerSpace, PortalDecoration, SpaceMember
from .state import BridgeState
from .txn import AppserviceTxn
from .upgrade import upgrade_table
from .user import User


def init(db: Database) -> None:
    Table.db = db


__all__ = [
    "AppserviceTxn",
    "AuditEntry",
    "BridgeInstance",
    "BridgeState",
    "CustomerSpace",
    "Cursor",
    "HeldRemoval",
    "Portal",
    "PortalDecoration",
    "PortalMember",
    "Puppet",
    "SigninKey",
    "SigninKeyRow",
    "SpaceMember",
    "User",
    "init",
    "upgrade_table",
]
