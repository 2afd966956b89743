"""Tenancy cases of the channels API viewsets (see tests/api/tenancy_cases.py)."""

from __future__ import annotations

from alerts.api.channels import NotificationChannelViewSet
from alerts.models import ChannelKind, NotificationChannel
from devices.models import Tenant
from tests.api.tenancy_cases import ApiCase


def make_channel(tenant: Tenant) -> NotificationChannel:
    channel, _ = NotificationChannel.objects.get_or_create(
        tenant=tenant,
        name="Harness hook",
        defaults={
            "kind": ChannelKind.WEBHOOK,
            "webhook_url": f"https://hooks.example.com/{tenant.slug}",
            "webhook_secret": "harness-secret-0123456789",
        },
    )
    return channel


CASES: list[ApiCase] = [
    ApiCase(
        basename="notification-channel",
        viewset=NotificationChannelViewSet,
        make=make_channel,
        create_payload=lambda tenant: {
            "name": "On-call pager",
            "kind": "webhook",
            "webhook_url": "https://pager.example.com/hook",
            "webhook_secret": "a-long-enough-secret-42",
            "max_per_hour": 20,
        },
        update_payload=lambda obj: {
            "name": f"{obj.name} v2",
            "kind": "email",
            "email_to": "ops@example.com, night@example.com",
            "max_per_hour": 5,
        },
    ),
]
