"""The limits a device's rules put on its metrics, for charts to draw: `temperature > 80` on the
device's type (or its group, tag, or the device itself) is a line at 80 on its temperature
chart."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from django.db.models import Q

from devices.models import Device
from rules.expressions import ExpressionError, parse
from rules.models import Rule, RuleKind


@dataclass(frozen=True)
class Threshold:
    metric: str
    operator: str
    value: float
    rule: str
    severity: str
    compared: str  # what the rule compares: the metric, or e.g. avg(temperature, 10m)

    @property
    def label(self) -> str:
        what = "" if self.compared == self.metric else f"{self.compared} "
        return f"{self.rule}: {what}{self.operator} {self.value:g}"


def rules_applying_to(device: Device) -> list[Rule]:
    """The enabled rules whose scope includes the device."""
    group_ids = list(device.groups.values_list("pk", flat=True))
    return list(
        Rule.objects.filter(
            tenant_id=device.tenant_id, device_type_id=device.device_type_id, is_enabled=True
        )
        .exclude(kind=RuleKind.NO_DATA)
        .filter(Q(group__isnull=True) | Q(group__in=group_ids))
        .filter(Q(tag="") | Q(tag__in=device.tags or []))
        .filter(Q(device__isnull=True) | Q(device=device))
        .order_by("name")
    )


def thresholds_for(device: Device) -> dict[str, list[Threshold]]:
    """Each metric's thresholds from the rules applying to the device."""
    found: dict[str, list[Threshold]] = defaultdict(list)
    for rule in rules_applying_to(device):
        try:
            expression = parse(rule.condition)
        except ExpressionError:
            continue  # a rule saved before a language change: it is flagged in the admin
        for metric, operator, value, compared in expression.thresholds():
            found[metric].append(
                Threshold(metric, operator, value, rule.name, rule.severity, compared)
            )
    return dict(found)
