"""One case per API viewset: how to make its object in a tenant, and what to send to create or
change one. `tests/api/test_tenancy.py` runs the same tenancy checks over every case, and fails
when a viewset routed under /api/v1/ has no case here, so add one with each new viewset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Model
from django.urls import reverse
from rest_framework.viewsets import ViewSetMixin

from devices.api.views import DeviceGroupViewSet, DeviceTypeViewSet, DeviceViewSet, TenantViewSet
from devices.models import Device, DeviceType, Tenant
from tests.factories import make_device, make_device_type, make_group


def _no_related_state(obj: Model) -> Any:
    return None


@dataclass(frozen=True)
class ApiCase:
    """How the tenancy checks drive one viewset.

    `make(tenant)` returns a saved object of that tenant; `create_payload(tenant)` a valid create
    body for an operator of `tenant`; `update_payload(obj)` a valid full (PUT) body that changes
    `obj`. Read-only viewsets leave both payloads out. `related_state(obj)` adds what
    `values()` does not show (many-to-many, nested rows) to the "nothing changed" comparison.
    """

    basename: str
    viewset: type[ViewSetMixin]
    make: Callable[[Tenant], Model]
    create_payload: Callable[[Tenant], dict] | None = None
    update_payload: Callable[[Model], dict] | None = None
    lookup_field: str = "id"
    related_state: Callable[[Model], Any] = field(default=_no_related_state)
    create_format: str = "json"  # "multipart" for a create that uploads a file

    def __str__(self) -> str:
        return self.basename

    @property
    def writable(self) -> bool:
        return self.create_payload is not None

    @property
    def model(self) -> type[Model]:
        return self.viewset.queryset.model

    @property
    def detail_methods(self) -> list[str]:
        return ["get", "put", "patch", "delete"] if self.writable else ["get"]

    def list_url(self) -> str:
        return reverse(f"{self.basename}-list")

    def lookup(self, obj: Model) -> Any:
        return getattr(obj, self.lookup_field)

    def detail_url(self, obj: Model) -> str:
        kwarg = self.viewset.lookup_url_kwarg or self.viewset.lookup_field
        return reverse(f"{self.basename}-detail", kwargs={kwarg: self.lookup(obj)})

    def state(self, obj: Model) -> Any:
        """Everything stored about `obj` (None once it is deleted)."""
        row = self.model._default_manager.filter(pk=obj.pk).values().first()
        if row is None:
            return None
        return row, self.related_state(obj)

    def request(self, client: Any, method: str, obj: Model, **headers: Any) -> Any:
        url = self.detail_url(obj)
        if method in {"put", "patch"}:
            body = self.update_payload(obj) if self.update_payload else {}
            return getattr(client, method)(url, body, format="json", **headers)
        return getattr(client, method)(url, **headers)


def _device_type_payload(name: str) -> dict:
    return {
        "name": name,
        "description": "Walk-in chiller",
        "heartbeat_timeout": "00:10:00",
        "metrics": [
            {"name": "temperature", "unit": "°C", "min_value": -30, "max_value": 10},
            {"name": "door_open", "unit": "", "min_value": 0, "max_value": 1},
        ],
    }


def _metrics_of(device_type: DeviceType) -> list:
    return list(device_type.metrics.order_by("name").values_list("name", "unit", "min_value"))


def _groups_of(device: Device) -> list[int]:
    return sorted(device.groups.values_list("pk", flat=True))


CASES: list[ApiCase] = [
    ApiCase(
        basename="tenant",
        viewset=TenantViewSet,
        make=lambda tenant: tenant,
        lookup_field="slug",
    ),
    ApiCase(
        basename="device-type",
        viewset=DeviceTypeViewSet,
        make=lambda tenant: make_device_type(tenant, "Harness type"),
        create_payload=lambda tenant: _device_type_payload("Chiller"),
        update_payload=lambda obj: _device_type_payload(f"{obj.name} v2"),
        related_state=_metrics_of,
    ),
    ApiCase(
        basename="device-group",
        viewset=DeviceGroupViewSet,
        make=lambda tenant: make_group(tenant, "Harness group"),
        create_payload=lambda tenant: {"name": "Loading dock", "description": "Bay 3"},
        update_payload=lambda obj: {"name": f"{obj.name} v2", "description": "Moved"},
    ),
    ApiCase(
        basename="device",
        viewset=DeviceViewSet,
        make=lambda tenant: make_device(tenant, f"{tenant.slug}-harness.1:a"),
        create_payload=lambda tenant: {
            "key": f"{tenant.slug}-new-1",
            "name": "New freezer",
            "device_type": make_device_type(tenant, "Harness sensor").pk,
            "groups": [make_group(tenant, "Harness group").pk],
            "tags": ["pilot"],
            "attributes": {"site": "north"},
        },
        update_payload=lambda obj: {
            "name": f"{obj.name} v2",
            "device_type": obj.device_type_id,
            "tags": ["renamed"],
            "attributes": {"site": "south"},
            "location": "Dock 4",
        },
        lookup_field="key",
        related_state=_groups_of,
    ),
]

# Later apps keep their cases in modules of their own, which import ApiCase from here.
from tests.api import (  # noqa: E402
    cases_alerts,
    cases_channels,
    cases_commands,
    cases_ota,
    cases_rules,
)

CASES += [
    *cases_rules.CASES,
    *cases_alerts.CASES,
    *cases_channels.CASES,
    *cases_ota.CASES,
    *cases_commands.CASES,
]

WRITABLE_CASES = [case for case in CASES if case.writable]
