"""Tenancy cases of the alerts API viewsets (see tests/api/tenancy_cases.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from alerts.api.views import AlertViewSet
from alerts.models import Alert, AlertKind
from devices.models import Device, Tenant
from tests.api.tenancy_cases import ApiCase
from tests.factories import make_device


def _make_alert(tenant: Tenant) -> Alert:
    """An open offline alert on a device of `tenant` (alerts are never created through the API)."""
    key = f"{tenant.slug}-alerting-1"
    device = Device.objects.filter(key=key).first() or make_device(tenant, key)
    at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    return Alert.objects.create(
        tenant=tenant,
        kind=AlertKind.OFFLINE,
        device=device,
        title=f"{device.name} is offline",
        first_triggered_at=at,
        last_triggered_at=at,
    )


CASES: list[ApiCase] = [
    ApiCase(basename="alert", viewset=AlertViewSet, make=_make_alert),
]
