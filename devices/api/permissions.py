"""API permissions: members of a tenant read its objects, operators and admins change them."""

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission

from devices.models import Role, has_role


class TenantRolePermission(BasePermission):
    """Reads need membership (the queryset already hides other tenants); writes need `write_role`.

    A view may set `write_role` (default operator) to demand more, e.g. admin for memberships.
    """

    message = (
        "Your role in this tenant does not allow changes: ask a tenant admin for operator rights."
    )

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        role = Role.VIEWER if request.method in SAFE_METHODS else _write_role(view)
        return has_role(request.user, obj.tenant_id, role)


def _write_role(view: Any) -> str:
    return getattr(view, "write_role", Role.OPERATOR)
