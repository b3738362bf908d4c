"""Records the simulator keeps; field names follow Waldur's Django models."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(eq=False)
class User:
    uuid: str
    username: str
    full_name: str
    email: str
    slug: str
    date_joined: datetime
    is_staff: bool = False
    is_support: bool = False
    is_active: bool = True
    # Waldur stamps the 1 h default on every new user; a service account sets it to None.
    token_lifetime: int | None = 3600
    native_name: str = ""

    @property
    def first_name(self) -> str:
        return self.full_name.split(" ", 1)[0] if self.full_name else ""

    @property
    def last_name(self) -> str:
        parts = self.full_name.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""


@dataclass(eq=False)
class Token:
    key: str
    user: User
    created: float  # simulator clock seconds; refreshed on use like Waldur's sliding expiry


@dataclass(frozen=True)
class Image:
    """An uploaded image (Django ImageField): served under /media/<folder>/<name>."""

    folder: str
    name: str
    data: bytes
    content_type: str  # what the server claims (a test can make it lie about data)
    # Hostile or broken servers, for the bridge's guards: a redirect to this URL instead of
    # the picture, or data followed by zeros up to this many bytes, produced as it is sent.
    redirect_to: str | None = None
    streamed_size: int | None = None


@dataclass(eq=False)
class Customer:
    uuid: str
    name: str
    slug: str
    created: datetime
    abbreviation: str = ""
    native_name: str = ""
    contact_details: str = ""
    email: str = ""
    blocked: bool = False
    archived: bool = False
    description: str = ""
    image: Image | None = None

    scope_type = "customer"


@dataclass(eq=False)
class Project:
    uuid: str
    name: str
    slug: str
    customer: Customer
    created: datetime
    description: str = ""
    end_date: date | None = None
    is_removed: bool = False
    image: Image | None = None

    scope_type = "project"


@dataclass(eq=False)
class Role:
    uuid: str
    name: str
    scope_type: str
    description: str = ""
    is_system: bool = True
    is_active: bool = True


@dataclass(eq=False)
class Grant:
    """A `permissions.UserRole` row."""

    uuid: str
    seq: int  # creation order, the model's default ordering
    user: User
    role: Role
    scope: Customer | Project
    created: datetime
    created_by: User | None
    expiration_time: datetime | None = None
    is_active: bool = True
    revoked_by: User | None = None

    @property
    def customer(self) -> Customer:
        return self.scope if isinstance(self.scope, Customer) else self.scope.customer


@dataclass(eq=False)
class Offering:
    uuid: str
    name: str
    type: str
    provider_name: str
    provider_uuid: str
    category_title: str
    category_uuid: str
    plan_uuid: str
    plan_name: str = "default"


@dataclass(eq=False)
class Resource:
    uuid: str
    name: str
    slug: str
    project: Project
    offering: Offering
    state: str
    created: datetime
    modified: datetime
    error_message: str = ""
    end_date: date | None = None


@dataclass(eq=False)
class Order:
    uuid: str
    project: Project
    offering: Offering
    resource: Resource | None
    type: str
    state: str
    created: datetime
    modified: datetime
    created_by: User | None
    consumer_reviewed_by: User | None = None
    consumer_reviewed_at: datetime | None = None
    provider_reviewed_by: User | None = None
    provider_reviewed_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str = ""
    cost: str = "0.0000000000"
    attributes: dict[str, object] = field(default_factory=dict)


@dataclass(eq=False)
class Event:
    uuid: str
    created: datetime
    ts: float
    event_type: str
    message: str
    context: dict[str, str]
    feeds: frozenset[str]  # uuids of the objects the event is linked to (Waldur's Feed rows)


@dataclass(eq=False)
class Hook:
    uuid: str
    user: User
    destination_url: str
    event_types: list[str]
    event_groups: list[str]
    content_type: str
    created: datetime
    modified: datetime
    is_active: bool = True
    last_published: datetime | None = None
