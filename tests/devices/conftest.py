"""Fixtures and helpers for the admin tests: a user in two tenants, admin URLs, form data."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Model
from django.urls import reverse

from devices.models import Role
from devices.services import add_member


def admin_url(model_or_obj: Any, view: str = "changelist") -> str:
    """The admin URL of a model's changelist/add page, or of an object's change/delete page."""
    opts = model_or_obj._meta
    name = f"admin:{opts.app_label}_{opts.model_name}_{view}"
    if isinstance(model_or_obj, Model):
        return reverse(name, args=[model_or_obj.pk])
    return reverse(name)


def device_form(**overrides: Any) -> dict[str, Any]:
    """POST data of the device add/change form."""
    data = {
        "name": "Freezer 9",
        "groups": [],
        "is_enabled": "on",
        "location": "Dock 3",
        "latitude": "",
        "longitude": "",
        "firmware_version": "1.0.0",
        "tags": "",
        "attributes": "{}",
        "_save": "Save",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


@pytest.fixture
def root(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw-root")


@pytest.fixture
def olga(acme, globex):
    """Operator of both Acme and Globex."""
    user = get_user_model().objects.create_user("olga", "olga@example.com", "pw-olga")
    add_member(user, acme, Role.OPERATOR)
    add_member(user, globex, Role.OPERATOR)
    return user
