"""Web hook body parsing, against the bodies a live Waldur 7.0.7 actually POSTed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from waldur_bridge.waldur import WebhookPayloadError, parse_webhook

SAMPLES_PATH = Path(__file__).parent.parent / "fixtures" / "waldur-7.0-live-samples.json"
DELIVERIES: list[dict[str, Any]] = json.loads(SAMPLES_PATH.read_text("utf-8"))["samples"][
    "webhook_deliveries_received"
]["items"]

MINIMAL = {
    "created": "2026-11-21T20:18:37.087545+00:00",
    "event_type": "role_granted",
    "message": "User Alice Ames has gained role of PROJECT.MEMBER in Proj 292316.",
    "context": {
        "scope_type": "project",
        "scope_uuid": "afa39d219a294a0a8aae19d886579a41",
        "affected_user_uuid": "a16fcc6819b74b55ba7c51e62f5f9849",
    },
}


def as_json(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")


@pytest.mark.parametrize("delivery", DELIVERIES, ids=lambda d: json.loads(d["body"])["event_type"])
def test_live_deliveries_parse(delivery: dict[str, Any]) -> None:
    event = parse_webhook(delivery["body"].encode("utf-8"), delivery["headers"]["Content-Type"])
    assert event.uuid is None
    assert event.event_type in {"role_granted", "role_updated"}
    assert event.created.tzinfo is UTC
    assert event.project_uuids() == ("afa39d219a294a0a8aae19d886579a41",)
    assert event.customer_uuids() == ("a068248c9f884e2392c93a7e7eccff22",)
    assert len(event.user_uuids()) == 1
    assert event.dedup_key().startswith("sha256:")


def test_first_live_delivery_in_detail() -> None:
    event = parse_webhook(DELIVERIES[0]["body"].encode(), "application/json")
    assert event.created == datetime(2026, 11, 21, 20, 18, 37, 87545, tzinfo=UTC)
    assert event.message.startswith("User Alice Ames has gained role")
    assert event.user_uuids() == ("a16fcc6819b74b55ba7c51e62f5f9849",)
    assert event.context["affected_user_token_lifetime"] == "3600"


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_content_type_variants(content_type: str | None) -> None:
    assert parse_webhook(as_json(MINIMAL), content_type).event_type == "role_granted"


def test_message_is_optional_and_context_values_are_stringified() -> None:
    payload = {k: v for k, v in MINIMAL.items() if k != "message"}
    payload["context"] = {"affected_user_is_staff": False, "affected_user_token_lifetime": None}
    event = parse_webhook(as_json(payload), "application/json")
    assert event.message == ""
    assert event.context == {
        "affected_user_is_staff": "False",
        "affected_user_token_lifetime": "None",
    }


def test_missing_context_is_an_empty_context() -> None:
    payload = {k: v for k, v in MINIMAL.items() if k != "context"}
    event = parse_webhook(as_json(payload), "application/json")
    assert event.context == {}
    assert event.project_uuids() == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'["role_granted"]', "must be a JSON object, got list"),
        (b"null", "must be a JSON object, got NoneType"),
        (as_json({**MINIMAL, "event_type": None}), "has no 'event_type'"),
        (as_json({k: v for k, v in MINIMAL.items() if k != "created"}), "has no 'created'"),
        (as_json({**MINIMAL, "event_type": 7}), "'event_type' must be a non-empty string"),
        (as_json({**MINIMAL, "event_type": ""}), "'event_type' must be a non-empty string"),
        (as_json({**MINIMAL, "created": 1795292566}), "'created' must be a non-empty string"),
        (as_json({**MINIMAL, "created": "last tuesday"}), "'created' is invalid"),
        (as_json({**MINIMAL, "created": "2026-11-21T20:18:37"}), "no time zone"),
        (as_json({**MINIMAL, "message": ["x"]}), "'message' must be a string"),
        (as_json({**MINIMAL, "context": "role_name"}), "'context' must be an object, got str"),
        (as_json({**MINIMAL, "context": [1, 2]}), "'context' must be an object, got list"),
    ],
)
def test_bad_bodies_are_rejected_with_a_clear_message(body: bytes, message: str) -> None:
    with pytest.raises(WebhookPayloadError, match=message):
        parse_webhook(body, "application/json")


def test_payload_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_webhook(b"[]", "application/json")


def test_unsupported_content_type() -> None:
    with pytest.raises(WebhookPayloadError, match="unsupported Content-Type 'text/plain'"):
        parse_webhook(as_json(MINIMAL), "text/plain")


# --- form-encoded hooks (content_type "form") ------------------------------------------------

FORM = "application/x-www-form-urlencoded"


def test_form_body_with_json_context() -> None:
    body = urlencode({**MINIMAL, "context": json.dumps(MINIMAL["context"])}).encode()
    event = parse_webhook(body, FORM + "; charset=utf-8")
    assert event.event_type == "role_granted"
    assert event.message == MINIMAL["message"]
    assert event.project_uuids() == ("afa39d219a294a0a8aae19d886579a41",)


def test_form_body_as_waldur_sends_it_keeps_only_the_hint() -> None:
    # Waldur posts with requests' data=, which encodes the context dict as its keys only.
    fields = [(k, v) for k, v in MINIMAL.items() if k != "context"]
    fields += [("context", key) for key in MINIMAL["context"]]
    event = parse_webhook(urlencode(fields).encode(), FORM)
    assert event.event_type == "role_granted"
    assert event.created == datetime(2026, 11, 21, 20, 18, 37, 87545, tzinfo=UTC)
    assert event.context == {}


def test_form_body_without_context() -> None:
    fields = {k: v for k, v in MINIMAL.items() if k != "context"}
    assert parse_webhook(urlencode(fields).encode(), FORM).context == {}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([("created", MINIMAL["created"])], "has no 'event_type'"),
        ([("event_type", "role_granted")], "has no 'created'"),
        (
            [("event_type", "a"), ("event_type", "b"), ("created", MINIMAL["created"])],
            "'event_type' must appear once",
        ),
    ],
)
def test_bad_form_bodies(fields: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(WebhookPayloadError, match=message):
        parse_webhook(urlencode(fields).encode(), FORM)
