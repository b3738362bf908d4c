"""Async client for the subset of the Waldur REST API that the bridge reads.

Three rules shape it, because a wrong answer here can kick people out of rooms:
- every list is complete or the call raises (no partial listings come back as shorter lists);
- no filter is trusted: old Waldur versions ignore filters they do not know and return everything,
  so each item is checked against what was asked;
- transient failures are retried with backoff, everything else surfaces as a typed error.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from . import images
from .errors import (
    WaldurAuthError,
    WaldurError,
    WaldurNotFound,
    WaldurProtocolError,
    WaldurRequestError,
    WaldurUnavailable,
)
from .records import (
    Customer,
    Event,
    Order,
    Project,
    Resource,
    RoleGrant,
    User,
    WebHook,
    normalize_uuid,
)

__all__ = ["ClientStats", "QueryParams", "WaldurClient"]

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=WaldurError)
QueryValue = str | int | float | Sequence[str] | None
QueryParams = Mapping[str, QueryValue]

# Methods that are safe to repeat after an unclear failure (timeout, 5xx, dropped connection).
_IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE", "PUT"})
_DETAIL_LIMIT = 300
# Event times are compared with the requested lower bound with this slack (clock rounding).
_EVENT_TIME_SLACK = timedelta(seconds=1)


class _ApiRecord(Protocol):
    @property
    def uuid(self) -> str | None: ...

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self: ...


R = TypeVar("R", bound=_ApiRecord)


def _tries(retries: int) -> str:
    # waldur.retry.attempts counts retries after the first try; say so, not "attempts + 1".
    return (
        f"gave up after {retries} {'retry' if retries == 1 else 'retries'}"
        if retries
        else "not retried"
    )


@dataclass(slots=True)
class ClientStats:
    """Counters for monitoring and benchmarks."""

    requests: int = 0  # HTTP attempts, retries included
    retries: int = 0  # attempts that were repeated after a transient failure
    failures: int = 0  # calls that ended in an error raised to the caller
    dropped: int = 0  # list items dropped because Waldur did not honour a filter


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: CIMultiDictProxy[str]
    next_url: URL | None
    body: bytes


@dataclass(frozen=True)
class Probe:
    """What ``WaldurClient.probe`` saw of one listing."""

    items: list[Any]
    count: int | None
    server_time: float | None  # from the Date header (whole seconds), None if absent
    local_time: float  # this machine's clock midway through the request


class WaldurClient:
    """Waldur REST client: ``Authorization: Token <key>``, JSON in and out."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30,
        retry_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30,
        page_size: int = 100,
        session: aiohttp.ClientSession | None = None,
        user_agent: str = "waldur-matrix-bridge",
    ) -> None:
        base = URL(url)
        if not base.is_absolute() or base.scheme not in ("http", "https"):
            raise ValueError(f"Waldur URL must be an absolute http(s) URL, got {url!r}")
        if base.query_string or base.fragment:
            raise ValueError("Waldur URL must not have a query or fragment")
        token = token.strip()
        if not token or any(ch.isspace() for ch in token):
            # Waldur answers 401 "Token string should not contain spaces"; fail early instead.
            raise ValueError("Waldur token must be a non-empty string without spaces")
        if retry_attempts < 0 or page_size < 1 or timeout <= 0:
            raise ValueError("retry_attempts must be >= 0, page_size >= 1 and timeout > 0")
        # A deployment may serve Waldur under a sub-path (https://host/waldur/api/...). Operators
        # often paste the API root (".../api/"); the method paths already start with /api/.
        prefix = base.path.rstrip("/")
        if prefix == "/api" or prefix.endswith("/api"):
            prefix = prefix[: -len("/api")]
        self._base = base.with_path("/").with_query(None)
        self._prefix = prefix
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry_attempts = retry_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._page_size = page_size
        self._session = session
        self._owns_session = session is None
        # Headers go on each request, not on the session, so a shared session never carries them.
        self._headers = {
            "Authorization": f"Token {token}",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        self.stats = ClientStats()
        # Replaceable in tests so that backoff can be observed without waiting.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        # Told the outcome of every logical request (None: success), e.g. to report lost access.
        self.on_outcome: Callable[[WaldurError | None], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        if self._owns_session:
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily so that the client can be constructed outside a running event loop.
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the aiohttp session given to WaldurClient is closed")
            self._session = aiohttp.ClientSession()
        return self._session

    # --- generic calls ------------------------------------------------------------------------

    async def get_json(self, path: str, params: QueryParams | None = None) -> Any:
        """GET ``path`` (e.g. ``/api/users/me/``) and return the decoded JSON body."""
        url = self._url(path, params)
        reply = await self._send("GET", url)
        return self._decode(reply, url)

    async def probe(self, path: str) -> Probe:
        """One item of a listing (or the one object) with its ``X-Result-Count`` and the
        server's ``Date``, unparsed (for ``diagnose``: the generation from an item's fields,
        how much the token sees, the clock).
        """
        url = self._url(path, {"page_size": 1})
        sent = time.time()
        reply = await self._send("GET", url)
        received = time.time()
        page = self._decode(reply, url)
        items = page if isinstance(page, list) else [page] if isinstance(page, dict) else []
        date = reply.headers.get("Date")
        server_time: float | None = None
        if date:
            try:
                server_time = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError):
                server_time = None
        return Probe(
            items=items,
            count=self._result_count(reply, url),
            server_time=server_time,
            local_time=(sent + received) / 2,
        )

    async def get_list(
        self, path: str, params: QueryParams | None = None, *, page_size: int | None = None
    ) -> list[Any]:
        """GET every page of a list endpoint and return all items, or raise.

        Follows ``Link: rel="next"`` until it is absent and checks the total against
        ``X-Result-Count``: a listing that does not add up (items moved between pages while it
        was read, or broken pagination) raises ``WaldurProtocolError`` so the caller retries later.
        """
        return await self._list(path, params, page_size=page_size or self._page_size)

    async def _list(
        self,
        path: str,
        params: QueryParams | None,
        *,
        page_size: int,
        first_page_only: bool = False,
    ) -> list[Any]:
        items: list[Any] = []
        async for page in self._pages(path, params, page_size, first_page_only):
            items.extend(page)
        return items

    async def iter_pages(
        self, path: str, params: QueryParams | None = None, *, page_size: int | None = None
    ) -> AsyncIterator[list[Any]]:
        """Yield the raw items of a list endpoint page by page, with ``get_list``'s checks.

        A large site's listings (100,000 grants) are parsed a page at a time instead of being
        held whole. The last check (``X-Result-Count`` against the items seen) can only fail
        after every page: a caller must treat what it gathered as valid only once the
        iteration has ended without raising.
        """
        pages = self._pages(path, params, page_size or self._page_size, False, read_ahead=True)
        async for page in pages:
            yield page

    async def _pages(
        self,
        path: str,
        params: QueryParams | None,
        page_size: int,
        first_page_only: bool,
        read_ahead: bool = False,
    ) -> AsyncIterator[list[Any]]:
        query = dict(params or {})
        query.setdefault("page_size", page_size)
        url = self._url(path, query)
        seen = {url}
        total = 0
        count: int | None = None
        ahead: asyncio.Future[_Reply] | None = None
        try:
            while True:
                if ahead is not None:
                    reply, ahead = await ahead, None
                else:
                    reply = await self._send("GET", url)
                page = self._decode(reply, url)
                if not isinstance(page, list):
                    raise self._protocol_error(
                        f"expected a JSON array (a paginated list), got {type(page).__name__}",
                        url,
                    )
                total += len(page)
                count = self._result_count(reply, url)
                following: URL | None = None
                if not first_page_only and reply.next_url is not None:
                    if not page:
                        raise self._protocol_error("an empty page links to a next page", url)
                    following = self._rebase(reply.next_url)
                    if following in seen:
                        raise self._protocol_error(
                            "pagination links loop back to a page already read", following
                        )
                    seen.add(following)
                    if read_ahead:
                        # Waldur serves the next page while the caller works on this one.
                        ahead = asyncio.ensure_future(self._send("GET", following))
                del reply  # the raw body is not kept while the caller works on the page
                yield page
                if following is None:
                    break
                url = following
        finally:
            if ahead is not None:
                ahead.add_done_callback(_consume)
                ahead.cancel()
        if not first_page_only and count is not None and count != total:
            raise self._protocol_error(
                f"listing gathered {total} items but X-Result-Count says {count}: the list "
                "changed while it was being read, or pagination is broken; retry later",
                url,
            )

    async def _parsed_pages(
        self, path: str, parse: Callable[[Any], T], params: QueryParams | None = None
    ) -> AsyncIterator[list[T]]:
        """Pages of a listing, each parsed into records (a bad item fails the listing)."""
        offset = 0
        async for page in self.iter_pages(path, params):
            yield self._parse_all(path, page, parse, offset)
            offset += len(page)

    # --- images -------------------------------------------------------------------------------

    async def get_image(
        self,
        url: str,
        max_bytes: int = 5 * 1024 * 1024,
        *,
        allowed_hosts: Collection[str] = (),
        timeout: float = images.IMAGE_TIMEOUT,
    ) -> tuple[bytes, str]:
        """The bytes and content type (by the bytes) of an image Waldur links to (a project's
        or an organization's ``image``): see ``images`` for the guards.

        Images are fetched from the configured Waldur host (with the token, on its configured
        origin) and from ``allowed_hosts`` (without it); a redirect only within one origin.
        """
        link = URL(url)
        if not link.is_absolute() or link.scheme not in ("http", "https"):
            raise WaldurProtocolError(f"image URL is not an absolute http(s) URL: {url!r}")
        fetch = images.ImageFetch(
            self._get_session(),
            {self._base.host or "", *allowed_hosts},
            max_bytes,
            timeout,
        )
        origin: URL | None = None
        for _ in range(images.MAX_REDIRECTS + 1):
            fetch.check_host(link, origin)
            if origin is None and link.raw_host == self._base.raw_host:
                link = self._rebase(link)
            on_waldur = link.origin() == self._base.origin()
            headers = self._headers if on_waldur else {"User-Agent": self._headers["User-Agent"]}
            try:
                return await fetch.get(link, headers)
            except images.Redirect as redirect:
                origin, link = link, redirect.target
        raise WaldurProtocolError(
            f"image at {link.host}{link.path}: more than {images.MAX_REDIRECTS} redirects",
            path=link.path,
        )

    # --- users, customers, projects -----------------------------------------------------------

    async def me(self) -> User:
        """The account the bridge acts as (``/api/users/me/``)."""
        return self._parse_one("/api/users/me/", await self.get_json("/api/users/me/"), User)

    async def get_user(self, uuid: str) -> User:
        """One user; raises ``WaldurNotFound`` if Waldur has (or shows) no such user."""
        return await self._get_object("/api/users/{}/", uuid, User)

    async def list_users(self) -> list[User]:
        """Every user visible to the bridge's account (all of them for staff)."""
        return self._parse_all("/api/users/", await self.get_list("/api/users/"), User.from_api)

    def iter_users(self) -> AsyncIterator[list[User]]:
        """``list_users`` page by page (see ``iter_pages``: valid only once it ends)."""
        return self._parsed_pages("/api/users/", User.from_api)

    async def list_customers(self) -> list[Customer]:
        path = "/api/customers/"
        return self._parse_all(path, await self.get_list(path), Customer.from_api)

    async def get_customer(self, uuid: str) -> Customer:
        return await self._get_object("/api/customers/{}/", uuid, Customer)

    async def list_projects(self, customer_uuid: str | None = None) -> list[Project]:
        """Projects (not soft-deleted), optionally of one customer."""
        path = "/api/projects/"
        params: dict[str, QueryValue] = {}
        if customer_uuid is not None:
            customer_uuid = normalize_uuid(customer_uuid)
            params["customer"] = customer_uuid
        projects = self._parse_all(path, await self.get_list(path, params), Project.from_api)
        if customer_uuid is None:
            return projects
        return self._keep(path, "customer", projects, lambda p: p.customer_uuid == customer_uuid)

    def iter_projects(self) -> AsyncIterator[list[Project]]:
        """Every project, page by page (see ``iter_pages``: valid only once it ends)."""
        return self._parsed_pages("/api/projects/", Project.from_api)

    async def get_order(self, uuid: str) -> Order:
        """One order; raises WaldurNotFound."""
        return await self._get_object("/api/marketplace-orders/{}/", uuid, Order)

    async def get_project(self, uuid: str) -> Project:
        """One project; raises ``WaldurNotFound`` once it is deleted."""
        return await self._get_object("/api/projects/{}/", uuid, Project)

    # --- role grants --------------------------------------------------------------------------

    async def list_project_grants(self, project_uuid: str) -> list[RoleGrant]:
        """Active grants on the project itself (``/api/projects/{uuid}/list_users/``)."""
        return await self._scope_grants("projects", "project", project_uuid)

    async def list_customer_grants(self, customer_uuid: str) -> list[RoleGrant]:
        """Active grants on the organization itself (``/api/customers/{uuid}/list_users/``)."""
        return await self._scope_grants("customers", "customer", customer_uuid)

    async def _scope_grants(self, collection: str, scope_type: str, uuid: str) -> list[RoleGrant]:
        uuid = normalize_uuid(uuid)
        path = f"/api/{collection}/{uuid}/list_users/"
        items = await self.get_list(path)
        return self._parse_all(
            path, items, lambda item: RoleGrant.from_scope_list(item, scope_type, uuid)
        )

    async def list_all_grants(self) -> list[RoleGrant]:
        """Every grant on every scope (``/api/user-permissions/``).

        Waldur 7.0 includes revoked grants here (shown with an expiration_time in the past);
        ``RoleGrant.is_effective`` sorts them out.
        """
        path = "/api/user-permissions/"
        return self._parse_all(path, await self.get_list(path), RoleGrant.from_permission)

    async def list_user_grant_history(self, user_uuid: str) -> list[RoleGrant]:
        """One user's grants, revoked ones included where Waldur keeps them (``show_inactive``
        in the current generation; 7.0 lists them anyway), with who granted and revoked them.

        The ``user`` filter is checked, not trusted: other people's grants are dropped.
        """
        user_uuid = normalize_uuid(user_uuid)
        path = "/api/user-permissions/"
        items = await self.get_list(path, {"user": user_uuid, "show_inactive": "true"})
        grants = self._parse_all(path, items, RoleGrant.from_permission)
        return self._keep(path, "grants of one user", grants, lambda g: g.user_uuid == user_uuid)

    def iter_all_grants(self) -> AsyncIterator[list[RoleGrant]]:
        """``list_all_grants`` page by page (see ``iter_pages``: valid only once it ends)."""
        return self._parsed_pages("/api/user-permissions/", RoleGrant.from_permission)

    # --- events -------------------------------------------------------------------------------

    async def list_events(self, created_from: float, event_types: Sequence[str]) -> list[Event]:
        """Events of the given types created at or after ``created_from`` (Unix seconds), oldest
        first. Items of other types or older than asked are dropped and counted, not trusted."""
        if isinstance(event_types, str) or not event_types:
            # With no event_type filter Waldur returns every event; that is never meant here.
            raise ValueError("event_types must be a non-empty sequence of event type names")
        wanted = frozenset(event_types)
        path = "/api/events/"
        params: dict[str, QueryValue] = {
            # Waldur wants a Unix timestamp here; an ISO string gets a 400.
            "created_from": repr(float(created_from)),
            "event_type": sorted(wanted),
            "o": "created",
        }
        events = self._parse_all(path, await self.get_list(path, params), Event.from_api)
        events = self._keep(path, "event_type", events, lambda e: e.event_type in wanted)
        earliest = datetime.fromtimestamp(created_from, UTC) - _EVENT_TIME_SLACK
        return self._keep(path, "created_from", events, lambda e: e.created >= earliest)

    # --- marketplace --------------------------------------------------------------------------

    async def list_orders(
        self,
        project_uuid: str,
        *,
        states: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Order]:
        """The project's orders, newest first; with ``limit``, only the newest ``limit``.

        States are filtered here, never sent: Waldur 7.x answers 400 to a state it does not
        know (``pending-start-date`` came later), and a filter value must work on every version.
        """
        project_uuid = normalize_uuid(project_uuid)
        wanted_states = frozenset(states) if states is not None else None
        path = "/api/marketplace-orders/"
        params: dict[str, QueryValue] = {"project_uuid": project_uuid, "o": "-created"}

        def matches(order: Order) -> bool:
            return order.project_uuid == project_uuid

        if limit is None or wanted_states is not None:
            items = await self.get_list(path, params)
            orders = self._parse_all(path, items, Order.from_api)
            orders = self._keep(path, "project_uuid", orders, matches)
            if wanted_states is not None:
                orders = [o for o in orders if o.state in wanted_states]
            return orders if limit is None else orders[:limit]
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        items = await self._list(path, params, page_size=limit, first_page_only=True)
        orders = self._parse_all(path, items, Order.from_api)
        if not all(matches(order) for order in orders):
            # The first page of an unfiltered listing says nothing about this project's newest
            # orders; dropping items would return a wrong "latest N".
            raise self._protocol_error(
                "Waldur did not honour the project_uuid/state filter on orders", self._url(path)
            )
        return orders

    async def list_resources(
        self, project_uuid: str, *, states: Iterable[str] | None = None
    ) -> list[Resource]:
        """The project's marketplace resources, optionally only in the given states (filtered
        here, not sent: a state value some Waldur version lacks would be answered with 400)."""
        project_uuid = normalize_uuid(project_uuid)
        wanted_states = frozenset(states) if states is not None else None
        path = "/api/marketplace-resources/"
        params: dict[str, QueryValue] = {"project_uuid": project_uuid}
        items = await self.get_list(path, params)
        resources = self._parse_all(path, items, Resource.from_api)
        resources = self._keep(
            path, "project_uuid", resources, lambda r: r.project_uuid == project_uuid
        )
        if wanted_states is None:
            return resources
        return [r for r in resources if r.state in wanted_states]

    # --- web hooks ----------------------------------------------------------------------------

    async def list_hooks(self) -> list[WebHook]:
        path = "/api/hooks-web/"
        return self._parse_all(path, await self.get_list(path), WebHook.from_api)

    async def create_hook(
        self,
        destination_url: str,
        event_types: Sequence[str],
        event_groups: Sequence[str] = (),
    ) -> WebHook:
        """Register a JSON web hook; Waldur expands ``event_groups`` into ``event_types``."""
        if not event_types and not event_groups:
            raise ValueError("a web hook needs at least one event type or event group")
        path = "/api/hooks-web/"
        body = {
            "destination_url": destination_url,
            "event_types": list(event_types),
            "event_groups": list(event_groups),
            "content_type": "json",
            "is_active": True,
        }
        url = self._url(path)
        reply = await self._send("POST", url, json_body=body)
        return self._parse_one(path, self._decode(reply, url), WebHook)

    async def update_hook(
        self,
        uuid: str,
        event_types: Sequence[str],
        *,
        destination_url: str | None = None,
        is_active: bool | None = None,
    ) -> WebHook:
        """Set a web hook's event types exactly (its event groups are cleared), and its URL
        and whether it is active when given."""
        if not event_types:
            raise ValueError("a web hook needs at least one event type")
        path = f"/api/hooks-web/{normalize_uuid(uuid)}/"
        url = self._url(path)
        body: dict[str, Any] = {"event_types": list(event_types), "event_groups": []}
        if destination_url is not None:
            body["destination_url"] = destination_url
        if is_active is not None:
            body["is_active"] = is_active
        reply = await self._send("PATCH", url, json_body=body)
        return self._parse_one(path, self._decode(reply, url), WebHook)

    async def delete_hook(self, uuid: str) -> None:
        """Delete a web hook; raises ``WaldurNotFound`` if it does not exist."""
        await self._send("DELETE", self._url(f"/api/hooks-web/{normalize_uuid(uuid)}/"))

    # --- HTTP ---------------------------------------------------------------------------------

    def _url(self, path: str, params: QueryParams | None = None) -> URL:
        if not path.startswith("/"):
            raise ValueError(f"API path must start with '/', got {path!r}")
        url = self._base.with_path(self._prefix + path)
        pairs = list(_query_pairs(params or {}))
        return url.with_query(pairs) if pairs else url

    def _rebase(self, link: URL) -> URL:
        # Waldur builds Link URLs from the host and scheme it saw, which behind a proxy can be an
        # internal name or plain http. Keep only path and query, on the configured origin, so
        # the token only ever goes to the server the operator configured.
        path = link.raw_path
        if self._prefix and not path.startswith(self._prefix + "/"):
            path = self._prefix + path
        return URL.build(
            scheme=self._base.scheme,
            host=self._base.raw_host or "",
            port=self._base.explicit_port,
            path=path,
            query_string=link.raw_query_string,
            encoded=True,
        )

    async def _send(self, method: str, url: URL, *, json_body: Any = None) -> _Reply:
        """One logical request, with retries; returns a 2xx reply or raises."""
        retries = 0
        while True:
            self.stats.requests += 1
            retry_after: float | None = None
            try:
                reply = await self._attempt(method, url, json_body)
            except (
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
                TimeoutError,
            ) as exc:
                problem = _describe_exception(exc)
                if not _repeatable_after(method, exc) or retries >= self._retry_attempts:
                    raise self._failure(
                        WaldurUnavailable(
                            f"cannot reach Waldur: {problem} ({_tries(retries)})",
                            path=url.path,
                        )
                    ) from exc
            else:
                if 200 <= reply.status < 300:
                    if self.on_outcome is not None:
                        self.on_outcome(None)
                    return reply
                problem = f"HTTP {reply.status}"
                repeatable = reply.status == 429 or (reply.status >= 500 and method in _IDEMPOTENT)
                if not repeatable:
                    raise self._failure(self._status_error(reply, url))
                if retries >= self._retry_attempts:
                    raise self._failure(
                        WaldurUnavailable(
                            f"Waldur kept failing ({_detail(reply.body)}; {_tries(retries)})",
                            path=url.path,
                            status=reply.status,
                        )
                    )
                retry_after = _retry_after(reply.headers)
            delay = self._backoff(retries, retry_after)
            retries += 1
            self.stats.retries += 1
            log.warning(
                "Waldur %s %s failed (%s); retry %d/%d in %.2fs",
                method,
                url.path,
                problem,
                retries,
                self._retry_attempts,
                delay,
            )
            await self._sleep(delay)

    async def _attempt(self, method: str, url: URL, json_body: Any) -> _Reply:
        session = self._get_session()
        async with session.request(
            method,
            url,
            headers=self._headers,
            json=json_body,
            timeout=self._timeout,
            # A redirect could carry the token elsewhere; the configured URL must be the final one.
            allow_redirects=False,
        ) as response:
            body = await response.read()
            next_link = response.links.get("next")
            next_url = next_link.get("url") if next_link is not None else None
            return _Reply(
                status=response.status,
                headers=response.headers,
                next_url=next_url if isinstance(next_url, URL) else None,
                body=body,
            )

    def _backoff(self, retries: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._backoff_max)
        ceiling = min(self._backoff_max, self._backoff_initial * 2**retries)
        # "Equal jitter": at least half the ceiling, so clients spread out but never hammer.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _status_error(self, reply: _Reply, url: URL) -> WaldurError:
        detail = _detail(reply.body)
        status = reply.status
        if status in (401, 403):
            return WaldurAuthError.for_status(status, detail, path=url.path)
        if status == 404:
            return WaldurNotFound(
                f"Waldur has no such object, or the bridge's account cannot see it ({detail})",
                path=url.path,
                status=status,
            )
        if 300 <= status < 400:
            location = reply.headers.get("Location", "?")
            return WaldurProtocolError(
                f"Waldur redirected to {location}; configure the final Waldur URL instead",
                path=url.path,
                status=status,
            )
        if status >= 500:
            # Only reached for requests that are not safe to repeat (POST).
            return WaldurUnavailable(f"Waldur failed: {detail}", path=url.path, status=status)
        return WaldurRequestError(
            f"Waldur rejected the request: {detail}", path=url.path, status=status, detail=detail
        )

    def _decode(self, reply: _Reply, url: URL) -> Any:
        try:
            return json.loads(reply.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            content_type = reply.headers.get("Content-Type", "none")
            raise self._protocol_error(
                f"Waldur answered with a body that is not JSON "
                f"(Content-Type {content_type}): {exc}",
                url,
            ) from exc

    def _result_count(self, reply: _Reply, url: URL) -> int | None:
        raw = reply.headers.get("X-Result-Count")
        if raw is None:
            return None
        try:
            count = int(raw)
        except ValueError:
            count = -1
        if count < 0:
            raise self._protocol_error(f"X-Result-Count is not a count: {raw!r}", url)
        return count

    # --- parsing and checking -----------------------------------------------------------------

    async def _get_object(self, template: str, uuid: str, record: type[R]) -> R:
        uuid = normalize_uuid(uuid)
        path = template.format(uuid)
        obj = self._parse_one(path, await self.get_json(path), record)
        if obj.uuid != uuid:
            raise self._protocol_error(
                f"asked for {uuid} but Waldur returned {obj.uuid}", self._url(path)
            )
        return obj

    def _parse_one(self, path: str, data: Any, record: type[R]) -> R:
        try:
            return record.from_api(data)
        except WaldurProtocolError as exc:
            raise self._protocol_error(exc.message, self._url(path)) from exc

    def _parse_all(
        self, path: str, items: list[Any], parse: Callable[[Any], T], offset: int = 0
    ) -> list[T]:
        parsed: list[T] = []
        for index, item in enumerate(items, offset):
            try:
                parsed.append(parse(item))
            except WaldurProtocolError as exc:
                raise self._protocol_error(
                    f"item {index}: {exc.message}", self._url(path)
                ) from exc
        return parsed

    def _keep(self, path: str, what: str, items: list[T], keep: Callable[[T], bool]) -> list[T]:
        kept = [item for item in items if keep(item)]
        dropped = len(items) - len(kept)
        if dropped:
            self.stats.dropped += dropped
            log.warning(
                "Waldur did not honour the %s filter on %s: dropped %d of %d items",
                what,
                path,
                dropped,
                len(items),
            )
        return kept

    def _protocol_error(self, message: str, url: URL) -> WaldurProtocolError:
        return self._failure(WaldurProtocolError(message, path=url.path))

    def _failure(self, error: E) -> E:
        self.stats.failures += 1
        log.debug("Waldur call failed: %s", error)
        if self.on_outcome is not None:
            self.on_outcome(error)
        return error


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve the outcome of a read-ahead nobody waits for (no "never retrieved" warning)."""
    if not future.cancelled():
        future.exception()


def _query_pairs(params: QueryParams) -> Iterable[tuple[str, str]]:
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, str):
            yield key, value
        elif isinstance(value, bool):
            yield key, "true" if value else "false"
        elif isinstance(value, int | float):
            yield key, str(value)
        else:
            # Waldur reads repeated parameters as a multi-value filter (state=a&state=b).
            for item in value:
                yield key, item


def _repeatable_after(method: str, exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ClientSSLError):
        return False  # a TLS failure is a configuration problem that repeating will not fix
    if method in _IDEMPOTENT:
        return True
    # A failed connect never reached Waldur, so even a POST can be repeated.
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None  # unreadable: fall back to our own backoff
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _detail(body: bytes) -> str:
    """A short human-readable reason from a DRF error body ({"detail": ...} or field errors)."""
    text: str
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        text = body.decode("utf-8", "replace").strip() or "empty body"
    else:
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            text = data["detail"]
        else:
            text = json.dumps(data, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


def _describe_exception(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
