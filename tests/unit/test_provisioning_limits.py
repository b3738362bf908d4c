"""The provisioning API's pieces that need no bridge: limits, header and body parsing, errors."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from waldur_bridge.web.provisioning import (
    DEFAULT_DEVICE_NAME,
    ProvisioningError,
    SlidingWindowLimiter,
    WaldurUser,
    client_key,
    error_middleware,
    parse_authorization,
    parse_device_name,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_allows_limit_then_refuses_until_the_oldest_hit_leaves_the_window() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(3, 3600, clock=clock)
    for step in range(3):
        assert limiter.acquire("u") == 0
        clock.now += 10 * (step + 1)  # hits at 1000, 1010, 1030
    clock.now = 1100.0
    assert limiter.acquire("u") == pytest.approx(3500)  # the hit at 1000 leaves at 4600
    assert limiter.retry_after("other") == 0  # per key
    clock.now = 4600.0
    assert limiter.acquire("u") == 0  # sliding: one slot came free
    assert limiter.acquire("u") == pytest.approx(10)  # the hit at 1010 leaves at 4610
    clock.now = 4610.0
    assert limiter.acquire("u") == 0


def test_limiter_refusals_do_not_extend_the_wait() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(1, 60, clock=clock)
    limiter.hit("ip")
    for _ in range(100):
        clock.now += 0.5
        assert limiter.acquire("ip") > 0
    clock.now = 1060.0
    assert limiter.acquire("ip") == 0


def test_limiter_forgets_expired_keys_and_bounds_memory() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(2, 60, clock=clock, max_keys=10)
    for i in range(10):
        limiter.hit(f"k{i}")
    clock.now += 61
    limiter.hit("new")
    assert len(limiter) == 1  # all expired keys were dropped
    for i in range(50):
        limiter.hit(f"flood{i}")
        assert len(limiter) <= 10
    # The newest keys are still limited exactly.
    limiter.hit("flood49")
    assert limiter.retry_after("flood49") > 0


def test_limiter_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimiter(0)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Token abc123", "abc123"),
        ("token abc123", "abc123"),
        ("Bearer abc123", "abc123"),
        ("Token  abc123", "abc123"),
        (" Token abc123 ", "abc123"),
    ],
)
def test_parse_authorization_accepts_token_and_bearer(header: str, token: str) -> None:
    assert parse_authorization(header) == token


@pytest.mark.parametrize(
    ("header", "status", "errcode"),
    [
        (None, 401, "M_MISSING_TOKEN"),
        ("", 401, "M_MISSING_TOKEN"),
        ("Basic c2VjcmV0", 400, "M_INVALID_PARAM"),
        ("Token", 400, "M_INVALID_PARAM"),
        ("Token secret12 extra1", 400, "M_INVALID_PARAM"),
        ("Token sécret", 400, "M_INVALID_PARAM"),
        ("Token " + "a" * 513, 400, "M_INVALID_PARAM"),
    ],
)
def test_parse_authorization_refuses_without_repeating_the_header(
    header: str | None, status: int, errcode: str
) -> None:
    with pytest.raises(ProvisioningError) as e:
        parse_authorization(header)
    assert (e.value.status, e.value.errcode) == (status, errcode)
    for word in (header or "").split()[1:]:
        assert word not in e.value.message


def test_client_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "unknown"


def test_parse_device_name() -> None:
    assert parse_device_name(b"") == DEFAULT_DEVICE_NAME
    assert parse_device_name(b"{}") == DEFAULT_DEVICE_NAME
    assert parse_device_name(b'{"device_name": "  Laptop "}') == "Laptop"
    for bad, errcode in [
        (b"{", "M_NOT_JSON"),
        (b"[]", "M_BAD_JSON"),
        (b'{"device_name": 5}', "M_INVALID_PARAM"),
        (b'{"device_name": " "}', "M_INVALID_PARAM"),
        (b'{"device_name": "' + b"x" * 101 + b'"}', "M_INVALID_PARAM"),
    ]:
        with pytest.raises(ProvisioningError) as e:
            parse_device_name(bad)
        assert e.value.errcode == errcode


def test_waldur_user_from_me_tolerates_hidden_is_active_and_never_echoes_data() -> None:
    data = {
        "uuid": "AB" * 16,
        "username": "alice",
        "full_name": None,
        "email": "a@example.org",
        "token": "s3cr3t",
    }
    me = WaldurUser.from_me(data)
    assert (me.uuid, me.full_name, me.is_active) == ("ab" * 16, "", True)
    assert not WaldurUser.from_me({**data, "is_active": False}).is_active
    with pytest.raises(ValueError) as e:
        WaldurUser.from_me({**data, "uuid": "nope"})
    assert "s3cr3t" not in str(e.value)


async def test_error_middleware_answers_json_with_no_store_and_hides_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("internal detail")

    async def limited(request: web.Request) -> web.Response:
        raise ProvisioningError(429, "M_LIMIT_EXCEEDED", "slow down", retry_after=12.2)

    async def fine(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/boom", boom)
    app.router.add_get("/limited", limited)
    app.router.add_get("/fine", fine)
    async with TestClient(TestServer(app)) as client:
        with caplog.at_level(logging.ERROR, "waldur.web.provisioning"):
            resp = await client.get("/boom")
            body = await resp.json()
        assert resp.status == 500
        assert body["errcode"] == "M_UNKNOWN"
        assert "internal detail" not in str(body) and "Traceback" not in str(body)
        assert body["reference"] in caplog.text
        assert "internal detail" in caplog.text  # the log has the traceback
        assert resp.headers["Cache-Control"] == "no-store"

        resp = await client.get("/limited")
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "13"
        assert (await resp.json())["retry_after_ms"] == 13000

        resp = await client.post("/fine")
        assert resp.status == 405
        assert (await resp.json())["errcode"] == "M_UNRECOGNIZED"
        assert resp.headers["Allow"] == "GET,HEAD"

        resp = await client.get("/fine")
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
