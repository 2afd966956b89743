"""What a user may see and change in the admin: the base of every tenant-scoped admin.

`TenantScopedAdmin` (and `TenantScopedInline`) is the base every tenant-scoped admin builds on, in
this app and others. It needs a model whose manager is a `TenantQuerySet` and whose instances have
`tenant_id`, and gives:

- rows: `Model.objects.for_user(user)`, so other tenants' rows do not exist for the user;
- reading: any membership (an object: viewer or more in its tenant); so a viewer gets Django's
  read-only pages;
- adding, changing, deleting: `write_role` (operator by default) in the object's tenant, or in
  any tenant when there is no object yet; superusers may do everything;
- forms: the `tenant` choices are the tenants where the user holds `write_role` (preselected when
  there is one), every other related choice is limited to the user's tenants, related rows of
  another tenant than the object's are refused, and the tenant is read-only once set.

`ReadOnlyTenantAdmin` is the same for rows only the platform writes: nobody adds, edits or deletes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin
from django.core.exceptions import FieldDoesNotExist
from django.db import models
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest

from devices.forms import (
    TenantScopedModelForm,
)
from devices.models import (
    Membership,
    Role,
    Tenant,
    TenantQuerySet,
    has_role,
)

# --- Who may do what ----------------------------------------------------------------------------


def roles_held(request: HttpRequest) -> set[str]:
    """The roles the user holds in any tenant, looked up once per request."""
    held = getattr(request, "_iotfleet_roles_held", None)
    if held is None:
        user = request.user
        held = (
            set(Membership.objects.filter(user=user).values_list("role", flat=True))
            if user.is_authenticated
            else set()
        )
        request._iotfleet_roles_held = held
    return held


def holds_role_anywhere(request: HttpRequest, role: str) -> bool:
    """Whether the user holds at least `role` in some tenant (superusers: always)."""
    user = request.user
    if not user.is_active:
        return False
    return user.is_superuser or bool(roles_held(request) & set(Role.at_least(role)))


def holds_role_for(request: HttpRequest, obj: Any, role: str) -> bool:
    """Whether the user holds at least `role` in the tenant of `obj`."""
    return request.user.is_active and has_role(request.user, obj.tenant_id, role)


class TenantScopedFilter(admin.RelatedFieldListFilter):
    """A related-field filter offering only rows of the user's tenants.

    The stock filter lists every row of the related table, which would show one tenant's group
    and type names to another. Names that may repeat across tenants get the tenant as a prefix.
    """

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list:
        related = field.remote_field.model
        queryset = related._default_manager.all()
        if isinstance(queryset, TenantQuerySet):
            queryset = queryset.for_user(request.user)
        else:
            # Not tenant-scoped: offer only the rows that the user's visible objects point at.
            used = model_admin.get_queryset(request).values_list(f"{self.field_path}__pk")
            queryset = queryset.filter(pk__in=used)
        ordering = self.field_admin_ordering(field, request, model_admin)
        if ordering:
            queryset = queryset.order_by(*ordering)
        rows = list(queryset)
        tenant_ids = {getattr(row, "tenant_id", None) for row in rows}
        if related is Tenant or len(tenant_ids) < 2:
            return [(row.pk, str(row)) for row in rows]
        names = dict(Tenant.objects.filter(pk__in=tenant_ids).values_list("pk", "name"))
        return [(row.pk, f"{names.get(row.tenant_id, '?')} / {row}") for row in rows]


class _TenantScopedChoices:
    """Rows and form choices limited to the user's tenants; shared by admins and inlines."""

    write_role: str = Role.OPERATOR
    form = TenantScopedModelForm

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).for_user(request.user)

    def get_field_queryset(self, db: str | None, db_field: Any, request: HttpRequest) -> Any:
        related = db_field.remote_field.model
        queryset = super().get_field_queryset(db, db_field, request)
        base = queryset if queryset is not None else related._default_manager.using(db).all()
        if not isinstance(base, TenantQuerySet):
            return queryset
        # New rows go only into tenants where the user may write; other choices need membership.
        role = self.write_role if related is Tenant else Role.VIEWER
        return base.for_user(request.user, role=role)


class TenantScopedAdmin(_TenantScopedChoices, admin.ModelAdmin):
    """The base of every tenant-scoped admin; see the module docstring."""

    tenant_field = "tenant"

    def has_module_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, Role.VIEWER)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, Role.VIEWER)
        return holds_role_for(request, obj, Role.VIEWER)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return holds_role_anywhere(request, self.write_role)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, self.write_role)
        return holds_role_for(request, obj, self.write_role)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_change_permission(request, obj)

    def has_tenant_field(self) -> bool:
        try:
            field = self.model._meta.get_field(self.tenant_field)
        except FieldDoesNotExist:
            return False
        return field.many_to_one and field.related_model is Tenant

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Sequence[str]:
        fields = list(super().get_readonly_fields(request, obj))
        # Moving a row to another tenant would strand its related rows; create it anew instead.
        if obj is not None and self.has_tenant_field() and self.tenant_field not in fields:
            fields.append(self.tenant_field)
        return fields

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        initial = super().get_changeform_initial_data(request)
        if self.has_tenant_field() and self.tenant_field not in initial:
            writable = list(Tenant.objects.for_user(request.user, role=self.write_role)[:2])
            if len(writable) == 1:
                initial[self.tenant_field] = writable[0].pk
        return initial


class ReadOnlyTenantAdmin(TenantScopedAdmin):
    """Rows the platform writes (ingest, rollouts, the maintenance model): members of the tenant
    read them, nobody adds, edits or deletes them here."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TenantScopedInline(_TenantScopedChoices, admin.TabularInline):
    """Inline rows of a tenant-scoped parent: the parent's tenant decides what the user may do."""

    extra = 0

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, Role.VIEWER)
        return holds_role_for(request, obj, Role.VIEWER)

    def has_add_permission(self, request: HttpRequest, obj: Any) -> bool:
        return self.has_change_permission(request, obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is None:
            return holds_role_anywhere(request, self.write_role)
        return holds_role_for(request, obj, self.write_role)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_change_permission(request, obj)


def count_of(model: type[models.Model], fk: str) -> Coalesce:
    """A subquery counting `model` rows pointing at the outer row (no join fan-out)."""
    rows = (
        model._default_manager.filter(**{fk: OuterRef("pk")})
        .order_by()
        .values(fk)
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(rows), 0)


def count_column(annotation: str, description: str) -> Callable[[Any, Any], int]:
    """A sortable list column showing a count annotated on the queryset (see `count_of`)."""

    @admin.display(description=description, ordering=annotation)
    def column(admin_instance: Any, obj: Any) -> int:
        return getattr(obj, annotation)

    return column
