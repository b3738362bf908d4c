"""In-memory Waldur: the records, their indexes, and a Python control API that emits events.

Every mutating method behaves like the matching Waldur code path: it changes the records and
logs the same events, with the actor taken from `acting_as` (Waldur takes it from the request
middleware). Events are handed to `listeners`; the server uses that to deliver web hooks.
"""

from __future__ import annotations

import bisect
import random
import secrets
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from . import catalog
from .models import (
    Customer,
    Event,
    Grant,
    Hook,
    Image,
    Offering,
    Order,
    Project,
    Resource,
    Role,
    Token,
    User,
)
from .util import jsonb_order, log_str, norm_uuid, slug_base, to_utc

GENERATIONS = ("7.0", "current")
_STAFF_IP = "127.0.0.1"


class SimulatorState:
    """All records of one simulated Waldur plus the control API used by tests and the demo."""

    def __init__(self, generation: str = "current", *, seed: int | None = None) -> None:
        if generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {GENERATIONS}")
        self.generation = generation
        self._rng = random.Random(seed) if seed is not None else None
        # Seconds added to the wall clock; lets tests make grants expire without sleeping.
        self.clock_offset = 0.0
        self.users: dict[str, User] = {}
        self.users_by_username: dict[str, User] = {}
        self.customers: dict[str, Customer] = {}
        self.projects: dict[str, Project] = {}
        self.projects_by_customer: dict[str, list[Project]] = {}
        self.roles: dict[str, Role] = {}
        self.roles_by_name: dict[str, Role] = {}
        self.grants: dict[str, Grant] = {}
        self.grant_list: list[Grant] = []  # creation order
        self.grants_by_scope: dict[str, list[Grant]] = {}
        self.grants_by_user: dict[str, list[Grant]] = {}
        # Bumped by every change to the users or the grants: listings keep their filtered and
        # ordered items between pages until one of these moves (see app.ListingCache).
        self.users_revision = 0
        self.grants_revision = 0
        self.offerings: dict[str, Offering] = {}
        self.offerings_by_name: dict[str, Offering] = {}
        self.resources: dict[str, Resource] = {}
        self.resources_by_project: dict[str, list[Resource]] = {}
        self.orders: dict[str, Order] = {}
        self.events: list[Event] = []  # ascending `created`
        self._event_ts: list[float] = []
        self.events_by_uuid: dict[str, Event] = {}
        self.hooks: dict[str, Hook] = {}
        # Bytes of images the media URLs sent (a client that stops reading stops the count).
        self.media_bytes_sent = 0
        self.tokens: dict[str, Token] = {}
        self._token_of_user: dict[str, str] = {}
        # Password sign-in (POST /api-auth/password/): salted hashes by user uuid, the
        # failures per (username, address) with when they are forgotten, and the site switch.
        self._passwords: dict[str, tuple[bytes, bytes]] = {}
        self._signin_failures: dict[tuple[str, str], tuple[int, float]] = {}
        self.local_signin_enabled = True
        self.password_logins = 0
        self._slugs: dict[str, int] = {}
        self._grant_seq = 0
        self._last_ts = 0.0
        self._quiet = 0
        self.listeners: list[Callable[[Event], None]] = []
        for name, scope_type in catalog.SYSTEM_ROLES:
            self.add_role(name, scope_type, system=True)
        with self.quiet():
            self.staff_uuid = self.add_user(
                "staff",
                "Staff Admin",
                email="staff@example.com",
                is_staff=True,
                token_lifetime=None,
            )
        self.staff_token = self.token_for(self.staff_uuid)
        # Control-API changes look like a staff user working in the UI, as in the live samples.
        self._actor: User | None = self.users[self.staff_uuid]
        self._ip: str | None = _STAFF_IP

    # ----------------------------------------------------------------- ids, clock, context

    def new_uuid(self) -> str:
        if self._rng is None:
            return uuidlib.uuid4().hex
        return uuidlib.UUID(int=self._rng.getrandbits(128), version=4).hex

    def _new_token_key(self) -> str:
        if self._rng is None:
            return secrets.token_hex(20)
        return f"{self._rng.getrandbits(160):040x}"

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset)

    def advance_clock(self, seconds: float) -> None:
        self.clock_offset += seconds

    def _slug(self, name: str) -> str:
        base = slug_base(name)
        self._slugs[base] = self._slugs.get(base, 0) + 1
        return f"{base}-{self._slugs[base]}"

    @contextmanager
    def acting_as(
        self, user_uuid: str | None, ip_address: str | None = _STAFF_IP
    ) -> Iterator[None]:
        """Actor for events logged inside the block; None = a background task (no user_*)."""
        saved = self._actor, self._ip
        self._actor = self.users[user_uuid] if user_uuid else None
        self._ip = ip_address if user_uuid else None
        try:
            yield
        finally:
            self._actor, self._ip = saved

    @contextmanager
    def quiet(self) -> Iterator[None]:
        """Change records without logging events (bulk seeding)."""
        self._quiet += 1
        try:
            yield
        finally:
            self._quiet -= 1

    # ----------------------------------------------------------------- lookups

    def user(self, uuid: str) -> User:
        key = norm_uuid(uuid)
        if key is None or key not in self.users:
            raise KeyError(f"no user {uuid}")
        return self.users[key]

    def customer(self, uuid: str) -> Customer:
        key = norm_uuid(uuid)
        if key is None or key not in self.customers:
            raise KeyError(f"no customer {uuid}")
        return self.customers[key]

    def project(self, uuid: str) -> Project:
        key = norm_uuid(uuid)
        if key is None or key not in self.projects:
            raise KeyError(f"no project {uuid}")
        return self.projects[key]

    def scope(self, uuid: str) -> Customer | Project:
        key = norm_uuid(uuid) or ""
        if key in self.projects:
            return self.projects[key]
        if key in self.customers:
            return self.customers[key]
        raise KeyError(f"no customer or project {uuid}")

    def role(self, name_or_uuid: str) -> Role:
        role = self.roles_by_name.get(name_or_uuid) or self.roles.get(
            norm_uuid(name_or_uuid) or ""
        )
        if role is None:
            raise KeyError(f"no role {name_or_uuid}")
        return role

    def active_grants(self, scope_uuid: str) -> list[Grant]:
        return [g for g in self.grants_by_scope.get(scope_uuid, ()) if g.is_active]

    def find_grants(
        self, user_uuid: str, scope_uuid: str, role_name: str | None = None, *, active: bool = True
    ) -> list[Grant]:
        user, scope = self.user(user_uuid), norm_uuid(scope_uuid)
        return [
            g
            for g in self.grants_by_user.get(user.uuid, ())
            if g.scope.uuid == scope
            and (role_name is None or g.role.name == role_name or g.role.uuid == role_name)
            and (not active or g.is_active)
        ]

    # ----------------------------------------------------------------- events

    def _emit(
        self, event_type: str, message: str, context: dict[str, Any], feeds: set[str]
    ) -> Event | None:
        if self._quiet:
            return None
        full: dict[str, Any] = {}
        if self._actor is not None:
            # Waldur's middleware puts the requesting user and IP into every event's context.
            full.update(_user_ctx("user", self._actor))
            full["ip_address"] = self._ip
        full.update(context)
        now = self.now()
        ts = now.timestamp()
        if ts <= self._last_ts:  # keep `created` strictly increasing for created_from polling
            ts = self._last_ts + 1e-6
            now = datetime.fromtimestamp(ts, UTC)
        self._last_ts = ts
        event = Event(
            uuid=self.new_uuid(),
            created=now,
            ts=ts,
            event_type=event_type,
            message=message,
            context=jsonb_order({k: log_str(v) for k, v in full.items()}),
            feeds=frozenset(feeds),
        )
        self.events.append(event)
        self._event_ts.append(ts)
        self.events_by_uuid[event.uuid] = event
        for listener in list(self.listeners):
            listener(event)
        return event

    def events_between(self, start: float | None, end: float | None) -> list[Event]:
        lo = 0 if start is None else bisect.bisect_left(self._event_ts, start)
        hi = len(self.events) if end is None else bisect.bisect_left(self._event_ts, end)
        return self.events[lo:hi]

    def _log_role(self, event_type: str, grant: Grant, message: str) -> None:
        scope = grant.scope
        ctx: dict[str, Any] = (
            _project_ctx("scope", scope)
            if isinstance(scope, Project)
            else _customer_ctx("scope", scope)
        )
        ctx.update(
            scope_type=scope.scope_type,
            scope_uuid=scope.uuid,
            scope_name=scope.name,
            **_customer_ctx("customer", grant.customer),
            **_user_ctx("affected_user", grant.user),
            role_name=grant.role.name,
        )
        self._emit(event_type, message, ctx, {scope.uuid, grant.customer.uuid})

    def _log_project(self, event_type: str, project: Project, message: str) -> None:
        ctx = _project_ctx("project", project)
        self._emit(event_type, message, ctx, {project.uuid, project.customer.uuid})

    def _log_user(self, event_type: str, user: User, message: str) -> None:
        self._emit(event_type, message, _user_ctx("affected_user", user), {user.uuid})

    # ----------------------------------------------------------------- users and tokens

    def add_user(
        self,
        username: str,
        full_name: str,
        email: str | None = None,
        is_staff: bool = False,
        *,
        is_support: bool = False,
        token_lifetime: int | None = 3600,
        native_name: str = "",
    ) -> str:
        if username in self.users_by_username:
            raise ValueError(f"username {username!r} is taken")
        user = User(
            uuid=self.new_uuid(),
            username=username,
            full_name=full_name,
            email=email if email is not None else f"{username}@example.org",
            slug=self._slug(username),
            date_joined=self.now(),
            is_staff=is_staff,
            is_support=is_support,
            token_lifetime=token_lifetime,
            native_name=native_name,
        )
        self.users[user.uuid] = user
        self.users_by_username[username] = user
        self.users_revision += 1
        self._log_user("user_creation_succeeded", user, f"User {username} has been created.")
        return user.uuid

    def deactivate_user(self, uuid: str) -> None:
        """Like Waldur, deactivation keeps the user's grants (is_active stays true on them)."""
        user = self.user(uuid)
        if user.is_active:
            user.is_active = False
            self.users_revision += 1
            self._log_user("user_deactivated", user, f"User {user.username} has been deactivated.")

    def activate_user(self, uuid: str) -> None:
        user = self.user(uuid)
        if not user.is_active:
            user.is_active = True
            self.users_revision += 1
            self._log_user("user_activated", user, f"User {user.username} has been activated.")

    def token_for(self, user_uuid: str) -> str:
        """The user's DRF token (40 hex), created on first use."""
        user = self.user(user_uuid)
        key = self._token_of_user.get(user.uuid)
        if key is None:
            key = self._new_token_key()
            self.tokens[key] = Token(key=key, user=user, created=self._clock())
            self._token_of_user[user.uuid] = key
        return key

    def set_password(self, user_uuid: str, password: str | None) -> None:
        """Give a user a password (None: none, as for people who sign in through an IdP)."""
        user = self.user(user_uuid)
        if password is None:
            self._passwords.pop(user.uuid, None)
            return
        salt = secrets.token_bytes(16)
        self._passwords[user.uuid] = (salt, _hash_password(salt, password))

    def password_login(
        self, username: Any, password: Any, source_ip: str
    ) -> tuple[int, dict[str, Any]]:
        """What Waldur's ObtainAuthToken answers (7.0.7 and current code read alike).

        Local sign-in off: 401. A missing field: 401 with field errors. Four failures for a
        username from one address lock that pair out for 10 minutes (every failure renews the
        10 minutes, as Django's cache.set does). Django's ModelBackend refuses inactive users
        like wrong passwords. Success answers the user's token, refreshed.
        """
        if not self.local_signin_enabled:
            return 401, {
                "detail": "Authentication method is disabled. "
                "Please use another authentication method or contact staff."
            }
        missing = {
            name: ["This field is required."]
            for name, value in (("username", username), ("password", password))
            if not isinstance(value, str) or not value
        }
        if missing:
            return 401, missing
        key = (username, source_ip)
        now = self._clock()
        failures, until = self._signin_failures.get(key, (0, 0.0))
        if until <= now:
            failures = 0
        if failures >= 4:
            return 401, {"detail": "Username is locked out. Try in 10 minutes."}
        user = self.users_by_username.get(username)
        stored = self._passwords.get(user.uuid) if user is not None else None
        valid = (
            user is not None
            and user.is_active
            and stored is not None
            and secrets.compare_digest(stored[1], _hash_password(stored[0], password))
        )
        if not valid:
            self._signin_failures[key] = (failures + 1, now + 600)
            dot = "" if self.generation == "7.0" else "."
            return 401, {"detail": f"Invalid username/password{dot}"}
        assert user is not None
        self._signin_failures.pop(key, None)
        self.password_logins += 1
        key_text = self.token_for(user.uuid)
        self.tokens[key_text].created = now  # refresh_token(): a fresh lifetime
        return 200, {"token": key_text}

    def expire_token(self, user_uuid: str) -> None:
        """Age the user's token past its lifetime (no effect when token_lifetime is None)."""
        key = self.token_for(user_uuid)
        self.tokens[key].created = -1e12

    def _clock(self) -> float:
        return time.time() + self.clock_offset

    def authenticate(self, key: str) -> User | str:
        """The user for a token key, or the DRF error detail."""
        token = self.tokens.get(key)
        if token is None:
            return "Invalid token."
        if not token.user.is_active:
            return "User inactive or deleted."
        lifetime = token.user.token_lifetime
        if lifetime is not None:
            age = self._clock() - token.created
            if age > lifetime:
                return "Token has expired."
            if age > lifetime / 2:  # sliding expiry, refreshed on use
                token.created = self._clock()
        return token.user

    # ----------------------------------------------------------------- customers and projects

    def add_customer(
        self,
        name: str,
        abbreviation: str = "",
        *,
        contact_details: str = "",
        email: str = "",
        description: str = "",
    ) -> str:
        customer = Customer(
            uuid=self.new_uuid(),
            name=name,
            slug=self._slug(name),
            created=self.now(),
            abbreviation=abbreviation,
            contact_details=contact_details,
            email=email,
            description=description,
        )
        self.customers[customer.uuid] = customer
        self._emit(
            "customer_creation_succeeded",
            f"Customer {name} has been created.",
            _customer_ctx("customer", customer),
            {customer.uuid},
        )
        return customer.uuid

    def add_project(
        self, customer_uuid: str, name: str, description: str = "", *, end_date: date | None = None
    ) -> str:
        customer = self.customer(customer_uuid)
        project = Project(
            uuid=self.new_uuid(),
            name=name,
            slug=self._slug(name),
            customer=customer,
            created=self.now(),
            description=description,
            end_date=end_date,
        )
        self.projects[project.uuid] = project
        self.projects_by_customer.setdefault(customer.uuid, []).append(project)
        self._log_project(
            "project_creation_succeeded", project, f"Project {name} has been created."
        )
        return project.uuid

    def rename_project(
        self, uuid: str, name: str | None = None, description: str | None = None
    ) -> None:
        """Emits project_update_succeeded listing the changed fields, as Waldur's tracker does."""
        project = self.project(uuid)
        changed: dict[str, str] = {}
        if name is not None and name != project.name:
            changed["name"] = project.name
            project.name = name
        if description is not None and description != project.description:
            changed["description"] = project.description
            project.description = description
        if not changed:
            return
        message = f"Project {project.name} has been updated."
        for field in sorted(changed):
            message += (
                f" {field.capitalize()} has been changed from '{changed[field]}' "
                f"to '{getattr(project, field)}'."
            )
        self._log_project("project_update_succeeded", project, message)

    def rename_customer(
        self, uuid: str, name: str | None = None, description: str | None = None
    ) -> None:
        """Emits customer_update_succeeded (structure's log_customer_save on an update)."""
        customer = self.customer(uuid)
        changed = False
        if name is not None and name != customer.name:
            customer.name = name
            changed = True
        if description is not None and description != customer.description:
            customer.description = description
            changed = True
        if changed:
            self._emit(
                "customer_update_succeeded",
                f"Customer {customer.name} has been updated.",
                _customer_ctx("customer", customer),
                {customer.uuid},
            )

    def set_image(
        self,
        scope_uuid: str,
        data: bytes | None,
        content_type: str = "image/png",
        *,
        redirect_to: str | None = None,
        streamed_size: int | None = None,
    ) -> str | None:
        """Upload (or with None remove) the image of a project or an organization, as its
        page in Waldur does. Each upload gets a new file name, like Django's storage; the
        update event names the changed field. Returns the media path, or None.

        ``content_type`` is what the media URL will claim, whatever ``data`` is;
        ``redirect_to`` makes it answer 302 to that URL; ``streamed_size`` makes it send
        ``data`` and then zeros up to that many bytes, generated while sending."""
        scope = self.scope(scope_uuid)
        image = None
        if data is not None:
            folder = "customer_images" if isinstance(scope, Customer) else "project_images"
            name = f"{scope.uuid[:8]}-{self.new_uuid()[:8]}.{content_type.rsplit('/', 1)[-1]}"
            image = Image(folder, name, data, content_type, redirect_to, streamed_size)
        scope.image = image
        if isinstance(scope, Project):
            message = f"Project {scope.name} has been updated. Image has been changed."
            self._log_project("project_update_succeeded", scope, message)
        else:
            self._emit(
                "customer_update_succeeded",
                f"Customer {scope.name} has been updated. Image has been changed.",
                _customer_ctx("customer", scope),
                {scope.uuid},
            )
        return None if image is None else f"/media/{image.folder}/{image.name}"

    def media(self, folder: str, name: str) -> Image | None:
        for scope in (*self.customers.values(), *self.projects.values()):
            image = scope.image
            if image is not None and image.folder == folder and image.name == name:
                return image
        return None

    def delete_project(self, uuid: str) -> None:
        """Soft delete: a role_revoked per grant, then project_update_succeeded, then
        project_deletion_succeeded; the project then 404s and leaves the lists."""
        project = self.project(uuid)
        if project.is_removed:
            raise KeyError(f"project {uuid} is already removed")
        # Waldur revokes through get_permissions(), which skips deactivated users: their
        # grants stay active on the removed project.
        for grant in self.active_grants(project.uuid):
            if grant.user.is_active:
                self._revoke(grant)
        project.is_removed = True
        self._log_project(
            "project_update_succeeded",
            project,
            f"Project {project.name} has been updated. "
            "Is_removed has been changed from 'False' to 'True'.",
        )
        self._log_project(
            "project_deletion_succeeded", project, f"Project {project.name} has been deleted."
        )

    # ----------------------------------------------------------------- roles and grants

    def add_role(
        self, name: str, scope_type: str, description: str = "", *, system: bool = False
    ) -> str:
        """A role such as a clone "PROJECT.<customer_slug>.MEMBER"; returns its uuid."""
        if name in self.roles_by_name:
            raise ValueError(f"role {name!r} exists")
        role = Role(self.new_uuid(), name, scope_type, description, is_system=system)
        self.roles[role.uuid] = role
        self.roles_by_name[name] = role
        return role.uuid

    def has_user(
        self, scope_uuid: str, user: User, role: Role, expiration_time: datetime | None
    ) -> bool:
        """permissions.utils.has_user: a "duplicate" depends on the requested expiry."""
        for g in self.grants_by_user.get(user.uuid, ()):
            if not (g.is_active and g.scope.uuid == scope_uuid and g.role is role):
                continue
            if expiration_time is None:
                if g.expiration_time is None:
                    return True
            elif g.expiration_time is None or g.expiration_time >= expiration_time:
                return True
        return False

    def grant(
        self,
        user_uuid: str,
        scope_uuid: str,
        role_name: str,
        expiration_time: datetime | str | None = None,
    ) -> str:
        """Add a grant (role_granted). The scope type is inferred; past expiry is allowed."""
        user, scope, role = self.user(user_uuid), self.scope(scope_uuid), self.role(role_name)
        if role.scope_type != scope.scope_type:
            raise ValueError("Role is not valid for this scope.")
        expires = to_utc(expiration_time)
        if self.has_user(scope.uuid, user, role, expires):
            raise ValueError("User has already the same role in this scope.")
        return self._add_grant(user, scope, role, expires).uuid

    def _add_grant(
        self,
        user: User,
        scope: Customer | Project,
        role: Role,
        expiration_time: datetime | None,
        created: datetime | None = None,
    ) -> Grant:
        self._grant_seq += 1
        grant = Grant(
            uuid=self.new_uuid(),
            seq=self._grant_seq,
            user=user,
            role=role,
            scope=scope,
            created=created or self.now(),
            created_by=self._actor,
            expiration_time=expiration_time,
        )
        self.grants[grant.uuid] = grant
        self.grant_list.append(grant)
        self.grants_revision += 1
        self.grants_by_scope.setdefault(scope.uuid, []).append(grant)
        self.grants_by_user.setdefault(user.uuid, []).append(grant)
        if not self._quiet:
            who = user.full_name or user.username
            self._log_role(
                "role_granted",
                grant,
                f"User {who} has gained role of {role.name} in {scope.name}.",
            )
        return grant

    def _revoke(self, grant: Grant) -> None:
        # UserRole.revoke(): is_active=False and expiration_time overwritten with "now".
        grant.is_active = False
        grant.expiration_time = self.now()
        grant.revoked_by = self._actor
        self.grants_revision += 1
        who = grant.user.full_name or grant.user.username
        self._log_role(
            "role_revoked",
            grant,
            f"User {who} has lost role of {grant.role.name} in {grant.scope.name}.",
        )

    def revoke(self, user_uuid: str, scope_uuid: str, role_name: str) -> str | None:
        """Revoke the oldest active matching grant (role_revoked); its uuid, or None."""
        grants = self.find_grants(user_uuid, scope_uuid, role_name)
        if not grants:
            return None
        self._revoke(grants[0])
        return grants[0].uuid

    def set_expiration(
        self,
        user_uuid: str,
        scope_uuid: str,
        role_name: str,
        expiration_time: datetime | str | None,
    ) -> str:
        """Change an active grant's expiry (role_updated); returns the grant uuid."""
        grants = self.find_grants(user_uuid, scope_uuid, role_name)
        if not grants:
            raise KeyError("no active grant")
        grant = grants[0]
        grant.expiration_time = to_utc(expiration_time)
        self.grants_revision += 1
        who = grant.user.full_name or grant.user.username
        # Waldur 7.0 reads the "previous" value after saving, so both times are the new one.
        self._log_role(
            "role_updated",
            grant,
            f"Permission expiration time for user {who} in {grant.scope.name} is updated "
            f"from {grant.expiration_time} to {grant.expiration_time}.",
        )
        return grant.uuid

    def run_expiry_cleanup(self) -> list[str]:
        """Waldur's daily check_expired_permissions: revoke active grants past expiry.

        Until this runs an expired grant is still is_active=true everywhere (lazy expiry).
        """
        now = self.now()
        expired = [
            g
            for g in self.grant_list
            if g.is_active and g.expiration_time is not None and g.expiration_time < now
        ]
        with self.acting_as(None):
            for grant in expired:
                self._revoke(grant)
        return [g.uuid for g in expired]

    # ----------------------------------------------------------------- marketplace

    def add_offering(
        self,
        name: str,
        *,
        provider_name: str = "Provider",
        type: str = "Marketplace.Basic",
        category_title: str = "Services",
    ) -> str:
        offering = Offering(
            uuid=self.new_uuid(),
            name=name,
            type=type,
            provider_name=provider_name,
            provider_uuid=self.new_uuid(),
            category_title=category_title,
            category_uuid=self.new_uuid(),
            plan_uuid=self.new_uuid(),
        )
        self.offerings[offering.uuid] = offering
        self.offerings_by_name[name] = offering
        return offering.uuid

    def _offering(self, name: str) -> Offering:
        if name not in self.offerings_by_name:
            self.add_offering(name)
        return self.offerings_by_name[name]

    def add_resource(
        self,
        project_uuid: str,
        name: str,
        state: str = "OK",
        *,
        offering_name: str = "Basic",
        error_message: str = "",
    ) -> str:
        if state not in catalog.RESOURCE_STATES:
            raise ValueError(f"resource state must be one of {catalog.RESOURCE_STATES}")
        now = self.now()
        resource = Resource(
            uuid=self.new_uuid(),
            name=name,
            slug=self._slug(name),
            project=self.project(project_uuid),
            offering=self._offering(offering_name),
            state=state,
            created=now,
            modified=now,
            error_message=error_message,
        )
        self.resources[resource.uuid] = resource
        self.resources_by_project.setdefault(resource.project.uuid, []).append(resource)
        return resource.uuid

    def set_resource_state(self, uuid: str, state: str, error_message: str | None = None) -> None:
        if state not in catalog.RESOURCE_STATES:
            raise ValueError(f"resource state must be one of {catalog.RESOURCE_STATES}")
        resource = self.resources[uuid]
        resource.state = state
        resource.modified = self.now()
        if error_message is not None:
            resource.error_message = error_message

    def order_states(self) -> tuple[str, ...]:
        if self.generation == "7.0":
            return catalog.ORDER_STATES_70
        return catalog.ORDER_STATES_CURRENT

    def order_types(self) -> tuple[str, ...]:
        return catalog.ORDER_TYPES_70 if self.generation == "7.0" else catalog.ORDER_TYPES_CURRENT

    def add_order(
        self,
        project_uuid: str,
        type: str = "Create",
        state: str = "pending-consumer",
        *,
        resource_name: str = "",
        offering_name: str = "Basic",
        created_by: str | None = None,
        resource_uuid: str | None = None,
        error_message: str = "",
        cost: str = "0.0000000000",
    ) -> str:
        """An order; without resource_uuid a resource is made for it, as Waldur does."""
        if type not in self.order_types():
            raise ValueError(f"order type must be one of {self.order_types()}")
        if state not in self.order_states():
            raise ValueError(f"order state must be one of {self.order_states()}")
        project = self.project(project_uuid)
        if resource_uuid is None:
            resource_uuid = self.add_resource(
                project.uuid,
                resource_name or f"{offering_name.lower()}-{len(self.resources) + 1}",
                _RESOURCE_FOR_ORDER[state] if type == "Create" else "OK",
                offering_name=offering_name,
            )
        resource = self.resources[resource_uuid]
        now = self.now()
        order = Order(
            uuid=self.new_uuid(),
            project=project,
            offering=resource.offering,
            resource=resource,
            type=type,
            state="pending-consumer",
            created=now,
            modified=now,
            created_by=self.user(created_by) if created_by else self._actor,
            cost=cost,
            attributes={"name": resource.name},
        )
        self.orders[order.uuid] = order
        self._order_event(order, "marketplace_order_created", "has been created")
        if state != "pending-consumer":
            self._move_order(order, state, error_message)
        return order.uuid

    # MarketplaceOrderLogger: the order's log fields as order_*, its project as project_* and
    # the project's organization as customer_*, as LoggableMixin flattens related objects.
    _ORDER_EVENTS = {
        "executing": ("marketplace_order_approved", "has been approved"),
        "done": ("marketplace_order_completed", "has been completed"),
        "erred": ("marketplace_order_failed", "has failed"),
        "rejected": ("marketplace_order_rejected", "has been rejected"),
        "canceled": ("marketplace_order_terminated", "has been canceled"),
    }

    def _order_event(self, order: Order, event_type: str, what: str) -> None:
        context = {
            "order_uuid": order.uuid,
            "order_type": order.type,
            "order_state": order.state,
            **_project_ctx("project", order.project),
        }
        name = order.resource.name if order.resource else order.offering.name
        self._emit(
            event_type,
            f"Order for {name} {what}.",
            context,
            {order.uuid, order.project.uuid, order.project.customer.uuid},
        )

    def set_order_state(self, uuid: str, state: str, error_message: str | None = None) -> None:
        if state not in self.order_states():
            raise ValueError(f"order state must be one of {self.order_states()}")
        order = self.orders[uuid]
        self._move_order(order, state, error_message)
        if state in self._ORDER_EVENTS:
            self._order_event(order, *self._ORDER_EVENTS[state])
        if order.type == "Create" and order.resource and order.resource.state == "Creating":
            target = _RESOURCE_FOR_ORDER[state]
            if target != "Creating":
                self.set_resource_state(order.resource.uuid, target)

    def _move_order(self, order: Order, state: str, error_message: str | None) -> None:
        now = self.now()
        reviewer = self._actor or self.users[self.staff_uuid]
        past_consumer = state not in ("pending-consumer", "pending-project", "pending-start-date")
        if past_consumer and state != "canceled" and order.consumer_reviewed_by is None:
            order.consumer_reviewed_by, order.consumer_reviewed_at = reviewer, now
        if state in ("executing", "done", "erred") and order.provider_reviewed_by is None:
            order.provider_reviewed_by, order.provider_reviewed_at = reviewer, now
        if state in ("done", "erred", "canceled", "rejected"):
            order.completed_at = now
        if state == "erred":
            order.error_message = error_message or order.error_message or "Internal error."
        elif error_message is not None:
            order.error_message = error_message
        order.state = state
        order.modified = now

    # ----------------------------------------------------------------- web hooks

    def add_hook(
        self,
        destination_url: str,
        event_types: list[str] | tuple[str, ...] = (),
        event_groups: list[str] | tuple[str, ...] = (),
        *,
        content_type: str = "json",
        owner_uuid: str | None = None,
        is_active: bool = True,
    ) -> str:
        """Register a web hook as staff (what POST /api/hooks-web/ does); returns its uuid."""
        unknown = [t for t in event_types if t not in catalog.EVENT_TYPES]
        unknown += [g for g in event_groups if g not in catalog.EVENT_GROUPS]
        if unknown:
            raise ValueError(f"unknown event types or groups: {unknown}")
        if not event_types and not event_groups:
            raise ValueError("Please specify list of event_types or event_groups.")
        types = set(event_types) | catalog.expand_event_groups(list(event_groups))
        now = self.now()
        hook = Hook(
            uuid=self.new_uuid(),
            user=self.user(owner_uuid or self.staff_uuid),
            destination_url=destination_url,
            event_types=sorted(types),
            event_groups=list(event_groups),
            content_type=content_type,
            created=now,
            modified=now,
            is_active=is_active,
        )
        self.hooks[hook.uuid] = hook
        return hook.uuid

    def remove_hook(self, uuid: str) -> None:
        self.hooks.pop(uuid, None)

    # ----------------------------------------------------------------- visibility

    def can_see_all(self, user: User) -> bool:
        return user.is_staff or user.is_support


_RESOURCE_FOR_ORDER = {
    "pending-consumer": "Creating",
    "pending-provider": "Creating",
    "pending-project": "Creating",
    "pending-start-date": "Creating",
    "executing": "Creating",
    "done": "OK",
    "erred": "Erred",
    "canceled": "Terminated",
    "rejected": "Terminated",
}


def _user_ctx(prefix: str, user: User) -> dict[str, Any]:
    # User.get_log_fields(): uuid, full_name, native_name, username, is_staff, is_support,
    # token_lifetime.
    return {
        f"{prefix}_uuid": user.uuid,
        f"{prefix}_full_name": user.full_name,
        f"{prefix}_native_name": user.native_name,
        f"{prefix}_username": user.username,
        f"{prefix}_is_staff": user.is_staff,
        f"{prefix}_is_support": user.is_support,
        f"{prefix}_token_lifetime": user.token_lifetime,
    }


def _customer_ctx(prefix: str, customer: Customer) -> dict[str, Any]:
    return {
        f"{prefix}_uuid": customer.uuid,
        f"{prefix}_name": customer.name,
        f"{prefix}_abbreviation": customer.abbreviation,
        f"{prefix}_contact_details": customer.contact_details,
    }


def _project_ctx(prefix: str, project: Project) -> dict[str, Any]:
    # Project.get_log_fields(): uuid, customer (nested as customer_*), name, end_date.
    return {
        f"{prefix}_uuid": project.uuid,
        **_customer_ctx("customer", project.customer),
        f"{prefix}_name": project.name,
        f"{prefix}_end_date": project.end_date,
    }


def _hash_password(salt: bytes, password: str) -> bytes:
    import hashlib

    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 1000)
