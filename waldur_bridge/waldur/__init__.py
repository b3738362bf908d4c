"""Waldur REST client, records and web hook parsing. Deliberately free of mautrix imports."""

from __future__ import annotations

from .client import ClientStats, QueryParams, WaldurClient
from .errors import (
    WaldurAuthError,
    WaldurError,
    WaldurNotFound,
    WaldurProtocolError,
    WaldurRequestError,
    WaldurUnavailable,
)
from .records import (
    Customer,
    Event,
    Order,
    Project,
    Resource,
    RoleGrant,
    User,
    WebHook,
    normalize_uuid,
    parse_time,
)
from .webhook import WebhookPayloadError, parse_webhook

__all__ = [
    "ClientStats",
    "Customer",
    "Event",
    "Order",
    "Project",
    "QueryParams",
    "Resource",
    "RoleGrant",
    "User",
    "WaldurAuthError",
    "WaldurClient",
    "WaldurError",
    "WaldurNotFound",
    "WaldurProtocolError",
    "WaldurRequestError",
    "WaldurUnavailable",
    "WebHook",
    "WebhookPayloadError",
    "normalize_uuid",
    "parse_time",
    "parse_webhook",
]
