"""The admin, the operator's main tool, showing each user only the tenants they belong to.

The base every tenant-scoped admin builds on, in this app and others, is in `tenancy.py`
(`TenantScopedAdmin`, `TenantScopedInline`, `TenantScopedFilter`).
"""

from . import catalog, fleet, tenants, tokens  # noqa: F401  (registers the admins)
