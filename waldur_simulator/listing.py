"""DRF plumbing as Waldur configures it: JSON rendering, errors, LinkHeaderPagination,
`field=` selection and `o=` ordering."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from aiohttp import web

from .util import remove_query_param, replace_query_param

DEFAULT_PAGE_SIZE = 10


class ApiError(Exception):
    """Raised by handlers; rendered as a DRF error response."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


class ListingCache:
    """The filtered and ordered items of a listing, kept for the requests of its other pages.

    A client reads a listing page by page; building the list again for each page made every
    page cost as much as the whole listing (1,000 pages of 100,000 grants: 100 million grant
    checks per sweep). The key holds the state's revision of what is listed, so any change is
    seen by the next request, as on a database.
    """

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.hits = 0
        self.builds = 0
        self._entries: OrderedDict[Hashable, list[Any]] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], list[Any]]) -> list[Any]:
        items = self._entries.get(key)
        if items is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return items
        self.builds += 1
        items = build()
        self._entries[key] = items
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return items


def listing_key(request: web.Request, *parts: Hashable) -> tuple[Hashable, ...]:
    """What decides a listing's items: the path, the query without the page, and ``parts``."""
    query = tuple(
        sorted((k, v) for k, v in request.query.items() if k not in ("page", "page_size"))
    )
    return (request.path, query, *parts)


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # DRF's JSONRenderer is compact; Django sends plain "application/json" (no charset).
    body = (
        b""
        if data is None
        else json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    )
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def not_found(model: str) -> ApiError:
    return ApiError(404, {"detail": f"No {model} matches the given query."})


def forbidden() -> ApiError:
    return ApiError(403, {"detail": "You do not have permission to perform this action."})


def absolute_url(request: web.Request) -> str:
    """Django's build_absolute_uri(): scheme, Host header, raw path and query."""
    return f"{request.scheme}://{request.host}{request.raw_path}"


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def paginate(
    request: web.Request,
    items: Sequence[Any],
    serialize: Callable[[Any], dict[str, Any]],
    *,
    max_page_size: int,
    fields: bool = True,
) -> web.Response:
    """A page of `items` as a plain JSON array with X-Result-Count and Link headers."""
    query = request.query
    page_size = _positive_int(query.get("page_size")) or DEFAULT_PAGE_SIZE
    page_size = min(page_size, max_page_size)
    count = len(items)
    num_pages = max(1, math.ceil(count / page_size))
    raw_page = query.get("page", "1")
    if raw_page == "last":
        page = num_pages
    else:
        try:
            as_float = float(raw_page)
            page = int(as_float) if as_float.is_integer() else 0
        except ValueError:
            page = 0
        if page < 1 or page > num_pages:
            raise ApiError(404, {"detail": "Invalid page."})
    chunk = items[(page - 1) * page_size : page * page_size]
    data = [serialize(item) for item in chunk]
    if fields:
        data = [select_fields(request, d) for d in data]

    url = absolute_url(request)

    def link(number: int) -> str:
        if number == 1:
            return remove_query_param(url, "page")
        return replace_query_param(url, "page", number)

    links = [("first", remove_query_param(url, "page"))]
    if page > 1:
        links.append(("prev", link(page - 1)))
    if page < num_pages:
        links.append(("next", link(page + 1)))
    links.append(("last", link(num_pages)))
    headers = {
        "X-Result-Count": str(count),
        "Link": ", ".join(f'<{href}>; rel="{rel}"' for rel, href in links),
    }
    return json_response(data, headers=headers)


def select_fields(request: web.Request, data: dict[str, Any]) -> dict[str, Any]:
    """RestrictedSerializerMixin: `?field=a&field=b` keeps those keys, in serializer order."""
    wanted = {f for f in request.query.getall("field", []) if f}
    if not wanted:
        return data
    return {k: v for k, v in data.items() if k in wanted}


def order_items(
    request: web.Request,
    items: list[Any],
    allowed: dict[str, Callable[[Any], Any]],
) -> list[Any]:
    """django-filter OrderingFilter: `o=a,-b` (the last `o` wins); unknown names give 400."""
    values = request.query.getall("o", [])
    if not values:
        return items
    names = [n.strip() for n in values[-1].split(",") if n.strip()]
    for name in names:
        if name.lstrip("-") not in allowed:
            raise ApiError(
                400, {"o": [f"Select a valid choice. {name} is not one of the available choices."]}
            )
    result = list(items)
    for name in reversed(names):  # successive stable sorts, least significant first
        key = allowed[name.lstrip("-")]
        result.sort(key=lambda item, key=key: _none_last(key(item)), reverse=name.startswith("-"))
    return result


def _none_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


def multi(request: web.Request, name: str) -> list[str]:
    """A repeatable filter (`state=a&state=b`); empty values are ignored like django-filter."""
    return [v for v in request.query.getall(name, []) if v]


async def read_json(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, {"detail": f"JSON parse error - {exc}"}) from exc
    if not isinstance(body, dict):
        raise ApiError(
            400,
            {"non_field_errors": ["Invalid data. Expected a dictionary, but got list."]},
        )
    return body
