"""Waldur's JSON shapes, key for key and in Waldur's key order, per API generation.

Where DRF would skip a field because a related object is null (e.g. `created_by.full_name`
with no creator), the key is left out too: clients must cope with that on a real Waldur.
"""

from __future__ import annotations

from typing import Any

from . import catalog
from .models import (
    Customer,
    Event,
    Grant,
    Hook,
    Image,
    Order,
    Project,
    Resource,
    Role,
    User,
)
from .state import SimulatorState
from .util import iso_z


class Serializer:
    def __init__(self, state: SimulatorState, base: str, viewer: User) -> None:
        self.state = state
        self.base = base  # "http://host:port", taken from the request like build_absolute_uri
        self.viewer = viewer
        self.current = state.generation == "current"

    def url(self, kind: str, uuid: str) -> str:
        return f"{self.base}/api/{kind}/{uuid}/"

    def image(self, image: Image | None) -> str | None:
        # Django's ImageField serializes to an absolute URL under MEDIA_URL.
        return None if image is None else f"{self.base}/media/{image.folder}/{image.name}"

    # ------------------------------------------------------------------ users

    def user(self, user: User, *, with_token: bool = False) -> dict[str, Any]:
        staff = self.viewer.is_staff or self.viewer.is_support
        data: dict[str, Any] = {
            "url": self.url("users", user.uuid),
            "uuid": user.uuid,
            "username": user.username,
            "slug": user.slug,
            "full_name": user.full_name,
            "native_name": user.native_name,
            "job_title": "",
            "email": user.email,
            "phone_number": "",
            "organization": "",
            "civil_number": None,
            "description": "",
            "is_staff": user.is_staff,
            "is_active": user.is_active,
            "is_support": user.is_support,
        }
        if not staff:  # UserSerializer drops these for ordinary users
            for key in ("is_active", "is_staff", "is_support", "description"):
                del data[key]
        if with_token:  # nobody but the user herself sees her token
            data["token"] = self.state.token_for(user.uuid)
            data["token_lifetime"] = user.token_lifetime
        data.update(
            registration_method="default",
            date_joined=iso_z(user.date_joined),
            agreement_date=iso_z(user.date_joined),
            preferred_language="",
            permissions=[
                self.permission(g)
                for g in self.state.grants_by_user.get(user.uuid, ())
                if g.is_active
            ],
            requested_email=None,
            affiliations=[],
            first_name=user.first_name,
            last_name=user.last_name,
            identity_provider_name="Local DB",
            identity_provider_label="Local DB",
            identity_provider_management_url="",
            identity_provider_fields=[],
            image=None,
            identity_source="",
        )
        return data

    # ------------------------------------------------------------------ customers, projects

    def _resource_count(self, project: Project) -> int:
        resources = self.state.resources_by_project.get(project.uuid, ())
        return sum(1 for r in resources if r.state != "Terminated")

    def customer(self, customer: Customer) -> dict[str, Any]:
        projects = self.state.projects_by_customer.get(customer.uuid, [])
        users = {g.user.uuid for g in self.state.active_grants(customer.uuid)}
        for project in projects:
            if not project.is_removed:
                users.update(g.user.uuid for g in self.state.active_grants(project.uuid))
        return {
            "url": self.url("customers", customer.uuid),
            "uuid": customer.uuid,
            "created": iso_z(customer.created),
            "organization_group": None,
            "display_name": customer.abbreviation or customer.name,
            "projects": [
                {
                    "url": self.url("projects", p.uuid),
                    "uuid": p.uuid,
                    "name": p.name,
                    "image": self.image(p.image),
                    "resource_count": self._resource_count(p),
                    "end_date": iso_z(p.end_date),
                }
                for p in sorted(projects, key=lambda p: p.name)
                if not p.is_removed
            ],
            "backend_id": "",
            "image": self.image(customer.image),
            "blocked": customer.blocked,
            "archived": customer.archived,
            "default_tax_percent": "0.00",
            "accounting_start_date": iso_z(customer.created),
            "projects_count": sum(1 for p in projects if not p.is_removed),
            "users_count": len(users),
            "sponsor_number": None,
            "country_name": None,
            "name": customer.name,
            "slug": customer.slug,
            "native_name": customer.native_name,
            "abbreviation": customer.abbreviation,
            "description": customer.description,
            "contact_details": customer.contact_details,
            "agreement_number": "",
            "email": customer.email,
            "phone_number": "",
            "access_subnets": "",
            "registration_code": "",
            "homepage": "",
            "domain": "",
            "vat_code": "",
            "postal": "",
            "address": "",
            "bank_name": "",
            "bank_account": "",
            "latitude": None,
            "longitude": None,
            "country": "",
            "payment_profiles": [],
            "is_service_provider": False,
            "call_managing_organization_uuid": None,
        }

    def project(self, project: Project) -> dict[str, Any]:
        customer = project.customer
        data: dict[str, Any] = {
            "url": self.url("projects", project.uuid),
            "uuid": project.uuid,
            "name": project.name,
            "slug": project.slug,
            "customer": self.url("customers", customer.uuid),
            "customer_uuid": customer.uuid,
            "customer_name": customer.name,
            "customer_slug": customer.slug,
            "customer_native_name": customer.native_name,
            "customer_abbreviation": customer.abbreviation,
            "description": project.description,
            "created": iso_z(project.created),
            "type": None,
            "backend_id": "",
            "start_date": None,
            "end_date": iso_z(project.end_date),
            "end_date_requested_by": None,
            "oecd_fos_2007_code": None,
            "oecd_fos_2007_label": None,
            "is_industry": False,
            "image": self.image(project.image),
            "resources_count": self._resource_count(project),
            "billing_price_estimate": {"total": 0.0, "current": 0, "tax": 0, "tax_current": 0},
            "marketplace_resource_count": {},
        }
        if self.current:
            data["is_removed"] = project.is_removed
            data["effective_end_date"] = iso_z(project.end_date)
        return data

    # ------------------------------------------------------------------ grants

    def user_role(self, grant: Grant) -> dict[str, Any]:
        """An item of .../list_users/ (UserRoleDetailsSerializer)."""
        data: dict[str, Any] = {
            "uuid": grant.uuid,
            "created": iso_z(grant.created),
            "expiration_time": iso_z(grant.expiration_time),
            "role_name": grant.role.name,
            "role_uuid": grant.role.uuid,
            "user_email": grant.user.email,
            "user_full_name": grant.user.full_name,
            "user_username": grant.user.username,
            "user_uuid": grant.user.uuid,
            "user_image": None,
        }
        if grant.created_by is not None:
            data["created_by_full_name"] = grant.created_by.full_name
            data["created_by_uuid"] = grant.created_by.uuid
        return data

    def permission(self, grant: Grant) -> dict[str, Any]:
        """An item of /api/user-permissions/ (7.0 PermissionSerializer, or the current one)."""
        scope, user = grant.scope, grant.user
        data: dict[str, Any] = {}
        if self.current:
            data["uuid"] = grant.uuid
        data.update(user_uuid=user.uuid, user_name=user.full_name, user_slug=user.slug)
        if self.current:
            data.update(user_username=user.username, user_email=user.email)
        data.update(created=iso_z(grant.created), expiration_time=iso_z(grant.expiration_time))
        if self.current:
            data["is_active"] = grant.is_active
        if grant.created_by is not None:
            data["created_by_full_name"] = grant.created_by.full_name
            data["created_by_username"] = grant.created_by.username
        if self.current:
            revoker = grant.revoked_by
            data["revoked_by_full_name"] = revoker.full_name if revoker else None
            data["revoked_by_username"] = revoker.username if revoker else None
            data["revoke_reason"] = ""
        data.update(
            role_name=grant.role.name,
            role_description=grant.role.description,
            role_uuid=grant.role.uuid,
            scope_type=scope.scope_type,
            scope_uuid=scope.uuid,
            scope_name=scope.name,
        )
        if self.current:
            data["scope_is_removed"] = isinstance(scope, Project) and scope.is_removed
            customer = grant.customer
            data.update(customer_uuid=customer.uuid, customer_name=customer.name)
            data["resource_uuid"] = None
            data["project_uuid"] = scope.uuid if isinstance(scope, Project) else None
        elif isinstance(scope, Project):
            # 7.0 reads scope.customer, which a customer does not have: the keys vanish.
            data.update(customer_uuid=scope.customer.uuid, customer_name=scope.customer.name)
        return data

    def customer_user(self, customer: Customer, user: User, grants: list[Grant]) -> dict[str, Any]:
        """An item of /customers/{uuid}/users/ (CustomerUserSerializer)."""
        customer_grants = [g for g in grants if g.scope is customer]
        system = next(
            (g for g in customer_grants if g.role.name in catalog.SYSTEM_CUSTOMER_ROLES), None
        )
        data: dict[str, Any] = {
            "url": self.url("users", user.uuid),
            "uuid": user.uuid,
            "username": user.username,
            "full_name": user.full_name,
            "email": user.email,
            "role": catalog.OLD_ROLE_NAMES.get(system.role.name) if system else None,
            # role_name looks at any customer role, `role` only at system ones (Waldur quirk).
            "role_name": customer_grants[0].role.name if customer_grants else None,
            "projects": [
                {
                    "url": self.url("projects", g.scope.uuid),
                    "uuid": g.scope.uuid,
                    "name": g.scope.name,
                    "role": catalog.OLD_ROLE_NAMES.get(g.role.name),
                    "role_name": g.role.name,
                    "expiration_time": iso_z(g.expiration_time),
                }
                for g in grants
                if g.scope is not customer
            ],
        }
        if system is not None:  # source "perm.expiration_time" is skipped when perm is None
            data["expiration_time"] = iso_z(system.expiration_time)
        data["image"] = None
        return data

    def role(self, role: Role) -> dict[str, Any]:
        return {
            "url": self.url("roles", role.uuid),
            "uuid": role.uuid,
            "name": role.name,
            "description": role.description,
            "permissions": [],
            "is_system_role": role.is_system,
            "is_active": role.is_active,
            "users_count": len({g.user.uuid for g in self.state.grant_list if g.role is role}),
            "content_type": role.scope_type,
        }

    # ------------------------------------------------------------------ events, hooks

    @staticmethod
    def event(event: Event) -> dict[str, Any]:
        return {
            "uuid": event.uuid,
            "created": iso_z(event.created),
            "event_type": event.event_type,
            "message": event.message,
            "context": event.context,
        }

    def hook(self, hook: Hook) -> dict[str, Any]:
        return {
            "url": self.url("hooks-web", hook.uuid),
            "uuid": hook.uuid,
            "is_active": hook.is_active,
            "author_uuid": hook.user.uuid,
            "event_types": hook.event_types,
            "event_groups": hook.event_groups,
            "created": iso_z(hook.created),
            "modified": iso_z(hook.modified),
            "hook_type": "webhook",
            "author_fullname": hook.user.full_name,
            "author_username": hook.user.username,
            "author_email": hook.user.email,
            "destination_url": hook.destination_url,
            "content_type": hook.content_type,
        }

    # ------------------------------------------------------------------ marketplace

    def _offering_fields(self, offering: Any) -> dict[str, Any]:
        return {
            "offering": f"{self.base}/api/marketplace-public-offerings/{offering.uuid}/",
            "offering_name": offering.name,
            "offering_uuid": offering.uuid,
            "offering_description": "",
            "offering_image": None,
            "offering_thumbnail": None,
            "offering_type": offering.type,
            "offering_terms_of_service": "",
            "offering_shared": True,
            "offering_billable": False,
            "offering_plugin_options": {},
            "provider_name": offering.provider_name,
            "provider_uuid": offering.provider_uuid,
            "category_title": offering.category_title,
            "category_uuid": offering.category_uuid,
            "category_icon": None,
            "plan": (
                f"{self.base}/api/marketplace-public-offerings/{offering.uuid}"
                f"/plans/{offering.plan_uuid}/"
            ),
            "plan_unit": "month",
            "plan_name": offering.plan_name,
            "plan_uuid": offering.plan_uuid,
            "plan_description": "",
        }

    def order(self, order: Order) -> dict[str, Any]:
        project, customer, resource = order.project, order.project.customer, order.resource
        staff = self.viewer.is_staff or self.viewer.is_support
        data = self._offering_fields(order.offering)
        data.update(
            attributes=order.attributes,
            limits={},
            uuid=order.uuid,
            created=iso_z(order.created),
            modified=iso_z(order.modified),
            type=order.type,
        )
        if resource is not None:
            data.update(resource_uuid=None, resource_type=None, resource_name=resource.name)
        data.update(cost=order.cost, state=order.state, output="")
        if resource is not None:
            data["marketplace_resource_uuid"] = resource.uuid
        data["error_message"] = order.error_message
        if staff:
            data["error_traceback"] = ""
        data["callback_url"] = None
        for role in ("consumer", "provider"):
            reviewer = getattr(order, f"{role}_reviewed_by")
            if reviewer is not None:
                data[f"{role}_reviewed_by"] = reviewer.username
                data[f"{role}_reviewed_by_full_name"] = reviewer.full_name
                if self.current:
                    data[f"{role}_reviewed_by_username"] = reviewer.username
            data[f"{role}_reviewed_at"] = iso_z(getattr(order, f"{role}_reviewed_at"))
        if order.created_by is not None:
            data["created_by_full_name"] = order.created_by.full_name
            data["created_by_civil_number"] = None
            if self.current:  # 7.0's OrderDetailsSerializer has no created_by_username
                data["created_by_username"] = order.created_by.username
                data["created_by_email"] = order.created_by.email
        data.update(
            customer_name=customer.name,
            customer_uuid=customer.uuid,
            customer_slug=customer.slug,
            project_name=project.name,
            project_uuid=project.uuid,
            project_description=project.description,
            project_slug=project.slug,
            new_plan_name=order.offering.plan_name,
            new_plan_uuid=order.offering.plan_uuid,
            old_cost_estimate=0.0,
            new_cost_estimate=float(order.cost),
            can_terminate=order.state in ("pending-consumer", "pending-provider"),
            fixed_price=0,
            activation_price=0,
            termination_comment=None,
            backend_id="",
            issue=None,
        )
        if self.current:
            data.update(
                url=self.url("marketplace-orders", order.uuid),
                slug=order.uuid[:8],
                completed_at=iso_z(order.completed_at),
                request_comment=None,
            )
        return data

    def resource(self, resource: Resource) -> dict[str, Any]:
        project, customer = resource.project, resource.project.customer
        staff = self.viewer.is_staff or self.viewer.is_support
        data = self._offering_fields(resource.offering)
        data.update(
            attributes={"name": resource.name},
            limits={},
            uuid=resource.uuid,
            created=iso_z(resource.created),
            modified=iso_z(resource.modified),
            url=self.url("marketplace-resources", resource.uuid),
            scope=None,
            description="",
            state=resource.state,
            resource_uuid=None,
            backend_id="",
            effective_id="",
            resource_type=None,
            project=self.url("projects", project.uuid),
            project_uuid=project.uuid,
            project_name=project.name,
            project_description=project.description,
            project_end_date=iso_z(project.end_date),
            project_end_date_requested_by=None,
            customer_uuid=customer.uuid,
            customer_name=customer.name,
            backend_metadata={},
            is_usage_based=False,
            is_limit_based=False,
            name=resource.name,
            slug=resource.slug,
            current_usages={},
            can_terminate=resource.state in ("OK", "Erred"),
            report=None,
            end_date=iso_z(resource.end_date),
            end_date_requested_by=None,
            username=None,
            limit_usage=None,
            downscaled=False,
            restrict_member_access=False,
            paused=False,
            endpoints=[],
            error_message=resource.error_message,
        )
        if staff:
            data["error_traceback"] = ""
        data.update(
            offering_customer_uuid=resource.offering.provider_uuid,
            options={},
            available_actions=[],
        )
        if self.current:
            data["order_in_progress"] = None
            data["last_sync"] = iso_z(resource.modified)
        return data
