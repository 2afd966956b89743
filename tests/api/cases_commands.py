"""Tenancy case of the commands API (see tests/api/tenancy_cases.py). Commands are sent with
POST /devices/{key}/commands/, whose tenancy tests/devices/test_api_commands.py covers."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from devices.api.views import CommandViewSet
from devices.models import Command, Device, Tenant
from tests.api.tenancy_cases import ApiCase
from tests.factories import make_device


def _make_command(tenant: Tenant) -> Command:
    key = f"{tenant.slug}-commanded-1"
    device = Device.objects.filter(key=key).first() or make_device(tenant, key)
    return Command.objects.create(
        tenant=tenant,
        device=device,
        name="reboot",
        expires_at=timezone.now() + timedelta(minutes=1),
    )


CASES: list[ApiCase] = [
    ApiCase(basename="command", viewset=CommandViewSet, make=_make_command),
]
