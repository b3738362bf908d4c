"""The Waldur simulator against shapes captured from a live Waldur 7.0.7."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from waldur_simulator import WaldurSimulator, seed_bulk, seed_demo

# Keys (and order) from /work/shared/reference/waldur-7.0-live-samples.json.
PROJECT_KEYS = [
    "url", "uuid", "name", "slug", "customer", "customer_uuid", "customer_name", "customer_slug",
    "customer_native_name", "customer_abbreviation", "description", "created", "type",
    "backend_id", "start_date", "end_date", "end_date_requested_by", "oecd_fos_2007_code",
    "oecd_fos_2007_label", "is_industry", "image", "resources_count", "billing_price_estimate",
    "marketplace_resource_count",
]  # fmt: skip
LIST_USERS_KEYS = [
    "uuid", "created", "expiration_time", "role_name", "role_uuid", "user_email",
    "user_full_name", "user_username", "user_uuid", "user_image", "created_by_full_name",
    "created_by_uuid",
]  # fmt: skip
CUSTOMER_USER_KEYS = [
    "url", "uuid", "username", "full_name", "email", "role", "role_name", "projects", "image",
]  # fmt: skip
CUSTOMER_OWNER_KEYS = CUSTOMER_USER_KEYS[:-1] + ["expiration_time", "image"]
CUSTOMER_USER_PROJECT_KEYS = ["url", "uuid", "name", "role", "role_name", "expiration_time"]
PERMISSION_70_CUSTOMER_KEYS = [
    "user_uuid", "user_name", "user_slug", "created", "expiration_time", "created_by_full_name",
    "created_by_username", "role_name", "role_description", "role_uuid", "scope_type",
    "scope_uuid", "scope_name",
]  # fmt: skip
PERMISSION_70_PROJECT_KEYS = PERMISSION_70_CUSTOMER_KEYS + ["customer_uuid", "customer_name"]
ROLE_CONTEXT_PROJECT = {
    "affected_user_full_name", "affected_user_is_staff", "affected_user_is_support",
    "affected_user_native_name", "affected_user_token_lifetime", "affected_user_username",
    "affected_user_uuid", "customer_abbreviation", "customer_contact_details", "customer_name",
    "customer_uuid", "ip_address", "role_name", "scope_end_date", "scope_name", "scope_type",
    "scope_uuid", "user_full_name", "user_is_staff", "user_is_support", "user_native_name",
    "user_token_lifetime", "user_username", "user_uuid",
}  # fmt: skip
ROLE_CONTEXT_CUSTOMER = (ROLE_CONTEXT_PROJECT - {"scope_end_date"}) | {
    "scope_abbreviation",
    "scope_contact_details",
}
PROJECT_EVENT_CONTEXT = {
    "customer_abbreviation", "customer_contact_details", "customer_name", "customer_uuid",
    "ip_address", "project_end_date", "project_name", "project_uuid", "user_full_name",
    "user_is_staff", "user_is_support", "user_native_name", "user_token_lifetime",
    "user_username", "user_uuid",
}  # fmt: skip
ORDER_KEYS_70 = {
    "offering", "offering_name", "offering_uuid", "offering_description", "offering_image",
    "offering_thumbnail", "offering_type", "offering_terms_of_service", "offering_shared",
    "offering_billable", "offering_plugin_options", "provider_name", "provider_uuid",
    "category_title", "category_uuid", "category_icon", "plan", "plan_unit", "plan_name",
    "plan_uuid", "plan_description", "attributes", "limits", "uuid", "created", "modified",
    "type", "resource_uuid", "resource_type", "resource_name", "cost", "state", "output",
    "marketplace_resource_uuid", "error_message", "error_traceback", "callback_url",
    "consumer_reviewed_by", "consumer_reviewed_by_full_name", "consumer_reviewed_at",
    "provider_reviewed_by", "provider_reviewed_by_full_name", "provider_reviewed_at",
    "created_by_full_name", "created_by_civil_number", "customer_name", "customer_uuid",
    "customer_slug", "project_name", "project_uuid", "project_description", "project_slug",
    "new_plan_name", "new_plan_uuid", "old_cost_estimate", "new_cost_estimate", "can_terminate",
    "fixed_price", "activation_price", "termination_comment", "backend_id", "issue",
}  # fmt: skip
HEX32 = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(params=["7.0", "current"])
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[WaldurSimulator]:
    simulator = WaldurSimulator(request.param, hook_delay=0.01)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def sim70() -> AsyncIterator[WaldurSimulator]:
    simulator = WaldurSimulator("7.0", hook_delay=0.01)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def simcur() -> AsyncIterator[WaldurSimulator]:
    simulator = WaldurSimulator("current", hook_delay=0.01)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Client:
    def __init__(self, sim: WaldurSimulator, session: aiohttp.ClientSession, token: str) -> None:
        self.sim, self.session, self.token = sim, session, token

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, Any]:
        headers = {"Authorization": f"Token {self.token}"}
        async with self.session.request(
            method, self.sim.url + path, json=body, headers=headers
        ) as resp:
            raw = await resp.read()
            data = json.loads(raw) if raw and resp.content_type == "application/json" else raw
            return resp.status, data, resp.headers

    async def get(self, path: str) -> Any:
        status, data, _ = await self.call("GET", path)
        assert status == 200, (path, status, data)
        return data


def staff(sim: WaldurSimulator, http: aiohttp.ClientSession) -> Client:
    return Client(sim, http, sim.staff_token)


def world(sim: WaldurSimulator) -> dict[str, str]:
    """The live-sample situation: Alice admin and Bob member of Apollo, Carol owner of Acme."""
    org = sim.add_customer("Acme 92624", "AC92624")
    apollo = sim.add_project(org, "Apollo 92624", "Telescope pipeline")
    other = sim.add_project(org, "Zephyr", "")
    alice = sim.add_user("alice92624", "Alice Archer", "alice92624@ex.org")
    bob = sim.add_user("bob92624", "Bob Baker", "bob92624@ex.org")
    carol = sim.add_user("carol92624", "Carol Chen", "carol92624@ex.org")
    sim.grant(alice, apollo, "PROJECT.ADMIN")
    sim.grant(bob, apollo, "PROJECT.MEMBER", expiration_time="2030-01-01T00:00:00Z")
    sim.grant(carol, org, "CUSTOMER.OWNER")
    sim.grant(bob, other, "PROJECT.ADMIN")
    return {
        "org": org,
        "apollo": apollo,
        "other": other,
        "alice": alice,
        "bob": bob,
        "carol": carol,
    }


# ---------------------------------------------------------------------- shapes


async def test_project_and_team_shapes(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    w, api = world(sim), staff(sim, http)
    project = await api.get(f"/api/projects/{w['apollo']}/")
    expected = PROJECT_KEYS + (
        ["is_removed", "effective_end_date"] if sim.generation == "current" else []
    )
    assert list(project) == expected
    assert project["url"] == f"{sim.url}/api/projects/{w['apollo']}/"
    assert project["customer"] == f"{sim.url}/api/customers/{w['org']}/"
    assert HEX32.match(project["uuid"]) and project["created"].endswith("Z")

    members = await api.get(f"/api/projects/{w['apollo']}/list_users/")
    assert [list(m) for m in members] == [LIST_USERS_KEYS, LIST_USERS_KEYS]
    assert [m["user_username"] for m in members] == ["alice92624", "bob92624"]
    assert members[1]["expiration_time"] == "2030-01-01T00:00:00Z"
    owners = await api.get(f"/api/customers/{w['org']}/list_users/")
    assert [(o["user_username"], o["role_name"]) for o in owners] == [
        ("carol92624", "CUSTOMER.OWNER")
    ]

    users = await api.get(f"/api/customers/{w['org']}/users/")
    assert [u["username"] for u in users] == ["alice92624", "bob92624", "carol92624"]
    assert list(users[0]) == CUSTOMER_USER_KEYS
    assert list(users[2]) == CUSTOMER_OWNER_KEYS
    assert (users[2]["role"], users[2]["role_name"]) == ("owner", "CUSTOMER.OWNER")
    assert list(users[0]["projects"][0]) == CUSTOMER_USER_PROJECT_KEYS
    assert (users[0]["projects"][0]["role"], users[0]["role"]) == ("admin", None)
    assert len(users[1]["projects"]) == 2

    me = await api.get("/api/users/me/")
    assert me["username"] == "staff" and me["is_staff"] is True
    assert me["token"] == sim.staff_token and me["token_lifetime"] is None
    assert re.fullmatch(r"[0-9a-f]{40}", sim.staff_token)


async def test_user_permissions_70_ignores_filters(
    sim70: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    sim, api = sim70, staff(sim70, http)
    w = world(sim)
    sim.revoke(w["bob"], w["apollo"], "PROJECT.MEMBER")
    path = f"/api/user-permissions/?scope_uuid={w['apollo']}&is_active=true&page_size=50"
    status, items, headers = await api.call("GET", path)
    assert status == 200
    assert headers["X-Result-Count"] == "4"  # every grant, the revoked one included
    assert {i["scope_uuid"] for i in items} == {w["apollo"], w["org"], w["other"]}
    by_role = {(i["user_uuid"], i["role_name"]): i for i in items}
    assert list(by_role[(w["alice"], "PROJECT.ADMIN")]) == PERMISSION_70_PROJECT_KEYS
    assert list(by_role[(w["carol"], "CUSTOMER.OWNER")]) == PERMISSION_70_CUSTOMER_KEYS
    revoked = by_role[(w["bob"], "PROJECT.MEMBER")]
    assert revoked["expiration_time"] < "2030"  # revocation time replaced the expiry
    link = (
        f"<{sim.url}/api/user-permissions/?is_active=true&page_size=50&scope_uuid={w['apollo']}>"
    )
    assert headers["Link"] == f'{link}; rel="first", {link}; rel="last"'
    # /api/users/ ignores uuid in 7.0 but knows username.
    users = await api.get(f"/api/users/?uuid={w['alice']}&field=uuid&field=username")
    assert len(users) == 4 and list(users[0]) == ["uuid", "username"]
    assert [u["username"] for u in await api.get("/api/users/?username=bob92624")] == ["bob92624"]


async def test_user_permissions_current_honours_filters(
    simcur: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    sim, api = simcur, staff(simcur, http)
    w = world(sim)
    sim.revoke(w["bob"], w["apollo"], "PROJECT.MEMBER")
    items = await api.get(f"/api/user-permissions/?scope_uuid={w['apollo']}")
    assert [(i["user_uuid"], i["is_active"]) for i in items] == [(w["alice"], True)]
    assert HEX32.match(items[0]["uuid"])
    history = await api.get(f"/api/user-permissions/?scope_uuid={w['apollo']}&show_inactive=true")
    assert len(history) == 2
    org_wide = await api.get(f"/api/user-permissions/?customer_uuid={w['org']}")
    assert len(org_wide) == 3
    owner = await api.get("/api/user-permissions/?scope_type=customer")
    assert owner[0]["customer_uuid"] == w["org"] and owner[0]["role_name"] == "CUSTOMER.OWNER"
    assert [u["uuid"] for u in await api.get(f"/api/users/?uuid={w['alice']}")] == [w["alice"]]
    project = await api.get(f"/api/projects/{w['apollo']}/")
    assert project["is_removed"] is False


async def test_events_shape_and_filters(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    since = time.time() - 1
    w, api = world(sim), staff(sim, http)
    path = f"/api/events/?created_from={since}&event_type=role_granted&o=created&page_size=50"
    events = await api.get(path)
    assert len(events) == 4
    assert all(list(e) == ["uuid", "created", "event_type", "message", "context"] for e in events)
    assert all(e["created"].endswith("Z") and HEX32.match(e["uuid"]) for e in events)
    assert events == sorted(events, key=lambda e: e["created"])
    project_event, customer_event = events[0], events[2]
    assert set(project_event["context"]) == ROLE_CONTEXT_PROJECT
    assert set(customer_event["context"]) == ROLE_CONTEXT_CUSTOMER
    assert all(isinstance(v, str) for e in events for v in e["context"].values())
    ctx = project_event["context"]
    assert ctx["affected_user_uuid"] == w["alice"] and ctx["user_username"] == "staff"
    assert (ctx["user_is_staff"], ctx["user_token_lifetime"], ctx["scope_end_date"]) == (
        "True",
        "None",
        "None",
    )
    assert ctx["affected_user_token_lifetime"] == "3600"
    assert project_event["message"] == (
        "User Alice Archer has gained role of PROJECT.ADMIN in Apollo 92624."
    )
    newest = await api.get("/api/events/?page_size=1")
    assert newest[0]["event_type"] == "role_granted" and newest[0]["context"]["user_uuid"]
    status, body, _ = await api.call("GET", "/api/events/?created_from=2026-01-01T00:00:00Z")
    assert (status, body) == (400, {"created_from": ["Enter a number."]})
    later = await api.get(f"/api/events/?created_from={time.time() + 60}")
    assert later == []


async def test_soft_delete_event_order(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    w, api = world(sim), staff(sim, http)
    since = time.time()
    status, body, _ = await api.call("DELETE", f"/api/projects/{w['apollo']}/")
    assert (status, body) == (204, b"")
    events = await api.get(f"/api/events/?created_from={since}&o=created")
    assert [e["event_type"] for e in events] == [
        "role_revoked",
        "role_revoked",
        "project_update_succeeded",
        "project_deletion_succeeded",
    ]
    assert "Is_removed has been changed from 'False' to 'True'." in events[2]["message"]
    assert set(events[3]["context"]) == PROJECT_EVENT_CONTEXT
    status, body, _ = await api.call("GET", f"/api/projects/{w['apollo']}/")
    assert (status, body) == (404, {"detail": "No Project matches the given query."})
    names = [p["name"] for p in await api.get("/api/projects/")]
    assert names == ["Zephyr"]


async def test_team_actions(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    w, api = world(sim), staff(sim, http)
    dave = sim.add_user("dave", "Dave D")
    base = f"/api/projects/{w['apollo']}"
    member = {"user": dave, "role": "PROJECT.MEMBER"}
    status, body, _ = await api.call("POST", f"{base}/add_user/", member)
    assert (status, body) == (201, {"expiration_time": None})
    status, body, _ = await api.call("POST", f"{base}/add_user/", member)
    assert (status, body) == (
        400,
        {"non_field_errors": ["User has already the same role in this scope."]},
    )
    status, body, _ = await api.call(
        "POST", f"{base}/add_user/", {"user": dave, "role": "PROJECT.BOGUS"}
    )
    assert (status, body) == (400, {"role": ["Role is not found."]})
    status, body, _ = await api.call(
        "POST",
        f"{base}/update_user/",
        {"user": dave, "role": "PROJECT.MEMBER", "expiration_time": "2031-01-01T00:00:00Z"},
    )
    assert (status, body) == (200, {"expiration_time": "2031-01-01T00:00:00Z"})
    for _ in range(2):  # 200 with an empty body, also when already revoked
        status, body, _ = await api.call("POST", f"{base}/delete_user/", member)
        assert (status, body) == (200, b"")
    status, body, _ = await api.call(
        "POST", f"/api/customers/{w['org']}/add_user/", {"user": dave, "role": "PROJECT.ADMIN"}
    )
    assert (status, body) == (400, {"non_field_errors": ["Role is not valid for this scope."]})
    custom = sim.add_role("PROJECT.acme.MEMBER", "project")
    status, _, _ = await api.call("POST", f"{base}/add_user/", {"user": dave, "role": custom})
    assert status == 201
    team = await api.get(f"{base}/list_users/?role=PROJECT.acme.MEMBER")
    assert [(m["user_uuid"], m["role_uuid"]) for m in team] == [(dave, custom)]
    sim.revoke(dave, w["apollo"], "PROJECT.acme.MEMBER")
    types = [e["event_type"] for e in await api.get("/api/events/?o=created&page_size=100")]
    assert types[-5:] == ["role_granted", "role_updated", "role_revoked"] + [
        "role_granted",
        "role_revoked",
    ]


async def test_lazy_expiry_and_deactivation(
    simcur: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    sim, api = simcur, staff(simcur, http)
    w = world(sim)
    sim.advance_clock(timedelta(days=3650).total_seconds())  # Bob's 2030 grant is now past
    items = await api.get(f"/api/user-permissions/?scope_uuid={w['apollo']}")
    assert [i["is_active"] for i in items] == [True, True]
    assert len(await api.get(f"/api/projects/{w['apollo']}/list_users/")) == 2
    revoked = sim.run_expiry_cleanup()
    assert len(revoked) == 1
    assert len(await api.get(f"/api/projects/{w['apollo']}/list_users/")) == 1
    sim.deactivate_user(w["alice"])
    assert await api.get(f"/api/projects/{w['apollo']}/list_users/") == []
    grants = await api.get(f"/api/user-permissions/?user={w['alice']}")
    assert grants[0]["is_active"] is True  # Waldur keeps a deactivated user's grants
    events = await api.get("/api/events/?event_type=user_deactivated")
    assert events[0]["context"]["affected_user_uuid"] == w["alice"]


# ---------------------------------------------------------------------- pagination, auth


async def test_pagination_headers(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    org = sim.add_customer("Org")
    for i in range(25):
        sim.add_project(org, f"P{i:02d}")
    api = staff(sim, http)
    status, items, headers = await api.call("GET", "/api/projects/?page=2&field=name&field=uuid")
    assert status == 200 and headers["X-Result-Count"] == "25"
    assert [p["name"] for p in items] == [f"P{i:02d}" for i in range(10, 20)]
    assert list(items[0]) == ["uuid", "name"]
    base = f"{sim.url}/api/projects/?field=name&field=uuid"
    assert headers["Link"] == (
        f'<{base}>; rel="first", <{base}>; rel="prev", '
        f'<{base}&page=3>; rel="next", <{base}&page=3>; rel="last"'
    )
    status, body, _ = await api.call("GET", "/api/projects/?page=9")
    assert (status, body) == (404, {"detail": "Invalid page."})
    status, items, _ = await api.call("GET", "/api/projects/?page_size=1000")
    assert len(items) == 25
    seed_bulk(sim, projects=400, grants=450)
    _, items, _ = await api.call("GET", "/api/projects/?page_size=1000")
    assert len(items) == (300 if sim.generation == "7.0" else 100)


async def test_auth(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    url = f"{sim.url}/api/users/me/"

    async def me(**kwargs: Any) -> tuple[int, Any]:
        async with http.get(url, **kwargs) as resp:
            return resp.status, await resp.json()

    assert await me() == (401, {"detail": "Authentication credentials were not provided."})
    assert await me(headers={"Authorization": "Token " + "0" * 40}) == (
        401,
        {"detail": "Invalid token."},
    )
    status, body = await me(headers={"Authorization": f"tOkEn {sim.staff_token}"})
    assert status == 200 and body["username"] == "staff"
    status, body = await me(params={"x-auth-token": sim.staff_token})
    assert status == 200
    eve = sim.add_user("eve", "Eve E")
    token = sim.token_for(eve)
    status, body = await me(headers={"Authorization": f"Token {token}"})
    assert status == 200 and body["uuid"] == eve and body["token"] == token
    assert "is_staff" not in body  # hidden from ordinary users
    sim.add_project(sim.add_customer("Hidden"), "Secret")
    async with http.get(
        f"{sim.url}/api/projects/", headers={"Authorization": f"Token {token}"}
    ) as r:
        assert r.status == 200 and await r.json() == []
    sim.deactivate_user(eve)
    assert await me(headers={"Authorization": f"Token {token}"}) == (
        401,
        {"detail": "User inactive or deleted."},
    )


# ---------------------------------------------------------------------- web hooks


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    got: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


async def test_hooks(
    sim: WaldurSimulator,
    http: aiohttp.ClientSession,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, got = receiver
    api = staff(sim, http)
    status, body, _ = await api.call(
        "POST", "/api/hooks-web/", {"destination_url": url, "event_types": ["no_such_event"]}
    )
    assert (status, body) == (400, {"event_types": ['"no_such_event" is not a valid choice.']})
    status, hook, _ = await api.call(
        "POST",
        "/api/hooks-web/",
        {
            "destination_url": url,
            "event_types": ["user_activated"],
            "event_groups": ["permissions"],
        },
    )
    assert status == 201 and hook["hook_type"] == "webhook"
    assert hook["event_types"] == [
        "role_granted",
        "role_revoked",
        "role_updated",
        "user_activated",
    ]
    w = world(sim)
    # Current: the response to the causing request comes first, delivery follows in the
    # background. 7.0 (seen live): hooks are posted inside the request, before its answer.
    status, _, _ = await api.call(
        "POST",
        f"/api/projects/{w['other']}/add_user/",
        {"user": w["alice"], "role": "PROJECT.MEMBER"},
    )
    assert status == 201
    assert len(got) == 5 if sim.generation == "7.0" else len(got) < 5
    await sim.drain_hooks()
    assert len(got) == 5
    headers, raw = got[0]
    assert headers["User-Agent"] == "python-requests/2.32.3"
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers
    payload = json.loads(raw)
    assert list(payload) == ["created", "message", "context", "event_type"]
    assert payload["created"].endswith("+00:00") and payload["event_type"] == "role_granted"
    assert set(payload["context"]) == ROLE_CONTEXT_PROJECT
    assert sim.hook_stats["delivered"] == 5

    sim.drop_customer_role_hooks = True
    sim.grant(w["alice"], w["org"], "CUSTOMER.MANAGER")
    status, _, _ = await api.call("DELETE", f"/api/hooks-web/{hook['uuid']}/")
    assert status == 204
    sim.grant(w["carol"], w["other"], "PROJECT.MEMBER")
    await sim.drain_hooks()
    assert len(got) == 5 and sim.hook_stats["dropped"] == 1

    sim.add_hook("http://127.0.0.1:9/nowhere", event_groups=["permissions"])
    sim.grant(w["carol"], w["apollo"], "PROJECT.MEMBER")
    await sim.drain_hooks()
    assert sim.hook_stats["failed"] == 1  # counted and logged, never raised


# ---------------------------------------------------------------------- marketplace


async def test_orders_and_resources(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    ids = seed_demo(sim)
    api = staff(sim, http)
    telescope = ids["projects"]["telescope"]
    orders = await api.get(
        f"/api/marketplace-orders/?project_uuid={telescope}&o=-created&page_size=5"
    )
    assert [o["state"] for o in orders] == ["pending-consumer", "erred", "done"]
    done = orders[2]
    assert set(done) - ORDER_KEYS_70 == (
        set() if sim.generation == "7.0"
        else {"created_by_username", "created_by_email", "consumer_reviewed_by_username",
              "provider_reviewed_by_username", "url", "slug", "completed_at", "request_comment"}
    )  # fmt: skip
    assert done["created_by_full_name"] == "Bob Baker" and done["type"] == "Create"
    assert "consumer_reviewed_by" not in orders[0]  # DRF skips fields of a null relation
    pending = await api.get(
        "/api/marketplace-orders/?state=pending-consumer&state=pending-provider"
    )
    assert {o["state"] for o in pending} == {"pending-consumer", "pending-provider"}
    status, body, _ = await api.call("GET", "/api/marketplace-orders/?state=bogus")
    assert status == 400 and "state" in body
    erred = await api.get(f"/api/marketplace-resources/?project_uuid={telescope}&state=Erred")
    assert [r["name"] for r in erred] == ["gpu-batch"]
    sim.set_order_state(orders[0]["uuid"], "done")
    assert (await api.get(f"/api/marketplace-orders/{orders[0]['uuid']}/"))["state"] == "done"
    erin = await api.get(f"/api/user-permissions/?user={ids['users']['erin']}")
    assert erin[0]["expiration_time"] is not None


# ---------------------------------------------------------------------- faults, performance


async def test_faults(sim: WaldurSimulator, http: aiohttp.ClientSession) -> None:
    api = staff(sim, http)
    org = sim.add_customer("Org")
    for i in range(30):
        sim.add_project(org, f"P{i:02d}")
    rule = sim.faults.fail("/api/projects/", status=503, times=2)
    statuses = [(await api.call("GET", "/api/projects/"))[0] for _ in range(3)]
    assert statuses == [503, 503, 200] and rule.hits == 2
    sim.faults.fail(re.compile(r"/users/me/$"), status=429, times=1, method="GET")
    status, body, headers = await api.call("GET", "/api/users/me/")
    assert status == 429 and headers["Retry-After"] == "1" and "throttled" in body["detail"]
    sim.faults.fail_page("/api/projects/", page=2)
    assert (await api.call("GET", "/api/projects/"))[0] == 200
    assert (await api.call("GET", "/api/projects/?page=2"))[0] == 500
    assert (await api.call("GET", "/api/projects/?page=2"))[0] == 200
    # aiohttp's client silently retries an idempotent request once after a dropped
    # connection, so drop twice for the caller to see it.
    sim.faults.drop_connection("/api/customers/", times=2)
    with pytest.raises(aiohttp.ClientError):
        await api.call("GET", "/api/customers/")
    assert (await api.call("GET", "/api/customers/"))[0] == 200
    sim.faults.latency = 0.2
    started = time.perf_counter()
    await api.call("GET", "/api/users/me/")
    # A lower bound only (the injected sleep); a small margin for the clock's resolution.
    assert time.perf_counter() - started >= 0.19
    sim.faults.clear()
    assert sim.request_counts["GET /api/projects/"] == 6
    assert sim.request_counts["GET /api/customers/"] == 3
    assert sim.request_log[-1].status == 200


async def test_bulk_listing_pages_through_everything(
    sim: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    # Speed is measured by benchmarks/, not asserted here: a bound would fail on a slow machine.
    info = seed_bulk(sim, projects=1000, grants=10_000)
    assert info["grants"] == 10_000
    api = staff(sim, http)
    sim.reset_request_log()
    url = "/api/user-permissions/?page_size=100"
    seen = 0
    while url:
        status, items, headers = await api.call("GET", url)
        assert status == 200 and headers["X-Result-Count"] == "10000"
        seen += len(items)
        found = re.search(r'<([^>]+)>; rel="next"', headers["Link"])
        url = found.group(1).removeprefix(sim.url) if found else ""
    assert seen == 10_000
    assert len(sim.request_log) == 100
    project = info["projects"][0]
    await api.get(f"/api/projects/{project}/list_users/")


async def test_order_state_values_a_generation_lacks_are_400(
    sim: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    """7.x rejects unknown values of a filter it knows, and ignores filters it does not know."""
    seed_demo(sim)
    api = staff(sim, http)
    everything = await api.get("/api/marketplace-orders/")
    status, body, _ = await api.call("GET", "/api/marketplace-orders/?state=pending-start-date")
    if sim.generation == "7.0":
        assert status == 400
        assert body == {
            "state": [
                "Select a valid choice. pending-start-date is not one of the available choices."
            ]
        }
    else:
        assert status == 200
    assert await api.get("/api/marketplace-orders/?no_such_filter=x") == everything


async def test_hidden_users_leave_the_listing_but_not_direct_reads(
    sim: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    api = staff(sim, http)
    w = world(sim)
    sim.faults.hide_users(w["bob"])
    listed = {u["uuid"] for u in await api.get("/api/users/")}
    assert w["alice"] in listed and w["bob"] not in listed
    assert (await api.get(f"/api/users/{w['bob']}/"))["uuid"] == w["bob"]
    grants = await api.get(f"/api/projects/{w['apollo']}/list_users/")
    assert w["bob"] in {g["user_uuid"] for g in grants}
    sim.faults.hide_users()
    assert await api.get("/api/users/") == []
    sim.faults.clear()
    assert w["bob"] in {u["uuid"] for u in await api.get("/api/users/")}


async def test_user_deactivated_reaches_hooks_only_in_the_current_generation(
    sim: WaldurSimulator,
    http: aiohttp.ClientSession,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, got = receiver
    sim.add_hook(url, event_types=["user_deactivated", "user_activated"])
    user = sim.add_user("zed", "Zed Zeta")
    sim.deactivate_user(user)
    sim.activate_user(user)
    await sim.drain_hooks()
    types = [json.loads(raw)["event_type"] for _, raw in got]
    if sim.generation == "7.0":
        assert types == ["user_activated"]  # seen live: deactivation is never posted
    else:
        assert types == ["user_deactivated", "user_activated"]
    # The events API has it in both generations.
    events = await staff(sim, http).get("/api/events/?event_type=user_deactivated")
    assert [e["event_type"] for e in events] == ["user_deactivated"]


async def test_events_70_rejects_unknown_event_types(
    sim: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    api = staff(sim, http)
    status, body, _ = await api.call("GET", "/api/events/?event_type=no_such_event")
    if sim.generation == "7.0":
        assert status == 400 and "event_type" in body
    else:
        assert (status, body) == (200, [])
    # The types the bridge polls for exist in every generation.
    from waldur_bridge.sync.changes import POLLED_EVENTS

    query = "&".join(f"event_type={t}" for t in POLLED_EVENTS)
    assert (await api.call("GET", f"/api/events/?{query}"))[0] == 200


async def test_images_of_projects_and_organizations(
    sim: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    w, api = world(sim), staff(sim, http)
    project = await api.get(f"/api/projects/{w['apollo']}/")
    assert project["image"] is None
    path = sim.set_image(w["apollo"], b"\x89PNG-apollo")
    sim.set_image(w["org"], b"\x89PNG-acme", "image/jpeg")
    project = await api.get(f"/api/projects/{w['apollo']}/")
    assert project["image"] == f"{sim.url}{path}"
    customer = await api.get(f"/api/customers/{w['org']}/")
    assert customer["image"].startswith(f"{sim.url}/media/customer_images/")
    assert customer["image"].endswith(".jpeg")
    # Media is served like Django's MEDIA_URL: no token needed.
    async with http.get(project["image"]) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        assert await resp.read() == b"\x89PNG-apollo"
    # A new upload gets a new file name; the update event names the project.
    again = sim.set_image(w["apollo"], b"\x89PNG-apollo")
    assert again != path
    events = await api.get(
        f"/api/events/?event_type=project_update_succeeded&scope={project['url']}"
    )
    assert any("Image has been changed" in e["message"] for e in events)
    sim.set_image(w["apollo"], None)
    assert (await api.get(f"/api/projects/{w['apollo']}/"))["image"] is None
    async with http.get(f"{sim.url}{path}") as resp:
        assert resp.status == 404


# ---------------------------------------------------------------------- password sign-in


async def test_password_sign_in_like_obtain_auth_token(
    sim: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    alice = sim.add_user("alice_pw", "Alice Archer")
    sim.set_password(alice, "right horse")
    url = f"{sim.url}/api-auth/password/"

    async def login(username: str, password: str) -> tuple[int, Any]:
        async with http.post(url, json={"username": username, "password": password}) as resp:
            return resp.status, await resp.json()

    status, body = await login("alice_pw", "right horse")
    assert status == 200 and body["token"] == sim.token_for(alice)
    async with http.get(
        f"{sim.url}/api/users/me/", headers={"Authorization": f"Token {body['token']}"}
    ) as resp:
        assert (await resp.json())["username"] == "alice_pw"
    dot = "" if sim.generation == "7.0" else "."
    for _ in range(4):
        assert await login("alice_pw", "wrong") == (
            401,
            {"detail": f"Invalid username/password{dot}"},
        )
    # Locked: even the right password is refused for 10 minutes from this address.
    status, body = await login("alice_pw", "right horse")
    assert (status, body["detail"]) == (401, "Username is locked out. Try in 10 minutes.")
    sim.advance_clock(601)
    assert (await login("alice_pw", "right horse"))[0] == 200

    async with http.post(url, json={"username": "alice_pw"}) as resp:
        assert resp.status == 401 and await resp.json() == {
            "password": ["This field is required."]
        }
    sim.deactivate_user(alice)
    assert (await login("alice_pw", "right horse"))[0] == 401
    sim.local_signin_enabled = False
    status, body = await login("alice_pw", "right horse")
    assert status == 401 and body["detail"].startswith("Authentication method is disabled.")


async def test_a_user_without_password_cannot_sign_in(simcur: WaldurSimulator) -> None:
    bob = simcur.add_user("bob_idp", "Bob Baker")
    assert simcur.password_login("bob_idp", "", "10.0.0.1")[0] == 401
    assert simcur.password_login("bob_idp", "anything", "10.0.0.1")[0] == 401
    simcur.set_password(bob, "pw-1")
    assert simcur.password_login("bob_idp", "pw-1", "10.0.0.1")[0] == 200
    simcur.set_password(bob, None)
    assert simcur.password_login("bob_idp", "pw-1", "10.0.0.1")[0] == 401


async def test_a_listing_is_built_once_for_all_its_pages_and_sees_every_change(
    sim: WaldurSimulator, http: aiohttp.ClientSession
) -> None:
    """Each page request used to filter the whole grant list again (1,000 pages of 100,000
    grants per sweep): the filtered list is kept for the other pages, and any change to the
    grants or users is seen by the next request."""
    api = staff(sim, http)
    seed_bulk(sim, projects=20, grants=250)
    cache = sim.api.listings

    async def all_pages(path: str) -> list[dict[str, Any]]:
        items, page = [], 1
        while True:
            status, data, headers = await api.call("GET", f"{path}page_size=50&page={page}")
            assert status == 200, data
            items += data
            if 'rel="next"' not in headers.get("Link", ""):
                return items
            page += 1

    builds = cache.builds
    grants = await all_pages("/api/user-permissions/?")
    assert len(grants) == 250 and len(grants) // 50 == 5
    assert cache.builds == builds + 1  # five pages, one build

    user = sim.add_user("latecomer", "Late Comer")
    project = next(iter(sim.projects))
    sim.grant(user, project, "PROJECT.MEMBER")
    after = await all_pages("/api/user-permissions/?")
    assert len(after) == 251 and user in {g["user_uuid"] for g in after}
    sim.revoke(user, project, "PROJECT.MEMBER")
    # 7.0 lists revoked grants too; the current API only active ones.
    revoked_listed = sim.generation == "7.0"
    assert len(await all_pages("/api/user-permissions/?")) == 250 + revoked_listed
    # Another filter is another listing.
    mine = await all_pages(f"/api/user-permissions/?user={user}&")
    assert len(mine) == revoked_listed

    users = await all_pages("/api/users/?")
    assert user in {u["uuid"] for u in users}
    sim.deactivate_user(user)
    active = await all_pages("/api/users/?is_active=true&")
    assert user not in {u["uuid"] for u in active}
    sim.faults.hide_users(user)
    assert user not in {u["uuid"] for u in await all_pages("/api/users/?")}
