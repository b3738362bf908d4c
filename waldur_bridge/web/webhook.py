"""The Waldur web hook receiver.

Waldur signs nothing, so the URL carries an unguessable secret and a payload is only a hint:
it makes the bridge read the projects and users it names again, never grant or revoke.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..waldur import Event, WebhookPayloadError, parse_webhook

log = logging.getLogger("waldur.web.webhook")

EventHandler = Callable[[Event, str], Awaitable[None]]


async def read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes.

    aiohttp enforces the limit of the application that made the request object, which for a
    sub-application is the appservice's (1 MiB), and a chunked body has no Content-Length to
    check first; so the body is read here, stopping as soon as it is too large.
    """
    body = bytearray()
    async for chunk in request.content.iter_any():
        body.extend(chunk)
        if len(body) > limit:
            return None
    return bytes(body)


class WebhookReceiver:
    def __init__(
        self,
        secret: str,
        handle: EventHandler,
        *,
        max_body_size: int,
        event_types: frozenset[str] | None = None,
    ) -> None:
        self.secret = secret.encode()
        # Types the bridge acts on; others (a hook registered by group) are dropped unread.
        self.event_types = event_types
        self.ignored = 0
        self.handle = handle
        self.max_body_size = max_body_size
        self.received = 0
        # When this receiver started and when a hook last arrived (diagnose: hooks gone quiet).
        self.started_at = time.time()
        self.last_received_at: float | None = None
        self.rejected = 0
        self.app = web.Application(client_max_size=max_body_size)
        self.app.router.add_post("/{secret}", self.receive)
        self.app.router.add_post("/{secret}/", self.receive)

    async def receive(self, request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.match_info["secret"].encode(), self.secret):
            self.rejected += 1
            # The same answer as an unknown path: a wrong secret reveals nothing.
            return web.json_response({"error": "Not found"}, status=404)
        if request.content_length is not None and request.content_length > self.max_body_size:
            self.rejected += 1
            return web.json_response({"error": "Body too large"}, status=413)
        body = await read_bounded(request, self.max_body_size)
        if body is None:
            self.rejected += 1
            return web.json_response({"error": "Body too large"}, status=413)
        try:
            event = parse_webhook(body, request.content_type)
        except WebhookPayloadError as e:
            self.rejected += 1
            log.info("Rejected a malformed web hook: %s", e)
            return web.json_response({"error": str(e)}, status=400)
        if self.event_types is not None and event.event_type not in self.event_types:
            self.ignored += 1
            return web.json_response({}, status=202)
        self.received += 1
        self.last_received_at = time.time()
        log.debug("Web hook %s received", event.event_type)
        try:
            await self.handle(event, "webhook")
        except Exception:
            # The hint is lost but the sweep and the events poll will catch up; Waldur does not
            # retry, so a 5xx would help nobody.
            log.exception("Handling web hook %s failed", event.event_type)
        return web.json_response({}, status=202)
