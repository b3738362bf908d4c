"""The provisioning API as deployed: behind a reverse proxy, called from a browser, with device
hygiene and a logout, against the real Synapse and the simulator."""

from __future__ import annotations

import secrets

import pytest

from .helpers import BridgeEnv
from .test_provisioning import Api, api  # noqa: F401  (the fixture)

XFF = "X-Forwarded-For"


async def _fail(client: Api, address: str | None) -> int:
    headers = {XFF: address} if address else {}
    status, _, _ = await client.whoami("wrong-token", headers=headers)
    return status


@pytest.mark.parametrize("simulator", ["current", "7.0"], indirect=True)
async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    bridge_env: BridgeEnv,
    api: Api,  # noqa: F811
) -> None:
    sim = bridge_env.sim
    token = sim.token_for(sim.add_user(f"kim{secrets.token_hex(3)}", "Kim Kay"))
    limit = {"bridge.provisioning.rate_limit_per_hour": 2}

    # The test client (127.0.0.1) is the trusted proxy: each forwarded client has its own budget.
    await bridge_env.start(**limit, **{"bridge.provisioning.trusted_proxies": ["127.0.0.0/8"]})
    assert [await _fail(api, "203.0.113.5") for _ in range(2)] == [401, 401]
    assert await _fail(api, "203.0.113.5") == 429
    # Another client behind the same proxy is not punished for the first one's failures.
    status, _, body = await api.whoami(token, headers={XFF: "203.0.113.6"})
    assert status == 200 and body["waldur_username"].startswith("kim")
    # Prepending a fake hop does not escape: the proxy's own entry (right-most) counts.
    assert await _fail(api, "198.51.100.1, 203.0.113.5") == 429
    await bridge_env.stop()

    # Not trusted (the default): a spoofed header changes nothing, the peer address counts.
    await bridge_env.start(**limit)
    assert await _fail(api, "203.0.113.7") == 401
    assert await _fail(api, "203.0.113.8") == 401
    assert await _fail(api, "203.0.113.9") == 429
    status, _, _ = await api.whoami(token, headers={XFF: "203.0.113.10"})
    assert status == 429


async def test_public_url_cors_device_pruning_and_logout(
    bridge_env: BridgeEnv,
    api: Api,  # noqa: F811
) -> None:
    sim = bridge_env.sim
    token = sim.token_for(sim.add_user(f"lee{secrets.token_hex(3)}", "Lee Lane"))
    origin = "https://waldur.example.org"
    await bridge_env.start(
        **{
            "bridge.provisioning.homeserver_url": "https://matrix.example.org/",
            "bridge.provisioning.cors_origins": [origin],
            "bridge.provisioning.max_devices": 2,
        }
    )

    # A browser's preflight from a listed origin, and the answer's CORS headers.
    url = f"{api.base}/login"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    async with api.session.options(url, headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        assert "authorization" in resp.headers["Access-Control-Allow-Headers"].lower()
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    async with api.session.options(url, headers={**preflight, "Origin": "https://evil.example"}):
        pass
    status, headers, first = await api.login(token, headers={"Origin": origin})
    assert status == 200, first
    assert headers["Access-Control-Allow-Origin"] == origin
    # The public URL, not the address the bridge uses.
    assert first["homeserver"] == "https://matrix.example.org"
    status, headers, _ = await api.whoami(token, headers={"Origin": "https://evil.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers

    # Device hygiene: after the third login only the two most recently used devices are left.
    assert (await api.hs("GET", "/account/whoami", first["access_token"]))[0] == 200
    _, _, second = await api.login(token)
    assert (await api.hs("GET", "/account/whoami", second["access_token"]))[0] == 200
    _, _, third = await api.login(token)
    status, devices = await api.hs("GET", "/devices", third["access_token"])
    assert status == 200
    left = {d["device_id"] for d in devices["devices"]}
    assert left == {second["device_id"], third["device_id"]}
    assert (await api.hs("GET", "/account/whoami", first["access_token"]))[0] == 401

    # Logout ends exactly that session.
    status, _, out = await api.call(
        "POST", "/logout", second["access_token"], scheme="Bearer", json={}
    )
    assert status == 200, out
    assert out == {
        "user_id": second["user_id"],
        "device_id": second["device_id"],
        "logged_out": True,
    }
    assert (await api.hs("GET", "/account/whoami", second["access_token"]))[0] == 401
    assert (await api.hs("GET", "/account/whoami", third["access_token"]))[0] == 200
    # A token that no longer works, and no token: clear refusals.
    status, _, body = await api.call("POST", "/logout", second["access_token"], scheme="Bearer")
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, _, body = await api.call("POST", "/logout")
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_logout_refuses_accounts_the_bridge_does_not_manage(
    bridge_env: BridgeEnv,
    api: Api,  # noqa: F811
    matrix_user,
) -> None:
    await bridge_env.start()
    person = await matrix_user("own")
    status, _, body = await api.call("POST", "/logout", person.access_token, scheme="Bearer")
    assert (status, body["errcode"]) == (403, "WB_NOT_PUPPETED")
    assert (await api.hs("GET", "/account/whoami", person.access_token))[0] == 200
