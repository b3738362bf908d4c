"""The bridge's web doors (provisioning, sign-in) behind a reverse proxy and in browsers: who
the client is, CORS, and the HTTP session for calls made on a person's behalf.

``X-Forwarded-For`` is believed only when the TCP peer is one of ``trusted_proxies``; anyone
else could write any address there and escape the per-address failure limit. The header is
read from the right (the address the nearest proxy saw) past every trusted proxy, so a client
cannot choose its address by prepending entries either.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

import aiohttp
from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

CORS_METHODS = "GET, POST, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE = "600"


def parse_networks(entries: Iterable[str]) -> list[Network]:
    """Addresses or CIDR networks; raises ValueError naming the entry that is neither."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return networks


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Any, proxies: list[Network]) -> bool:
    return address is not None and any(address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: Iterable[str], proxies: list[Network]) -> str:
    """The client's address: the peer, or when the peer is a trusted proxy the right-most
    ``X-Forwarded-For`` entry that is not itself a trusted proxy."""
    peer_address = _address(peer or "")
    if not proxies or not _trusted(peer_address, proxies):
        return peer or ""
    hops = [h for header in forwarded_for for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            # A garbled entry: stop at the last address a trusted proxy vouched for.
            break
        if not _trusted(address, proxies):
            return str(address)
        peer_address = address
    return str(peer_address) if peer_address is not None else (peer or "")


def client_key(remote: str | None) -> str:
    """The rate-limit key of a client address; an IPv6 /64 is one client."""
    if not remote:
        return "unknown"
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def request_client(request: web.Request, proxies: list[Network]) -> str:
    """The rate-limit key of the client behind `request` (see the module doc)."""
    forwarded = request.headers.getall("X-Forwarded-For", [])
    return client_key(client_address(request.remote, forwarded, proxies))


class PrivateSession:
    """One HTTP session for Waldur calls made with people's own credentials. No cookie jar:
    one person's Waldur session cookie must never ride on another's call."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def cors_middleware(origins: Iterable[str]) -> Any:
    """Answer preflights and add CORS headers for the listed origins ("*": any origin)."""
    allowed = {o.rstrip("/") for o in origins}
    any_origin = "*" in allowed

    @web.middleware
    async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        permitted = origin is not None and (any_origin or origin in allowed)
        if (
            request.method == "OPTIONS"
            and permitted
            and request.headers.get("Access-Control-Request-Method")
        ):
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = CORS_MAX_AGE
        else:
            response = await handler(request)
        if permitted:
            # The exact origin, never "*": answers depend on the Authorization header.
            response.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        return response

    return cors


__all__ = ["client_address", "cors_middleware", "parse_networks"]
