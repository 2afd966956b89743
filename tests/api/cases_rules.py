"""Tenancy cases of the rules API viewsets (see tests/api/tenancy_cases.py)."""

from __future__ import annotations

from alerts.models import ChannelKind, NotificationChannel
from devices.models import Tenant
from rules.api.views import RuleViewSet
from rules.models import Rule
from rules.services import save_rule
from tests.api.tenancy_cases import ApiCase
from tests.factories import make_device_type


def _email_channel(tenant: Tenant, name: str) -> NotificationChannel:
    channel, _ = NotificationChannel.objects.get_or_create(
        tenant=tenant,
        name=name,
        defaults={"kind": ChannelKind.EMAIL, "email_to": f"oncall@{tenant.slug}.example"},
    )
    return channel


def make_rule(tenant: Tenant) -> Rule:
    existing = Rule.objects.filter(tenant=tenant, name="Harness rule").first()
    if existing:
        return existing
    rule = Rule(
        tenant=tenant,
        name="Harness rule",
        condition="temperature > 80",
        device_type=make_device_type(tenant, "Harness type"),
    )
    return save_rule(rule, [_email_channel(tenant, "Harness mail")])


def _channels_of(rule: Rule) -> list[int]:
    return list(rule.rule_channels.order_by("position").values_list("channel_id", flat=True))


CASES: list[ApiCase] = [
    ApiCase(
        basename="rule",
        viewset=RuleViewSet,
        make=make_rule,
        create_payload=lambda tenant: {
            "name": "Too warm",
            "kind": "duration",
            "condition": "temperature > 5",
            "for_duration": "00:05:00",
            "severity": "critical",
            "device_type": make_device_type(tenant, "Harness type").pk,
            "channels": [_email_channel(tenant, "Harness mail").pk],
        },
        update_payload=lambda obj: {
            "name": f"{obj.name} v2",
            "kind": "threshold",
            "condition": "temperature > 90",
            "device_type": obj.device_type_id,
            "channels": [
                _email_channel(obj.tenant, "Harness pager").pk,
                _email_channel(obj.tenant, "Harness mail").pk,
            ],
        },
        related_state=_channels_of,
    ),
]
