"""Tenants and their memberships: tenant admins manage members, only superusers add tenants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib import admin
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest

from devices import services
from devices.admin.tenancy import TenantScopedAdmin, TenantScopedFilter, count_column, count_of
from devices.forms import (
    UsernameField,
)
from devices.models import (
    Device,
    Membership,
    Role,
    Tenant,
)

# --- Tenants and memberships --------------------------------------------------------------------


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    """Members see their tenants; tenant admins may rename them; only superusers add or delete."""

    write_role = Role.ADMIN
    list_display = ["name", "slug", "your_role", "member_count", "device_count", "created_at"]
    search_fields = ["name", "slug"]
    fields = ["name", "slug"]

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        role = Membership.objects.filter(tenant=OuterRef("pk"), user=request.user).values("role")
        return (
            super()
            .get_queryset(request)
            .annotate(
                your_role_value=Subquery(role[:1]),
                member_count=count_of(Membership, "tenant"),
                device_count=count_of(Device, "tenant"),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            # API clients name the tenant by its slug (X-Tenant): only superusers change it.
            fields.append("slug")
        return fields

    def get_prepopulated_fields(self, request: HttpRequest, obj: Any = None) -> dict:
        return {"slug": ("name",)} if obj is None else {}

    @admin.display(description="Your role")
    def your_role(self, obj: Tenant) -> str:
        if obj.your_role_value:
            return Role(obj.your_role_value).label
        return "Superuser"

    member_count = count_column("member_count", "Members")

    device_count = count_column("device_count", "Devices")


@admin.register(Membership)
class MembershipAdmin(TenantScopedAdmin):
    """Tenant admins manage their tenant's members; viewers and operators only see them."""

    write_role = Role.ADMIN
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role", ("tenant", TenantScopedFilter)]
    list_select_related = ["user", "tenant"]
    search_fields = ["user__username", "user__email", "tenant__name"]
    fields = ["user", "tenant", "role"]

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user":
            # Typing a username instead of picking from a list keeps other tenants' users hidden
            # (and no add/view links to the superuser-only user admin are offered).
            return UsernameField(label="User")
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "user"] if obj is not None else fields

    def save_model(self, request: HttpRequest, obj: Membership, form: Any, change: bool) -> None:
        membership = services.add_member(obj.user, obj.tenant, obj.role)
        obj.pk = membership.pk
        obj.created_at = membership.created_at
        obj._state.adding = False
