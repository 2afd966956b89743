"""API clients for the named users, and reading a paginated list."""

from __future__ import annotations

from typing import Any

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
