"""Parsing of the bodies that Waldur's web hooks POST to the bridge.

A web hook body is unauthenticated and only ever a hint to look again: this module checks its shape
and nothing more. Waldur sends ``{created, message, context, event_type}`` with no event uuid, as
JSON by default or form-encoded when the hook's ``content_type`` is ``form``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from .errors import WaldurProtocolError
from .records import Event

__all__ = ["WebhookPayloadError", "parse_webhook"]

_FORM = "application/x-www-form-urlencoded"


class WebhookPayloadError(ValueError):
    """The web hook body is not a Waldur event; the receiver should answer 400."""


def parse_webhook(body: bytes, content_type: str | None) -> Event:
    """Parse a web hook request body into an ``Event`` or raise ``WebhookPayloadError``."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == _FORM:
        payload = _decode_form(body)
    elif media_type in ("", "application/json") or media_type.endswith("+json"):
        # No Content-Type at all is tolerated: some proxies drop it, and JSON is Waldur's default.
        payload = _decode_json(body)
    else:
        raise WebhookPayloadError(
            f"unsupported Content-Type {media_type!r}: Waldur sends application/json or {_FORM}"
        )
    _check_fields(payload)
    try:
        return Event.from_api(payload)
    except WaldurProtocolError as exc:
        raise WebhookPayloadError(f"invalid web hook event: {exc.message}") from exc


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WebhookPayloadError(f"web hook body is not UTF-8: {exc}") from exc


def _decode_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(_decode_text(body))
    except json.JSONDecodeError as exc:
        raise WebhookPayloadError(f"web hook body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise WebhookPayloadError(
            f"web hook body must be a JSON object, got {type(payload).__name__}"
        )
    return payload


def _decode_form(body: bytes) -> dict[str, Any]:
    fields = parse_qs(_decode_text(body), keep_blank_values=True)
    payload: dict[str, Any] = {}
    for key in ("event_type", "created", "message"):
        values = fields.get(key)
        if values is None:
            continue
        if len(values) != 1:
            raise WebhookPayloadError(f"form field {key!r} must appear once, got {len(values)}")
        payload[key] = values[0]
    payload["context"] = _form_context(fields.get("context"))
    return payload


def _form_context(values: list[str] | None) -> dict[str, Any]:
    # Waldur posts the event dict with requests' data=, which form-encodes a nested dict as its
    # keys only (context=role_name&context=scope_uuid...): the values are lost. Only a context
    # sent as one JSON object string is usable; anything else leaves the hint without details.
    if not values or len(values) != 1:
        return {}
    try:
        decoded = json.loads(values[0])
    except json.JSONDecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _check_fields(payload: dict[str, Any]) -> None:
    # Checked here too, so that the receiver's 400 names the exact field in web hook terms.
    for key in ("event_type", "created"):
        value = payload.get(key)
        if value is None:
            raise WebhookPayloadError(f"web hook event has no {key!r}")
        if not isinstance(value, str) or not value:
            raise WebhookPayloadError(f"web hook event {key!r} must be a non-empty string")
    message = payload.get("message")
    if message is not None and not isinstance(message, str):
        raise WebhookPayloadError("web hook event 'message' must be a string")
    context = payload.get("context")
    if context is not None and not isinstance(context, dict):
        raise WebhookPayloadError(
            f"web hook event 'context' must be an object, got {type(context).__name__}"
        )
