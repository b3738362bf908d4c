"""Lost Waldur access is reported once per change of state, whatever the number of failures."""

from __future__ import annotations

import asyncio
import logging

import pytest

from waldur_bridge.waldur import WaldurAuthError, WaldurNotFound, WaldurUnavailable
from waldur_bridge.waldur_access import OK, TOKEN_REJECTED, UNREACHABLE, WaldurAccess


async def test_one_line_and_one_notice_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="waldur.access")
    notices: list[str] = []

    async def notify(text: str) -> None:
        notices.append(text)

    access = WaldurAccess("https://waldur.example.org", notify)
    rejected = WaldurAuthError.for_status(401, "Invalid token.", path="/api/events/")
    for _ in range(5):
        access.observe(rejected)
    assert access.state == TOKEN_REJECTED and access.reported(rejected)
    assert not access.reported(WaldurUnavailable("down", path="/api/events/"))
    access.observe(WaldurNotFound("gone", path="/api/projects/x/"))  # says nothing about access
    assert access.state == TOKEN_REJECTED
    access.observe(None)
    access.observe(None)
    assert access.state == OK and not access.reported(rejected)
    access.observe(WaldurUnavailable("cannot reach Waldur", path="/api/users/"))
    assert access.state == UNREACHABLE
    await asyncio.sleep(0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("Waldur access lost: Waldur at https://waldur.example.org rejects")
    assert "waldur.token" in lines[0] and "Invalid token" not in lines[0]
    assert lines[1].startswith("Waldur access is back after")
    assert "waldur.url" in lines[2]
    assert len(notices) == 3
    assert notices[0].startswith("**Waldur access lost:**") and "nobody is removed" in notices[0]
    assert notices[1].startswith("**Waldur access is back**")


def test_without_a_management_room_only_the_log() -> None:
    access = WaldurAccess("https://waldur.example.org", None)
    access.observe(WaldurUnavailable("down", path="/api/"))
    assert access.lost and access.problem.startswith("Waldur at https://waldur.example.org")


async def test_an_answering_but_failing_waldur_is_not_called_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """HTTP 500 from Waldur, through the real client: the network is fine, Waldur is not."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from waldur_bridge.waldur import WaldurClient

    async def failing(request: web.Request) -> web.Response:
        return web.Response(status=500, text="<h1>Server Error (500)</h1>")

    app = web.Application()
    app.router.add_get("/api/users/me/", failing)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    client = WaldurClient(url, "t" * 40, retry_attempts=0, timeout=5)
    access = WaldurAccess(url, None)
    client.on_outcome = access.observe
    caplog.set_level(logging.INFO, logger="waldur.access")
    try:
        with pytest.raises(WaldurUnavailable):
            await client.me()
    finally:
        await client.close()
        await server.close()
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"Waldur at {url} answers HTTP 500 on /api/users/me/" in line, line
    assert "cannot be reached" not in line and "network" not in line
