"""Provisioning behind a proxy and in browsers: the client's address, CORS, device pruning and
the answer on homeservers with Matrix Authentication Service (pure parts)."""

from __future__ import annotations

import pytest

from waldur_bridge.web.devices import DAY_MS, devices_to_prune
from waldur_bridge.web.provisioning import login_refusal
from waldur_bridge.web.proxy import client_address, parse_networks

PROXIES = parse_networks(["10.0.0.0/8", "192.0.2.1", "fd00::/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # Not from a trusted proxy: the header is ignored, whatever it says.
        ("198.51.100.7", ["203.0.113.9"], "198.51.100.7"),
        ("198.51.100.7", [], "198.51.100.7"),
        # From a trusted proxy: the client it saw.
        ("10.1.2.3", ["203.0.113.9"], "203.0.113.9"),
        ("::ffff:10.1.2.3", ["203.0.113.9"], "203.0.113.9"),
        # A client cannot choose its address by prepending: the right-most untrusted hop wins.
        ("10.1.2.3", ["1.1.1.1, 203.0.113.9"], "203.0.113.9"),
        ("10.1.2.3", ["1.1.1.1", "203.0.113.9, 192.0.2.1"], "203.0.113.9"),
        # Ports and IPv6 brackets as some proxies write them.
        ("10.1.2.3", ["203.0.113.9:5555"], "203.0.113.9"),
        ("fd00::1", ["[2001:db8::5]:443"], "2001:db8::5"),
        # Garbage stops the walk at the last trusted hop; only trusted hops: the nearest.
        ("10.1.2.3", ["203.0.113.9, garbage"], "10.1.2.3"),
        ("10.1.2.3", ["10.9.9.9"], "10.9.9.9"),
    ],
)
def test_client_address(peer: str, xff: list[str], expected: str) -> None:
    assert client_address(peer, xff, PROXIES) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_address("10.1.2.3", ["203.0.113.9"], []) == "10.1.2.3"


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match="'proxy.local'"):
        parse_networks(["10.0.0.1", "proxy.local"])


NOW = 1_000 * DAY_MS


def _dev(device_id: str, days_ago: float | None) -> dict[str, object]:
    seen = None if days_ago is None else int(NOW - days_ago * DAY_MS)
    return {"device_id": device_id, "last_seen_ts": seen}


def test_devices_beyond_the_limit_and_idle_ones_are_pruned() -> None:
    devices = [_dev("NEW", 0), _dev("A", 1), _dev("B", 2), _dev("C", 3), _dev("OLD", 200)]
    assert devices_to_prune(
        devices, keep="NEW", max_devices=3, max_idle_ms=90 * DAY_MS, now_ms=NOW
    ) == ["C", "OLD"]
    # No count limit: only the idle one; no limits at all: nothing.
    assert devices_to_prune(
        devices, keep="NEW", max_devices=0, max_idle_ms=90 * DAY_MS, now_ms=NOW
    ) == ["OLD"]
    assert devices_to_prune(devices, keep="NEW", max_devices=0, max_idle_ms=0, now_ms=NOW) == []
    # The new device stays even when it is the only one allowed.
    assert devices_to_prune(devices, keep="NEW", max_devices=1, max_idle_ms=0, now_ms=NOW) == [
        "A",
        "B",
        "C",
        "OLD",
    ]
    # A device with no recorded use yet counts as new (homeservers record use in batches).
    fresh = [_dev("NEW", 0), _dev("OLD", 5), _dev("X", None)]
    assert devices_to_prune(fresh, keep="NEW", max_devices=5, max_idle_ms=DAY_MS, now_ms=NOW) == [
        "OLD"
    ]
    assert devices_to_prune(fresh, keep="NEW", max_devices=2, max_idle_ms=0, now_ms=NOW) == ["OLD"]


def test_mas_refusal_names_the_template_mode() -> None:
    refusal = login_refusal(403, "M_APPSERVICE_LOGIN_UNSUPPORTED")
    assert refusal.status == 501 and refusal.errcode == "WB_LOGIN_UNSUPPORTED"
    assert "template mapping mode" in refusal.message
    other = login_refusal(403, "M_FORBIDDEN")
    assert other.status == 502 and other.errcode == "WB_HOMESERVER_FAILED"
