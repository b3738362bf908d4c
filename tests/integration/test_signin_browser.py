""" "Continue with Waldur" in a real browser: Debian's chromium, headless, driven by selenium
through Debian's chromedriver, against the real Synapse and the bridge.

Selenium blocks, and the bridge runs on this test's event loop, so every browser call runs in
a thread. The browser follows every redirect itself (Synapse's Secure cookies included); the
hops it took are read back from chromium's network log where a test needs one.

Set WALDUR_BRIDGE_UPDATE_SCREENSHOT=1 to copy the sign-in page's screenshot to
docs/signin-page.png (the README shows it).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import aiohttp
import pytest

from waldur_devenv.synapse import OIDC_CLIENT_ID, oidc_callback

from .helpers import OIDC_CLIENT_SECRET, BridgeEnv, wait_for
from .test_signin import SSO_PATH, World, redirect_url, start

CHROMIUM = os.environ.get("WALDUR_BRIDGE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WALDUR_BRIDGE_CHROMEDRIVER", "/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "signin-page.png"


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra has it)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing: apt-get install chromium chromium-driver"
    return None


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    missing = _missing()
    if missing:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=900,900",
        "--lang=en-US",
        "--no-first-run",
        "--disable-extensions",
        "--password-store=basic",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # Debian's chromedriver: selenium must not try to download a driver.
    browser = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The browser, from async code."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(func, *args)

    async def open(self, url: str) -> None:
        await self.run(self.driver.get, url)

    async def url(self) -> str:
        return str(await self.run(lambda: self.driver.current_url))

    async def text(self) -> str:
        from selenium.webdriver.common.by import By

        return str(await self.run(lambda: self.driver.find_element(By.TAG_NAME, "body").text))

    async def has(self, element_id: str) -> bool:
        from selenium.webdriver.common.by import By

        return bool(await self.run(lambda: self.driver.find_elements(By.ID, element_id)))

    async def type(self, element_id: str, text: str) -> None:
        from selenium.webdriver.common.by import By

        def do() -> None:
            field = self.driver.find_element(By.ID, element_id)
            field.clear()
            field.send_keys(text)

        await self.run(do)

    async def submit(self, element_id: str) -> None:
        """Press Enter in a field, as a person would."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        await self.run(lambda: self.driver.find_element(By.ID, element_id).send_keys(Keys.ENTER))

    async def requested_urls(self) -> list[str]:
        """Every URL the browser requested since the last call (chromium's network log)."""
        entries = await self.run(self.driver.get_log, "performance")
        urls = []
        for entry in entries:
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls


@pytest.fixture
async def page(driver: Any) -> Page:
    p = Page(driver)
    await p.run(driver.delete_all_cookies)
    await p.requested_urls()
    return p


async def open_signin(env: BridgeEnv, page: Page) -> None:
    start_url = f"{env.hs.url}{SSO_PATH}?redirectUrl={quote(redirect_url(env), safe='')}"
    await page.open(start_url)
    assert (await page.url()).startswith(f"http://127.0.0.1:{env.hs.as_port}/oidc/authorize?")
    assert await page.has("username") and await page.has("token")


async def login_token_after_signin(env: BridgeEnv, page: Page) -> str:
    async def landed() -> str | None:
        url = await page.url()
        return url if url.startswith(redirect_url(env)) and "loginToken=" in url else None

    url = await wait_for(landed, 30, "the browser to land on redirectUrl with a loginToken")
    return parse_qs(urlsplit(url).query)["loginToken"][0]


async def matrix_session(env: BridgeEnv, login_token: str) -> tuple[str, list[str]]:
    """m.login.token, then whoami and joined rooms with the new access token."""
    async with aiohttp.ClientSession() as http:
        base = f"{env.hs.url}/_matrix/client/v3"
        async with http.post(
            f"{base}/login", json={"type": "m.login.token", "token": login_token}
        ) as resp:
            assert resp.status == 200, await resp.text()
            token = (await resp.json())["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(f"{base}/account/whoami", headers=headers) as resp:
            user_id = (await resp.json())["user_id"]
        async with http.get(f"{base}/joined_rooms", headers=headers) as resp:
            rooms = (await resp.json())["joined_rooms"]
    return user_id, rooms


async def assert_in_puppet_with_rooms(env: BridgeEnv, world: World, login_token: str) -> None:
    user_id, rooms = await matrix_session(env, login_token)
    assert user_id == env.puppet(world.alice_name)
    room = await env.portal_room(world.project)
    assert room in rooms and len(rooms) == 2  # the project room and its organization's space


async def test_password_sign_in_in_a_browser(
    bridge_env: BridgeEnv, page: Page, tmp_path: Path
) -> None:
    world = await start(bridge_env)
    await open_signin(bridge_env, page)
    assert "Sign in with Acme Waldur" in await page.text()
    shot = tmp_path / "signin-page.png"
    assert await page.run(page.driver.save_screenshot, str(shot))
    assert shot.stat().st_size > 5000
    if os.environ.get("WALDUR_BRIDGE_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
    await page.type("username", world.alice_name)
    await page.type("password", "alice-password")
    await page.submit("password")
    await assert_in_puppet_with_rooms(
        bridge_env, world, await login_token_after_signin(bridge_env, page)
    )


async def test_token_sign_in_in_a_browser(bridge_env: BridgeEnv, page: Page) -> None:
    world = await start(bridge_env)
    await open_signin(bridge_env, page)
    await page.type("token", bridge_env.sim.token_for(world.alice))
    await page.submit("token")
    await assert_in_puppet_with_rooms(
        bridge_env, world, await login_token_after_signin(bridge_env, page)
    )


async def test_wrong_password_stays_on_the_page_with_a_message(
    bridge_env: BridgeEnv, page: Page
) -> None:
    world = await start(bridge_env)
    await open_signin(bridge_env, page)
    signin_url = await page.url()
    await page.type("username", world.alice_name)
    await page.type("password", "not-her-password")
    await page.submit("password")
    await wait_for(page_says(page, "Wrong username or password."), 20, "the error message")
    assert urlsplit(await page.url()).netloc == urlsplit(signin_url).netloc
    assert await page.has("error") and await page.has("password")
    # Then the right password from the same page works.
    await page.type("password", "alice-password")
    await page.submit("password")
    await assert_in_puppet_with_rooms(
        bridge_env, world, await login_token_after_signin(bridge_env, page)
    )


def page_says(page: Page, text: str) -> Callable[[], Any]:
    async def check() -> bool:
        return text in await page.text()

    return check


async def test_no_role_and_deactivated_get_clear_pages(bridge_env: BridgeEnv, page: Page) -> None:
    world = await start(bridge_env)
    await open_signin(bridge_env, page)
    await page.type("username", world.nobody_name)
    await page.type("password", "nora-password")
    await page.submit("password")
    await wait_for(page_says(page, "You have no project rooms yet"), 20, "the no-rooms page")
    assert not await page.has("password")

    token = bridge_env.sim.token_for(world.alice)
    bridge_env.sim.deactivate_user(world.alice)
    await open_signin(bridge_env, page)
    await page.type("token", token)
    await page.submit("token")
    await wait_for(page_says(page, "account is not active"), 20, "the refusal")
    assert "loginToken" not in await page.url()


async def test_unconfigured_redirect_uri_shows_an_error_and_stays(
    bridge_env: BridgeEnv, page: Page
) -> None:
    await start(bridge_env)
    await open_signin(bridge_env, page)
    parts = urlsplit(await page.url())
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["redirect_uri"] = "https://evil.example/_synapse/client/oidc/callback"
    bad = urlunsplit(parts._replace(query=urlencode(query)))
    await page.open(bad)
    assert "This sign-in link is not valid" in await page.text()
    assert await page.url() == bad  # no redirect anywhere
    assert not any(urlsplit(u).netloc == "evil.example" for u in await page.requested_urls())


async def test_tampered_state_is_refused_by_synapse(bridge_env: BridgeEnv, page: Page) -> None:
    world = await start(bridge_env)
    await open_signin(bridge_env, page)
    parts = urlsplit(await page.url())
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["state"] = query["state"][:-4] + "AAAA"
    # The bridge passes state through untouched; Synapse checks it against its session.
    await page.open(urlunsplit(parts._replace(query=urlencode(query))))
    await page.type("username", world.alice_name)
    await page.type("password", "alice-password")
    await page.submit("password")

    async def at_callback() -> bool:
        return (await page.url()).startswith(oidc_callback(bridge_env.hs.url))

    await wait_for(at_callback, 20, "Synapse's callback")
    assert "loginToken" not in await page.url()
    assert "loginToken" not in " ".join(await page.requested_urls())


async def test_a_replayed_code_is_refused(bridge_env: BridgeEnv, page: Page) -> None:
    world = await start(bridge_env)
    await open_signin(bridge_env, page)
    await page.type("username", world.alice_name)
    await page.type("password", "alice-password")
    await page.submit("password")
    await matrix_session(bridge_env, await login_token_after_signin(bridge_env, page))
    callbacks = [
        u
        for u in await page.requested_urls()
        if u.startswith(oidc_callback(bridge_env.hs.url) + "?")
    ]
    assert len(callbacks) == 1, callbacks
    # The browser goes to the same callback again: Synapse refuses, no loginToken.
    await page.open(callbacks[0])
    assert "loginToken" not in await page.url()
    # And the code itself is spent at the bridge.
    code = parse_qs(urlsplit(callbacks[0]).query)["code"][0]
    basic = base64.b64encode(f"{OIDC_CLIENT_ID}:{OIDC_CLIENT_SECRET}".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{bridge_env.hs.as_port}/oidc/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": oidc_callback(bridge_env.hs.url),
                "code_verifier": "v" * 50,
            },
            headers={"Authorization": f"Basic {basic}"},
        ) as resp,
    ):
        assert resp.status == 400 and (await resp.json())["error"] == "invalid_grant"
