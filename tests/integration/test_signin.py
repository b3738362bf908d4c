""" "Continue with Waldur" through the real Synapse, in plain HTTP: Synapse's SSO redirect, the
bridge's sign-in page, Waldur's check (simulator), back through Synapse's OIDC callback, and
``m.login.token`` into the person's puppet. Every redirect is followed by hand, so each hop is
checked. (test_signin_browser.py walks the same path in a real browser.)"""

from __future__ import annotations

import base64
import logging
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

from waldur_bridge.db import AuditEntry
from waldur_devenv.synapse import OIDC_CLIENT_ID, oidc_callback
from waldur_simulator import WaldurSimulator

from .helpers import OIDC_CLIENT_SECRET, BridgeEnv, signin_overrides

SSO_PATH = "/_matrix/client/v3/login/sso/redirect/oidc-waldur"


@dataclass
class World:
    project: str
    alice: str
    alice_name: str
    nobody: str
    nobody_name: str


def make_world(sim: WaldurSimulator) -> World:
    # Names unique per test: the session's Synapse keeps every puppet (and its rooms).
    suffix = secrets.token_hex(3)
    org = sim.add_customer("Acme Research", "ACME")
    project = sim.add_project(org, "Apollo", "Telescope pipeline")
    alice_name, nobody_name = f"alice{suffix}", f"norole{suffix}"
    alice = sim.add_user(alice_name, "Alice Archer", "alice@acme.example")
    sim.grant(alice, project, "PROJECT.ADMIN")
    sim.set_password(alice, "alice-password")
    nobody = sim.add_user(nobody_name, "Nora Role")
    sim.set_password(nobody, "nora-password")
    return World(project, alice, alice_name, nobody, nobody_name)


def redirect_url(env: BridgeEnv) -> str:
    # A page on Synapse itself: covered by the session's sso.client_whitelist.
    return f"{env.hs.url}/_matrix/client/versions"


class Browser:
    """Enough of a browser: cookies per host (Synapse's are Secure, which a browser sends to
    127.0.0.1 too), redirects followed by hand."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.cookies: dict[str, dict[str, str]] = {}
        self.headers: dict[str, str] = {}

    async def request(
        self, method: str, url: str, data: dict[str, str] | None = None
    ) -> tuple[int, str, str | None]:
        host = urlsplit(url).netloc
        jar = self.cookies.setdefault(host, {})
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
        async with self.session.request(
            method, url, data=data, headers=headers, allow_redirects=False
        ) as resp:
            for cookie in resp.cookies.values():
                jar[cookie.key] = cookie.value
            self.headers = dict(resp.headers)
            return resp.status, await resp.text(), resp.headers.get("Location")


def form_fields(page: str, method: str) -> dict[str, str]:
    """The hidden fields of the page's form for ``method`` (password or token)."""
    for form in re.findall(r"<form .*?</form>", page, re.S):
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
        if fields.get("method") == method:
            return {k: unescape(v) for k, v in fields.items()}
    raise AssertionError(f"no {method} form on the page:\n{page[:2000]}")


def form_action(page: str) -> str:
    match = re.search(r'<form method="post" action="([^"]+)"', page)
    assert match, page[:2000]
    return unescape(match.group(1))


@dataclass
class SignIn:
    browser: Browser
    page: str
    action: str


async def open_signin_page(env: BridgeEnv, browser: Browser) -> SignIn:
    start = f"{env.hs.url}{SSO_PATH}?redirectUrl={quote(redirect_url(env), safe='')}"
    status, _, location = await browser.request("GET", start)
    assert status == 302 and location, status
    assert location.startswith(f"http://127.0.0.1:{env.hs.as_port}/oidc/authorize?")
    query = parse_qs(urlsplit(location).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"]
    status, page, _ = await browser.request("GET", location)
    assert status == 200, page
    assert "Sign in with Acme Waldur" in page
    # Never framed (a password form), never cached, no scripts.
    assert browser.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in browser.headers["Content-Security-Policy"]
    assert "script-src" not in browser.headers["Content-Security-Policy"]
    assert browser.headers["Cache-Control"] == "no-store"
    return SignIn(browser, page, form_action(page))


async def submit(signin: SignIn, method: str, **values: str) -> tuple[int, str, str | None]:
    fields = {**form_fields(signin.page, method), **values}
    return await signin.browser.request("POST", signin.action, fields)


async def finish_at_synapse(env: BridgeEnv, browser: Browser, callback: str) -> dict[str, Any]:
    """Synapse's callback → redirectUrl?loginToken → m.login.token; the login answer."""
    assert callback.startswith(oidc_callback(env.hs.url) + "?"), callback
    status, body, location = await browser.request("GET", callback)
    assert status == 302 and location, (status, body[:500])
    assert location.startswith(redirect_url(env))
    login_token = parse_qs(urlsplit(location).query)["loginToken"][0]
    url = f"{env.hs.url}/_matrix/client/v3/login"
    async with browser.session.post(
        url, json={"type": "m.login.token", "token": login_token}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def hs_get(session: aiohttp.ClientSession, env: BridgeEnv, path: str, token: str) -> Any:
    url = f"{env.hs.url}/_matrix/client/v3{path}"
    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start(env: BridgeEnv) -> World:
    world = make_world(env.sim)
    await env.start(**signin_overrides(env.hs))
    await env.sweep()
    await env.portal_room(world.project)
    return world


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_password_sign_in_lands_in_the_puppet_with_its_rooms(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    world = await start(bridge_env)
    room = await bridge_env.portal_room(world.project)
    browser = Browser(http)
    signin = await open_signin_page(bridge_env, browser)
    status, page, callback = await submit(
        signin, "password", username=world.alice_name, password="alice-password"
    )
    assert status == 302 and callback, page[:1000]
    login = await finish_at_synapse(bridge_env, browser, callback)
    puppet = bridge_env.puppet(world.alice_name)
    assert login["user_id"] == puppet
    token = login["access_token"]
    assert (await hs_get(http, bridge_env, "/account/whoami", token))["user_id"] == puppet
    joined = (await hs_get(http, bridge_env, "/joined_rooms", token))["joined_rooms"]
    assert room in joined
    # The project room and the organization's space (the sign-in joins it), nothing else.
    assert len(joined) == 2, joined
    profile = await hs_get(http, bridge_env, f"/profile/{quote(puppet)}", token)
    assert profile["displayname"] == "Alice Archer"

    entries = [e for e in await AuditEntry.recent() if e.action == "signin"]
    assert [(e.target, e.outcome) for e in entries] == [(puppet, "done")]
    assert entries[0].detail == f"client {OIDC_CLIENT_ID}, method password, from 127.0.0.1"
    assert world.alice in entries[0].cause
    lines = [r.getMessage() for r in caplog.records if "signed in as" in r.getMessage()]
    assert lines == [
        f"Waldur user {world.alice} signed in as {puppet} (client synapse, method password, "
        "from 127.0.0.1)"
    ]
    never_logged = [
        "alice-password",
        bridge_env.sim.token_for(world.alice),
        OIDC_CLIENT_SECRET,
        *bridge_env.bridge.signin.provider.access_tokens._items,
    ]
    assert len(never_logged) == 4  # the access token Synapse got
    # That access token opens userinfo (and nothing but the claims comes back).
    userinfo = f"http://127.0.0.1:{bridge_env.hs.as_port}/oidc/userinfo"
    async with http.get(userinfo, headers={"Authorization": f"Bearer {never_logged[3]}"}) as resp:
        assert resp.status == 200
        assert await resp.json() == {
            "sub": world.alice,
            "preferred_username": f"waldur_{world.alice_name}",
            "name": "Alice Archer",
            "email": "alice@acme.example",
        }
    async with http.get(userinfo, headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    for record in caplog.records:
        text = f"{record.getMessage()} {record.exc_text or ''} {record.args!r}"
        for secret in never_logged:
            assert secret not in text, f"{record.name} logged a secret: {record.msg}"


async def test_token_sign_ins_reuse_the_account_and_keep_its_devices_in_bounds(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    world = make_world(bridge_env.sim)
    await bridge_env.start(
        **signin_overrides(bridge_env.hs, **{"bridge.provisioning.max_devices": 2})
    )
    await bridge_env.sweep()
    await bridge_env.portal_room(world.project)
    puppet = bridge_env.puppet(world.alice_name)
    devices: list[str] = []
    for _ in range(3):
        browser = Browser(http)
        signin = await open_signin_page(bridge_env, browser)
        status, page, callback = await submit(
            signin, "token", token=bridge_env.sim.token_for(world.alice)
        )
        assert status == 302 and callback, page[:1000]
        login = await finish_at_synapse(bridge_env, browser, callback)
        assert login["user_id"] == puppet
        devices.append(login["device_id"])
        listed = await hs_get(http, bridge_env, "/devices", login["access_token"])
        present = {d["device_id"] for d in listed["devices"]}
        # At most max_devices: the oldest session made way for the new one.
        assert present == set(devices[-2:]), (present, devices)


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_wrong_password_stays_on_the_page_and_stops_below_waldurs_lockout(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    world = await start(bridge_env)
    signin = await open_signin_page(bridge_env, Browser(http))
    for attempt in range(3):
        status, page, location = await submit(
            signin, "password", username=world.alice_name, password=f"wrong-{attempt}"
        )
        assert (status, location) == (401, None)
        assert "Wrong username or password." in page and 'role="alert"' in page
        assert f'value="{world.alice_name}"' in page  # the username stays typed in
        signin.page = page
    before = bridge_env.sim.password_logins
    status, page, location = await submit(
        signin, "password", username=world.alice_name, password="alice-password"
    )
    assert (status, location) == (429, None)
    assert "Too many failed sign-ins" in page
    # Waldur saw three failures, not four: alice can still sign in to Waldur itself.
    assert bridge_env.sim.password_login(world.alice_name, "alice-password", "127.0.0.1")[0] == 200
    assert bridge_env.sim.password_logins == before + 1


async def test_no_role_gets_a_clear_page_and_no_code(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    world = await start(bridge_env)
    signin = await open_signin_page(bridge_env, Browser(http))
    status, page, location = await submit(
        signin, "password", username=world.nobody_name, password="nora-password"
    )
    assert (status, location) == (403, None)
    assert "You have no project rooms yet" in page
    assert "<form" not in page


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_deactivated_user_is_refused(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    world = await start(bridge_env)
    token = bridge_env.sim.token_for(world.alice)
    bridge_env.sim.deactivate_user(world.alice)
    signin = await open_signin_page(bridge_env, Browser(http))
    status, page, location = await submit(signin, "token", token=token)
    assert (status, location) == (403, None)
    assert "Your Acme Waldur account is not active." in page
    signin = await open_signin_page(bridge_env, Browser(http))
    status, page, location = await submit(
        signin, "password", username=world.alice_name, password="alice-password"
    )
    assert (status, location) == (401, None)
    assert "Wrong username or password." in page


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_password_sign_in_switched_off_in_waldur_offers_the_token(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    world = await start(bridge_env)
    bridge_env.sim.local_signin_enabled = False
    browser = Browser(http)
    signin = await open_signin_page(bridge_env, browser)
    status, page, _ = await submit(signin, "password", username=world.alice_name, password="x")
    assert status == 401
    assert "does not allow signing in with a password here" in page
    assert "set bridge.signin.methods to [token]" in caplog.text
    signin.page = page
    status, _, callback = await submit(
        signin, "token", token=bridge_env.sim.token_for(world.alice)
    )
    assert status == 302 and callback
    assert (await finish_at_synapse(bridge_env, browser, callback))["user_id"]


async def test_a_replayed_code_is_refused(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    world = await start(bridge_env)
    browser = Browser(http)
    signin = await open_signin_page(bridge_env, browser)
    _, _, callback = await submit(
        signin, "password", username=world.alice_name, password="alice-password"
    )
    assert callback
    await finish_at_synapse(bridge_env, browser, callback)
    # Synapse redeemed the code; the same code again, with the right client secret, is refused.
    code = parse_qs(urlsplit(callback).query)["code"][0]
    basic = base64.b64encode(f"{OIDC_CLIENT_ID}:{OIDC_CLIENT_SECRET}".encode()).decode()
    async with http.post(
        f"http://127.0.0.1:{bridge_env.hs.as_port}/oidc/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": oidc_callback(bridge_env.hs.url),
            "code_verifier": "x" * 50,
        },
        headers={"Authorization": f"Basic {basic}"},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_grant"
    # And Synapse refuses the replayed callback.
    status, _, location = await browser.request("GET", callback)
    assert status >= 400 and location is None


async def test_unconfigured_redirect_uri_gets_an_error_page_never_a_redirect(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    await start(bridge_env)
    browser = Browser(http)
    signin = await open_signin_page(bridge_env, browser)
    fields = form_fields(signin.page, "password")
    params = dict(parse_qs(fields["request"]))
    for change in (
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": oidc_callback(bridge_env.hs.url) + "/x"},
        {"client_id": "unknown-client"},
    ):
        query = urlencode({**{k: v[0] for k, v in params.items()}, **change})
        url = f"http://127.0.0.1:{bridge_env.hs.as_port}/oidc/authorize?{query}"
        status, page, location = await browser.request("GET", url)
        assert (status, location) == (400, None), change
        assert "This sign-in link is not valid" in page and "<form" not in page
        # Posting the form with the changed request is refused the same way.
        status, page, location = await browser.request(
            "POST",
            signin.action,
            {**fields, "request": query, "username": "alice", "password": "alice-password"},
        )
        assert (status, location) == (400, None), change


async def test_a_tampered_state_is_refused_by_synapse(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    world = await start(bridge_env)
    browser = Browser(http)
    signin = await open_signin_page(bridge_env, browser)
    _, _, callback = await submit(
        signin, "password", username=world.alice_name, password="alice-password"
    )
    assert callback
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["state"] = query["state"][:-4] + "AAAA"
    tampered = urlunsplit(parts._replace(query=urlencode(query)))
    status, page, location = await browser.request("GET", tampered)
    assert status == 400 and location is None
    assert "loginToken" not in page


async def test_an_oversized_form_is_refused(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    world = await start(bridge_env)
    browser = Browser(http)
    signin = await open_signin_page(bridge_env, browser)
    fields = {
        **form_fields(signin.page, "password"),
        "username": world.alice_name,
        "password": "x" * 20000,
    }
    status, page, location = await browser.request("POST", signin.action, fields)
    assert (status, location) == (413, None)
    assert "The form was too large." in page


async def test_csrf_token_must_match_the_browser(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    await start(bridge_env)
    signin = await open_signin_page(bridge_env, Browser(http))
    # Another browser (no cookie of the page) posting the same form.
    status, page, location = await Browser(http).request(
        "POST",
        signin.action,
        {
            **form_fields(signin.page, "password"),
            "username": "alice",
            "password": "alice-password",
        },
    )
    assert (status, location) == (400, None)
    assert "sign in again" in page


async def test_discovery_and_keys_survive_a_restart(
    bridge_env: BridgeEnv, http: aiohttp.ClientSession
) -> None:
    await start(bridge_env)
    base = f"http://127.0.0.1:{bridge_env.hs.as_port}/oidc"

    async def get(path: str) -> Any:
        async with http.get(f"{base}{path}") as resp:
            assert resp.status == 200
            return await resp.json()

    discovery = await get("/.well-known/openid-configuration")
    assert discovery["issuer"] == base and discovery["jwks_uri"] == f"{base}/jwks"
    keys = await get("/jwks")
    assert [k["kty"] for k in keys["keys"]] == ["RSA"] and "d" not in keys["keys"][0]
    await bridge_env.stop()
    await bridge_env.start()
    assert await get("/jwks") == keys


async def test_diagnose_checks_the_issuer_and_the_key(bridge_env: BridgeEnv) -> None:
    from waldur_bridge.diagnostics import CheckFailed, _signin

    await start(bridge_env)
    detail = await _signin(bridge_env.bridge)
    kid = bridge_env.bridge.signin._ring.signing.kid
    assert detail == (
        f"issuer http://127.0.0.1:{bridge_env.hs.as_port}/oidc, RS256 key {kid} published "
        "(1 key(s))"
    )
    await bridge_env.stop()
    # A public URL that does not lead to the bridge.
    await bridge_env.start(
        **signin_overrides(bridge_env.hs, **{"bridge.signin.public_url": "http://127.0.0.1:1"})
    )
    with pytest.raises(CheckFailed) as failed:
        await _signin(bridge_env.bridge)
    assert "cannot be fetched" in failed.value.detail
    assert "bridge.signin.public_url" in failed.value.fix
