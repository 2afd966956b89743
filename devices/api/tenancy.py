"""The base every tenant-scoped API viewset builds on.

- `get_queryset()` is the model's queryset `.for_user(request.user)`: another tenant's object
  answers 404, never 403, so its existence does not leak.
- The tenant is never client-writable: serializers show it read-only, and on create it is the
  tenant of the request (see `request_tenant()`), checked for the operator role before the
  payload is validated, so a viewer's POST answers 403 whatever it carries.
"""

from typing import Any

from django.db.models import ProtectedError, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, status, viewsets

from devices.models import Membership, Role, Tenant

TENANT_HEADER = "X-Tenant"

TENANT_HEADER_PARAMETER = OpenApiParameter(
    TENANT_HEADER,
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "Slug of the tenant to create the object in (GET /api/v1/tenants/ lists yours). "
        "Needed only when you are an operator of several tenants."
    ),
)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the object."
    default_code = "conflict"


def request_tenant(request: Any, role: str = Role.OPERATOR) -> Tenant:
    """The tenant a write request acts in: the one named by the X-Tenant header (its slug), or the
    user's only tenant where they hold `role`."""
    writable = Tenant.objects.for_user(request.user, role=role)
    slug = request.headers.get(TENANT_HEADER)
    if slug:
        tenant = writable.filter(slug=slug).first()
        if tenant is None:
            raise exceptions.PermissionDenied(
                f"You are not a {role} (or higher) of a tenant '{slug}'. "
                "GET /api/v1/tenants/ lists your tenants and roles."
            )
        return tenant
    tenants = list(writable[:2])
    if len(tenants) == 1:
        return tenants[0]
    if not tenants:
        is_member = Membership.objects.filter(user=request.user).exists()
        raise exceptions.PermissionDenied(
            "Your role does not allow creating objects: ask a tenant admin for operator rights."
            if is_member
            else "You are not a member of any tenant."
        )
    raise exceptions.ValidationError(
        {
            TENANT_HEADER: f"You belong to several tenants: name one in the {TENANT_HEADER} header "
            "with its slug (GET /api/v1/tenants/ lists them)."
        }
    )


class TenantScopedMixin:
    """Scopes a viewset's rows to the user's tenants.

    Subclasses set `queryset` on a model with a `TenantQuerySet` manager and a `tenant` foreign
    key; `write_role` (operator by default) is what unsafe methods need in the object's tenant.
    On create, `target_tenant` is the tenant the new object goes to; serializers find it in their
    context as `tenant` to check that what the payload refers to belongs to the same tenant.
    """

    write_role = Role.OPERATOR
    target_tenant: Tenant | None = None

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if getattr(self, "action", None) == "create":
            self.target_tenant = request_tenant(request, self.write_role)

    def get_queryset(self) -> QuerySet:
        return super().get_queryset().for_user(self.request.user)

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        context["tenant_queryset"] = Tenant.objects.for_user(self.request.user)
        context["tenant"] = self.target_tenant
        return context

    def perform_create(self, serializer: Any) -> None:
        serializer.save(tenant=self.target_tenant or request_tenant(self.request, self.write_role))

    def perform_destroy(self, instance: Any) -> None:
        try:
            instance.delete()
        except ProtectedError as error:
            in_use = len(error.protected_objects)
            raise Conflict(
                f"{in_use} object(s) still use this {instance._meta.verbose_name}: "
                "move them elsewhere or delete them first."
            ) from error


class TenantScopedViewSet(TenantScopedMixin, viewsets.ModelViewSet):
    """List, retrieve, create, update and delete within the user's tenants."""


class TenantScopedReadOnlyViewSet(TenantScopedMixin, viewsets.ReadOnlyModelViewSet):
    """List and retrieve within the user's tenants."""
