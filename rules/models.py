"""Alert rules and their per-device evaluation state.

A rule belongs to a tenant and applies to the devices of one device type, optionally narrowed to a
group, a tag or a single device. Its condition is an expression in the rules language
(rules/expressions.py), checked against the type's metrics when it is saved. Evaluation
(rules/engine.py) runs on every ingested batch; what it must remember between batches (since when a
condition holds, since when it is clear, moving-window statistics, the last value of each metric)
lives in `RuleState`, one row per rule and device, so a worker restart loses nothing.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from devices.models import Device, DeviceGroup, DeviceType, Tenant, TenantQuerySet


class RuleKind(models.TextChoices):
    THRESHOLD = "threshold", "Threshold (temperature > 80)"
    DURATION = "duration", "Threshold held for a duration"
    RATE = "rate", "Rate of change"
    NO_DATA = "no_data", "No data for a duration"
    ZSCORE = "zscore", "Statistical (z-score against the device's history)"
    COMPOUND = "compound", "Compound (and/or/not over several metrics)"


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Rule(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="rules")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=16, choices=RuleKind.choices, default=RuleKind.THRESHOLD)
    condition = models.TextField(
        blank=True,
        help_text="When the rule breaks, e.g. temperature > 80, or "
        "avg(temperature, 10m) > 60 and humidity < 20. Not used by no-data rules.",
    )
    metric = models.CharField(
        max_length=63,
        blank=True,
        help_text="No-data rules: the metric that must keep arriving (blank: any metric).",
    )
    for_duration = models.DurationField(
        default=timedelta(0),
        help_text="The condition must hold this long before the alert opens (duration rules); "
        "for no-data rules, how long a device may stay silent.",
    )
    hysteresis = models.DurationField(
        default=timedelta(minutes=5),
        help_text="An open alert resolves itself once the condition has been clear this long.",
    )
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)

    # Scope: the devices of `device_type`, optionally narrowed to one group, tag or device.
    device_type = models.ForeignKey(DeviceType, on_delete=models.CASCADE, related_name="rules")
    group = models.ForeignKey(
        DeviceGroup, on_delete=models.CASCADE, null=True, blank=True, related_name="rules"
    )
    tag = models.CharField(max_length=64, blank=True)
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, null=True, blank=True, related_name="rules"
    )

    # Notifications: `channels` in order; the first when the alert opens, the next one each time
    # the alert stays unacknowledged for `escalate_after`.
    channels = models.ManyToManyField(
        "alerts.NotificationChannel",
        through="alerts.RuleChannel",
        blank=True,
        related_name="rules",
    )
    escalate_after = models.DurationField(
        default=timedelta(minutes=15),
        help_text="An alert not acknowledged for this long notifies the next channel.",
    )
    remind_every = models.DurationField(
        null=True,
        blank=True,
        help_text="Re-notify an open, unacknowledged alert this often (blank: never).",
    )

    is_enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["tenant__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="rule_unique_name"),
        ]
        indexes = [models.Index(fields=["device_type", "is_enabled"], name="rule_type_enabled")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """Checks that need no parser; the condition itself is checked by rules/forms.py and the
        API serializer through `rules.expressions.parse` (with the type's metric names)."""
        errors = {}
        narrowed = [bool(self.group_id), bool(self.tag), bool(self.device_id)]
        if sum(narrowed) > 1:
            errors["group"] = "Narrow the rule to one group, one tag or one device, not several."
        if self.device_type_id and self.tenant_id:
            if self.device_type.tenant_id != self.tenant_id:
                errors["device_type"] = "The device type belongs to another tenant."
            if self.device_id and self.device.device_type_id != self.device_type_id:
                errors["device"] = "The device is not of the rule's device type."
        if self.group_id and self.tenant_id and self.group.tenant_id != self.tenant_id:
            errors["group"] = "The group belongs to another tenant."
        if self.kind == RuleKind.NO_DATA:
            if self.for_duration <= timedelta(0):
                errors["for_duration"] = "Say how long a device may stay silent, e.g. 00:10:00."
        elif not self.condition.strip():
            errors["condition"] = "Write the condition, e.g. temperature > 80."
        if self.kind == RuleKind.DURATION and self.for_duration <= timedelta(0):
            errors["for_duration"] = "A duration rule needs how long the condition must hold."
        if self.for_duration < timedelta(0) or self.hysteresis < timedelta(0):
            errors["hysteresis"] = "Durations cannot be negative."
        if self.escalate_after <= timedelta(0):
            errors["escalate_after"] = "Escalation needs a positive delay."
        if self.remind_every is not None and self.remind_every < timedelta(minutes=1):
            errors["remind_every"] = "Remind at most once a minute."
        if errors:
            raise ValidationError(errors)


class RuleStateQuerySet(TenantQuerySet):
    tenant_lookup = "rule__tenant"


class RuleState(models.Model):
    """What evaluation remembers about one rule on one device between batches (device time).

    - `breaching`: the condition held at the last evaluated reading;
    - `since`: when it started holding (for duration rules: the alert fires at since + for);
    - `firing`: the rule's alert for this device is open (fired and not yet resolved);
    - `clear_since`: when it stopped holding while firing (resolves at clear_since + hysteresis);
    - `values`: the last value of each metric the condition reads, {"temperature": [ts_ms, v]},
      so a message carrying only some metrics is evaluated with the others' last values.

    The running statistics of window functions (avg, zscore, rate... over a window) are the
    device's, not the rule's: they live in `DeviceWindows`, shared by the rules that use them.
    Only devices where the rule breaks, or whose alert is open, have a row here.
    """

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="states")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="rule_states")
    breaching = models.BooleanField(default=False)
    firing = models.BooleanField(default=False)
    since = models.DateTimeField(null=True, blank=True)
    clear_since = models.DateTimeField(null=True, blank=True)
    last_time = models.DateTimeField(null=True, blank=True)
    values = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RuleStateQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "device"], name="rulestate_unique_device"),
        ]

    def __str__(self) -> str:
        return f"{self.rule} on {self.device_id}"

    @property
    def tenant_id(self) -> int:
        return self.rule.tenant_id


class DeviceWindowsQuerySet(TenantQuerySet):
    tenant_lookup = "device__tenant"


class DeviceWindows(models.Model):
    """The running statistics of the window terms rules evaluate on one device (avg, stddev,
    zscore, rate and delta over a window: rules/engine.py), one row per device, rewritten by the
    batches that bring the device's readings, so a worker restart loses nothing.

    They describe the device's readings, not a rule: every rule using the same term (say
    avg(temperature,600)) reads the same statistics. `terms` names the terms, one per line, in
    the order of `stats`: 7 little-endian float64 per term (last reading time in epoch ms, last
    value, weighted mean or smoothed rate, weighted sum of squared deviations, readings seen, the
    term's last value, weight sum; NaN for unknown). Binary, because this row is read and
    written for every device of every batch: as JSON in RuleState it cost more than evaluating
    the rules (bench/rules.py)."""

    device = models.OneToOneField(
        Device, on_delete=models.CASCADE, primary_key=True, related_name="rule_windows"
    )
    terms = models.TextField()
    stats = models.BinaryField()

    objects = DeviceWindowsQuerySet.as_manager()

    class Meta:
        verbose_name = "device window statistics"
        verbose_name_plural = "device window statistics"

    def __str__(self) -> str:
        return f"window statistics of {self.device_id}"

    @property
    def tenant_id(self) -> int:
        return self.device.tenant_id
