"""Records parsed from real Waldur 7.0.7 payloads (tests/fixtures/waldur-7.0-live-samples.json)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from waldur_bridge.waldur import (
    Customer,
    Event,
    Order,
    Project,
    Resource,
    RoleGrant,
    User,
    WaldurProtocolError,
    WebHook,
    normalize_uuid,
    parse_time,
)

SAMPLES_PATH = Path(__file__).parent.parent / "fixtures" / "waldur-7.0-live-samples.json"
SAMPLES: dict[str, Any] = json.loads(SAMPLES_PATH.read_text("utf-8"))["samples"]

# Just after the live capture: grants revoked during it have an expiration_time before this.
CAPTURE_END = datetime(2026, 11, 21, 20, 24, tzinfo=UTC)


def response(name: str) -> Any:
    return SAMPLES[name]["response"]


# --- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "d07c4fd1589140bdb915368440747e55",
        "D07C4FD1589140BDB915368440747E55",
        "d07c4fd1-5891-40bd-b915-368440747e55",
    ],
)
def test_normalize_uuid_accepts_hex_and_dashed(raw: str) -> None:
    assert normalize_uuid(raw) == "d07c4fd1589140bdb915368440747e55"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "None",
        "d07c4fd1589140bdb915368440747e5",  # 31 digits
        "d07c4fd1589140bdb915368440747e55a",
        "g07c4fd1589140bdb915368440747e55",
        "d07c4fd15891-40bd-b915-368440747e55",  # dashes in the wrong places
        " d07c4fd1589140bdb915368440747e55",
        "d07c4fd1589140bdb915368440747e55\n",
        42,
        None,
    ],
)
def test_normalize_uuid_rejects_anything_else(raw: Any) -> None:
    with pytest.raises(ValueError):
        normalize_uuid(raw)


def test_parse_time_accepts_z_and_offsets() -> None:
    expected = datetime(2026, 11, 21, 20, 18, 37, 87545, tzinfo=UTC)
    assert parse_time("2026-11-21T20:18:37.087545Z") == expected
    assert parse_time("2026-11-21T20:18:37.087545+00:00") == expected
    converted = parse_time("2026-11-21T22:18:37.087545+02:00")
    assert converted == expected
    assert converted is not None and converted.tzinfo is UTC
    assert parse_time(None) is None


@pytest.mark.parametrize("raw", ["2026-11-21T20:18:37", "yesterday", ""])
def test_parse_time_rejects_naive_or_garbage(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_time(raw)


# --- customers, projects, users --------------------------------------------------------------


def test_customer_from_live_create_response() -> None:
    customer = Customer.from_api(response("customer_create"))
    assert customer == Customer(
        uuid="8359b15ce2fc42babe0480d354dda196",
        name="Acme 92624",
        slug="acme-926-1",
        abbreviation="AC92624",
        description="",
    )


def test_project_from_live_detail_has_no_is_removed_in_7_0() -> None:
    project = Project.from_api(response("project_detail"))
    assert project.uuid == "d07c4fd1589140bdb915368440747e55"
    assert project.name == "Apollo 92624"
    assert project.slug == "apollo-9-1"
    assert project.description == "Telescope pipeline"
    assert project.customer_uuid == "8359b15ce2fc42babe0480d354dda196"
    assert project.customer_name == "Acme 92624"
    assert project.is_removed is False
    assert project.end_date is None


def test_project_newer_fields() -> None:
    data = dict(response("project_detail"), is_removed=True, end_date="2026-12-31")
    project = Project.from_api(data)
    assert project.is_removed is True
    assert project.end_date == date(2026, 12, 31)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_uuid": None}, "customer_uuid"),
        ({"uuid": 17}, "uuid"),
        ({"uuid": "not-a-uuid"}, "uuid"),
        ({"name": None}, "name"),
        ({"is_removed": "False"}, "is_removed"),
        ({"end_date": "soon"}, "end_date"),
    ],
)
def test_project_rejects_missing_or_ill_typed_fields(change: dict[str, Any], field: str) -> None:
    with pytest.raises(WaldurProtocolError, match=f"'{field}'"):
        Project.from_api(dict(response("project_detail"), **change))


def test_record_rejects_non_object() -> None:
    with pytest.raises(WaldurProtocolError, match="expected a JSON object"):
        Project.from_api(["not", "a", "dict"])  # type: ignore[arg-type]


def test_user_from_live_me_of_a_service_account() -> None:
    user = User.from_api(response("users_me"))
    assert user == User(
        uuid="d2b2601812334affb9ef7f25b45c0650",
        username="staff",
        full_name="Staff Admin",
        email="staff@example.com",
        is_active=True,
        is_staff=True,
        is_support=False,
        token_lifetime=None,
    )


def test_user_from_live_list_without_token_lifetime() -> None:
    (item,) = response("users_list_username_filter")
    user = User.from_api(item)
    assert user.username == "alice92624"
    assert user.full_name == "Alice Archer"
    assert user.is_staff is False
    assert user.token_lifetime is None


def test_user_full_name_may_be_empty_and_lifetime_is_an_int() -> None:
    data = dict(response("user_create"), full_name="", token_lifetime=3600)
    user = User.from_api(data)
    assert user.full_name == ""
    assert user.token_lifetime == 3600


def test_user_activity_must_be_known() -> None:
    data = dict(response("user_create"))
    del data["is_active"]
    with pytest.raises(WaldurProtocolError, match="'is_active' is missing"):
        User.from_api(data)
    with pytest.raises(WaldurProtocolError, match="'token_lifetime'"):
        User.from_api(dict(response("user_create"), token_lifetime=True))


# --- role grants -----------------------------------------------------------------------------


def test_grants_from_live_user_permissions_include_revoked_ones() -> None:
    grants = [
        RoleGrant.from_permission(item)
        for item in response("user_permissions_after_revoke_filter_ignored")
    ]
    assert len(grants) == 6
    by_user_role = {(g.user_full_name, g.role_name): g for g in grants}

    alice = by_user_role[("Alice Archer", "PROJECT.ADMIN")]
    assert alice.scope_type == "project"
    assert alice.scope_uuid == "d07c4fd1589140bdb915368440747e55"
    assert alice.customer_uuid == "8359b15ce2fc42babe0480d354dda196"
    assert alice.is_active is None  # 7.0 has no is_active
    assert alice.expiration_time is None
    assert alice.created == datetime(2026, 11, 21, 20, 23, 45, 207120, tzinfo=UTC)
    assert alice.is_effective(CAPTURE_END)

    # Bob's grant was revoked: 7.0 shows that only as an expiration_time in the past.
    bob = by_user_role[("Bob Baker", "PROJECT.MEMBER")]
    assert bob.expiration_time == datetime(2026, 11, 21, 20, 23, 45, 727374, tzinfo=UTC)
    assert not bob.is_effective(CAPTURE_END)

    # Customer-scope items have no customer_uuid in 7.0: the scope is the customer.
    carol = by_user_role[("Carol Chen", "CUSTOMER.OWNER")]
    assert carol.scope_type == "customer"
    assert carol.customer_uuid == carol.scope_uuid == "8359b15ce2fc42babe0480d354dda196"

    effective = {g.user_full_name for g in grants if g.is_effective(CAPTURE_END)}
    assert effective == {"Alice Archer", "Ben X", "Carol Chen"}


@pytest.mark.parametrize("field", ["scope_type", "scope_uuid", "role_name", "user_uuid"])
def test_permission_without_scope_or_role_is_rejected(field: str) -> None:
    data = dict(response("user_permissions_after_revoke_filter_ignored")[0])
    del data[field]
    with pytest.raises(WaldurProtocolError, match=f"'{field}' is missing"):
        RoleGrant.from_permission(data)


def test_permission_of_newer_waldur_with_is_active() -> None:
    data = dict(
        response("user_permissions_after_revoke_filter_ignored")[3],
        is_active=False,
        user_username="alice92624",
        user_email="alice92624@ex.org",
    )
    grant = RoleGrant.from_permission(data)
    assert grant.is_active is False
    assert grant.user_username == "alice92624"
    assert grant.user_email == "alice92624@ex.org"
    assert not grant.is_effective(CAPTURE_END)


def test_grants_from_live_project_list_users() -> None:
    project_uuid = "d07c4fd1-5891-40bd-b915-368440747e55"
    grants = [
        RoleGrant.from_scope_list(item, "project", project_uuid)
        for item in response("project_list_users")
    ]
    alice, bob = grants
    assert alice.user_uuid == "cfcf969a463a4cd9a3b6dedc71e4db0e"
    assert alice.user_username == "alice92624"
    assert alice.user_full_name == "Alice Archer"
    assert alice.user_email == "alice92624@ex.org"
    assert alice.role_name == "PROJECT.ADMIN"
    assert alice.scope_type == "project"
    assert alice.scope_uuid == "d07c4fd1589140bdb915368440747e55"
    assert alice.customer_uuid is None
    assert bob.expiration_time == datetime(2030, 1, 1, tzinfo=UTC)
    assert bob.is_effective(CAPTURE_END)
    assert not bob.is_effective(datetime(2030, 1, 1, tzinfo=UTC))  # expiry is exclusive


def test_grants_from_live_customer_list_users() -> None:
    customer_uuid = "8359b15ce2fc42babe0480d354dda196"
    (grant,) = [
        RoleGrant.from_scope_list(item, "customer", customer_uuid)
        for item in response("customer_list_users")
    ]
    assert grant.role_name == "CUSTOMER.OWNER"
    assert grant.customer_uuid == customer_uuid
    assert grant.user_username == "carol92624"


def test_is_effective_rules() -> None:
    base = RoleGrant.from_scope_list(
        response("project_list_users")[0], "project", "d07c4fd1589140bdb915368440747e55"
    )
    now = CAPTURE_END
    cases = {
        (None, None): True,
        (True, None): True,
        (False, None): False,
        (None, now + timedelta(seconds=1)): True,
        (None, now): False,
        (True, now - timedelta(days=1)): False,
    }
    for (is_active, expiration_time), expected in cases.items():
        grant = replace(base, is_active=is_active, expiration_time=expiration_time)
        assert grant.is_effective(now) is expected, (is_active, expiration_time)


# --- events ----------------------------------------------------------------------------------


def test_role_events_from_live_events_api() -> None:
    events = [Event.from_api(item) for item in response("events_roles")]
    assert [e.event_type for e in events].count("role_granted") == 6
    first = events[0]
    assert first.uuid == "c8ec23e32c464b59a460d7697bd05978"
    assert first.created == datetime(2026, 11, 21, 20, 23, 28, 149431, tzinfo=UTC)
    assert first.message == "User Ann X has gained role of PROJECT.MEMBER in Proj92607."
    assert first.project_uuids() == ("a33f5049d3a24731a7bebc01f5c9c4d1",)
    assert first.customer_uuids() == ("43e663742eb04098a8787ff5a9a851ec",)
    # user_uuid is the actor (staff); only the affected user counts.
    assert first.user_uuids() == ("368f421e6819454e88b48c71eb1047f8",)
    assert first.dedup_key() == first.uuid


def test_customer_scope_role_event_names_no_project() -> None:
    event = Event.from_api(response("events_roles")[2])
    assert event.context["scope_type"] == "customer"
    assert event.project_uuids() == ()
    assert event.customer_uuids() == ("43e663742eb04098a8787ff5a9a851ec",)
    assert event.user_uuids() == ("69c31b40a7ac4a8abeb2b7ed4f6595bf",)


def test_project_events_from_live_events_api() -> None:
    events = [Event.from_api(item) for item in response("events_project_deletion")]
    deletion = events[-1]
    assert deletion.event_type == "project_deletion_succeeded"
    assert deletion.project_uuids() == ("d07c4fd1589140bdb915368440747e55",)
    assert deletion.customer_uuids() == ("8359b15ce2fc42babe0480d354dda196",)
    assert deletion.user_uuids() == ()
    assert deletion.context["project_end_date"] == "None"


def test_event_context_none_and_garbage_values_are_absent() -> None:
    event = Event.from_api(
        {
            "created": "2026-11-21T20:23:28Z",
            "event_type": "user_deactivated",
            "context": {
                "affected_user_uuid": "None",
                "project_uuid": "",
                "customer_uuid": "not-a-uuid",
                "scope_type": "project",
                "scope_uuid": "None",
            },
        }
    )
    assert event.uuid is None
    assert event.message == ""
    assert event.project_uuids() == event.customer_uuids() == event.user_uuids() == ()


def test_event_context_values_are_stringified_like_waldur() -> None:
    event = Event.from_api(
        {
            "created": "2026-11-21T20:23:28Z",
            "event_type": "user_deactivated",
            "context": {"affected_user_is_staff": False, "token_lifetime": None, "n": 3},
        }
    )
    assert event.context == {"affected_user_is_staff": "False", "token_lifetime": "None", "n": "3"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"created": None}, "created"),
        ({"created": "2026-11-21 nonsense"}, "created"),
        ({"event_type": 5}, "event_type"),
        ({"context": ["a"]}, "context"),
        ({"message": 1}, "message"),
        ({"uuid": "xyz"}, "uuid"),
    ],
)
def test_event_rejects_ill_typed_fields(change: dict[str, Any], field: str) -> None:
    with pytest.raises(WaldurProtocolError, match=f"'{field}'"):
        Event.from_api(dict(response("events_roles")[0], **change))


def test_web_hook_events_have_content_dedup_keys() -> None:
    bodies = [json.loads(item["body"]) for item in SAMPLES["webhook_deliveries_received"]["items"]]
    events = [Event.from_api(body) for body in bodies]
    assert all(e.uuid is None for e in events)
    assert events[0].created == datetime(2026, 11, 21, 20, 18, 37, 87545, tzinfo=UTC)
    keys = [e.dedup_key() for e in events]
    assert len(set(keys)) == len(keys)
    assert all(k.startswith("sha256:") for k in keys)
    # The same content gives the same key, whichever offset spelling "created" used.
    respelled = dict(bodies[0], created=bodies[0]["created"].replace("+00:00", "Z"))
    reordered = dict(bodies[0], context=dict(reversed(list(bodies[0]["context"].items()))))
    assert Event.from_api(respelled).dedup_key() == keys[0]
    assert Event.from_api(reordered).dedup_key() == keys[0]
    changed = dict(bodies[0], context=dict(bodies[0]["context"], role_name="PROJECT.ADMIN"))
    assert Event.from_api(changed).dedup_key() != keys[0]


# --- marketplace and hooks -------------------------------------------------------------------


def test_order_from_live_sample() -> None:
    order = Order.from_api(response("order_after_provider_approval"))
    assert order == Order(
        uuid="1131d77722184ea1bcfaae7c0ce65dfa",
        created=datetime(2026, 11, 21, 20, 20, 59, 79423, tzinfo=UTC),
        state="done",
        type="Create",
        resource_name="res92458",
        offering_name="Basic 92458",
        project_uuid="d79cdb3eb86a422b9a1d87f755eda064",
        created_by_full_name="",
        created_by_username="",  # not in 7.0 order payloads
        consumer_reviewed_by_full_name="",
        error_message="",
    )


def test_order_requires_state_and_project() -> None:
    with pytest.raises(WaldurProtocolError, match="'state'"):
        Order.from_api(dict(response("order_after_provider_approval"), state=3))
    with pytest.raises(WaldurProtocolError, match="'project_uuid'"):
        Order.from_api(dict(response("order_after_provider_approval"), project_uuid=None))


def test_resource_from_live_sample() -> None:
    (item,) = response("resources_in_project")
    assert Resource.from_api(item) == Resource(
        uuid="0239e79fade54eb3b07482c01c1a2807",
        name="res92458",
        state="OK",
        project_uuid="d79cdb3eb86a422b9a1d87f755eda064",
        offering_name="Basic 92458",
        created=datetime(2026, 11, 21, 20, 20, 59, 60827, tzinfo=UTC),
    )


def test_web_hook_from_live_create_response() -> None:
    hook = WebHook.from_api(response("hook_create"))
    assert hook.uuid == "a9bfae1c302147c58f76e3bd76f9f738"
    assert hook.destination_url == "http://127.0.0.1:9/hook"
    assert hook.is_active is True
    assert "role_granted" in hook.event_types and "project_deletion_succeeded" in hook.event_types
    with pytest.raises(WaldurProtocolError, match="'event_types'"):
        WebHook.from_api(dict(response("hook_create"), event_types="role_granted"))


def test_records_are_frozen() -> None:
    project = Project.from_api(response("project_detail"))
    with pytest.raises(AttributeError):
        project.name = "other"  # type: ignore[misc]
