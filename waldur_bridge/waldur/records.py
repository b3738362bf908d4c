"""Typed records for the Waldur objects the bridge reads, with Waldur's own field names.

Each ``from_api`` validates what the bridge depends on and raises ``WaldurProtocolError`` when a
required field is missing or has the wrong type: a half-understood answer must never turn into a
membership decision. Optional fields that some Waldur versions leave out get neutral defaults.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Self, TypeVar

from .errors import WaldurProtocolError

__all__ = [
    "Customer",
    "Event",
    "Order",
    "Project",
    "Resource",
    "RoleGrant",
    "User",
    "WebHook",
    "normalize_uuid",
    "parse_time",
]

_UUID_RE = re.compile(
    r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)
# Waldur renders Python's None into event context strings; "" means the same.
_ABSENT_CONTEXT_VALUES = frozenset({"", "None"})

T = TypeVar("T")


def normalize_uuid(value: str) -> str:
    """Return ``value`` as lowercase 32-hex: Waldur sends undashed hex, configs may use dashes."""
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise ValueError(f"not a UUID: {value!r}")
    return value.replace("-", "").lower()


def parse_time(value: str | None) -> datetime | None:
    """Parse a Waldur timestamp into an aware UTC datetime (``Z`` and ``+00:00`` both occur)."""
    if value is None:
        return None
    return _parse_aware_time(value)


def _parse_aware_time(value: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp string: {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        # A naive time would be compared against aware "now" values: refuse rather than guess.
        raise ValueError(f"timestamp has no time zone: {value!r}")
    return parsed.astimezone(UTC)


# --- field readers: each names the record and field in its error -------------------------------


def _fail(kind: str, key: str, problem: str, data: Mapping[str, Any]) -> WaldurProtocolError:
    ident = data.get("uuid")
    suffix = f" (uuid {ident})" if isinstance(ident, str) else ""
    return WaldurProtocolError(f"{kind}: field {key!r} {problem}{suffix}")


def _check_mapping(kind: str, data: object) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise WaldurProtocolError(f"{kind}: expected a JSON object, got {type(data).__name__}")
    return data


def _req_str(kind: str, data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        problem = "is missing" if value is None else f"is not a string ({value!r})"
        raise _fail(kind, key, problem, data)
    return value


def _opt_str(kind: str, data: Mapping[str, Any], key: str, default: str = "") -> str:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise _fail(kind, key, f"is not a string ({value!r})", data)
    return value


def _opt_str_or_none(kind: str, data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _fail(kind, key, f"is not a string ({value!r})", data)
    return value


def _req_bool(kind: str, data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        problem = "is missing" if value is None else f"is not a boolean ({value!r})"
        raise _fail(kind, key, problem, data)
    return value


def _opt_bool(kind: str, data: Mapping[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise _fail(kind, key, f"is not a boolean ({value!r})", data)
    return value


def _opt_int(kind: str, data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    # bool is an int subclass; a boolean here is a type error, not a number.
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _fail(kind, key, f"is not an integer ({value!r})", data)
    return value


def _parsed(kind: str, data: Mapping[str, Any], key: str, parse: Callable[[str], T]) -> T:
    raw = _req_str(kind, data, key)
    try:
        return parse(raw)
    except ValueError as exc:
        raise _fail(kind, key, f"is invalid: {exc}", data) from exc


def _req_uuid(kind: str, data: Mapping[str, Any], key: str) -> str:
    return _parsed(kind, data, key, normalize_uuid)


def _opt_uuid(kind: str, data: Mapping[str, Any], key: str) -> str | None:
    if data.get(key) is None:
        return None
    return _req_uuid(kind, data, key)


def _req_time(kind: str, data: Mapping[str, Any], key: str) -> datetime:
    return _parsed(kind, data, key, _parse_aware_time)


def _opt_time(kind: str, data: Mapping[str, Any], key: str) -> datetime | None:
    if data.get(key) is None:
        return None
    return _req_time(kind, data, key)


def _parse_date(value: str) -> date:
    # 7.0 sends "YYYY-MM-DD"; accept a full timestamp too in case a version widens the type.
    try:
        return date.fromisoformat(value)
    except ValueError:
        return _parse_aware_time(value).date()


def _opt_date(kind: str, data: Mapping[str, Any], key: str) -> date | None:
    if data.get(key) is None:
        return None
    return _parsed(kind, data, key, _parse_date)


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Customer:
    """A Waldur organization (``/api/customers/``)."""

    uuid: str
    name: str
    slug: str
    abbreviation: str
    description: str
    # URL of the organization's logo, or None.
    image: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        kind = cls.__name__
        data = _check_mapping(kind, data)
        return cls(
            uuid=_req_uuid(kind, data, "uuid"),
            name=_req_str(kind, data, "name"),
            slug=_opt_str(kind, data, "slug"),
            abbreviation=_opt_str(kind, data, "abbreviation"),
            description=_opt_str(kind, data, "description"),
            image=_opt_str_or_none(kind, data, "image") or None,
        )


@dataclass(frozen=True, slots=True)
class Project:
    """A Waldur project (``/api/projects/``); one portal room each."""

    uuid: str
    name: str
    slug: str
    description: str
    customer_uuid: str
    customer_name: str
    is_removed: bool
    end_date: date | None
    # URL of the project's image, or None.
    image: str | None = None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        kind = cls.__name__
        data = _check_mapping(kind, data)
        return cls(
            uuid=_req_uuid(kind, data, "uuid"),
            name=_req_str(kind, data, "name"),
            slug=_opt_str(kind, data, "slug"),
            description=_opt_str(kind, data, "description"),
            customer_uuid=_req_uuid(kind, data, "customer_uuid"),
            customer_name=_opt_str(kind, data, "customer_name"),
            # 7.0 has no is_removed: soft-deleted projects are simply not listed there.
            is_removed=bool(_opt_bool(kind, data, "is_removed")),
            end_date=_opt_date(kind, data, "end_date"),
            image=_opt_str_or_none(kind, data, "image") or None,
        )


@dataclass(frozen=True, slots=True)
class User:
    """A Waldur user (``/api/users/``)."""

    uuid: str
    username: str
    full_name: str
    email: str
    is_active: bool
    is_staff: bool
    is_support: bool
    # None means "never expires" where Waldur shows it; Waldur hides it from most callers.
    token_lifetime: int | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        kind = cls.__name__
        data = _check_mapping(kind, data)
        return cls(
            uuid=_req_uuid(kind, data, "uuid"),
            username=_req_str(kind, data, "username"),
            full_name=_opt_str(kind, data, "full_name"),
            email=_opt_str(kind, data, "email"),
            # Required: inactive users hold no access, so "unknown" must not default to active.
            is_active=_req_bool(kind, data, "is_active"),
            is_staff=bool(_opt_bool(kind, data, "is_staff")),
            is_support=bool(_opt_bool(kind, data, "is_support")),
            token_lifetime=_opt_int(kind, data, "token_lifetime"),
        )


@dataclass(frozen=True, slots=True)
class RoleGrant:
    """One role held by one user on one scope (project, customer, offering, ...)."""

    user_uuid: str
    role_name: str
    scope_type: str
    scope_uuid: str
    expiration_time: datetime | None
    # Absent in 7.0, where a revoked grant shows only as an expiration_time in the past.
    is_active: bool | None
    customer_uuid: str | None
    user_username: str
    user_full_name: str
    user_email: str
    created: datetime | None
    # Who granted and who revoked it, by name, where Waldur says (``why`` shows them).
    created_by: str = ""
    revoked_by: str = ""

    def is_effective(self, now: datetime) -> bool:
        """True if the grant gives access at ``now`` (aware); expired grants count as revoked."""
        if self.is_active is False:
            return False
        return self.expiration_time is None or self.expiration_time > now

    @classmethod
    def from_permission(cls, data: Mapping[str, Any]) -> Self:
        """Build from an ``/api/user-permissions/`` item."""
        kind = f"{cls.__name__} (user-permissions)"
        data = _check_mapping(kind, data)
        scope_type = _req_str(kind, data, "scope_type")
        scope_uuid = _req_uuid(kind, data, "scope_uuid")
        customer_uuid = _opt_uuid(kind, data, "customer_uuid")
        if customer_uuid is None and scope_type == "customer":
            # 7.0 leaves customer_uuid out of customer-scope items; the scope is the customer.
            customer_uuid = scope_uuid
        return cls(
            user_uuid=_req_uuid(kind, data, "user_uuid"),
            role_name=_req_str(kind, data, "role_name"),
            scope_type=scope_type,
            scope_uuid=scope_uuid,
            expiration_time=_opt_time(kind, data, "expiration_time"),
            is_active=_opt_bool(kind, data, "is_active"),
            customer_uuid=customer_uuid,
            user_username=_opt_str(kind, data, "user_username"),
            # This endpoint calls the full name "user_name".
            user_full_name=_opt_str(
                kind, data, "user_full_name", _opt_str(kind, data, "user_name")
            ),
            user_email=_opt_str(kind, data, "user_email"),
            created=_opt_time(kind, data, "created"),
            created_by=_opt_str(
                kind, data, "created_by_full_name", _opt_str(kind, data, "created_by_username")
            ),
            revoked_by=_opt_str(
                kind, data, "revoked_by_full_name", _opt_str(kind, data, "revoked_by_username")
            ),
        )

    @classmethod
    def from_scope_list(cls, data: Mapping[str, Any], scope_type: str, scope_uuid: str) -> Self:
        """Build from a ``/api/{projects,customers}/{uuid}/list_users/`` item of that scope."""
        kind = f"{cls.__name__} ({scope_type} list_users)"
        data = _check_mapping(kind, data)
        scope_uuid = normalize_uuid(scope_uuid)
        return cls(
            user_uuid=_req_uuid(kind, data, "user_uuid"),
            role_name=_req_str(kind, data, "role_name"),
            scope_type=scope_type,
            scope_uuid=scope_uuid,
            expiration_time=_opt_time(kind, data, "expiration_time"),
            is_active=_opt_bool(kind, data, "is_active"),
            customer_uuid=scope_uuid if scope_type == "customer" else None,
            user_username=_opt_str(kind, data, "user_username"),
            user_full_name=_opt_str(kind, data, "user_full_name"),
            user_email=_opt_str(kind, data, "user_email"),
            created=_opt_time(kind, data, "created"),
            created_by=_opt_str(kind, data, "created_by_full_name"),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """A Waldur event, from ``/api/events/`` or a web hook body (which has no uuid)."""

    uuid: str | None
    created: datetime
    event_type: str
    message: str
    context: dict[str, str]

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        kind = cls.__name__
        data = _check_mapping(kind, data)
        raw_context = data.get("context")
        if raw_context is None:
            context: dict[str, str] = {}
        elif isinstance(raw_context, Mapping):
            # Waldur stringifies scalars itself (str(None) == "None"); do the same for any stray.
            context = {str(k): v if isinstance(v, str) else str(v) for k, v in raw_context.items()}
        else:
            raise _fail(kind, "context", f"is not an object ({type(raw_context).__name__})", data)
        return cls(
            uuid=_opt_uuid(kind, data, "uuid"),
            created=_req_time(kind, data, "created"),
            event_type=_req_str(kind, data, "event_type"),
            message=_opt_str(kind, data, "message"),
            context=context,
        )

    def _context_uuid(self, key: str) -> str | None:
        value = self.context.get(key)
        if value is None or value in _ABSENT_CONTEXT_VALUES:
            return None
        try:
            return normalize_uuid(value)
        except ValueError:
            return None  # not a UUID: the event names nothing we can look up

    def _collect(self, keys: tuple[str, ...], scope_type: str | None) -> tuple[str, ...]:
        found: dict[str, None] = {}  # ordered set
        if scope_type is not None and self.context.get("scope_type") == scope_type:
            uuid = self._context_uuid("scope_uuid")
            if uuid is not None:
                found[uuid] = None
        for key in keys:
            uuid = self._context_uuid(key)
            if uuid is not None:
                found[uuid] = None
        return tuple(found)

    def project_uuids(self) -> tuple[str, ...]:
        """Projects the event names: a role event's project scope, or a project event's project."""
        return self._collect(("project_uuid",), "project")

    def customer_uuids(self) -> tuple[str, ...]:
        """Customers the event names, including the customer of a project-scope event."""
        return self._collect(("customer_uuid",), "customer")

    def user_uuids(self) -> tuple[str, ...]:
        """Users the event is about; ``user_uuid`` is the actor, so only ``affected_user_uuid``."""
        return self._collect(("affected_user_uuid",), None)

    def dedup_key(self) -> str:
        """A stable key: the event uuid, or a content digest when there is none (web hooks)."""
        if self.uuid is not None:
            return self.uuid
        material = json.dumps(
            [self.event_type, self.created.isoformat(), self.context],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return "sha256:" + hashlib.sha256(material.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Order:
    """A marketplace order (``/api/marketplace-orders/``); type and state stay API strings."""

    uuid: str
    created: datetime
    state: str
    type: str
    resource_name: str
    offering_name: str
    project_uuid: str
    created_by_full_name: str
    created_by_username: str
    consumer_reviewed_by_full_name: str | None
    error_message: str

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        kind = cls.__name__
        data = _check_mapping(kind, data)
        return cls(
            uuid=_req_uuid(kind, data, "uuid"),
            created=_req_time(kind, data, "created"),
            state=_req_str(kind, data, "state"),
            type=_req_str(kind, data, "type"),
            resource_name=_opt_str(kind, data, "resource_name"),
            offering_name=_opt_str(kind, data, "offering_name"),
            project_uuid=_req_uuid(kind, data, "project_uuid"),
            created_by_full_name=_opt_str(kind, data, "created_by_full_name"),
            created_by_username=_opt_str(kind, data, "created_by_username"),
            consumer_reviewed_by_full_name=_opt_str_or_none(
                kind, data, "consumer_reviewed_by_full_name"
            ),
            error_message=_opt_str(kind, data, "error_message"),
        )


@dataclass(frozen=True, slots=True)
class Resource:
    """A marketplace resource (``/api/marketplace-resources/``); state stays the API string."""

    uuid: str
    name: str
    state: str
    project_uuid: str
    offering_name: str
    created: datetime | None

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        kind = cls.__name__
        data = _check_mapping(kind, data)
        return cls(
            uuid=_req_uuid(kind, data, "uuid"),
            name=_opt_str(kind, data, "name"),
            state=_req_str(kind, data, "state"),
            project_uuid=_req_uuid(kind, data, "project_uuid"),
            offering_name=_opt_str(kind, data, "offering_name"),
            created=_opt_time(kind, data, "created"),
        )


@dataclass(frozen=True, slots=True)
class WebHook:
    """A web hook registration (``/api/hooks-web/``); Waldur expands groups into event_types."""

    uuid: str
    destination_url: str
    event_types: tuple[str, ...]
    is_active: bool

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Self:
        kind = cls.__name__
        data = _check_mapping(kind, data)
        event_types = data.get("event_types")
        if event_types is None:
            event_types = []
        if not isinstance(event_types, list) or not all(isinstance(t, str) for t in event_types):
            raise _fail(kind, "event_types", f"is not a list of strings ({event_types!r})", data)
        return cls(
            uuid=_req_uuid(kind, data, "uuid"),
            destination_url=_req_str(kind, data, "destination_url"),
            event_types=tuple(event_types),
            is_active=_req_bool(kind, data, "is_active"),
        )
