"""Demo rules for `manage.py seed_demo`: what a newcomer to the demo fleet sees raise alerts.

The simulated freezers drift around set points between -22 °C and 2 °C with a daily swing, so a
few of them pass 12 °C in any hour: the threshold rule keeps a couple of alerts open. Idempotent:
rules and the channel are looked up by name, and ones that exist are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from alerts.models import ChannelKind, NotificationChannel
from devices.models import DeviceGroup, DeviceType, Tenant
from rules.models import Rule, RuleKind, Severity
from rules.services import save_rule

DEMO_CHANNEL = "Cold-chain on-call (email)"
DEMO_RECIPIENTS = "oncall@acme.example"


@dataclass(frozen=True)
class DemoRule:
    name: str
    description: str
    kind: str
    condition: str
    severity: str
    for_duration: timedelta = timedelta(0)
    in_group: bool = False


DEMO_RULES = (
    DemoRule(
        name="Freezer above 12 °C",
        description="Goods thaw: act at once.",
        kind=RuleKind.THRESHOLD,
        condition="temperature > 12",
        severity=Severity.CRITICAL,
    ),
    DemoRule(
        name="Freezer warm for 5 minutes",
        description="Above 5 °C for five minutes in a row, at this site.",
        kind=RuleKind.DURATION,
        condition="temperature > 5",
        severity=Severity.WARNING,
        for_duration=timedelta(minutes=5),
        in_group=True,
    ),
    DemoRule(
        name="Door open on a warm freezer",
        description="The door is open while the freezer is already warm.",
        kind=RuleKind.COMPOUND,
        condition="door_open == 1 and temperature > 8",
        severity=Severity.INFO,
    ),
)


def seed_demo_rules(tenant: Tenant, device_type: DeviceType, group: DeviceGroup) -> int:
    """The demo rules on `device_type` (a type with `temperature` and `door_open`), one of them
    narrowed to `group`, all notifying one email channel (the console email backend prints the
    mails). Returns how many rules it created (0 when they were there already)."""
    channel, _ = NotificationChannel.objects.get_or_create(
        tenant=tenant,
        name=DEMO_CHANNEL,
        defaults={"kind": ChannelKind.EMAIL, "email_to": DEMO_RECIPIENTS, "for_offline": True},
    )
    existing = set(Rule.objects.filter(tenant=tenant).values_list("name", flat=True))
    created = 0
    for spec in DEMO_RULES:
        if spec.name in existing:
            continue
        rule = Rule(
            tenant=tenant,
            name=spec.name,
            description=spec.description,
            kind=spec.kind,
            condition=spec.condition,
            severity=spec.severity,
            for_duration=spec.for_duration,
            device_type=device_type,
            group=group if spec.in_group else None,
        )
        save_rule(rule, channels=[channel])
        created += 1
    return created
