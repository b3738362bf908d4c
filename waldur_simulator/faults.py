"""Failure injection: error statuses, latency, a listing that breaks at page K, dropped
connections. Rules match on a path prefix (str) or a regex (compiled pattern, `search`)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

from aiohttp import web

_HTML_500 = "<h1>Server Error (500)</h1>"  # Django's default handler500 page
_NGINX = "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"  # noqa: E501


ALL_USERS = "*"


@dataclass(eq=False)
class FaultRule:
    kind: str  # "status", "delay", "drop"
    path: str | re.Pattern[str] | None = None
    method: str | None = None
    times: int | None = None  # remaining firings; None = until removed
    status: int = 500
    retry_after: float | None = None
    body: str | None = None
    seconds: float = 0.0
    page: int | None = None  # only requests for this page (default page is 1)
    hits: int = 0

    def matches(self, method: str, path: str, page: int) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.page is not None and self.page != page:
            return False
        if self.path is None:
            return True
        if isinstance(self.path, re.Pattern):
            return self.path.search(path) is not None
        return path.startswith(self.path)

    def fire(self) -> None:
        self.hits += 1
        if self.times is not None:
            self.times -= 1


@dataclass
class Faults:
    """`sim.faults`: rules are checked on every request before authentication."""

    latency: float = 0.0  # seconds added to every request
    rules: list[FaultRule] = field(default_factory=list)
    # Users left out of /api/users/ while their grants and direct reads stay intact (what a
    # service account that lost staff sees); ALL_USERS hides everyone.
    hidden_users: set[str] = field(default_factory=set)

    def hide_users(self, *uuids: str) -> None:
        """Leave these users (none given: every user) out of the users listing."""
        self.hidden_users |= set(uuids) if uuids else {ALL_USERS}

    def unhide_users(self) -> None:
        self.hidden_users.clear()

    def hides_user(self, uuid: str) -> bool:
        return ALL_USERS in self.hidden_users or uuid in self.hidden_users

    def fail(
        self,
        path: str | re.Pattern[str] | None = None,
        *,
        status: int = 500,
        method: str | None = None,
        times: int | None = None,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> FaultRule:
        """Answer matching requests with `status` (`times` times, or until removed)."""
        if status == 429 and retry_after is None:
            retry_after = 1
        return self._add(
            FaultRule(
                "status", path, method, times, status=status, retry_after=retry_after, body=body
            )
        )

    def delay(
        self,
        seconds: float,
        path: str | re.Pattern[str] | None = None,
        *,
        method: str | None = None,
        times: int | None = None,
    ) -> FaultRule:
        return self._add(FaultRule("delay", path, method, times, seconds=seconds))

    def fail_page(
        self,
        path: str | re.Pattern[str],
        page: int,
        *,
        status: int = 500,
        times: int | None = 1,
    ) -> FaultRule:
        """Break a paginated listing at page `page`, so a client sees only its first pages."""
        return self._add(FaultRule("status", path, "GET", times, status=status, page=page))

    def drop_connection(
        self,
        path: str | re.Pattern[str] | None = None,
        *,
        method: str | None = None,
        times: int | None = 1,
    ) -> FaultRule:
        """Close the TCP connection without answering."""
        return self._add(FaultRule("drop", path, method, times))

    def remove(self, rule: FaultRule) -> None:
        if rule in self.rules:
            self.rules.remove(rule)

    def clear(self) -> None:
        self.rules.clear()
        self.hidden_users.clear()
        self.latency = 0.0

    def _add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    async def apply(self, request: web.Request) -> web.StreamResponse | None:
        """Run the matching rules; a response (or a dropped connection) short-cuts the request."""
        try:
            page = int(request.query.get("page", "1"))
        except ValueError:
            page = 1
        method, path = request.method, request.path
        wait = self.latency
        for rule in self.rules:
            if rule.kind == "delay" and rule.matches(method, path, page):
                rule.fire()
                wait += rule.seconds
        if wait > 0:
            await asyncio.sleep(wait)
        for rule in list(self.rules):
            if rule.kind == "drop" and rule.matches(method, path, page):
                rule.fire()
                raise DroppedConnection
            if rule.kind == "status" and rule.matches(method, path, page):
                rule.fire()
                return _error_response(rule)
        return None


class DroppedConnection(Exception):
    """Signals the server middleware to abort the transport."""


def _error_response(rule: FaultRule) -> web.Response:
    status = rule.status
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        headers["Retry-After"] = f"{rule.retry_after:g}"
    if rule.body is not None:
        return web.Response(status=status, text=rule.body, headers=headers)
    if status == 500:
        return web.Response(status=status, text=_HTML_500, content_type="text/html")
    if status in (502, 503, 504):
        reason = {
            502: "Bad Gateway",
            503: "Service Temporarily Unavailable",
            504: "Gateway Time-out",
        }
        text = _NGINX.format(code=status, reason=reason[status])
        return web.Response(status=status, text=text, content_type="text/html", headers=headers)
    if status == 429:
        wait = rule.retry_after or 1
        detail = (
            f"Request was throttled. Expected available in {wait:g} second{'s' * (wait != 1)}."
        )
        return web.json_response({"detail": detail}, status=status, headers=headers)
    return web.json_response({"detail": "Simulated failure."}, status=status, headers=headers)
