""" "Continue with Waldur" without a browser: Synapse's SSO redirect, the bridge's sign-in page,
Synapse's callback and ``m.login.token``, each redirect followed by hand (the demo's check).

Synapse's session cookies are Secure, which browsers still send to 127.0.0.1; aiohttp's jar
would not, so cookies are carried here per host.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp

from .synapse import OIDC_IDP_ID


def sso_start_url(homeserver: str, redirect_url: str) -> str:
    return (
        f"{homeserver}/_matrix/client/v3/login/sso/redirect/oidc-{OIDC_IDP_ID}"
        f"?redirectUrl={quote(redirect_url, safe='')}"
    )


async def sign_in(
    session: aiohttp.ClientSession,
    homeserver: str,
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Sign in through the homeserver's "Continue with Waldur"; the m.login.token answer."""
    cookies: dict[str, dict[str, str]] = {}

    async def go(method: str, url: str, data: Any = None) -> tuple[int, str, str | None]:
        jar = cookies.setdefault(urlsplit(url).netloc, {})
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}
        async with session.request(
            method, url, data=data, headers=headers, allow_redirects=False
        ) as resp:
            jar.update({c.key: c.value for c in resp.cookies.values()})
            return resp.status, await resp.text(), resp.headers.get("Location")

    landing = f"{homeserver}/_matrix/client/versions"
    status, _, authorize = await go("GET", sso_start_url(homeserver, landing))
    if status != 302 or not authorize:
        raise RuntimeError(f"Synapse's SSO redirect answered HTTP {status}")
    status, page, _ = await go("GET", authorize)
    if status != 200:
        raise RuntimeError(f"the sign-in page answered HTTP {status}")
    method = "token" if token is not None else "password"
    form = next(f for f in re.findall(r"<form .*?</form>", page, re.S) if f'value="{method}"' in f)
    fields = {k: unescape(v) for k, v in re.findall(r'name="(\w+)" value="([^"]*)"', form)}
    action = unescape(re.search(r'action="([^"]+)"', form).group(1))  # type: ignore[union-attr]
    if token is not None:
        fields["token"] = token
    else:
        fields.update(username=username or "", password=password or "")
    status, page, callback = await go("POST", action, fields)
    if status != 302 or not callback:
        message = re.search(r'role="(?:alert|status)"[^>]*>([^<]*)<', page)
        raise RuntimeError(f"sign-in refused: {message.group(1) if message else status}")
    status, page, location = await go("GET", callback)
    if status == 200 and location is None:
        # Synapse's confirmation page ("Continue to your account"): its link carries the token.
        found = re.search(r'href="([^"]*loginToken=[^"]*)"', page)
        location = unescape(found.group(1)) if found else None
    if not location or "loginToken=" not in location:
        raise RuntimeError(f"Synapse's callback answered HTTP {status} without a loginToken")
    login_token = parse_qs(urlsplit(location).query)["loginToken"][0]
    async with session.post(
        f"{homeserver}/_matrix/client/v3/login",
        json={"type": "m.login.token", "token": login_token},
    ) as resp:
        if resp.status != 200:
            raise RuntimeError(f"m.login.token answered HTTP {resp.status}")
        return dict(await resp.json())
