"""What base.html shows on every operator page."""

from __future__ import annotations

import functools
from typing import Any

from django.http import HttpRequest

from devices.models import Tenant


def navigation(request: HttpRequest) -> dict[str, Any]:
    """The user's tenants for the top bar, queried only if a template shows them."""

    @functools.cache  # once per request, however often a template asks (rows of a table)
    def tenants() -> list[Tenant]:
        return list(Tenant.objects.for_user(request.user).only("name"))

    return {"user_tenants": tenants}
