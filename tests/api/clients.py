"""API clients for the named users, and reading a paginated list."""

from __future__ import annotations

from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient


def client_as(user: Any = None) -> APIClient:
    """A client logged in as `user`, or an anonymous one."""
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


def listed(response: Any, field: str) -> list:
    """`field` of every row of a (paginated) list response."""
    assert response.status_code == 200, response.data
    return [row[field] for row in response.data["results"]]


def routed_views(prefix: str = "api/v1/") -> list[type]:
    """The view classes (viewsets and APIViews) routed under `prefix`."""
    found: list[type] = []

    def walk(patterns: list, route_so_far: str) -> None:
        for pattern in patterns:
            route = route_so_far + str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, route)
            elif isinstance(pattern, URLPattern) and route.startswith(prefix):
                view_class = getattr(pattern.callback, "cls", None)
                if view_class is not None and view_class not in found:
                    found.append(view_class)

    walk(get_resolver().url_patterns, "")
    return found
