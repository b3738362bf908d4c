"""The provisioning API against the real Synapse and the Waldur simulator: a Waldur user logs in
as their puppet with their own Waldur token."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from waldur_bridge.db import Puppet as DBPuppet, User as DBUser

from .helpers import BridgeEnv, ping

PREFIX = "/_matrix/provision/v1"


class Api:
    """A front end's view: raw HTTP to the provisioning API and to the homeserver."""

    def __init__(self, env: BridgeEnv, session: aiohttp.ClientSession) -> None:
        self.env = env
        self.session = session
        self.base = f"http://127.0.0.1:{env.hs.as_port}{PREFIX}"

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        *,
        scheme: str = "Token",
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Any]:
        headers = dict(headers or {})
        if token is not None:
            headers["Authorization"] = f"{scheme} {token}"
        async with self.session.request(
            method, f"{self.base}{path}", headers=headers, json=json
        ) as resp:
            body = await resp.json(content_type=None)
            assert resp.headers.get("Cache-Control") == "no-store", (path, resp.status)
            assert resp.content_type == "application/json"
            if resp.status >= 400:
                assert set(body) >= {"errcode", "error"}, body
            return resp.status, dict(resp.headers), body

    async def login(self, token: str | None, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        return await self.call("POST", "/login", token, **kwargs)

    async def whoami(self, token: str | None, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
        return await self.call("GET", "/whoami", token, **kwargs)

    async def hs(self, method: str, path: str, access_token: str) -> tuple[int, Any]:
        url = f"{self.env.hs.url}/_matrix/client/v3{path}"
        headers = {"Authorization": f"Bearer {access_token}"}
        async with self.session.request(method, url, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def api(bridge_env: BridgeEnv) -> Any:
    async with aiohttp.ClientSession() as session:
        yield Api(bridge_env, session)


async def assert_bridge_alive(env: BridgeEnv) -> None:
    assert await ping(env.bridge) >= 0
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{env.hs.as_port}/_matrix/mau/live"
        async with session.get(url) as resp:
            assert resp.status == 200


def assert_not_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    assert caplog.records, "nothing was logged: the capture is not working"
    for record in caplog.records:
        text = f"{record.getMessage()} {record.exc_text or ''} {record.__dict__!r}"
        for secret in secrets:
            assert secret not in text, f"a secret was logged by {record.name}: {record.msg}"


async def test_login_gives_a_working_device_and_logs_no_secret(
    bridge_env: BridgeEnv, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = bridge_env.sim
    uuid = sim.add_user("erin", "Erin Example")
    token = sim.token_for(uuid)
    await bridge_env.start()
    puppet = bridge_env.puppet("erin")

    # Before any login: known to Waldur, no puppet yet, nothing created by asking.
    status, _, who = await api.whoami(token)
    assert status == 200
    assert who == {
        "waldur_user_uuid": uuid,
        "waldur_username": "erin",
        "user_id": None,
        "mapping": "puppet",
        "can_log_in": True,
    }
    assert await DBPuppet.get_by_waldur_user(uuid) is None

    status, _, first = await api.login(token, json={"device_name": "Waldur web (Firefox)"})
    assert status == 200, first
    assert set(first) == {"homeserver", "user_id", "access_token", "device_id"}
    assert first["homeserver"] == bridge_env.hs.url
    assert first["user_id"] == puppet

    # The access token is the puppet's, on a new device with the requested name.
    status, me = await api.hs("GET", "/account/whoami", first["access_token"])
    assert status == 200
    assert me["user_id"] == puppet
    assert me["device_id"] == first["device_id"]
    status, devices = await api.hs("GET", "/devices", first["access_token"])
    assert status == 200
    names = {d["device_id"]: d.get("display_name") for d in devices["devices"]}
    assert names[first["device_id"]] == "Waldur web (Firefox)"
    profile = await bridge_env.hs_get(f"/profile/{puppet}")
    assert profile["displayname"] == "Erin Example"

    # A second login (Bearer works too) is a second device; both tokens work.
    status, _, second = await api.login(token, scheme="Bearer")
    assert status == 200, second
    assert second["user_id"] == puppet
    assert second["device_id"] != first["device_id"]
    assert second["access_token"] != first["access_token"]
    status, devices = await api.hs("GET", "/devices", second["access_token"])
    names = {d["device_id"]: d.get("display_name") for d in devices["devices"]}
    assert {first["device_id"], second["device_id"]} <= set(names)
    assert names[second["device_id"]] == "Waldur"
    assert (await api.hs("GET", "/account/whoami", first["access_token"]))[0] == 200

    status, _, who = await api.whoami(token)
    assert status == 200 and who["user_id"] == puppet

    await assert_bridge_alive(bridge_env)
    assert any("logged in as" in r.getMessage() for r in caplog.records)
    assert_not_logged(caplog, token, first["access_token"], second["access_token"])


async def test_rejections_create_nothing_and_bridge_keeps_running(
    bridge_env: BridgeEnv, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sim = bridge_env.sim
    frank = sim.add_user("frank", "Frank Fell")
    gina = sim.add_user("gina", "Gina Gone")
    hal = sim.add_user("hal", "Hal Late")
    frank_token, gina_token, hal_token = map(sim.token_for, (frank, gina, hal))
    await bridge_env.start()

    # Header problems.
    status, headers, body = await api.login(None)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    assert "WWW-Authenticate" in headers
    status, _, body = await api.login(frank_token, scheme="Basic")
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    assert frank_token not in str(body)
    status, _, body = await api.call(
        "POST", "/login", headers={"Authorization": f"Token {frank_token} extra"}
    )
    assert status == 400
    status, _, body = await api.login(frank_token, json=["not", "an", "object"])
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, _, body = await api.login(frank_token, json={"device_name": "x" * 101})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

    # A token Waldur does not know.
    wrong = "0123456789abcdef" * 2 + "deadbeef"
    status, headers, body = await api.login(wrong)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert body["error"].startswith("Waldur rejected the token")
    status, _, _ = await api.whoami(wrong)
    assert status == 401

    # An inactive user.
    sim.deactivate_user(gina)
    status, _, body = await api.login(gina_token)
    assert (status, body["errcode"]) == (403, "M_USER_DEACTIVATED")

    # An expired token.
    sim.expire_token(hal)
    status, _, body = await api.login(hal_token)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    # Waldur down: 503, and it passes.
    rule = sim.faults.fail("/api/users/me/", status=503)
    status, headers, body = await api.login(frank_token)
    assert (status, body["errcode"]) == (503, "WB_WALDUR_UNAVAILABLE")
    assert int(headers["Retry-After"]) > 0
    sim.faults.remove(rule)

    # Nothing of the above made a puppet or a Matrix account.
    for uuid in (frank, gina, hal):
        assert await DBPuppet.get_by_waldur_user(uuid) is None
    for name in ("frank", "gina", "hal"):
        with pytest.raises(aiohttp.ClientResponseError) as e:
            await bridge_env.hs_get(f"/account/whoami?user_id={bridge_env.puppet(name)}")
        assert e.value.status == 403

    # Unknown paths and methods are JSON errors too.
    status, _, body = await api.call("GET", "/nope", frank_token)
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")
    status, _, body = await api.call("GET", "/login", frank_token)
    assert status == 405

    # And the bridge still works: Frank logs in.
    status, _, body = await api.login(frank_token)
    assert status == 200, body
    await assert_bridge_alive(bridge_env)
    assert_not_logged(caplog, frank_token, gina_token, hal_token, wrong, body["access_token"])


async def test_rate_limits_per_user_and_per_address(bridge_env: BridgeEnv, api: Api) -> None:
    sim = bridge_env.sim
    ivy = sim.add_user("ivy", "Ivy Ives")
    jon = sim.add_user("jon", "Jon Jones")
    await bridge_env.start(**{"bridge.provisioning.rate_limit_per_hour": 2})

    ivy_token, jon_token = sim.token_for(ivy), sim.token_for(jon)
    for _ in range(2):
        status, _, body = await api.login(ivy_token)
        assert status == 200, body
    status, headers, body = await api.login(ivy_token)
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert 3000 <= int(headers["Retry-After"]) <= 3600
    assert body["retry_after_ms"] == int(headers["Retry-After"]) * 1000
    # whoami makes no device and is not limited per user; another user is not affected.
    assert (await api.whoami(ivy_token))[0] == 200
    status, _, body = await api.login(jon_token)
    assert status == 200, body

    # Failed attempts per address: after two, even a good token from there is refused, and
    # Waldur is not asked any more.
    for _ in range(2):
        assert (await api.login("f" * 40))[0] == 401
    sim.reset_request_log()
    status, headers, body = await api.login(jon_token)
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert int(headers["Retry-After"]) > 0
    assert (await api.whoami(jon_token))[0] == 429
    assert not any(r.path == "/api/users/me/" for r in sim.request_log)
    await assert_bridge_alive(bridge_env)


async def test_template_mode_has_no_puppet_to_log_in_as(bridge_env: BridgeEnv, api: Api) -> None:
    sim = bridge_env.sim
    kim = sim.add_user("kim", "Kim Kay")
    token = sim.token_for(kim)
    await bridge_env.start(
        **{
            "bridge.user_mapping.mode": "template",
            "bridge.user_mapping.template": "@{username}:localhost",
        }
    )
    status, _, body = await api.login(token)
    assert (status, body["errcode"]) == (409, "WB_NOT_PUPPETED")
    assert "own Matrix accounts" in body["error"]
    assert body["user_id"] == "@kim:localhost"
    status, _, who = await api.whoami(token)
    assert status == 200
    assert (who["mapping"], who["user_id"], who["can_log_in"]) == (
        "template",
        "@kim:localhost",
        False,
    )
    assert await DBPuppet.get_by_waldur_user(kim) is None
    await assert_bridge_alive(bridge_env)


async def test_linked_user_has_no_puppet_to_log_in_as(bridge_env: BridgeEnv, api: Api) -> None:
    sim = bridge_env.sim
    lea = sim.add_user("lea", "Lea Linked")
    token = sim.token_for(lea)
    await bridge_env.start()
    user = DBUser(mxid="@lea_own:localhost")
    await user.link(lea, "@admin:localhost")
    status, _, body = await api.login(token)
    assert (status, body["errcode"], body["mapping"]) == (409, "WB_NOT_PUPPETED", "linked")
    assert body["user_id"] == "@lea_own:localhost"
    assert await DBPuppet.get_by_waldur_user(lea) is None
