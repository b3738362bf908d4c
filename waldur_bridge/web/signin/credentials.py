"""Who is signing in, asked of Waldur with what the person typed.

A password goes to ``POST /api-auth/password/`` (Waldur's ``ObtainAuthToken``), which answers
the person's API token; a token (typed, or from that answer) goes to ``/api/users/me/`` *as
that user*. Both are used for this one check and dropped: never stored, never logged, and no
error message repeats them.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from ...waldur import (
    WaldurAuthError,
    WaldurClient,
    WaldurError,
    WaldurUnavailable,
)
from ..provisioning import WaldurUser

log = logging.getLogger("waldur.web.signin")

MAX_FIELD = 512


class Refused(Exception):
    """A sign-in that did not succeed; ``kind`` says why, ``message`` is for the person."""

    def __init__(self, kind: str, message: str, *, counts: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        # Whether it counts as a failed attempt (wrong password or token, lockout).
        self.counts = counts


def _detail(data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return data["detail"]
    return ""


async def token_for_password(
    session: aiohttp.ClientSession,
    waldur_url: str,
    username: str,
    password: str,
    *,
    timeout: float,
    site_name: str,
) -> str:
    """The person's API token from their username and password, or Refused."""
    url = f"{waldur_url}/api-auth/password/"
    try:
        async with session.post(
            url,
            json={"username": username, "password": password},
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("Sign-in: Waldur's /api-auth/password/ cannot be reached: %s", e)
        raise Refused(
            "unavailable", f"{site_name} cannot be reached right now; try again in a minute."
        ) from None
    if status == 200 and isinstance(data, dict) and isinstance(data.get("token"), str):
        return str(data["token"])
    detail = _detail(data)
    if status == 401 and "disabled" in detail.lower() and "method" in detail.lower():
        raise Refused(
            "password_disabled",
            f"{site_name} does not allow signing in with a password here. "
            f"Sign in with a {site_name} API token instead.",
        )
    if status == 401 and "locked" in detail.lower():
        raise Refused(
            "locked",
            f"{site_name} has locked this username for a while after failed sign-ins; "
            "try again in 10 minutes.",
            counts=True,
        )
    if status in (400, 401):
        raise Refused("invalid", "Wrong username or password.", counts=True)
    log.warning("Sign-in: Waldur's /api-auth/password/ answered HTTP %s", status)
    raise Refused("unexpected", f"{site_name} gave an unexpected answer; try again later.")


async def user_for_token(
    session: aiohttp.ClientSession,
    config: Any,
    token: str,
    *,
    site_name: str,
    user_agent: str,
) -> WaldurUser:
    """The holder of a token, as ``/api/users/me/`` shows them to themselves."""
    waldur = WaldurClient(
        config["waldur.url"],
        token,
        timeout=config["waldur.timeout"],
        # Someone is waiting: one quick retry at most.
        retry_attempts=min(int(config["waldur.retry.attempts"]), 1),
        backoff_initial=min(float(config["waldur.retry.backoff_initial"]), 0.5),
        backoff_max=min(float(config["waldur.retry.backoff_max"]), 2.0),
        session=session,
        user_agent=user_agent,
    )
    try:
        me = WaldurUser.from_me(await waldur.get_json("/api/users/me/"))
    except WaldurAuthError as e:
        if "inactive or deleted" in e.message:
            raise Refused(
                "inactive", f"Your {site_name} account is not active.", counts=True
            ) from None
        raise Refused(
            "invalid",
            f"{site_name} did not accept that token (wrong, revoked or expired).",
            counts=True,
        ) from None
    except WaldurUnavailable as e:
        log.warning("Sign-in: cannot check a token, Waldur is unavailable: %s", e)
        raise Refused(
            "unavailable", f"{site_name} cannot be reached right now; try again in a minute."
        ) from None
    except (WaldurError, ValueError) as e:
        log.warning("Sign-in: Waldur answered /api/users/me/ unexpectedly: %s", e)
        raise Refused(
            "unexpected", f"{site_name} gave an unexpected answer; try again later."
        ) from None
    if not me.is_active:
        raise Refused("inactive", f"Your {site_name} account is not active.", counts=True)
    return me
