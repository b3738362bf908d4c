"""HTTP routes: the subset of Waldur's REST API the bridge uses, with Waldur's filters,
errors and pagination. Filters a generation does not know are ignored, as DRF does."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from aiohttp import web

from . import catalog
from .listing import (
    ApiError,
    ListingCache,
    forbidden,
    json_response,
    listing_key,
    multi,
    not_found,
    order_items,
    paginate,
    read_json,
    select_fields,
)
from .models import Customer, Grant, Project, User
from .serializers import Serializer
from .state import SimulatorState
from .util import iso_z, norm_uuid, parse_bool, parse_datetime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# aiohttp >= 3.12 wants typed request keys; older versions take a plain string.
USER_KEY: Any = (
    web.RequestKey("waldur_user", User) if hasattr(web, "RequestKey") else "waldur_user"
)
_URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


class WaldurApi:
    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.listings = ListingCache()

    @property
    def max_page_size(self) -> int:
        # LinkHeaderPagination.max_page_size: 300 in the 2024 code; 100 in the current API.
        return 300 if self.state.generation == "7.0" else 100

    # ------------------------------------------------------------------ plumbing

    def routes(self) -> list[web.RouteDef]:
        g, p = web.get, web.post
        u = "{uuid}"
        return [
            # Password sign-in: no token needed (outside /api/, like Waldur's api-auth/).
            p("/api-auth/password/", self.password_login),
            g("/api/users/me/", self.users_me),
            g("/api/users/", self.users_list),
            g(f"/api/users/{u}/", self.user_detail),
            g("/api/customers/", self.customers_list),
            g(f"/api/customers/{u}/", self.customer_detail),
            g(f"/api/customers/{u}/list_users/", self.customer_list_users),
            g(f"/api/customers/{u}/users/", self.customer_users),
            p(f"/api/customers/{u}/add_user/", self.customer_add_user),
            p(f"/api/customers/{u}/update_user/", self.customer_update_user),
            p(f"/api/customers/{u}/delete_user/", self.customer_delete_user),
            g("/api/projects/", self.projects_list),
            g(f"/api/projects/{u}/", self.project_detail),
            web.patch(f"/api/projects/{u}/", self.project_patch),
            web.delete(f"/api/projects/{u}/", self.project_delete),
            g(f"/api/projects/{u}/list_users/", self.project_list_users),
            p(f"/api/projects/{u}/add_user/", self.project_add_user),
            p(f"/api/projects/{u}/update_user/", self.project_update_user),
            p(f"/api/projects/{u}/delete_user/", self.project_delete_user),
            g("/api/user-permissions/", self.permissions_list),
            g(f"/api/user-permissions/{u}/", self.permission_detail),
            g("/api/roles/", self.roles_list),
            g("/api/events/", self.events_list),
            g("/api/events/event_groups/", self.event_groups),
            g(f"/api/events/{u}/", self.event_detail),
            g("/api/hooks-web/", self.hooks_list),
            p("/api/hooks-web/", self.hook_create),
            g(f"/api/hooks-web/{u}/", self.hook_detail),
            web.patch(f"/api/hooks-web/{u}/", self.hook_patch),
            web.delete(f"/api/hooks-web/{u}/", self.hook_delete),
            g("/api/marketplace-orders/", self.orders_list),
            g(f"/api/marketplace-orders/{u}/", self.order_detail),
            g("/api/marketplace-resources/", self.resources_list),
            g(f"/api/marketplace-resources/{u}/", self.resource_detail),
            # Uploaded images, served like Django's MEDIA_URL (no token needed).
            g("/media/{folder}/{name}", self.media),
        ]

    async def media(self, request: web.Request) -> web.StreamResponse:
        image = self.state.media(request.match_info["folder"], request.match_info["name"])
        if image is None:
            raise web.HTTPNotFound()
        if image.redirect_to is not None:
            raise web.HTTPFound(image.redirect_to)
        if image.streamed_size is None:
            self.state.media_bytes_sent += len(image.data)
            return web.Response(body=image.data, content_type=image.content_type)
        # A huge body made while it is sent (never held in memory); a client that stops
        # reading ends it, and media_bytes_sent shows how far it got.
        response = web.StreamResponse(headers={"Content-Type": image.content_type})
        response.content_length = image.streamed_size
        await response.prepare(request)
        chunk = 256 * 1024
        sent = 0
        try:
            await response.write(image.data)
            sent = len(image.data)
            zeros = bytes(chunk)
            while sent < image.streamed_size:
                part = zeros[: min(chunk, image.streamed_size - sent)]
                await response.write(part)
                sent += len(part)
                self.state.media_bytes_sent += len(part)
        except (ConnectionResetError, ConnectionError):
            return response
        await response.write_eof()
        return response

    @web.middleware
    async def auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/api/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header:
            key = request.query.get("x-auth-token", "")
            header = f"Token {key}" if key else ""
        parts = header.split()
        if not parts or parts[0].lower() != "token":
            return _unauthorized("Authentication credentials were not provided.")
        if len(parts) == 1:
            return _unauthorized("Invalid token header. No credentials provided.")
        if len(parts) > 2:
            return _unauthorized("Invalid token header. Token string should not contain spaces.")
        user = self.state.authenticate(parts[1])
        if isinstance(user, str):
            return _unauthorized(user)
        request[USER_KEY] = user
        try:
            # Events logged while handling carry the caller, as Waldur's middleware arranges.
            with self.state.acting_as(user.uuid, request.remote or "127.0.0.1"):
                return await handler(request)
        except ApiError as exc:
            return json_response(exc.body, status=exc.status)

    def ser(self, request: web.Request) -> Serializer:
        return Serializer(self.state, f"{request.scheme}://{request.host}", request[USER_KEY])

    def page(
        self,
        request: web.Request,
        items: list[Any],
        serialize: Callable[[Any], dict[str, Any]],
        *,
        fields: bool = True,
    ) -> web.Response:
        return paginate(request, items, serialize, max_page_size=self.max_page_size, fields=fields)

    @staticmethod
    def viewer(request: web.Request) -> User:
        return request[USER_KEY]

    def _privileged(self, request: web.Request) -> bool:
        return self.state.can_see_all(self.viewer(request))

    def _require_staff(self, request: web.Request) -> None:
        if not self.viewer(request).is_staff:
            raise forbidden()

    def _project(self, request: web.Request) -> Project:
        project = self.state.projects.get(norm_uuid(request.match_info["uuid"]) or "")
        if project is None or project.is_removed or not self._privileged(request):
            raise not_found("Project")
        return project

    def _customer(self, request: web.Request) -> Customer:
        customer = self.state.customers.get(norm_uuid(request.match_info["uuid"]) or "")
        if customer is None or not self._privileged(request):
            raise not_found("Customer")
        return customer

    def _detail(self, request: web.Request, data: dict[str, Any]) -> web.Response:
        return json_response(select_fields(request, data))

    # ------------------------------------------------------------------ users

    async def password_login(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = {}
        else:
            body = dict(await request.post())
        if not isinstance(body, dict):
            body = {}
        status, data = self.state.password_login(
            body.get("username"), body.get("password"), request.remote or "127.0.0.1"
        )
        return json_response(data, status=status)

    async def users_me(self, request: web.Request) -> web.Response:
        user = self.viewer(request)
        return self._detail(request, self.ser(request).user(user, with_token=True))

    async def users_list(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        faults = getattr(self.state, "faults", None)
        hidden = frozenset(faults.hidden_users) if faults is not None else frozenset()
        privileged = self._privileged(request)
        key = listing_key(request, self.state.users_revision, viewer.uuid, privileged, hidden)
        users = self.listings.get(key, lambda: self._users(request))
        ser = self.ser(request)
        # UserSerializer shows the token when the whole result is the caller herself.
        alone = len(users) == 1 and users[0] is viewer
        return self.page(request, users, lambda u: ser.user(u, with_token=alone))

    def _users(self, request: web.Request) -> list[User]:
        viewer = self.viewer(request)
        q = request.query
        users = list(self.state.users.values()) if self._privileged(request) else [viewer]
        faults = getattr(self.state, "faults", None)
        if faults is not None and faults.hidden_users:
            users = [u for u in users if not faults.hides_user(u.uuid)]
        if "username" in q:
            users = [u for u in users if u.username == q["username"]]
        if self.state.generation == "current" and q.get("uuid"):
            wanted = norm_uuid(q["uuid"])
            users = [u for u in users if u.uuid == wanted]
        for name in ("is_active", "is_staff", "is_support"):
            flag = parse_bool(q.get(name))
            if flag is not None:
                users = [u for u in users if getattr(u, name) == flag]
        if q.get("email"):
            users = [u for u in users if q["email"].lower() in u.email.lower()]
        users.sort(key=lambda u: u.username)
        users = order_items(
            request,
            users,
            {
                "username": lambda u: u.username,
                "full_name": lambda u: (u.first_name, u.last_name),
                "email": lambda u: u.email,
                "is_active": lambda u: u.is_active,
            },
        )
        return users

    async def user_detail(self, request: web.Request) -> web.Response:
        viewer = self.viewer(request)
        user = self.state.users.get(norm_uuid(request.match_info["uuid"]) or "")
        if user is None or (user is not viewer and not self._privileged(request)):
            raise not_found("User")
        return self._detail(request, self.ser(request).user(user, with_token=user is viewer))

    # ------------------------------------------------------------------ customers

    async def customers_list(self, request: web.Request) -> web.Response:
        if not self._privileged(request):
            return self.page(request, [], dict)
        q = request.query
        customers = sorted(self.state.customers.values(), key=lambda c: c.name)
        if q.get("name"):
            customers = [c for c in customers if q["name"].lower() in c.name.lower()]
        if q.get("abbreviation"):
            customers = [
                c for c in customers if q["abbreviation"].lower() in c.abbreviation.lower()
            ]
        customers = order_items(
            request,
            customers,
            {
                "name": lambda c: c.name,
                "created": lambda c: c.created,
                "abbreviation": lambda c: c.abbreviation,
            },
        )
        return self.page(request, customers, self.ser(request).customer)

    async def customer_detail(self, request: web.Request) -> web.Response:
        return self._detail(request, self.ser(request).customer(self._customer(request)))

    async def customer_list_users(self, request: web.Request) -> web.Response:
        return self._list_users(request, self._customer(request))

    async def customer_users(self, request: web.Request) -> web.Response:
        """Every user with an active role in the customer or one of its projects."""
        customer = self._customer(request)
        by_user: dict[str, list[Grant]] = {}
        scopes: list[Customer | Project] = [customer]
        scopes += [
            p for p in self.state.projects_by_customer.get(customer.uuid, ()) if not p.is_removed
        ]
        for scope in scopes:
            for grant in self.state.active_grants(scope.uuid):
                by_user.setdefault(grant.user.uuid, []).append(grant)
        users = sorted((self.state.users[u] for u in by_user), key=lambda u: u.username)
        for grants in by_user.values():
            grants.sort(key=lambda g: g.seq)
        ser = self.ser(request)
        return self.page(
            request, users, lambda u: ser.customer_user(customer, u, by_user[u.uuid]), fields=False
        )

    async def customer_add_user(self, request: web.Request) -> web.Response:
        return await self._add_user(request, self._customer(request))

    async def customer_update_user(self, request: web.Request) -> web.Response:
        return await self._update_user(request, self._customer(request))

    async def customer_delete_user(self, request: web.Request) -> web.Response:
        return await self._delete_user(request, self._customer(request))

    # ------------------------------------------------------------------ projects

    async def projects_list(self, request: web.Request) -> web.Response:
        if not self._privileged(request):
            return self.page(request, [], dict)
        q = request.query
        removed = False
        if self.state.generation == "current":
            removed = bool(parse_bool(q.get("is_removed")))
        projects = [p for p in self.state.projects.values() if p.is_removed == removed]
        customers = [c for v in multi(request, "customer") for c in v.split(",")]
        if customers:
            wanted = {norm_uuid(c) for c in customers}
            projects = [p for p in projects if p.customer.uuid in wanted]
        if q.get("name"):
            projects = [p for p in projects if q["name"].lower() in p.name.lower()]
        if q.get("name_exact"):
            projects = [p for p in projects if p.name == q["name_exact"]]
        projects.sort(key=lambda p: p.name)  # Project.Meta.ordering
        projects = order_items(
            request,
            projects,
            {
                "name": lambda p: p.name,
                "created": lambda p: p.created,
                "customer_name": lambda p: p.customer.name,
                "end_date": lambda p: p.end_date,
            },
        )
        return self.page(request, projects, self.ser(request).project)

    async def project_detail(self, request: web.Request) -> web.Response:
        return self._detail(request, self.ser(request).project(self._project(request)))

    async def project_patch(self, request: web.Request) -> web.Response:
        project = self._project(request)
        self._require_staff(request)
        body = await read_json(request)
        self.state.rename_project(
            project.uuid, name=body.get("name"), description=body.get("description")
        )
        return json_response(self.ser(request).project(project))

    async def project_delete(self, request: web.Request) -> web.Response:
        project = self._project(request)
        self._require_staff(request)
        self.state.delete_project(project.uuid)
        return web.Response(status=204)

    async def project_list_users(self, request: web.Request) -> web.Response:
        return self._list_users(request, self._project(request))

    async def project_add_user(self, request: web.Request) -> web.Response:
        return await self._add_user(request, self._project(request))

    async def project_update_user(self, request: web.Request) -> web.Response:
        return await self._update_user(request, self._project(request))

    async def project_delete_user(self, request: web.Request) -> web.Response:
        return await self._delete_user(request, self._project(request))

    # ------------------------------------------------------------------ team actions

    def _list_users(self, request: web.Request, scope: Customer | Project) -> web.Response:
        """UserRoleMixin.list_users: active grants of active users, oldest first."""
        grants = [g for g in self.state.active_grants(scope.uuid) if g.user.is_active]
        q = request.query
        user = norm_uuid(q.get("user"))
        if user and user in self.state.users:
            grants = [g for g in grants if g.user.uuid == user]
        role = q.get("role")
        if role:
            grants = [g for g in grants if role in (g.role.name, g.role.uuid, norm_uuid(role))]
        search = (q.get("search_string") or "").lower()
        if search:
            grants = [
                g
                for g in grants
                if search in g.user.first_name.lower()
                or search in g.user.last_name.lower()
                or search in g.user.email.lower()
            ]
        return self.page(request, grants, self.ser(request).user_role, fields=False)

    async def _mutation(
        self, request: web.Request, scope: Customer | Project
    ) -> tuple[User, Any, datetime | None, bool]:
        """UserRoleMutateSerializer: field errors are collected, then the whole is checked."""
        self._require_staff(request)
        body = await read_json(request)
        errors: dict[str, list[str]] = {}
        role = user = None
        raw_role = body.get("role")
        if raw_role is None:
            errors["role"] = ["This field is required."]
        elif not isinstance(raw_role, str) or not raw_role.strip():
            errors["role"] = ["This field may not be blank."]
        else:
            try:
                role = self.state.role(raw_role.strip())
            except KeyError:
                errors["role"] = ["Role is not found."]
        raw_user = body.get("user")
        if raw_user is None:
            errors["user"] = ["This field is required."]
        elif not isinstance(raw_user, str) or norm_uuid(raw_user) is None:
            errors["user"] = ["Must be a valid UUID."]
        else:
            user = self.state.users.get(norm_uuid(raw_user) or "")
            if user is None:
                errors["user"] = ["User is not found."]
        expires: datetime | None = None
        has_expiry = "expiration_time" in body
        raw_expiry = body.get("expiration_time")
        if raw_expiry is not None:
            expires = parse_datetime(raw_expiry) if isinstance(raw_expiry, str) else None
            if expires is None:
                errors["expiration_time"] = [
                    "Datetime has wrong format. Use one of these formats instead: "
                    "YYYY-MM-DD, YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z]."
                ]
            elif expires < self.state.now():
                errors["expiration_time"] = [
                    "Expiration time should be greater than current time."
                ]
        if errors:
            raise ApiError(400, errors)
        customer = scope if isinstance(scope, Customer) else scope.customer
        if customer.blocked or customer.archived:
            raise ApiError(400, {"non_field_errors": ["Customer is not available."]})
        assert user is not None
        return user, role, expires, has_expiry

    async def _add_user(self, request: web.Request, scope: Customer | Project) -> web.Response:
        user, role, expires, _ = await self._mutation(request, scope)
        # Same order of checks as UserRoleCreateSerializer.validate.
        if self.state.has_user(scope.uuid, user, role, expires):
            raise ApiError(
                400, {"non_field_errors": ["User has already the same role in this scope."]}
            )
        if role.scope_type != scope.scope_type:
            raise ApiError(400, {"non_field_errors": ["Role is not valid for this scope."]})
        if not role.is_active:
            raise ApiError(400, {"non_field_errors": ["Role is not active."]})
        grant = self.state._add_grant(user, scope, role, expires)
        return json_response({"expiration_time": iso_z(grant.expiration_time)}, status=201)

    async def _update_user(self, request: web.Request, scope: Customer | Project) -> web.Response:
        user, role, expires, _ = await self._mutation(request, scope)
        grants = self.state.find_grants(user.uuid, scope.uuid, role.name)
        if not grants:
            # Waldur's view reads `.expiration_time` of the False that update_user() returns.
            return web.Response(
                status=500, text="<h1>Server Error (500)</h1>", content_type="text/html"
            )
        self.state.set_expiration(user.uuid, scope.uuid, role.name, expires)
        return json_response({"expiration_time": iso_z(grants[0].expiration_time)})

    async def _delete_user(self, request: web.Request, scope: Customer | Project) -> web.Response:
        user, role, _, _ = await self._mutation(request, scope)
        self.state.revoke(user.uuid, scope.uuid, role.name)  # 200 even if nothing was active
        return json_response(None)

    # ------------------------------------------------------------------ user-permissions

    async def permissions_list(self, request: web.Request) -> web.Response:
        viewer, privileged = self.viewer(request).uuid, self._privileged(request)
        key = listing_key(request, self.state.grants_revision, viewer, privileged)
        grants = self.listings.get(key, lambda: self._permissions(request))
        return self.page(request, grants, self.ser(request).permission, fields=False)

    def _permissions(self, request: web.Request) -> list[Grant]:
        grants = self._filter_permissions(request)
        return order_items(
            request,
            grants,
            {
                "username": lambda g: g.user.username,
                "full_name": lambda g: (g.user.first_name, g.user.last_name),
                "native_name": lambda g: g.user.native_name,
                "email": lambda g: g.user.email,
                "expiration_time": lambda g: g.expiration_time,
                "created": lambda g: g.seq,
                "role": lambda g: g.role.name,
            },
        )

    def _filter_permissions(self, request: web.Request) -> list[Grant]:
        state, q = self.state, request.query
        current = state.generation == "current"
        viewer = self.viewer(request)
        scope_uuid = norm_uuid(q.get("scope_uuid")) if current else None
        if scope_uuid:  # use the index: listing one project's grants stays cheap
            grants = list(state.grants_by_scope.get(scope_uuid, ()))
        else:
            grants = state.grant_list
        if not self._privileged(request):
            grants = [g for g in grants if g.user is viewer]
        user = norm_uuid(q.get("user"))
        if user:
            grants = [g for g in grants if g.user.uuid == user]
        if q.get("username"):
            grants = [g for g in grants if g.user.username == q["username"]]
        if q.get("full_name"):
            needle = q["full_name"].lower()
            grants = [g for g in grants if needle in g.user.full_name.lower()]
        if not current:
            # 7.0 knows only the user filters; scope/customer/is_active are silently ignored
            # and revoked grants are listed too.
            return grants
        if q.get("scope_type"):
            grants = [g for g in grants if g.scope.scope_type == q["scope_type"]]
        customer = norm_uuid(q.get("customer_uuid"))
        if customer:
            grants = [g for g in grants if g.customer.uuid == customer]
        if q.get("role_name"):
            grants = [g for g in grants if q["role_name"] in g.role.name]
        role_uuid = norm_uuid(q.get("role_uuid"))
        if role_uuid:
            grants = [g for g in grants if g.role.uuid == role_uuid]
        if not (parse_bool(q.get("show_inactive")) and self._privileged(request)):
            grants = [g for g in grants if g.is_active]
        active = parse_bool(q.get("is_active"))
        if active is not None:
            grants = [g for g in grants if g.is_active == active]
        return grants

    async def permission_detail(self, request: web.Request) -> web.Response:
        grant = self.state.grants.get(norm_uuid(request.match_info["uuid"]) or "")
        if grant is None or not (self._privileged(request) or grant.user is self.viewer(request)):
            raise not_found("UserRole")
        return json_response(self.ser(request).permission(grant))

    async def roles_list(self, request: web.Request) -> web.Response:
        roles = sorted(self.state.roles.values(), key=lambda r: r.name)
        if request.query.get("name"):
            roles = [r for r in roles if r.name == request.query["name"]]
        return self.page(request, roles, self.ser(request).role)

    # ------------------------------------------------------------------ events

    async def events_list(self, request: web.Request) -> web.Response:
        q = request.query
        errors: dict[str, list[str]] = {}
        bounds: dict[str, float | None] = {"created_from": None, "created_to": None}
        for name in bounds:
            if q.get(name):
                try:
                    bounds[name] = float(q[name])
                except ValueError:
                    errors[name] = ["Enter a number."]
        if errors:
            raise ApiError(400, errors)
        if self.state.generation == "7.0":
            # 7.0 answers 400 to a value its choice filters do not know (seen live on orders).
            self._check_choices(request, "event_type", tuple(catalog.EVENT_TYPES))
            self._check_choices(request, "feature", tuple(catalog.EVENT_GROUPS))
        events = self.state.events_between(bounds["created_from"], bounds["created_to"])
        types = set(multi(request, "event_type"))
        if types:
            events = [e for e in events if e.event_type in types]
        groups = multi(request, "feature")
        if groups:
            allowed = catalog.expand_event_groups(groups)
            events = [e for e in events if e.event_type in allowed]
        if q.get("message"):
            needle = q["message"].lower()
            events = [e for e in events if needle in e.message.lower()]
        scope = q.get("scope")
        if scope:
            found = re.search(r"/([0-9a-fA-F-]{32,36})/?$", scope)
            key = norm_uuid(found.group(1)) if found else None
            events = [e for e in events if key in e.feeds]
        elif not self._privileged(request):
            events = []  # EventFilterBackend: others see events only through `scope`
        if self.state.generation == "current":
            for param in ("project_uuid", "customer_uuid", "user_uuid"):
                key = norm_uuid(q.get(param))
                if key:
                    events = [e for e in events if key in e.feeds]
        order = q.getall("o", [])
        descending = not order or order[-1] != "created"
        if order and order[-1].lstrip("-") != "created":
            raise ApiError(
                400,
                {
                    "o": [
                        f"Select a valid choice. {order[-1]} is not one of the available choices."
                    ]
                },
            )
        if descending:  # Event.Meta.ordering = ("-created",)
            events = events[::-1]
        return self.page(request, events, Serializer.event)

    async def event_detail(self, request: web.Request) -> web.Response:
        event = self.state.events_by_uuid.get(norm_uuid(request.match_info["uuid"]) or "")
        if event is None or not self._privileged(request):
            raise not_found("Event")
        return self._detail(request, Serializer.event(event))

    async def event_groups(self, request: web.Request) -> web.Response:
        return json_response({g: sorted(t) for g, t in catalog.EVENT_GROUPS.items()})

    # ------------------------------------------------------------------ web hooks

    def _hooks_visible(self, request: web.Request) -> list[Any]:
        viewer = self.viewer(request)
        hooks = sorted(self.state.hooks.values(), key=lambda h: h.created)
        return [h for h in hooks if viewer.is_staff or h.user is viewer]

    def _hook(self, request: web.Request) -> Any:
        key = norm_uuid(request.match_info["uuid"]) or ""
        for hook in self._hooks_visible(request):
            if hook.uuid == key:
                return hook
        raise not_found("WebHook")

    async def hooks_list(self, request: web.Request) -> web.Response:
        hooks = self._hooks_visible(request)
        q = request.query
        active = parse_bool(q.get("is_active"))
        if active is not None:
            hooks = [h for h in hooks if h.is_active == active]
        if q.get("destination_url"):
            hooks = [h for h in hooks if h.destination_url == q["destination_url"]]
        return self.page(request, hooks, self.ser(request).hook, fields=False)

    async def hook_detail(self, request: web.Request) -> web.Response:
        return json_response(self.ser(request).hook(self._hook(request)))

    def _validate_hook(self, body: dict[str, Any], *, partial: bool) -> dict[str, Any]:
        """WebHookSerializer validation, with DRF's messages."""
        errors: dict[str, list[str]] = {}
        out: dict[str, Any] = {}
        url = body.get("destination_url")
        if url is None:
            if not partial:
                errors["destination_url"] = ["This field is required."]
        elif not isinstance(url, str) or not _URL_RE.match(url):
            errors["destination_url"] = ["Enter a valid URL."]
        else:
            out["destination_url"] = url
        for name, choices in (
            ("event_types", catalog.EVENT_TYPES),
            ("event_groups", set(catalog.EVENT_GROUPS)),
        ):
            if name not in body:
                continue
            value = body[name]
            if isinstance(value, str) or not isinstance(value, list):
                kind = type(value).__name__
                errors[name] = [f'Expected a list of items but got type "{kind}".']
                continue
            bad = [f'"{v}" is not a valid choice.' for v in value if v not in choices]
            if bad:
                errors[name] = bad[:1]
            else:
                out[name] = list(dict.fromkeys(value))
        if "content_type" in body:
            if body["content_type"] in ("json", "form"):
                out["content_type"] = body["content_type"]
            else:
                errors["content_type"] = [f'"{body["content_type"]}" is not a valid choice.']
        if "is_active" in body:
            flag = body["is_active"]
            if isinstance(flag, bool):
                out["is_active"] = flag
            else:
                errors["is_active"] = ["Must be a valid boolean."]
        if errors:
            raise ApiError(400, errors)
        if not partial and "event_types" not in out and "event_groups" not in out:
            raise ApiError(
                400,
                {"non_field_errors": ["Please specify list of event_types or event_groups."]},
            )
        return out

    async def hook_create(self, request: web.Request) -> web.Response:
        if not self._privileged(request):
            raise forbidden()  # the simulator delivers only to staff hooks
        data = self._validate_hook(await read_json(request), partial=False)
        uuid = self.state.add_hook(
            data["destination_url"],
            data.get("event_types", []),
            data.get("event_groups", []),
            content_type=data.get("content_type", "json"),
            owner_uuid=self.viewer(request).uuid,
            is_active=data.get("is_active", True),
        )
        return json_response(self.ser(request).hook(self.state.hooks[uuid]), status=201)

    async def hook_patch(self, request: web.Request) -> web.Response:
        hook = self._hook(request)
        data = self._validate_hook(await read_json(request), partial=True)
        for name in ("destination_url", "content_type", "is_active"):
            if name in data:
                setattr(hook, name, data[name])
        if "event_groups" in data:
            hook.event_groups = data["event_groups"]
            types = set(data.get("event_types", []))
            hook.event_types = sorted(types | catalog.expand_event_groups(hook.event_groups))
        elif "event_types" in data:
            hook.event_types = data["event_types"]
        hook.modified = self.state.now()
        return json_response(self.ser(request).hook(hook))

    async def hook_delete(self, request: web.Request) -> web.Response:
        self.state.remove_hook(self._hook(request).uuid)
        return web.Response(status=204)

    # ------------------------------------------------------------------ marketplace

    def _check_choices(
        self, request: web.Request, name: str, choices: tuple[str, ...]
    ) -> list[str]:
        values = multi(request, name)
        for value in values:
            if value not in choices:
                raise ApiError(
                    400,
                    {
                        name: [
                            f"Select a valid choice. {value} is not one of the available choices."
                        ]
                    },
                )
        return values

    async def orders_list(self, request: web.Request) -> web.Response:
        if not self._privileged(request):
            return self.page(request, [], dict)
        states = self._check_choices(request, "state", self.state.order_states())
        types = self._check_choices(request, "type", self.state.order_types())
        orders = list(self.state.orders.values())
        orders = self._by_project_and_customer(request, orders)
        if states:
            orders = [o for o in orders if o.state in states]
        if types:
            orders = [o for o in orders if o.type in types]
        if request.query.get("resource_uuid"):
            key = norm_uuid(request.query["resource_uuid"])
            orders = [o for o in orders if o.resource and o.resource.uuid == key]
        orders.sort(key=lambda o: o.created, reverse=True)
        orders = order_items(
            request,
            orders,
            {
                "created": lambda o: o.created,
                "consumer_reviewed_at": lambda o: o.consumer_reviewed_at,
                "cost": lambda o: float(o.cost),
                "state": lambda o: o.state,
            },
        )
        return self.page(request, orders, self.ser(request).order)

    async def order_detail(self, request: web.Request) -> web.Response:
        order = self.state.orders.get(norm_uuid(request.match_info["uuid"]) or "")
        if order is None or not self._privileged(request):
            raise not_found("Order")
        return self._detail(request, self.ser(request).order(order))

    async def resources_list(self, request: web.Request) -> web.Response:
        if not self._privileged(request):
            return self.page(request, [], dict)
        states = self._check_choices(request, "state", catalog.RESOURCE_STATES)
        resources = self._by_project_and_customer(request, list(self.state.resources.values()))
        if states:
            resources = [r for r in resources if r.state in states]
        if request.query.get("name"):
            needle = request.query["name"].lower()
            resources = [r for r in resources if needle in r.name.lower()]
        resources.sort(key=lambda r: r.created, reverse=True)
        resources = order_items(
            request,
            resources,
            {"name": lambda r: r.name, "created": lambda r: r.created, "state": lambda r: r.state},
        )
        return self.page(request, resources, self.ser(request).resource)

    async def resource_detail(self, request: web.Request) -> web.Response:
        resource = self.state.resources.get(norm_uuid(request.match_info["uuid"]) or "")
        if resource is None or not self._privileged(request):
            raise not_found("Resource")
        return self._detail(request, self.ser(request).resource(resource))

    @staticmethod
    def _by_project_and_customer(request: web.Request, items: list[Any]) -> list[Any]:
        q = request.query
        project = norm_uuid(q.get("project_uuid")) if q.get("project_uuid") else None
        if q.get("project_uuid"):
            items = [i for i in items if i.project.uuid == project]
        if q.get("customer_uuid"):
            customer = norm_uuid(q["customer_uuid"])
            items = [i for i in items if i.project.customer.uuid == customer]
        return items


def _unauthorized(detail: str) -> web.Response:
    return json_response({"detail": detail}, status=401, headers={"WWW-Authenticate": "Token"})
