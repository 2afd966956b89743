"""Small builders for test data, so tests read like sentences."""

from __future__ import annotations

import itertools
from typing import Any

from devices.models import Device, DeviceGroup, DeviceType, Metric, Tenant
from devices.services import create_device

_numbers = itertools.count(1)


def make_device_type(tenant: Tenant, name: str = "Freezer", **fields: Any) -> DeviceType:
    device_type, _ = DeviceType.objects.get_or_create(tenant=tenant, name=name, defaults=fields)
    Metric.objects.get_or_create(
        device_type=device_type,
        name="temperature",
        defaults={"unit": "°C", "min_value": -40, "max_value": 60},
    )
    return device_type


def make_pump_type(tenant: Tenant, failure_threshold: float) -> tuple[DeviceType, Metric]:
    """A pump type whose vibration (mm/s) is a wear indicator with this failure threshold, and
    a flow rate that is not: what predictive maintenance's tests and benchmark score."""
    pump = DeviceType.objects.create(tenant=tenant, name="Pump")
    vibration = Metric.objects.create(
        device_type=pump,
        name="vibration",
        unit="mm/s",
        min_value=0,
        max_value=50,
        is_wear_indicator=True,
        failure_threshold=failure_threshold,
    )
    Metric.objects.create(device_type=pump, name="flow_rate", unit="m³/h")
    return pump, vibration


def make_group(tenant: Tenant, name: str = "North site") -> DeviceGroup:
    group, _ = DeviceGroup.objects.get_or_create(tenant=tenant, name=name)
    return group


def make_device(tenant: Tenant, key: str | None = None, **fields: Any) -> Device:
    key = key or f"{tenant.slug}-dev-{next(_numbers):04d}"
    device_type = fields.pop("device_type", None) or make_device_type(tenant)
    return create_device(
        tenant=tenant,
        key=key,
        name=fields.pop("name", key.replace("-", " ").title()),
        device_type=device_type,
        **fields,
    ).device
