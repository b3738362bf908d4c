"""Fetching the images Waldur links to (project and organization ``image`` URLs), guarded.

The URL comes from Waldur's data, which organization owners can influence, so the fetch is
held to: hosts the operator allowed (Waldur's own by default), no redirect to another host, a
short timeout, a size limit enforced while reading (never the whole body first), and a picture
format recognised by its first bytes rather than by what the server claims.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from .errors import WaldurProtocolError, WaldurRequestError, WaldurUnavailable

# Seconds for one image fetch, connection to last byte: an avatar is a few hundred kB.
IMAGE_TIMEOUT = 10.0
MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


def sniff_image_type(head: bytes) -> str | None:
    """The content type of PNG, JPEG, GIF or WebP data by its first bytes; None for others."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class ImageFetch:
    """One guarded fetch. ``headers_for`` gives the request headers for a URL (the token goes
    only to Waldur's own origin)."""

    session: aiohttp.ClientSession
    allowed_hosts: Collection[str]
    max_bytes: int
    timeout: float = IMAGE_TIMEOUT

    async def get(self, link: URL, headers: Mapping[str, str]) -> tuple[bytes, str]:
        where = f"{link.host}{link.path}"
        try:
            async with self.session.get(
                link,
                headers=dict(headers),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                if response.status in (301, 302, 303, 307, 308):
                    raise Redirect(link.join(URL(response.headers.get("Location", ""))))
                if response.status != 200:
                    raise WaldurRequestError(
                        f"image at {where}: HTTP {response.status}",
                        path=link.path,
                        status=response.status,
                    )
                if (response.content_length or 0) > self.max_bytes:
                    raise self._too_big(where)
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > self.max_bytes:
                        # Stop reading at once: the rest of a huge body never arrives here.
                        raise self._too_big(where)
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = (
                "no complete answer within the timeout"
                if isinstance(exc, TimeoutError)
                else (str(exc) or type(exc).__name__)
            )
            raise WaldurUnavailable(
                f"cannot fetch image from {link.host}: {problem}", path=link.path
            ) from exc
        content_type = sniff_image_type(bytes(body[:16]))
        if content_type is None:
            claimed = response.headers.get("Content-Type", "none")
            raise WaldurProtocolError(
                f"image at {where} is not a PNG, JPEG, GIF or WebP picture (its first bytes; "
                f"the server said {claimed})",
                path=link.path,
            )
        return bytes(body), content_type

    def check_host(self, link: URL, origin: URL | None = None) -> None:
        """Refuse a host the operator did not allow (a redirect: any host but its origin's)."""
        host = (link.host or "").lower()
        if origin is not None and (host, link.port, link.scheme) != (
            (origin.host or "").lower(),
            origin.port,
            origin.scheme,
        ):
            raise WaldurProtocolError(
                f"image at {origin.host}{origin.path} redirects to another host "
                f"({link.host}:{link.port}); redirects are followed only on the same host",
                path=origin.path,
            )
        if host not in {h.lower() for h in self.allowed_hosts}:
            raise WaldurProtocolError(
                f"image at {link.host}{link.path} is not on Waldur's host: add {link.host} to "
                "bridge.avatars.allowed_hosts to fetch images from there",
                path=link.path,
            )

    def _too_big(self, where: str) -> WaldurProtocolError:
        return WaldurProtocolError(f"image at {where} is over the {self.max_bytes} byte limit")


class Redirect(Exception):
    """Not an error: the caller decides whether to follow it."""

    def __init__(self, target: URL) -> None:
        super().__init__(str(target))
        self.target = target
