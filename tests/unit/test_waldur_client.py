"""WaldurClient against small loopback aiohttp servers with canned Waldur answers."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from waldur_bridge.waldur import (
    WaldurAuthError,
    WaldurClient,
    WaldurNotFound,
    WaldurProtocolError,
    WaldurRequestError,
    WaldurUnavailable,
)

SAMPLES: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "fixtures" / "waldur-7.0-live-samples.json").read_text("utf-8")
)["samples"]

TOKEN = "0123456789abcdef0123456789abcdef01234567"
CUSTOMER_A = "8359b15ce2fc42babe0480d354dda196"
CUSTOMER_B = "43e663742eb04098a8787ff5a9a851ec"
PROJECT = "d07c4fd1589140bdb915368440747e55"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[dict[str, Handler]], Awaitable[str]]
MakeClient = Callable[..., WaldurClient]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a loopback server with GET/POST/DELETE routes; returns its base URL."""
    servers: list[TestServer] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        server = TestServer(app, host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/"))

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    clients: list[WaldurClient] = []

    def make(url: str, **kwargs: Any) -> WaldurClient:
        kwargs.setdefault("backoff_initial", 0.001)
        kwargs.setdefault("backoff_max", 0.01)
        kwargs.setdefault("timeout", 5)
        client = WaldurClient(url, TOKEN, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def project(uuid: str, customer_uuid: str = CUSTOMER_A) -> dict[str, Any]:
    return dict(SAMPLES["project_detail"]["response"], uuid=uuid, customer_uuid=customer_uuid)


def paginated(items: list[Any], *, count: int | None = None) -> Handler:
    """A Waldur-style list endpoint: plain array body, Link and X-Result-Count headers."""

    async def handler(request: web.Request) -> web.Response:
        size = int(request.query.get("page_size", "10"))
        page = int(request.query.get("page", "1"))
        last = max(1, -(-len(items) // size))
        links = [f'<{request.url.update_query(page=1)}>; rel="first"']
        if page < last:
            links.append(f'<{request.url.update_query(page=page + 1)}>; rel="next"')
        links.append(f'<{request.url.update_query(page=last)}>; rel="last"')
        headers = {
            "X-Result-Count": str(len(items) if count is None else count),
            "Link": ", ".join(links),
        }
        return web.json_response(items[(page - 1) * size : page * size], headers=headers)

    return handler


def static(data: Any) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(data)

    return handler


# --- pagination ------------------------------------------------------------------------------


async def test_link_pagination_across_three_pages(serve: Serve, make_client: MakeClient) -> None:
    seen: list[web.Request] = []
    projects = [project(f"{i:032x}") for i in range(1, 6)]
    inner = paginated(projects)

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await inner(request)

    client = make_client(await serve({"/api/projects/": handler}), page_size=2)
    result = await client.list_projects()

    assert [p.uuid for p in result] == [f"{i:032x}" for i in range(1, 6)]
    assert [r.query.get("page", "1") for r in seen] == ["1", "2", "3"]
    assert all(r.query["page_size"] == "2" for r in seen)
    assert seen[0].headers["Authorization"] == f"Token {TOKEN}"
    assert seen[0].headers["Accept"] == "application/json"
    assert seen[0].headers["User-Agent"] == "waldur-matrix-bridge"
    assert client.stats.requests == 3
    assert client.stats.retries == client.stats.failures == 0


async def test_next_links_are_rebased_onto_the_configured_server(
    serve: Serve, make_client: MakeClient
) -> None:
    # Behind a proxy Waldur may advertise an internal host; the token must not go there.
    async def handler(request: web.Request) -> web.Response:
        if request.query.get("page") == "2":
            return web.json_response([project(f"{2:032x}")], headers={"X-Result-Count": "2"})
        link = '<http://waldur-internal.invalid:8000/waldur/api/projects/?page=2>; rel="next"'
        return web.json_response(
            [project(f"{1:032x}")], headers={"X-Result-Count": "2", "Link": link}
        )

    base = await serve({"/waldur/api/projects/": handler})
    client = make_client(base + "waldur/")
    assert len(await client.list_projects()) == 2


async def test_api_root_url_is_accepted(serve: Serve, make_client: MakeClient) -> None:
    # Operators often configure the API root; the client's paths already start with /api/.
    base = await serve({"/api/projects/": paginated([project(f"{1:032x}")])})
    assert len(await make_client(base + "api/").list_projects()) == 1
    assert len(await make_client(base + "api").list_projects()) == 1


async def test_result_count_mismatch_is_a_protocol_error(
    serve: Serve, make_client: MakeClient
) -> None:
    projects = [project(f"{i:032x}") for i in range(1, 4)]
    client = make_client(await serve({"/api/projects/": paginated(projects, count=4)}))
    with pytest.raises(WaldurProtocolError, match="X-Result-Count says 4") as caught:
        await client.list_projects()
    assert caught.value.path == "/api/projects/"
    assert client.stats.failures == 1


async def test_streamed_pages_hold_the_listing_and_its_checks(
    serve: Serve, make_client: MakeClient
) -> None:
    """iter_projects gives the same projects page by page, reads one page ahead, and a count
    that does not add up still fails the listing (after its last page)."""
    projects = [project(f"{i:032x}") for i in range(1, 8)]
    asked: list[str] = []
    inner = paginated(projects)

    async def handler(request: web.Request) -> web.StreamResponse:
        asked.append(request.query.get("page", "1"))
        return await inner(request)

    base = await serve({"/api/projects/": handler, "/api/short/": paginated(projects, count=9)})
    client = make_client(base, page_size=3)
    pages = []
    async for page in client.iter_projects():
        pages.append([p.uuid for p in page])
        # While this page is worked on, the next one is asked for.
        for _ in range(500):
            if len(asked) == min(3, len(pages) + 1):
                break
            await asyncio.sleep(0.01)
        assert len(asked) == min(3, len(pages) + 1)
    assert pages == [[f"{i:032x}" for i in range(j, min(j + 3, 8))] for j in (1, 4, 7)]
    assert asked == ["1", "2", "3"]

    gathered = 0
    with pytest.raises(WaldurProtocolError, match="X-Result-Count says 9"):
        async for raw in client.iter_pages("/api/short/"):
            gathered += len(raw)
    assert gathered == 7  # every page came, and then the listing failed as a whole


async def test_non_list_body_is_a_protocol_error(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"count": 1, "results": []})

    client = make_client(await serve({"/api/projects/": handler}))
    with pytest.raises(WaldurProtocolError, match="expected a JSON array"):
        await client.list_projects()


async def test_non_json_body_is_a_protocol_error(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    client = make_client(await serve({"/api/users/me/": handler}))
    with pytest.raises(WaldurProtocolError, match="not JSON .*text/html"):
        await client.me()


async def test_bad_item_fails_the_whole_listing(serve: Serve, make_client: MakeClient) -> None:
    broken = dict(project(f"{2:032x}"), customer_uuid=None)
    items = [project(f"{1:032x}"), broken]
    client = make_client(await serve({"/api/projects/": paginated(items)}))
    with pytest.raises(WaldurProtocolError, match="item 1: Project: field 'customer_uuid'"):
        await client.list_projects()


# --- retries ---------------------------------------------------------------------------------


async def test_503_twice_then_success(serve: Serve, make_client: MakeClient) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return web.Response(status=503, text="upstream unavailable")
        return web.json_response(SAMPLES["users_me"]["response"])

    client = make_client(await serve({"/api/users/me/": handler}))
    me = await client.me()
    assert me.username == "staff" and me.is_staff
    assert client.stats.retries == 2
    assert client.stats.requests == 3
    assert client.stats.failures == 0


async def test_5xx_until_retries_are_exhausted(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    client = make_client(await serve({"/api/users/me/": handler}), retry_attempts=2)
    with pytest.raises(WaldurUnavailable, match="gave up after 2 retries") as caught:
        await client.me()
    assert caught.value.status == 502
    assert client.stats.requests == 3 and client.stats.failures == 1


@pytest.mark.parametrize(("retry_after", "expected"), [("1", 1.0), ("120", 2.0)])
async def test_429_honours_retry_after_capped_at_backoff_max(
    serve: Serve,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
    retry_after: str,
    expected: float,
) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response(
                {"detail": "Request was throttled."},
                status=429,
                headers={"Retry-After": retry_after},
            )
        return web.json_response(SAMPLES["users_me"]["response"])

    client = make_client(await serve({"/api/users/me/": handler}), backoff_max=2.0)
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(client, "_sleep", fake_sleep)
    await client.me()
    assert delays == [expected]
    assert client.stats.retries == 1


async def test_connection_refused_gives_unavailable(make_client: MakeClient) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/", retry_attempts=2)
    with pytest.raises(WaldurUnavailable, match="cannot reach Waldur") as caught:
        await client.list_projects()
    assert caught.value.path == "/api/projects/"
    assert TOKEN not in str(caught.value)
    assert client.stats.requests == 3
    assert client.stats.retries == 2
    assert client.stats.failures == 1


async def test_post_is_not_repeated_after_a_server_error(
    serve: Serve, make_client: MakeClient
) -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=500, text="oops")

    client = make_client(await serve({"/api/hooks-web/": handler}))
    with pytest.raises(WaldurUnavailable):
        await client.create_hook("https://bridge.example/hook/s3cret", ["role_granted"])
    assert calls == 1


# --- status errors ---------------------------------------------------------------------------


async def test_401_explains_token_lifetime(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"detail": "Token has expired."}, status=401)

    client = make_client(await serve({"/api/users/me/": handler}))
    with pytest.raises(WaldurAuthError) as caught:
        await client.me()
    message = str(caught.value)
    assert "token_lifetime" in message and "null" in message
    assert "Token has expired." in message
    assert TOKEN not in message
    assert caught.value.status == 401
    assert client.stats.retries == 0


async def test_403_asks_for_a_staff_account(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"detail": "You do not have permission."}, status=403)

    client = make_client(await serve({"/api/user-permissions/": handler}))
    with pytest.raises(WaldurAuthError, match="staff"):
        await client.list_all_grants()


async def test_404_is_not_found(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(SAMPLES["project_detail_after_delete"]["response"], status=404)

    client = make_client(await serve({f"/api/projects/{PROJECT}/": handler}))
    with pytest.raises(WaldurNotFound) as caught:
        await client.get_project(PROJECT.upper())
    assert caught.value.path == f"/api/projects/{PROJECT}/"
    assert client.stats.retries == 0


async def test_400_carries_waldurs_field_errors(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(SAMPLES["hook_unknown_event_type"]["response"], status=400)

    client = make_client(await serve({"/api/hooks-web/": handler}))
    with pytest.raises(WaldurRequestError, match="not a valid choice") as caught:
        await client.create_hook("https://bridge.example/hook", ["no_such_event"])
    assert caught.value.status == 400


async def test_redirects_are_not_followed(serve: Serve, make_client: MakeClient) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound("https://elsewhere.invalid/api/users/me/")

    client = make_client(await serve({"/api/users/me/": handler}))
    with pytest.raises(WaldurProtocolError, match="redirected to https://elsewhere.invalid"):
        await client.me()


async def test_get_returning_another_object_is_a_protocol_error(
    serve: Serve, make_client: MakeClient
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(project(f"{9:032x}"))

    client = make_client(await serve({f"/api/projects/{PROJECT}/": handler}))
    with pytest.raises(WaldurProtocolError, match="asked for"):
        await client.get_project(PROJECT)


# --- filters that are not honoured -----------------------------------------------------------


async def test_ignored_customer_filter_is_filtered_out(
    serve: Serve, make_client: MakeClient
) -> None:
    queries: list[dict[str, str]] = []
    items = [project(f"{1:032x}"), project(f"{2:032x}", CUSTOMER_B), project(f"{3:032x}")]
    inner = paginated(items)

    async def handler(request: web.Request) -> web.StreamResponse:
        queries.append(dict(request.query))
        return await inner(request)

    client = make_client(await serve({"/api/projects/": handler}))
    result = await client.list_projects(customer_uuid=CUSTOMER_A)
    assert [p.uuid for p in result] == [f"{1:032x}", f"{3:032x}"]
    assert queries[0]["customer"] == CUSTOMER_A
    assert client.stats.dropped == 1


async def test_events_of_other_types_or_times_are_dropped(
    serve: Serve, make_client: MakeClient
) -> None:
    role_events = SAMPLES["events_roles"]["response"]
    project_events = SAMPLES["events_project_deletion"]["response"]
    old = dict(role_events[0], uuid=f"{7:032x}", created="2020-01-01T00:00:00Z")
    queries: list[Any] = []
    inner = paginated([*role_events, *project_events, old])

    async def handler(request: web.Request) -> web.StreamResponse:
        queries.append(request.query)
        return await inner(request)

    client = make_client(await serve({"/api/events/": handler}))
    created_from = 1795292566.5  # 2026-11-21T16:22:46Z, before every sample event
    events = await client.list_events(created_from, ["role_granted", "role_revoked"])

    assert {e.event_type for e in events} == {"role_granted", "role_revoked"}
    assert len(events) == 8  # 9 role events minus the role_updated one
    assert client.stats.dropped == 1 + len(project_events) + 1
    assert queries[0].getall("event_type") == ["role_granted", "role_revoked"]
    assert queries[0]["created_from"] == "1795292566.5"
    assert queries[0]["o"] == "created"


async def test_list_events_needs_event_types(make_client: MakeClient) -> None:
    client = make_client("http://127.0.0.1:9/")
    with pytest.raises(ValueError):
        await client.list_events(0, [])


async def test_resources_in_other_projects_or_states_are_dropped(
    serve: Serve, make_client: MakeClient
) -> None:
    (sample,) = SAMPLES["resources_in_project"]["response"]
    mine = sample["project_uuid"]
    items = [
        dict(sample, uuid=f"{1:032x}", state="Erred"),
        dict(sample, uuid=f"{2:032x}", state="OK"),
        dict(sample, uuid=f"{3:032x}", state="Erred", project_uuid=PROJECT),
    ]
    client = make_client(await serve({"/api/marketplace-resources/": paginated(items)}))
    result = await client.list_resources(mine, states=["Erred"])
    assert [r.uuid for r in result] == [f"{1:032x}"]
    # Only the ignored project filter counts: states are filtered here, never sent.
    assert client.stats.dropped == 1


async def test_orders_with_limit_read_one_page(serve: Serve, make_client: MakeClient) -> None:
    sample = SAMPLES["order_after_provider_approval"]["response"]
    mine = sample["project_uuid"]
    items = [dict(sample, uuid=f"{i:032x}") for i in range(1, 8)]
    queries: list[Any] = []
    inner = paginated(items)

    async def handler(request: web.Request) -> web.StreamResponse:
        queries.append(request.query)
        return await inner(request)

    client = make_client(await serve({"/api/marketplace-orders/": handler}))
    orders = await client.list_orders(mine, limit=5)
    assert len(orders) == 5 and len(queries) == 1
    assert queries[0]["page_size"] == "5"
    assert queries[0]["o"] == "-created"
    assert queries[0]["project_uuid"] == mine


async def test_order_states_are_filtered_here_never_sent(
    serve: Serve, make_client: MakeClient
) -> None:
    """Waldur 7.x answers 400 to a state value it does not know (pending-start-date)."""
    sample = SAMPLES["order_after_provider_approval"]["response"]
    mine = sample["project_uuid"]
    items = [
        dict(sample, uuid=f"{1:032x}", state="pending-consumer"),
        dict(sample, uuid=f"{2:032x}", state="done"),
        dict(sample, uuid=f"{3:032x}", state="pending-start-date"),
    ]
    queries: list[Any] = []
    inner = paginated(items)

    async def handler(request: web.Request) -> web.StreamResponse:
        queries.append(request.query)
        if "state" in request.query:
            return web.json_response({"state": ["Select a valid choice."]}, status=400)
        return await inner(request)

    client = make_client(await serve({"/api/marketplace-orders/": handler}))
    orders = await client.list_orders(mine, states=["pending-consumer", "pending-start-date"])
    assert [o.uuid for o in orders] == [f"{1:032x}", f"{3:032x}"]
    assert all("state" not in q for q in queries)
    assert client.stats.dropped == 0


async def test_orders_with_limit_refuse_an_ignored_filter(
    serve: Serve, make_client: MakeClient
) -> None:
    sample = SAMPLES["order_after_provider_approval"]["response"]
    items = [dict(sample, uuid=f"{1:032x}"), dict(sample, uuid=f"{2:032x}", project_uuid=PROJECT)]
    client = make_client(await serve({"/api/marketplace-orders/": paginated(items)}))
    with pytest.raises(WaldurProtocolError, match="did not honour"):
        await client.list_orders(sample["project_uuid"], limit=5)
    # Without a limit the whole listing is read and the stranger is dropped.
    assert len(await client.list_orders(sample["project_uuid"])) == 1


# --- grants and hooks ------------------------------------------------------------------------


async def test_grants_from_live_shapes(serve: Serve, make_client: MakeClient) -> None:
    permissions = SAMPLES["user_permissions_after_revoke_filter_ignored"]["response"]
    client = make_client(
        await serve(
            {
                "/api/user-permissions/": paginated(permissions),
                f"/api/projects/{PROJECT}/list_users/": paginated(
                    SAMPLES["project_list_users"]["response"]
                ),
                f"/api/customers/{CUSTOMER_A}/list_users/": paginated(
                    SAMPLES["customer_list_users"]["response"]
                ),
            }
        )
    )
    assert len(await client.list_all_grants()) == 6
    project_grants = await client.list_project_grants(PROJECT)
    assert {(g.user_username, g.role_name) for g in project_grants} == {
        ("alice92624", "PROJECT.ADMIN"),
        ("bob92624", "PROJECT.MEMBER"),
    }
    assert all(g.scope_uuid == PROJECT for g in project_grants)
    (owner,) = await client.list_customer_grants(CUSTOMER_A)
    assert (owner.scope_type, owner.customer_uuid) == ("customer", CUSTOMER_A)


async def test_grant_without_scope_fails_the_listing(
    serve: Serve, make_client: MakeClient
) -> None:
    item = dict(SAMPLES["user_permissions_after_revoke_filter_ignored"]["response"][0])
    del item["scope_uuid"]
    client = make_client(await serve({"/api/user-permissions/": paginated([item])}))
    with pytest.raises(WaldurProtocolError, match="'scope_uuid' is missing"):
        await client.list_all_grants()


async def test_hooks_create_list_delete(serve: Serve, make_client: MakeClient) -> None:
    created = SAMPLES["hook_create"]["response"]
    received: list[Any] = []
    deleted: list[str] = []

    list_hooks = paginated([created])

    async def hooks(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            received.append(await request.json())
            return web.json_response(created, status=201)
        return await list_hooks(request)

    async def hook(request: web.Request) -> web.Response:
        deleted.append(request.match_info["uuid"])
        return web.Response(status=204)

    client = make_client(await serve({"/api/hooks-web/": hooks, "/api/hooks-web/{uuid}/": hook}))
    hook_record = await client.create_hook(
        "http://127.0.0.1:9/hook", ["role_granted", "role_revoked"], ["projects"]
    )
    assert received == [
        {
            "destination_url": "http://127.0.0.1:9/hook",
            "event_types": ["role_granted", "role_revoked"],
            "event_groups": ["projects"],
            "content_type": "json",
            "is_active": True,
        }
    ]
    assert hook_record.uuid == created["uuid"]
    assert [h.uuid for h in await client.list_hooks()] == [created["uuid"]]
    await client.delete_hook(hook_record.uuid)
    assert deleted == [created["uuid"]]


async def test_users_and_customers(serve: Serve, make_client: MakeClient) -> None:
    alice = SAMPLES["users_list_username_filter"]["response"][0]
    customer = SAMPLES["customer_create"]["response"]
    client = make_client(
        await serve(
            {
                "/api/users/": paginated([alice, SAMPLES["users_me"]["response"]]),
                f"/api/users/{alice['uuid']}/": static(alice),
                "/api/customers/": paginated([customer]),
                f"/api/customers/{CUSTOMER_A}/": static(customer),
            }
        )
    )
    assert [u.username for u in await client.list_users()] == ["alice92624", "staff"]
    assert (await client.get_user(alice["uuid"])).full_name == "Alice Archer"
    assert [c.name for c in await client.list_customers()] == ["Acme 92624"]
    assert (await client.get_customer(CUSTOMER_A)).abbreviation == "AC92624"


async def test_context_manager_closes_its_session(serve: Serve) -> None:
    url = await serve({"/api/users/me/": static(SAMPLES["users_me"]["response"])})
    async with WaldurClient(url, TOKEN) as client:
        assert (await client.me()).username == "staff"
        session = client._session
    assert session is not None and session.closed


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("127.0.0.1:8000", TOKEN),
        ("ftp://waldur/", TOKEN),
        ("http://w/?x=1", TOKEN),
        ("http://w/", ""),
        ("http://w/", "abc def"),
    ],
)
def test_constructor_rejects_bad_configuration(url: str, token: str) -> None:
    with pytest.raises(ValueError):
        WaldurClient(url, token)


# --- images ----------------------------------------------------------------------------------


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF"
GIF = b"GIF89a\x01\x00\x01\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "


def image_handler(seen: list[str | None], body: bytes, content_type: str = "image/png") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(body=body, content_type=content_type)

    return handler


async def test_image_on_the_waldur_host_is_fetched_with_the_token(
    serve: Serve, make_client: MakeClient
) -> None:
    seen: list[str | None] = []
    base = await serve({"/media/project_images/a.png": image_handler(seen, PNG + b"-a")})
    client = make_client(base)
    data, content_type = await client.get_image(f"{base}media/project_images/a.png")
    assert (data, content_type) == (PNG + b"-a", "image/png")
    assert seen == [f"Token {TOKEN}"]


async def test_image_elsewhere_only_from_allowed_hosts_and_without_the_token(
    serve: Serve, make_client: MakeClient
) -> None:
    seen: list[str | None] = []
    base = await serve({"/logo.png": image_handler(seen, PNG + b"-b")})
    client = make_client(base)
    # The same loopback server under another host name: not the configured Waldur host.
    foreign = base.replace("127.0.0.1", "localhost")
    with pytest.raises(WaldurProtocolError, match="bridge.avatars.allowed_hosts"):
        await client.get_image(f"{foreign}logo.png")
    assert seen == []  # not even asked
    data, _ = await client.get_image(f"{foreign}logo.png", allowed_hosts=["localhost"])
    assert data == PNG + b"-b"
    assert seen == [None]


@pytest.mark.parametrize(
    ("body", "expected"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (GIF, "image/gif"), (WEBP, "image/webp")],
)
async def test_image_type_comes_from_its_first_bytes(
    serve: Serve, make_client: MakeClient, body: bytes, expected: str
) -> None:
    # The header says PNG for all of them; the bytes decide.
    base = await serve({"/i": image_handler([], body + b"rest", "image/png")})
    _, content_type = await make_client(base).get_image(f"{base}i")
    assert content_type == expected


async def test_non_images_and_oversized_images_are_refused(
    serve: Serve, make_client: MakeClient
) -> None:
    seen: list[str | None] = []
    base = await serve(
        {
            "/page": image_handler(seen, b"<html>", "text/html"),
            # A type lie: the header says PNG, the bytes are an SVG (scriptable) document.
            "/lie.png": image_handler(seen, b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
            "/big.png": image_handler(seen, PNG + b"x" * 2048),
        }
    )
    client = make_client(base)
    with pytest.raises(WaldurProtocolError, match="not a PNG, JPEG, GIF or WebP"):
        await client.get_image(f"{base}page")
    with pytest.raises(WaldurProtocolError, match="the server said image/png"):
        await client.get_image(f"{base}lie.png")
    with pytest.raises(WaldurProtocolError, match="over the 1024 byte limit"):
        await client.get_image(f"{base}big.png", max_bytes=1024)
    with pytest.raises(WaldurProtocolError, match="not an absolute"):
        await client.get_image("/media/relative.png")


async def test_image_stream_is_cut_at_the_limit(serve: Serve, make_client: MakeClient) -> None:
    """A 200 MB body without a length: reading stops just past the limit, never the whole."""
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        chunk = PNG + bytes(256 * 1024 - len(PNG))
        try:
            while sent < 200 * 1024 * 1024:
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            pass
        return response

    base = await serve({"/huge.png": endless})
    client = make_client(base)
    with pytest.raises(WaldurProtocolError, match="over the 5242880 byte limit"):
        await client.get_image(f"{base}huge.png", max_bytes=5 * 1024 * 1024)
    # What the server got out before it noticed: the limit plus socket buffers, not 200 MB.
    assert sent < 64 * 1024 * 1024, sent


async def test_image_redirects_stay_on_one_origin(serve: Serve, make_client: MakeClient) -> None:
    seen: list[str | None] = []
    holder: dict[str, str] = {}

    async def to_other_host(request: web.Request) -> web.Response:
        raise web.HTTPFound(holder["base"].replace("127.0.0.1", "localhost") + "real.png")

    async def same_host(request: web.Request) -> web.Response:
        raise web.HTTPFound("/real.png")

    base = holder["base"] = await serve(
        {
            "/elsewhere.png": to_other_host,
            "/moved.png": same_host,
            "/real.png": image_handler(seen, PNG),
        }
    )
    client = make_client(base)
    data, _ = await client.get_image(f"{base}moved.png")
    assert data == PNG and seen == [f"Token {TOKEN}"]
    # Another host, even one that is allowed: refused before anything is asked of it.
    with pytest.raises(WaldurProtocolError, match="redirects to another host"):
        await client.get_image(f"{base}elsewhere.png", allowed_hosts=["localhost"])
    assert len(seen) == 1
