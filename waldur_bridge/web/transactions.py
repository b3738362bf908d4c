"""Appservice transactions checked at the door.

mautrix answers a transaction whose ``events`` is a string, an object or null with 200 (and an
array body with 500), and a single malformed event (a non-object item, an ``unsigned`` that is
not an object) aborts the rest of the transaction, so a valid command beside it went unanswered.
Here a malformed transaction gets 400 before mautrix sees it, and malformed items are skipped
while the good ones are handled.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("waldur.web.transactions")

_TXN_PATH = re.compile(r"^(?:/_matrix/app/v1)?/transactions/[^/]+$")
# Lists of items in a transaction body (stable and unstable names).
_ITEM_LISTS = (
    "events",
    "ephemeral",
    "de.sorunome.msc2409.ephemeral",
    "to_device",
    "de.sorunome.msc2409.to_device",
)
# Fields of an event that mautrix reads as objects.
_OBJECT_FIELDS = ("content", "unsigned", "prev_content")


def transaction_problem(data: Any) -> str | None:
    """Why a parsed transaction body is malformed, or None when its shape is right."""
    if not isinstance(data, dict):
        return "The transaction body must be a JSON object."
    if "events" not in data:
        return "The transaction has no events list."
    for key in _ITEM_LISTS:
        if key in data and not isinstance(data[key], list):
            if key != "events" and data[key] is None:
                continue
            return f"{key} must be a list."
    return None


def event_problem(event: Any) -> str | None:
    """Why one item of ``events`` cannot be handled, or None."""
    if not isinstance(event, dict):
        return "not an object"
    for field in _OBJECT_FIELDS:
        value = event.get(field)
        if value is not None and not isinstance(value, dict):
            return f"{field} is not an object"
    return None


def usable_events(txn_id: str, events: list[Any]) -> list[dict[str, Any]]:
    """The events that can be handled; the rest are logged once per transaction and skipped."""
    good: list[dict[str, Any]] = []
    problems: list[str] = []
    for index, event in enumerate(events):
        problem = event_problem(event)
        if problem is None:
            good.append(event)
        else:
            problems.append(f"#{index} {problem}")
    if problems:
        log.warning(
            "Skipped %d malformed event(s) of homeserver transaction %s (%s); handled %d",
            len(problems),
            txn_id,
            "; ".join(problems[:5]),
            len(good),
        )
    return good


def _authorized(request: web.Request, hs_token: str) -> bool:
    token = request.query.get("access_token")
    if token is None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        token = header.removeprefix("Bearer ")
    return hmac.compare_digest(token.encode(), hs_token.encode())


def transaction_guard(
    hs_token: str,
) -> Callable[[web.Request, Any], Awaitable[web.StreamResponse]]:
    """aiohttp middleware: 400 for a malformed transaction body from the homeserver."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        # Unauthenticated requests go on to mautrix, which answers 401 without reading them.
        if (
            request.method == "PUT"
            and _TXN_PATH.match(request.path)
            and _authorized(request, hs_token)
        ):
            try:
                data = json.loads(await request.read())  # mautrix reads the cached bytes again
            except (ValueError, UnicodeDecodeError):
                return _bad("M_NOT_JSON", "The transaction body is not JSON.")
            problem = transaction_problem(data)
            if problem is not None:
                log.warning("Refused a malformed homeserver transaction: %s", problem)
                return _bad("M_BAD_JSON", problem)
        return await handler(request)

    return guard


def _bad(errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=400)


__all__ = ["event_problem", "transaction_guard", "transaction_problem", "usable_events"]
