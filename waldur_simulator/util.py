"""Small helpers that reproduce Django/DRF formatting details Waldur clients can observe."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_DASHED = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)


def norm_uuid(value: str | None) -> str | None:
    """Waldur accepts dashed and plain UUIDs in filters; return 32 lowercase hex or None."""
    if not value or not _DASHED.match(value.strip()):
        return None
    return value.strip().replace("-", "").lower()


def iso_z(value: datetime | date | None) -> str | None:
    """DRF renders aware UTC datetimes as ISO 8601 with a trailing Z."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        return value.isoformat()
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def to_utc(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
        if value is None:
            raise ValueError("not an ISO 8601 datetime")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def parse_datetime(text: str) -> datetime | None:
    """Inputs DRF's DateTimeField(input_formats=["%Y-%m-%d", "iso-8601"]) accepts."""
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def log_str(value: Any) -> str:
    """Event context values are strings in Waldur: "True", "None", "3600", ISO dates."""
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def jsonb_order(context: dict[str, str]) -> dict[str, str]:
    """Event contexts come out of PostgreSQL jsonb, which orders keys by length, then bytes."""
    return {k: context[k] for k in sorted(context, key=lambda k: (len(k.encode()), k.encode()))}


_SLUG_STRIP = re.compile(r"[^\w\s-]")
_SLUG_DASH = re.compile(r"[-\s]+")


def slug_base(name: str) -> str:
    """Waldur slugs: django slugify, cut to 8 characters, then a counter ("acme-926-1")."""
    text = _SLUG_DASH.sub("-", _SLUG_STRIP.sub("", name.lower())).strip("-_")
    return text[:8] or "x"


def remove_query_param(url: str, key: str) -> str:
    """rest_framework.utils.urls.remove_query_param: parameters come back sorted by key."""
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    params.pop(key, None)
    return urlunsplit(
        (scheme, netloc, path, urlencode(sorted(params.items()), doseq=True), fragment)
    )


def replace_query_param(url: str, key: str, value: Any) -> str:
    scheme, netloc, path, query, fragment = urlsplit(url)
    params = parse_qs(query, keep_blank_values=True)
    params[key] = [str(value)]
    return urlunsplit(
        (scheme, netloc, path, urlencode(sorted(params.items()), doseq=True), fragment)
    )


def parse_bool(value: str | None) -> bool | None:
    """django-filter BooleanWidget: true/false/1/0; anything else means "no filter"."""
    if value is None:
        return None
    return {"true": True, "1": True, "false": False, "0": False}.get(value.strip().lower())
